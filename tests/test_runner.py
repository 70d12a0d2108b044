"""The projection runner against the real broker: batches, commits after apply, retries,
restart without loss, bad records skipped and counted."""

from __future__ import annotations

import asyncio
import threading

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from projections.runner import ProjectionRunner, Record, RunnerConfig, wait_until

TOPIC = "agent-events"
FAST = RunnerConfig(max_batch=500, max_wait_ms=50, session_timeout_ms=6000)


class SetProjection:
    """A pure in-memory read model: a set of values, so duplicates are visible as no-ops."""

    name = "set"
    topics = (TOPIC,)

    def __init__(self, fail_times: int = 0) -> None:
        self.decoders = {TOPIC: self._decode}
        self.values: set[str] = set()
        self.applied_records = 0
        self.fail_times = fail_times
        self.calls = 0
        self.lock = threading.Lock()

    @staticmethod
    def _decode(raw: bytes) -> str:
        text = raw.decode()
        if text.startswith("bad"):
            raise ValueError("bad record")
        return text

    def setup(self) -> None:
        pass

    def apply(self, records: list[Record]) -> None:
        with self.lock:
            self.calls += 1
            if self.calls <= self.fail_times:
                raise ConnectionError("store unavailable")
            self.applied_records += len(records)
            self.values.update(str(r.value) for r in records)


async def produce(bootstrap: str, values: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i, v in enumerate(values):
            await producer.send(TOPIC, v.encode(), key=f"agent-{i % 7}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def committed_total(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(6)]
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
        return sum(max(0, meta.offset) for meta in offsets.values())
    finally:
        await admin.close()


async def run_until_caught_up(runner: ProjectionRunner) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        assert await wait_until(runner.caught_up, timeout_s=30), runner.stats
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_applies_everything_and_commits_after_apply(kafka):
    values = [f"v{i}" for i in range(3000)]
    await produce(kafka.bootstrap, values)
    proj = SetProjection()
    runner = ProjectionRunner(proj, kafka.bootstrap, "g1", FAST)
    await run_until_caught_up(runner)
    assert proj.values == set(values)
    assert runner.stats.applied == 3000
    assert runner.stats.lag() == 0
    assert await committed_total(kafka.bootstrap, "g1") == 3000


async def test_failed_apply_is_retried_and_nothing_is_lost(kafka):
    values = [f"v{i}" for i in range(200)]
    await produce(kafka.bootstrap, values)
    proj = SetProjection(fail_times=2)
    runner = ProjectionRunner(proj, kafka.bootstrap, "g2", FAST)
    runner.config.retry_initial_s = 0.01
    await run_until_caught_up(runner)
    assert proj.values == set(values)
    assert runner.stats.retries == 2


async def test_restart_resumes_from_commit_and_reports_caught_up(kafka):
    await produce(kafka.bootstrap, [f"a{i}" for i in range(500)])
    first = SetProjection()
    await run_until_caught_up(ProjectionRunner(first, kafka.bootstrap, "g3", FAST))
    await produce(kafka.bootstrap, [f"b{i}" for i in range(300)])
    second = SetProjection()
    runner = ProjectionRunner(second, kafka.bootstrap, "g3", FAST)
    await run_until_caught_up(runner)
    # the second run sees only what came after the first run's commit
    assert second.values == {f"b{i}" for i in range(300)}
    assert await committed_total(kafka.bootstrap, "g3") == 800


async def test_undecodable_records_are_counted_not_fatal(kafka):
    await produce(kafka.bootstrap, ["ok1", "bad-1", "ok2", "bad-2", "ok3"])
    proj = SetProjection()
    runner = ProjectionRunner(proj, kafka.bootstrap, "g4", FAST)
    await run_until_caught_up(runner)
    assert proj.values == {"ok1", "ok2", "ok3"}
    assert runner.stats.rejected == 2
    assert await committed_total(kafka.bootstrap, "g4") == 5
