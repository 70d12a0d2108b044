"""Codec fuzzing at scale: 1M seeded mutations, what they raise, how fast, how slow at worst.

    python bench/bench_fuzz.py [--inputs 1000000] [--seed 20261205] [--cap-ms 100]

Inputs come from the seeded mutator of the test suite (tests/codec_mutator.py) over the
committed corpus tests/data/codec_seeds.jsonl, in chunks (``--chunk``), so input ``i`` of a
seed is always the same bytes. For each chunk:

- every input is decoded once by ``EventCodec.decode``, timed alone with the garbage
  collector paused (it runs between chunks: a collection is not one input's cost): the
  outcome (``InvalidEvent`` by reason, accepted, or anything else: must be 0) and the time.
  An input over ``--cap-ms`` is timed again, best of 3: if it stays over, it is a hang
  (must be 0); the first figure is what the loaded machine showed, the second is the
  codec's. A watchdog (``faulthandler``) ends the run with a traceback if one input never
  returns;
- every distinct accepted input is checked against the committed JSON Schema and the
  stores' row builders, reducer and state rows (tests/fuzz_oracle.py): must be 0 problems;
- throughput: the whole chunk decoded in a tight loop by ``EventCodec.decode`` and, as the
  baseline, by ``msgspec.json.decode`` (parsing into plain objects, no validation) on the
  same bytes, the two taking turns.

Writes bench/results/bench_fuzz.json (figures, and in params: counts by reason, the other
exceptions, the slowest inputs) and exits 1 when any must-be-0 count is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import heapq
import sys
import time
from array import array
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import msgspec
from _common import Figure, print_table, write_results
from codec_mutator import Mutator, load_seeds
from fuzz_oracle import SchemaOracle, store_problems
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from schemas.codec import EventCodec
from schemas.errors import InvalidEvent

WATCHDOG_S = 120  # one chunk without returning: a real hang, dump the stacks and exit


def _raw_decode(chunk: list[bytes]) -> float:
    decode = msgspec.json.decode
    t0 = time.perf_counter()
    for raw in chunk:
        try:  # noqa: SIM105 - try/except is what a consumer runs (suppress() is slower)
            decode(raw)
        except Exception:  # the baseline only parses; its errors are not counted
            pass
    return time.perf_counter() - t0


def _codec_decode(chunk: list[bytes], codec: EventCodec) -> float:
    decode = codec.decode
    t0 = time.perf_counter()
    for raw in chunk:
        try:  # noqa: SIM105 - as above
            decode(raw)
        except InvalidEvent:
            pass
    return time.perf_counter() - t0


def _time_one(codec: EventCodec, raw: bytes) -> float:
    t0 = time.perf_counter()
    with contextlib.suppress(Exception):  # only the time matters: outcomes were counted
        codec.decode(raw)
    return time.perf_counter() - t0


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--chunk", type=int, default=20_000)
    ap.add_argument("--cap-ms", type=float, default=100.0, help="per-input time cap (a hang)")
    args = ap.parse_args()

    codec = EventCodec()
    oracle = SchemaOracle()
    mutator = Mutator(load_seeds(), args.seed)
    reasons: Counter[str] = Counter()
    others: Counter[str] = Counter()
    other_samples: list[str] = []
    slow: list[tuple[float, str]] = []
    times = array("d")
    seen: set[int] = set()
    accepted = distinct = schema_bad = store_bad = over_cap = 0
    problem_samples: list[str] = []
    t_codec = t_raw = t_gen = 0.0
    cap = args.cap_ms / 1000
    done = 0
    faulthandler.enable()
    columns = (
        TextColumn("fuzzing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("fuzz", total=args.inputs, status="")
        while done < args.inputs:
            n = min(args.chunk, args.inputs - done)
            faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
            g0 = time.perf_counter()
            chunk = [mutator.next() for _ in range(n)]
            t_gen += time.perf_counter() - g0
            fresh = []
            gc.disable()
            for raw in chunk:
                t0 = time.perf_counter()
                try:
                    event = codec.decode(raw)
                    outcome = None
                except InvalidEvent as err:
                    event, outcome = None, err.reason.value
                except Exception as err:  # the finding
                    event, outcome = None, f"!{type(err).__name__}"
                    if len(other_samples) < 20:
                        other_samples.append(f"{type(err).__name__}: {err!s:.200} <- {raw[:200]!r}")
                dt = time.perf_counter() - t0
                if dt > cap:  # the machine, or the input? time it again, best of 3
                    over_cap += 1
                    dt = min(_time_one(codec, raw) for _ in range(3))
                times.append(dt)
                if len(slow) < 10 or dt > slow[0][0]:  # the 10 slowest, in a min-heap
                    item = (dt, f"{outcome or 'accepted'}, {len(raw)} B: {raw[:80]!r}")
                    (heapq.heappush if len(slow) < 10 else heapq.heapreplace)(slow, item)
                if outcome is None:
                    accepted += 1
                    h = hash(raw)
                    if h not in seen:
                        seen.add(h)
                        distinct += 1
                        fresh.append((raw, event))
                elif outcome.startswith("!"):
                    others[outcome[1:]] += 1
                else:
                    reasons[outcome] += 1
            gc.enable()
            gc.collect()
            for i, (raw, event) in enumerate(fresh):
                problems = oracle.problems(raw, event, union=i % 25 == 0)
                if problems:
                    schema_bad += 1
                    if len(problem_samples) < 20:
                        problem_samples.append(f"schema: {problems[:2]} <- {raw[:200]!r}")
            stored = store_problems([e for _, e in fresh])
            store_bad += len(stored)
            problem_samples.extend(f"store: {p}" for p in stored[: 20 - len(problem_samples)])
            # throughput, the two decoders taking turns on the same bytes
            if (done // args.chunk) % 2:
                t_raw += _raw_decode(chunk)
                t_codec += _codec_decode(chunk, codec)
            else:
                t_codec += _codec_decode(chunk, codec)
                t_raw += _raw_decode(chunk)
            done += n
            progress.update(
                task,
                completed=done,
                status=f"accepted {accepted:,}  other {sum(others.values())}  "
                f"schema/store problems {schema_bad + store_bad}",
            )
    faulthandler.cancel_dump_traceback_later()

    ordered = sorted(times)
    hangs = sum(1 for t in times if t > cap)
    n = args.inputs
    rate, base = n / t_codec, n / t_raw
    figures = [
        Figure(
            "EventCodec.decode on fuzz inputs",
            rate,
            "inputs/s",
            baseline=base,
            baseline_name="msgspec.json.decode, untyped",
        ),
        Figure("msgspec.json.decode (baseline)", base, "inputs/s"),
        Figure("inputs", n, "inputs"),
        Figure("rejected with InvalidEvent", sum(reasons.values()), "inputs"),
        Figure("accepted", accepted, "inputs"),
        Figure("accepted, distinct bytes (checked)", distinct, "inputs"),
        Figure("other exceptions (must be 0)", sum(others.values()), "inputs"),
        Figure("accepted but schema-invalid (must be 0)", schema_bad, "inputs"),
        Figure("accepted but not held exactly (must be 0)", store_bad, "problems"),
        Figure(f"over {args.cap_ms:g} ms once (machine load)", over_cap, "inputs"),
        Figure(f"hangs: over {args.cap_ms:g} ms, best of 3 (must be 0)", hangs, "inputs"),
        Figure("slowest input", ordered[-1] * 1000, "ms"),
        Figure("p99.9 per input", _percentile(ordered, 0.999) * 1000, "ms"),
        Figure("median per input", _percentile(ordered, 0.5) * 1e6, "µs"),
    ]
    params = {
        "inputs": n,
        "seed": args.seed,
        "chunk": args.chunk,
        "cap_ms": args.cap_ms,
        "corpus": "tests/data/codec_seeds.jsonl",
        "invalid_event_by_reason": dict(reasons.most_common()),
        "other_exceptions": dict(others),
        "other_exception_samples": other_samples,
        "problem_samples": problem_samples,
        "slowest_inputs": [{"ms": round(t * 1000, 3), "input": s} for t, s in sorted(slow)[::-1]],
        "generation_s": round(t_gen, 1),
    }
    path = write_results("bench_fuzz", figures, params)
    print_table(f"codec fuzz: {n:,} seeded inputs (seed {args.seed}), one core", figures)
    by_reason = Table(title="InvalidEvent by reason")
    by_reason.add_column("reason")
    by_reason.add_column("inputs", justify="right")
    by_reason.add_column("share", justify="right")
    for reason, count in reasons.most_common():
        by_reason.add_row(reason, f"{count:,}", f"{count / n:.1%}")
    Console().print(by_reason)
    for sample in other_samples[:5] + problem_samples[:5]:
        print(sample)
    print(f"wrote {path}")
    return 1 if others or hangs or schema_bad or store_bad else 0


if __name__ == "__main__":
    sys.exit(main())
