"""Event codec throughput on realistic simulator events, one core.

    python bench/bench_codec.py [--events 100000] [--repeats 5]

- ``decode+validate``: ``EventCodec().decode(bytes)`` -> typed, validated event (the path
  every consumer takes). Goal: >= 100k events/s.
- ``encode``: ``encode_event(event)`` -> bytes (the producer's path).
- Baselines in the same process on the same bytes: ``msgspec.json.decode`` into plain dicts
  (parsing only, no validation, no types) and stdlib ``json.loads``; for encoding,
  ``msgspec.json.encode`` and ``json.dumps`` of those plain dicts.

Best of ``--repeats`` passes over the whole list, the variants taking turns (so load from
other processes hits them alike); the garbage collector is left on (as in a real consumer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec
from _common import Figure, print_table, write_results

from schemas.codec import EventCodec, encode_event
from streams.simulator import SimulationConfig, generate


def best_rates(n: int, variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Events/s per variant, best of ``repeats``; variants take turns so that load from
    other processes hits them alike."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: n / seconds for name, seconds in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    events = list(
        generate(SimulationConfig(agents=32, runs=None, seed=args.seed, max_events=args.events))
    )
    raws = [encode_event(e) for e in events]
    dicts = [msgspec.json.decode(r) for r in raws]
    n = len(events)
    mean = sum(map(len, raws)) / n
    codec = EventCodec()
    decode = codec.decode
    plain = msgspec.json.decode

    r = best_rates(
        n,
        {
            "dec": lambda: [decode(r) for r in raws],
            "dec_plain": lambda: [plain(r) for r in raws],
            "dec_json": lambda: [json.loads(r) for r in raws],
            "enc": lambda: [encode_event(e) for e in events],
            "enc_plain": lambda: [msgspec.json.encode(d) for d in dicts],
            "enc_json": lambda: [json.dumps(d).encode() for d in dicts],
        },
        args.repeats,
    )
    dec, dec_plain, dec_json = r["dec"], r["dec_plain"], r["dec_json"]
    enc, enc_plain, enc_json = r["enc"], r["enc_plain"], r["enc_json"]

    figures = [
        Figure(
            "decode+validate (EventCodec)",
            dec,
            "events/s",
            baseline=dec_plain,
            baseline_name="msgspec untyped decode",
            goal=100_000,
        ),
        Figure("msgspec untyped decode (baseline)", dec_plain, "events/s"),
        Figure(
            "stdlib json.loads",
            dec_json,
            "events/s",
            baseline=dec_plain,
            baseline_name="msgspec untyped decode",
        ),
        Figure(
            "encode (encode_event)",
            enc,
            "events/s",
            baseline=enc_plain,
            baseline_name="msgspec encode of dicts",
        ),
        Figure("msgspec encode of dicts (baseline)", enc_plain, "events/s"),
        Figure(
            "stdlib json.dumps",
            enc_json,
            "events/s",
            baseline=enc_plain,
            baseline_name="msgspec encode of dicts",
        ),
        Figure("decode+validate throughput", dec * mean / 1e6, "MB/s"),
    ]
    params = {
        "events": n,
        "mean_event_bytes": round(mean),
        "repeats": args.repeats,
        "workload": "simulator, 32 agents",
    }
    path = write_results("bench_codec", figures, params)
    print_table(f"codec: {n:,} simulator events, ~{mean:.0f} B each, one core", figures)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
