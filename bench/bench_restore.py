"""Restore rate (archive -> fresh broker) vs a raw produce of the same records, same run.

    python bench/bench_restore.py [--events 200000] [--repeats 3] [--flush 1.0]

Setup (not timed): simulator events are published to a Tansu broker and archived by the
real archiver (``streams.archive.Archiver``, files rolled every ``--flush`` seconds as in
``agentstream up``), so the archive has the shape a running stack writes.

Trials, each on a fresh broker (Tansu keeps everything in memory), alternating:

- ``restore``: :func:`streams.restore.restore_log_async` end to end: plan from the file
  names, read every segment (events and dlq files), produce per partition with
  ``create_batch``/``send_batch``, verify each partition's high watermark and last record,
  write the epoch marker.
- ``raw send_batch`` (baseline): the same records (key, value, timestamp, headers), already in
  memory in partition order, produced the same way by a plain ``AIOKafkaProducer``: no
  files, no checks.

The best of ``--repeats`` of each is reported, with the ratio restore / raw.
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
from streams.archive import Archiver, archive_state, complete_segments
from streams.producer import EventProducer
from streams.restore import _rows, plan_restore, read_segment, restore_log_async
from streams.simulator import SimulationConfig, generate
from streams.state_reader import fetch_high_watermarks

HOST = "127.0.0.1"
PARTITIONS = 6
MAX_BATCH = 1 << 20


async def build_archive(bootstrap: str, root: Path, events: int, flush_s: float) -> int:
    config = SimulationConfig(agents=32, runs=None, seed=7, max_events=events)
    async with EventProducer(bootstrap) as producer:
        await producer.send_many(generate(config))
    total = sum((await fetch_high_watermarks(bootstrap, EVENTS)).values())
    stop = asyncio.Event()
    task = asyncio.create_task(Archiver(bootstrap, root, max_segment_age_s=flush_s).run(stop))
    deadline = time.monotonic() + 600
    while sum(n + 1 for n in archive_state(root).last_offsets.values()) < total:
        if time.monotonic() > deadline or task.done():
            raise RuntimeError("the archive was not built")
        await asyncio.sleep(0.5)
    stop.set()
    await task
    return total


Row = tuple[bytes | None, bytes, int, list[tuple[str, bytes | None]] | None]


def load_records(root: Path) -> dict[int, list[Row]]:
    """The archive's records per partition, in order: what the raw baseline produces."""
    out: dict[int, list[Row]] = {}
    for p, plan in plan_restore(root).items():
        rows = out.setdefault(p, [])
        for seg in plan.segments:
            rows.extend((k, v, ts, h) for _, ts, k, v, h in _rows(read_segment(root, seg)))
    return out


def restore_trial(root: Path, total: int) -> Callable[[str], Awaitable[float]]:
    async def run(bootstrap: str) -> float:
        report = await restore_log_async(bootstrap, root)
        assert report.ok and report.records == total, report.summary()
        return report.records / report.seconds

    return run


def raw_trial(records: dict[int, list[Row]]) -> Callable:
    async def run(bootstrap: str) -> float:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=0,
            max_batch_size=MAX_BATCH,
            max_request_size=MAX_BATCH + (64 << 10),
        )
        await producer.start()
        try:
            t0 = time.perf_counter()

            async def partition(p: int, rows: list[Row]) -> None:
                futs = []
                batch = producer.create_batch()
                for key, value, ts, h in rows:
                    if batch.append(key=key, value=value, timestamp=ts, headers=h) is None:
                        futs.append(await producer.send_batch(batch, EVENTS, partition=p))
                        batch = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=ts, headers=h)
                futs.append(await producer.send_batch(batch, EVENTS, partition=p))
                await asyncio.gather(*futs)

            await asyncio.gather(*(partition(p, rows) for p, rows in records.items()))
            seconds = time.perf_counter() - t0
        finally:
            await producer.stop()
        return sum(len(r) for r in records.values()) / seconds

    return run


async def main(events: int, repeats: int, flush_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        tmp_path = Path(tmp)
        root = tmp_path / "archive"
        t0 = time.perf_counter()

        async def build(bootstrap: str) -> float:
            return float(await build_archive(bootstrap, root, events, flush_s))

        total = int(await with_broker(tmp_path, build))
        segments = len(complete_segments(root))
        print(
            f"archive: {total:,} records, {segments} segments, built in "
            f"{time.perf_counter() - t0:.0f}s"
        )
        records = load_records(root)
        trials = {"restore": restore_trial(root, total), "raw send_batch": raw_trial(records)}
        best: dict[str, float] = {}
        for _ in range(repeats):
            for name, trial in trials.items():
                rate = await with_broker(tmp_path, trial)
                best[name] = max(best.get(name, 0.0), rate)
                print(f"  {name}: {rate:,.0f} records/s")
    figures = [
        Figure(
            "restore from the archive (end to end)",
            best["restore"],
            "records/s",
            baseline=best["raw send_batch"],
            baseline_name="raw send_batch of the same records",
        ),
        Figure("raw send_batch of the same records", best["raw send_batch"], "records/s"),
        Figure("time to restore 1M records (extrapolated)", 1_000_000 / best["restore"], "s"),
    ]
    params = {
        "events": events,
        "records": total,
        "segments": segments,
        "flush_s": flush_s,
        "partitions": PARTITIONS,
        "repeats": repeats,
    }
    path = write_results("bench_restore", figures, params)
    print_table("restore", figures)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flush", type=float, default=1.0, help="archiver flush interval (s)")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.repeats, args.flush))
