"""Consumers left running across a broker restart (``agentstream down && up``) end exact.

The embedded broker keeps nothing: a restart is simulated by stopping the fixture's broker
and starting a new one on the same port, then restoring the log from the archive (what
``agentstream up`` does). A worker, a projection and the archiver that kept running with
their old positions must notice the new log and recover.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import HOST, TEST_PARTITIONS, Broker
from test_processor import assert_exact
from test_restore import archive_all, archived_count, publish, sim, start_broker_on

from agentstream.processes import ManagedProcess
from schemas.envelope import Event
from streams.archive import Archiver, archive_state, complete_segments
from streams.log_identity import detect_change, fetch_marker
from streams.processor import KafkaProcessor
from streams.reducer import fold
from streams.restore import restore_log_async
from streams.state_reader import fetch_high_watermarks

pytestmark = pytest.mark.integration


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def restart_and_restore(broker: Broker, archive: Path, log_dir: Path) -> ManagedProcess:
    """`agentstream down && up`: a new empty broker on the same port, restored from the archive."""
    broker.process.stop()
    proc = await start_broker_on(broker.port, log_dir)
    report = await restore_log_async(broker.bootstrap, archive, partitions=TEST_PARTITIONS)
    assert report.ok, report.summary()
    return proc


# --- the pure decision ---------------------------------------------------------------------


def test_detect_change_epochs_and_high_watermarks():
    assert detect_change(None, None, {0: 5}, {0: 5}) is None
    assert detect_change(None, "b", {0: 5}, {0: 9}) is None  # first marker: same log
    assert detect_change("a", "a", {0: 5, 1: 3}, {0: 5, 1: None}) is None
    changed = detect_change("a", "b", {}, {})
    assert changed is not None and changed.reason == "epoch"
    gone = detect_change("a", None, {}, {})
    assert gone is not None and gone.reason == "epoch"
    behind = detect_change(None, None, {0: 5, 1: 3}, {0: 4, 1: 3})
    assert behind is not None and behind.reason == "highwater" and behind.behind == {0: (5, 4)}


# --- the processor ---------------------------------------------------------------------------


@pytest.mark.parametrize("lost_tail", [False, True], ids=["all-archived", "unarchived-tail-lost"])
async def test_worker_left_running_across_down_and_up_ends_exact(
    kafka: Broker, tmp_path: Path, lost_tail: bool
):
    """Old code: the worker keeps its positions, skips the new log's records, state is wrong."""
    archive = tmp_path / "archive"
    await restore_log_async(kafka.bootstrap, archive, partitions=TEST_PARTITIONS)  # first `up`
    first = sim(runs=10, seed=31)
    tail = sim(runs=3, seed=32) if lost_tail else []
    second = sim(runs=6, seed=33)
    await publish(kafka.bootstrap, first)
    await archive_all(kafka.bootstrap, archive, len(first))
    await publish(kafka.bootstrap, tail)  # acknowledged, never archived: lost with the broker

    worker = KafkaProcessor(kafka.bootstrap, session_timeout_s=6)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    proc: ManagedProcess | None = None
    try:
        total = len(first) + len(tail)
        await wait_for(lambda: worker.stats.records >= total, 60, "first log processed")
        await _wait_committed(kafka.bootstrap, total)  # `down`: nothing in flight
        assert fold(first + tail)[0] == {a: s for a, s in worker.core.states.items()}

        proc = await restart_and_restore(kafka, archive, tmp_path)
        await publish(kafka.bootstrap, second)
        truth = first + second  # the tail is gone with the old broker
        expected, _ = fold(truth)

        await wait_for(
            lambda: worker.core.states == expected or task.done(), 90, "worker states exact"
        )
        assert not task.done()
        await _wait_committed(kafka.bootstrap, len(truth))
        await assert_exact(kafka.bootstrap, truth)  # agent-state, violations, episodes
        assert worker.stats.log_changes >= 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        if proc is not None:
            proc.stop()


async def _wait_committed(bootstrap: str, records: int, timeout_s: float = 60) -> None:
    from streams.processor import processor_progress

    deadline = time.monotonic() + timeout_s
    progress = None
    while time.monotonic() < deadline:
        progress = await processor_progress(bootstrap)
        if progress.caught_up and sum(progress.highwater.values()) == records:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"processor not caught up: {progress}")


# --- the archiver -----------------------------------------------------------------------------


async def test_archiver_left_running_across_down_and_up_writes_no_duplicates(
    kafka: Broker, tmp_path: Path
):
    """Old code: the restored log made the running archiver start a new generation at 0 and
    archive every restored record a second time."""
    archive = tmp_path / "archive"
    await restore_log_async(kafka.bootstrap, archive, partitions=TEST_PARTITIONS)
    first, second = sim(runs=8, seed=41), sim(runs=5, seed=42)
    await publish(kafka.bootstrap, first)
    stop = asyncio.Event()
    archiver = Archiver(kafka.bootstrap, archive, max_segment_age_s=0.3, verify_deadline_s=2)
    task = asyncio.create_task(archiver.run(stop))
    proc: ManagedProcess | None = None
    try:
        await wait_for(lambda: archived_count(archive) >= len(first), 60, "first log archived")
        proc = await restart_and_restore(kafka, archive, tmp_path)
        await publish(kafka.bootstrap, second)
        total = len(first) + len(second)
        await wait_for(lambda: _archived_ids_total(archive) >= total, 60, "second log archived")
        await asyncio.sleep(0)  # nothing else should arrive; counted below
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        if proc is not None:
            hw = await fetch_high_watermarks(kafka.bootstrap, "agent-events")
            proc.stop()
    ids = Counter(_archived_ids(archive))
    assert ids == Counter(e.id for e in first + second), {i: n for i, n in ids.items() if n > 1}
    state = archive_state(archive)
    assert {p: last + 1 for p, last in state.last_offsets.items()} == {
        p: n for p, n in hw.items() if n
    }
    assert archive_state(archive).generation == 1  # the restored log is the same log


def _archived_ids(root: Path) -> list[str]:
    import pyarrow.parquet as pq

    ids: list[str] = []
    for seg in complete_segments(root):
        for f in seg.of_kind("events"):
            ids += pq.read_table(root / f.relpath, columns=["event_id"])["event_id"].to_pylist()
    return ids


def _archived_ids_total(root: Path) -> int:
    return len(_archived_ids(root))


async def test_marker_survives_only_with_its_broker(kafka: Broker, tmp_path: Path):
    first = await restore_log_async(kafka.bootstrap, tmp_path / "a", partitions=TEST_PARTITIONS)
    assert (await fetch_marker(kafka.bootstrap)).epoch == first.epoch
    kafka.process.stop()
    proc = await start_broker_on(kafka.port, tmp_path)
    try:
        assert await fetch_marker(kafka.bootstrap) is None
        again = await restore_log_async(kafka.bootstrap, tmp_path / "a")
        assert again.epoch != first.epoch
    finally:
        proc.stop()


_ = (HOST, Event)


# --- a projection ---------------------------------------------------------------------------


class IdsProjection:
    """A read model of event ids (pure, in memory): rows exact = ids equal the log's."""

    name = "ids"
    topics = ("agent-events",)

    def __init__(self) -> None:
        from schemas.codec import EventCodec

        self.decoders = {"agent-events": EventCodec().decode}
        self.ids: set[str] = set()
        self.applied = 0

    def setup(self) -> None:
        pass

    def apply(self, records) -> None:
        self.applied += len(records)
        self.ids.update(r.value.id for r in records)


async def test_projection_left_running_across_down_and_up_is_exact_and_honest(
    kafka: Broker, tmp_path: Path
):
    """Old code: stale positions and commits from the old log; ``caught_up`` said True on
    offsets of the new log it never read."""
    from projections.runner import ProjectionRunner, RunnerConfig

    archive = tmp_path / "archive"
    await restore_log_async(kafka.bootstrap, archive, partitions=TEST_PARTITIONS)
    first, tail, second = sim(runs=10, seed=51), sim(runs=4, seed=52), sim(runs=2, seed=53)
    await publish(kafka.bootstrap, first)
    await archive_all(kafka.bootstrap, archive, len(first))
    await publish(kafka.bootstrap, tail)  # never archived: lost with the broker
    projection = IdsProjection()
    runner = ProjectionRunner(
        projection, kafka.bootstrap, config=RunnerConfig(max_batch=500, max_wait_ms=50)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    proc: ManagedProcess | None = None
    try:
        await wait_for(runner.caught_up, 60, "first log applied")
        proc = await restart_and_restore(kafka, archive, tmp_path)
        restored = await fetch_high_watermarks(kafka.bootstrap, "agent-events")
        # the first time it says caught up on the new log, it has read the new log
        await wait_for(runner.caught_up, 60, "caught up on the restored log")
        committed = {tp.partition: n for tp, n in runner.stats.committed.items() if n}
        assert committed == {p: n for p, n in restored.items() if n}
        assert {e.id for e in first} <= projection.ids
        await publish(kafka.bootstrap, second)
        hw = await fetch_high_watermarks(kafka.bootstrap, "agent-events")
        want = {e.id for e in first + second}
        # whenever it says caught up on the new log, it holds everything the new log holds
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if runner.caught_up() and all(
                runner.stats.highwater.get(tp, -1) >= hw.get(tp.partition, 0)
                for tp in runner.assigned
            ):
                break
            await asyncio.sleep(0.05)
        assert runner.caught_up()
        assert want <= projection.ids, f"{len(want - projection.ids)} records never applied"
        assert runner.stats.log_changes >= 1
        committed = {tp.partition: n for tp, n in runner.stats.committed.items()}
        assert committed == {p: n for p, n in hw.items() if n}
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        if proc is not None:
            proc.stop()
