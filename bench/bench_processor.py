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

``--recovery`` measures instead what faust's table recovery does on this broker: a faust
worker (``agentstream worker`` subprocess) processes the workload, is stopped (SIGTERM or
kill -9 once caught up, or kill -9 when half of it is committed) and restarted; one more
event per agent makes every partition active again, and the restarted worker logs how many
agents' states faust restored into its table versus the exact state re-folded from
agent-events, and how long that rebuild took. Written to
``bench/results/bench_processor_recovery.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, print_table, write_results
from aiokafka import AIOKafkaConsumer, TopicPartition

from agentstream.processes import ManagedProcess, free_port, tansu_argv
from schemas.codec import EventCodec
from schemas.envelope import Event, new_event
from schemas.ids import Uuid7Generator
from schemas.payloads import Feedback
from schemas.topics import EVENTS
from streams.admin import ensure_topics, wait_for_broker
from streams.processor import BatchOutput, InRecord, StateCore, build_app, processor_progress
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
    original = proc.prepare  # both engines reduce every batch through prepare()

    async def timed_prepare(records):
        if not first:
            first.append(time.perf_counter())
        return await original(records)

    proc.prepare = timed_prepare  # type: ignore[method-assign]
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


RECOVERY_LINE = re.compile(
    r"faust table vs rebuilt state for partitions \[[^\]]*\]: (\d+) agents, (\d+) missing"
)
REBUILD_LINE = re.compile(r"rebuilt partitions \{[^}]*\} from (\d+) records .* in ([\d.]+)s")


class _Worker:
    def __init__(self, bootstrap: str, data_dir: Path, name: str, group: str) -> None:
        self.log = data_dir / f"{name}.log"
        env = {
            **os.environ,
            "AGENTSTREAM_KAFKA_URL": f"kafka://{bootstrap}",
            "AGENTSTREAM_DATA_DIR": str(data_dir / name),
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentstream.cli", "worker", "--group", group],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )


async def _caught_up(bootstrap: str, group: str, expected: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = await processor_progress(bootstrap, group)
        if progress.caught_up and sum(progress.highwater.values()) == expected:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"group {group} not caught up")


async def _committed_at_least(bootstrap: str, group: str, n: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum((await processor_progress(bootstrap, group)).committed.values()) >= n:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"group {group} did not commit {n} records")


async def recovery(args: argparse.Namespace) -> None:
    """faust table recovery vs the event-sourced rebuild, after SIGTERM and after kill -9."""
    events = list(
        generate(SimulationConfig(agents=args.agents, runs=None, max_events=args.events, seed=1))
    )
    agents = sorted({e.agentid for e in events})
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        port = free_port(HOST)
        broker = ManagedProcess("broker", tansu_argv(HOST, port), tmpdir / "tansu.log")
        broker.start()
        figures: list[Figure] = []
        results: dict[str, dict] = {}
        try:
            broker.wait_for_port(HOST, port, deadline_s=10)
            bootstrap = f"{HOST}:{port}"
            await wait_for_broker(bootstrap)
            await ensure_topics(bootstrap, PARTITIONS)
            await publish(bootstrap, events)
            total = len(events)
            for how in ("sigterm", "kill9", "kill9-mid-stream"):
                group = f"recovery-{how}"
                first = _Worker(bootstrap, tmpdir, f"{how}-1", group)
                if how == "kill9-mid-stream":
                    await _committed_at_least(bootstrap, group, total // 2)
                else:
                    await _caught_up(bootstrap, group, total)
                if how.startswith("kill9"):
                    first.proc.send_signal(signal.SIGKILL)
                else:
                    first.proc.send_signal(signal.SIGTERM)
                first.proc.wait(60)
                second = _Worker(bootstrap, tmpdir, f"{how}-2", group)
                # one more event per agent: every partition gets a batch, so gets checked
                extra = [_touch(a, i) for i, a in enumerate(agents)]
                await publish(bootstrap, extra)
                total += len(extra)
                await _caught_up(bootstrap, group, total)
                second.proc.send_signal(signal.SIGTERM)
                second.proc.wait(60)
                text = second.log.read_text()
                checked = sum(int(m.group(1)) for m in RECOVERY_LINE.finditer(text))
                wrong = sum(int(m.group(2)) for m in RECOVERY_LINE.finditer(text))
                rebuilt = [(int(m[1]), float(m[2])) for m in REBUILD_LINE.finditer(text)]
                results[how] = {
                    "agents_checked": checked,
                    "missing_or_stale_in_faust_table": wrong,
                    "records_refolded": sum(r for r, _ in rebuilt),
                    "rebuild_seconds": sum(s for _, s in rebuilt),
                }
                print(how, results[how], flush=True)
                figures.append(
                    Figure(f"faust table exact after {how} restart", checked - wrong, "agents")
                )
                figures.append(Figure(f"  ... missing or stale ({how})", wrong, "agents"))
                figures.append(
                    Figure(
                        f"rebuild from agent-events ({how})",
                        results[how]["records_refolded"]
                        / max(results[how]["rebuild_seconds"], 1e-9),
                        "records/s",
                    )
                )
        finally:
            broker.stop()
    params = {"events": len(events), "agents": len(agents), "results": results}
    path = write_results("bench_processor_recovery", figures, params)
    print_table("faust table recovery vs event-sourced rebuild", figures)
    print(f"wrote {path}")


def _touch(agent: str, i: int) -> Event:
    """One more (valid) event for ``agent``, after everything the simulator emitted."""
    when = datetime(2030, 1, 1, tzinfo=UTC)
    return new_event(
        Feedback(score=1.0, source="test"),
        id=Uuid7Generator(i).new(int(when.timestamp() * 1000)),
        time=when,
        agentid=agent,
    )


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
    parser.add_argument(
        "--recovery", action="store_true", help="measure faust table recovery instead"
    )
    parsed = parser.parse_args()
    asyncio.run(recovery(parsed) if parsed.recovery else main(parsed))
