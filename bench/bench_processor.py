"""Stream processor throughput vs a raw aiokafka consume-and-decode loop, same broker, same run.

    python bench/bench_processor.py [--events 200000] [--agents 32] [--repeats 2]

Workload: simulator events (realistic sizes, ~0.8 KB mean), published once to a Tansu broker
this script starts (6 partitions); every trial then reads the same topic from offset 0.

- ``processor (faust)``: one :class:`streams.processor.StreamProcessor` worker (the faust
  app, in this process) in a fresh consumer group: decode, reduce, publish states /
  violations / episodes, mirror into the faust table, commit. Timed from the first record
  handed to the core to the last one (group join, ~5 s on Tansu, is excluded and reported
  separately).
- ``processor (aiokafka engine)``: :class:`streams.processor.KafkaProcessor`, the same
  processing and outputs on a plain aiokafka consumer group, timed the same way.
- ``raw consume + decode`` (the baseline): a plain ``AIOKafkaConsumer`` on all partitions,
  ``getmany`` until the fetch high watermark, ``EventCodec.decode`` of every value; nothing
  else. The same bytes, the same decoder.
- context only: ``core only`` (:class:`StateCore.step` over records already in memory, no
  Kafka), ``fold only`` (the reducer over decoded events), and the faust processor without
  its table.

The best of ``--repeats`` is reported; trials alternate between variants.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, print_table, write_results
from aiokafka import AIOKafkaConsumer, TopicPartition

from agentstream.processes import ManagedProcess, free_port, tansu_argv
from schemas.codec import EventCodec
from schemas.topics import EVENTS
from streams.admin import ensure_topics, wait_for_broker
from streams.processor import BatchOutput, InRecord, StateCore, build_app
from streams.producer import EventProducer
from streams.reducer import fold
from streams.simulator import SimulationConfig, generate
from streams.state_reader import fetch_high_watermarks

HOST = "127.0.0.1"
PARTITIONS = 6


async def publish(bootstrap: str, events: list) -> None:
    async with EventProducer(bootstrap, linger_ms=5) as producer:
        for e in events:
            await producer.send(e)


async def raw_trial(bootstrap: str, n: int) -> float:
    """Baseline: consume every record of agent-events and decode it, nothing else."""
    codec = EventCodec()
    hw = await fetch_high_watermarks(bootstrap, EVENTS)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(EVENTS, p) for p in hw]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        todo = {tp: hw[tp.partition] for tp in tps if hw[tp.partition] > 0}
        seen = 0
        t0 = time.perf_counter()
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=200, max_records=20000)
            for msgs in batches.values():
                for m in msgs:
                    codec.decode(m.value)
                    seen += 1
            for tp in [tp for tp, end in todo.items() if await consumer.position(tp) >= end]:
                del todo[tp]
        dt = time.perf_counter() - t0
    finally:
        await consumer.stop()
    assert seen == n, (seen, n)
    return n / dt


async def processor_trial(
    bootstrap: str, data_dir: Path, n: int, group: str, engine: str, timings: dict, **options
) -> float:
    proc = build_app(
        bootstrap=bootstrap,
        data_dir=data_dir / group,
        group_id=group,
        engine=engine,
        partitions=PARTITIONS,
        **options,
    )
    first: list[float] = []
    original = proc.handle

    async def timed_handle(records):
        if not first:
            first.append(time.perf_counter())
        return await original(records)

    proc.handle = timed_handle  # type: ignore[method-assign]
    stop = asyncio.Event()
    t_start = time.perf_counter()
    task = asyncio.create_task(proc.run(stop))
    try:
        deadline = time.monotonic() + 600
        while proc.stats.records < n:
            if task.done():
                task.result()
                raise RuntimeError("processor stopped early")
            if time.monotonic() > deadline:
                raise TimeoutError(f"processed {proc.stats.records} of {n}")
            await asyncio.sleep(0.01)
        t_end = time.perf_counter()
    finally:
        stop.set()
        await task
    timings.setdefault("startup_s", []).append(first[0] - t_start)
    timings.setdefault("batches", []).append(proc.stats.batches)
    timings.setdefault("states_published", []).append(proc.stats.states_published)
    return n / (t_end - first[0])


def core_only(records: list[InRecord]) -> float:
    core = StateCore()
    for p in {r.partition for r in records}:
        core.next_offset[p] = 0
    t0 = time.perf_counter()
    for i in range(0, len(records), 5000):
        out = BatchOutput()
        core.step(records[i : i + 5000], 0, out)
        out.records()  # encode what would be published
    return len(records) / (time.perf_counter() - t0)


async def fetch_records(bootstrap: str) -> list[InRecord]:
    hw = await fetch_high_watermarks(bootstrap, EVENTS)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[InRecord] = []
    try:
        tps = [TopicPartition(EVENTS, p) for p in hw]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        todo = {tp: hw[tp.partition] for tp in tps if hw[tp.partition] > 0}
        while todo:
            for tp, msgs in (await consumer.getmany(*todo, timeout_ms=200)).items():
                out.extend(
                    InRecord(EVENTS, tp.partition, m.offset, m.key, m.value, m.timestamp)
                    for m in msgs
                )
            for tp in [tp for tp, end in todo.items() if await consumer.position(tp) >= end]:
                del todo[tp]
    finally:
        await consumer.stop()
    return out


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.ERROR)
    load_before = os.getloadavg()[0]
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    print(f"generating {args.events} simulator events ...", flush=True)
    events = list(
        generate(SimulationConfig(agents=args.agents, runs=None, max_events=args.events, seed=1))
    )
    n = len(events)
    t0 = time.perf_counter()
    fold(events)
    fold_rate = n / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        port = free_port(HOST)
        broker = ManagedProcess("broker", tansu_argv(HOST, port), tmpdir / "tansu.log")
        broker.start()
        try:
            broker.wait_for_port(HOST, port, deadline_s=10)
            bootstrap = f"{HOST}:{port}"
            await wait_for_broker(bootstrap)
            await ensure_topics(bootstrap, PARTITIONS)
            print(f"publishing {n} events ...", flush=True)
            await publish(bootstrap, events)
            records = await fetch_records(bootstrap)
            assert len(records) == n

            raw, proc, proc_nt, fast, core = [], [], [], [], []
            timings: dict = {}
            fast_timings: dict = {}
            for i in range(args.repeats):
                raw.append(await raw_trial(bootstrap, n))
                proc.append(
                    await processor_trial(bootstrap, tmpdir, n, f"bench-{i}", "faust", timings)
                )
                fast.append(
                    await processor_trial(
                        bootstrap, tmpdir, n, f"bench-ak-{i}", "aiokafka", fast_timings
                    )
                )
                proc_nt.append(
                    await processor_trial(
                        bootstrap, tmpdir, n, f"bench-nt-{i}", "faust", {}, use_table=False
                    )
                )
                core.append(core_only(records))
                print(
                    f"trial {i}: raw {raw[-1]:,.0f}/s, faust {proc[-1]:,.0f}/s, "
                    f"aiokafka engine {fast[-1]:,.0f}/s, faust without table "
                    f"{proc_nt[-1]:,.0f}/s, core {core[-1]:,.0f}/s",
                    flush=True,
                )
        finally:
            broker.stop()

    base = max(raw)
    figures = [
        Figure(
            "processor, faust engine (1 worker)",
            max(proc),
            "events/s",
            baseline=base,
            baseline_name="raw consume+decode",
            goal=30_000,
        ),
        Figure(
            "processor, aiokafka engine (1 worker)",
            max(fast),
            "events/s",
            baseline=base,
            baseline_name="raw consume+decode",
            goal=30_000,
        ),
        Figure("raw consume + decode", base, "events/s"),
        Figure(
            "faust engine without its table",
            max(proc_nt),
            "events/s",
            baseline=base,
            baseline_name="raw consume+decode",
        ),
        Figure("core only (no Kafka)", max(core), "events/s"),
        Figure("fold only (decoded events)", fold_rate, "events/s"),
        Figure("faust worker startup (join + first batch)", min(timings["startup_s"]), "s"),
        Figure("aiokafka worker startup (join + first batch)", min(fast_timings["startup_s"]), "s"),
    ]
    params = {
        "events": n,
        "agents": args.agents,
        "repeats": args.repeats,
        "partitions": PARTITIONS,
        "mean_event_bytes": round(sum(len(r.value or b"") for r in records) / n),
        "faust_batches_per_run": timings["batches"],
        "faust_states_published_per_run": timings["states_published"],
        "aiokafka_batches_per_run": fast_timings["batches"],
        "load_avg_1m_before": load_before,
    }
    path = write_results("bench_processor", figures, params)
    print_table("stream processor", figures)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
