"""The stream processor on the real (Tansu) broker, and its core on plain data.

The expected outcome is always computed independently in the test, by folding the very
same events with :func:`streams.reducer.fold`: per-agent state must be *equal*, derived
records must be the same ids (a restart may publish some twice; never a different one).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.codec import EventCodec, encode_event
from schemas.deadletter import DeadLetter, decode_dead_letter
from schemas.derived import Episode, Violation, decode_episode, decode_violation
from schemas.envelope import Event
from schemas.state import AgentState, decode_state, encode_state
from schemas.topics import DLQ, EPISODES, EVENTS, STATE, VIOLATIONS
from streams.processor import (
    DEFAULT_GROUP,
    BatchOutput,
    InRecord,
    StateCore,
    build_app,
    processor_progress,
)
from streams.producer import EventProducer
from streams.reducer import fold
from streams.simulator import SimulationConfig, generate
from streams.state_reader import fetch_high_watermarks, read_state, read_states

REPO = Path(__file__).resolve().parent.parent


# --- helpers --------------------------------------------------------------------------------


def workload(agents: int = 6, runs: int = 40, seed: int = 11) -> list[Event]:
    return list(generate(SimulationConfig(agents=agents, runs=runs, seed=seed)))


async def publish(bootstrap: str, events: list[Event]) -> None:
    async with EventProducer(bootstrap) as producer:
        for e in events:
            await producer.send(e)


async def publish_raw(bootstrap: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 << 20)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(EVENTS, value, key=key)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of ``topic`` up to the fetch high watermark."""
    hw = await fetch_high_watermarks(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    out = []
    try:
        tps = [TopicPartition(topic, p) for p in hw]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        todo = {tp: hw[tp.partition] for tp in tps if hw[tp.partition] > 0}
        deadline = time.monotonic() + 60
        while todo and time.monotonic() < deadline:
            for _tp, msgs in (await consumer.getmany(*todo, timeout_ms=200)).items():
                out.extend(msgs)
            for tp in [tp for tp, end in todo.items() if await consumer.position(tp) >= end]:
                del todo[tp]
        assert not todo, f"could not read {topic} to its end"
    finally:
        await consumer.stop()
    return out


async def wait_caught_up(
    bootstrap: str, expected_records: int, timeout_s: float, group: str = DEFAULT_GROUP
) -> None:
    """Until the group has committed every one of ``expected_records`` (polling, deadline)."""
    deadline = time.monotonic() + timeout_s
    progress = None
    while time.monotonic() < deadline:
        progress = await processor_progress(bootstrap, group)
        if progress.caught_up and sum(progress.highwater.values()) == expected_records:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"processor not caught up after {timeout_s}s: {progress}")


async def derived_on_broker(bootstrap: str) -> tuple[list[Violation], list[Episode]]:
    violations = [decode_violation(m.value) for m in await read_topic(bootstrap, VIOLATIONS)]
    episodes = [decode_episode(m.value) for m in await read_topic(bootstrap, EPISODES)]
    return violations, episodes


def expected_derived(events: list[Event]) -> tuple[dict[str, AgentState], set, set]:
    states, derived = fold(events)
    violation_ids = {d.violation_id for d in derived if isinstance(d, Violation)}
    episode_revisions = {(d.episode_id, d.revision) for d in derived if isinstance(d, Episode)}
    return states, violation_ids, episode_revisions


async def assert_exact(bootstrap: str, events: list[Event]) -> None:
    """States on agent-state == fold(events); derived ids on the topics == fold's."""
    states, violation_ids, episode_revisions = expected_derived(events)
    published = await read_states(bootstrap)
    assert set(published) == set(states)
    for agent, state in states.items():
        assert published[agent] == state, agent
    violations, episodes = await derived_on_broker(bootstrap)
    assert {v.violation_id for v in violations} == violation_ids
    assert {(e.episode_id, e.revision) for e in episodes} == episode_revisions
    # a re-published record is the same record, never a different one under the same id
    by_id: dict[tuple[str, int], Episode] = {}
    for e in episodes:
        assert by_id.setdefault((e.episode_id, e.revision), e) == e


# --- the core on plain data -----------------------------------------------------------------


def _rec(offset: int, value: bytes | None, key: bytes | None = b"a1", p: int = 0) -> InRecord:
    return InRecord(EVENTS, p, offset, key, value, 1_700_000_000_000 + offset)


def test_core_sends_every_kind_of_bad_input_to_the_dlq_and_keeps_going() -> None:
    events = [e for e in workload(agents=1, runs=1) if e.agentid == "planner-1"][:3]
    good = [encode_event(e) for e in events]
    key = b"planner-1"
    huge = good[0][:-1] + b" " * 5000 + b"}"
    unknown = json.loads(good[0])
    unknown["type"] = "agent.think.dream.v1"
    no_agent = json.loads(good[1])
    del no_agent["agentid"]
    records = [
        _rec(0, good[0], key),
        _rec(1, b"\xff not json", key),
        _rec(2, json.dumps(unknown).encode(), key),
        _rec(3, json.dumps(no_agent).encode(), key),
        _rec(4, huge, key),
        _rec(5, good[1], b"someone-else"),
        _rec(6, None, key),
        _rec(7, good[2], key),
    ]
    core = StateCore(codec=EventCodec(max_event_bytes=4096))
    assert core.needs_rebuild(0, 0)
    core.next_offset[0] = 0
    out = BatchOutput()
    assert core.step(records, 0, out) is None
    dead = [decode_dead_letter(r.value) for r in out.dead]
    assert [(d.offset, d.reason) for d in dead] == [
        (1, "not_json"),
        (2, "unknown_type"),
        (3, "missing_agent_id"),
        (4, "too_large"),
        (5, "key_mismatch"),
        (6, "empty"),  # a tombstone
    ]
    assert all(r.topic == DLQ for r in out.dead)
    by_offset: dict[int, DeadLetter] = {d.offset: d for d in dead}
    assert by_offset[1].original == b"\xff not json" and by_offset[1].key == key
    assert by_offset[4].original == huge and by_offset[4].original_size == len(huge)
    assert by_offset[5].key == b"someone-else" and by_offset[5].path == "$.agentid"
    assert all(d.topic == EVENTS and d.partition == 0 for d in dead)
    assert by_offset[2].timestamp_ms == 1_700_000_000_002
    # the valid events on either side were applied
    assert core.states["planner-1"].events_total == 2
    assert core.states["planner-1"] == fold([events[0], events[2]])[0]["planner-1"]
    assert core.stats.rejected == 6 and core.stats.applied == 2
    assert core.next_offset[0] == 8


def test_dead_letter_truncates_huge_originals_but_says_so() -> None:
    core = StateCore(codec=EventCodec(max_event_bytes=1024), max_original_bytes=100)
    core.next_offset[0] = 0
    out = BatchOutput()
    core.step([_rec(0, b"x" * 5000)], 0, out)
    (d,) = [decode_dead_letter(r.value) for r in out.dead]
    assert d.reason == "too_large" and d.original == b"x" * 100
    assert d.original_truncated and d.original_size == 5000 and len(d.original_sha256) == 64


def test_core_skips_redelivered_records_and_asks_for_a_rebuild_after_a_gap() -> None:
    events = workload(agents=1, runs=1)[:6]
    recs = [_rec(i, encode_event(e), e.agentid.encode()) for i, e in enumerate(events)]
    core = StateCore()
    core.next_offset[0] = 0
    out = BatchOutput()
    core.step(recs[:4], 0, out)
    state_after_4 = decode_state(out.records()[-1].value)
    # offsets 2..3 again (redelivery after a lost commit), then 4: nothing applied twice
    out2 = BatchOutput()
    assert core.step(recs[2:5], 0, out2) is None
    assert core.stats.redelivered_skipped == 2
    assert core.states[events[0].agentid].events_total == state_after_4.events_total + 1
    # a gap (someone else processed offset 5) stops the step at that record
    out3 = BatchOutput()
    gap = [_rec(9, recs[5].value, recs[5].key)]
    assert core.step(gap, 0, out3) == 0
    assert core.needs_rebuild(0, 9) and not core.needs_rebuild(0, 5)


async def test_a_failed_publish_is_retried_with_current_states_before_the_commit() -> None:
    """The aiokafka engine's in-flight batch: a failed ack means re-publish, then commit."""
    from streams.processor import KafkaProcessor, _InFlight

    events = workload(agents=1, runs=1)[:6]
    agent = events[0].agentid
    recs = [_rec(i, encode_event(e), agent.encode()) for i, e in enumerate(events)]
    proc = KafkaProcessor("127.0.0.1:1")
    proc.core.next_offset[0] = 0
    first = BatchOutput()
    proc.core.step(recs[:3], 0, first)
    old_state = decode_state(encode_state(first.changed[agent]))

    sent: list[list] = []
    committed: list[dict] = []
    loop = asyncio.get_running_loop()

    class FlakyPublisher:
        async def send(self, records):
            sent.append(list(records))
            fut = loop.create_future()
            if len(sent) == 1:
                fut.set_exception(OSError("broker went away"))
            else:
                fut.set_result(None)
            return [fut]

    class Consumer:
        async def commit(self, offsets):
            committed.append(offsets)

    proc.publisher = FlakyPublisher()  # type: ignore[assignment]
    proc._consumer = Consumer()  # type: ignore[assignment]
    tp = TopicPartition(EVENTS, 0)
    proc._inflight = _InFlight(first, await proc._send(first), {tp: 3})
    proc.core.step(recs[3:], 0, BatchOutput())  # the next batch is reduced meanwhile
    await proc.finish_inflight()

    assert proc.stats.publish_retries == 1 and committed == [{tp: 3}]
    assert [decode_state(r.value) for r in sent[0] if r.topic == STATE] == [old_state]
    retried_states = [decode_state(r.value) for r in sent[1] if r.topic == STATE]
    assert retried_states == [proc.core.states[agent]]  # the current state, not the old one
    assert retried_states[0] != old_state
    assert [r.value for r in sent[1] if r.topic != STATE] == [
        r.value for r in sent[0] if r.topic != STATE
    ]


# --- the faust app, in process --------------------------------------------------------------


ENGINES = pytest.mark.parametrize("engine", ["faust", "aiokafka"])


@pytest.mark.integration
@ENGINES
async def test_processor_folds_a_workload_exactly_and_dead_letters_bad_input(
    kafka, tmp_path: Path, engine: str
) -> None:
    events = workload()
    assert len(events) > 2000
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    bad = [
        (b"planner-1", b"{not json"),
        (b"coder-1", b'{"type": "agent.think.dream.v1", "id": "x"}'),
        (None, encode_event(first[5])),  # no key: per-agent order cannot hold
        (b"tester-1", b"[1, 2, 3]"),
    ]
    await publish(kafka.bootstrap, first)
    await publish_raw(kafka.bootstrap, bad)
    proc = build_app(bootstrap=kafka.bootstrap, data_dir=tmp_path, max_batch=500, engine=engine)
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        await publish(kafka.bootstrap, second)  # while it runs
        await wait_caught_up(kafka.bootstrap, len(events) + len(bad), timeout_s=120)
        assert not task.done()
    finally:
        stop.set()
        await task

    await assert_exact(kafka.bootstrap, events)
    dlq = [(m, decode_dead_letter(m.value)) for m in await read_topic(kafka.bootstrap, DLQ)]
    assert sorted((d.original, d.reason) for _, d in dlq) == sorted(
        [
            (b"{not json", "not_json"),
            (b'{"type": "agent.think.dream.v1", "id": "x"}', "unknown_type"),
            (encode_event(first[5]), "key_mismatch"),
            (b"[1, 2, 3]", "not_an_object"),
        ]
    )
    # each DLQ record points at the exact original record
    originals = {
        (m.partition, m.offset): m.value for m in await read_topic(kafka.bootstrap, EVENTS)
    }
    for m, d in dlq:
        assert d.topic == EVENTS and originals[(d.partition, d.offset)] == d.original
        assert m.key == d.key and d.rejected_by == DEFAULT_GROUP
    s = proc.stats
    assert s.rejected == len(bad) and s.applied == len(events) and s.duplicates == 0
    assert s.rebuilds >= 1 and s.rebuilt_records == 0  # fresh group: nothing to rebuild
    assert await read_state(kafka.bootstrap, "coder-1") == fold(events)[0]["coder-1"]
    assert await read_state(kafka.bootstrap, "nobody") is None


@pytest.mark.integration
@ENGINES
async def test_duplicated_events_on_the_log_do_not_change_state(
    kafka, tmp_path: Path, engine: str
) -> None:
    events = workload(agents=4, runs=12, seed=5)
    # a producer retry without idempotence: a burst of records is written twice
    await publish(kafka.bootstrap, [*events[:300], *events[200:300], *events[300:]])
    proc = build_app(bootstrap=kafka.bootstrap, data_dir=tmp_path, engine=engine)
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        await wait_caught_up(kafka.bootstrap, len(events) + 100, timeout_s=120)
    finally:
        stop.set()
        await task
    assert proc.stats.duplicates == 100
    await assert_exact(kafka.bootstrap, events)


# --- the worker as a process: kill -9, restart, rebalance -----------------------------------


class Worker:
    """``agentstream worker`` as a subprocess against the fixture broker."""

    def __init__(
        self, bootstrap: str, data_dir: Path, name: str, *args: str, engine: str = "faust"
    ) -> None:
        self.log_path = data_dir / f"{name}.log"
        env = {
            **os.environ,
            "AGENTSTREAM_KAFKA_URL": f"kafka://{bootstrap}",
            "AGENTSTREAM_DATA_DIR": str(data_dir / name),
            "AGENTSTREAM_CONFIG": str(data_dir / "none.toml"),
        }
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "agentstream.cli", "worker"),
                *("--batch-wait", "0.05", "--engine", engine, *args),
            ],
            env=env,
            cwd=REPO,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


async def committed_records(bootstrap: str) -> tuple[int, int]:
    progress = await processor_progress(bootstrap)
    return sum(progress.committed.values()), sum(progress.highwater.values())


async def wait_committed_beyond(
    bootstrap: str, worker: Worker, done: int, timeout_s: float
) -> tuple[int, int]:
    """Until the group committed more than ``done`` records; returns (committed, on log)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, worker.log()
        committed, total = await committed_records(bootstrap)
        if committed > done:
            return committed, total
        await asyncio.sleep(0.02)
    raise AssertionError(f"no commit beyond {done} within {timeout_s}s:\n{worker.log()}")


async def paced_publish(bootstrap: str, events: list[Event], chunk: int = 50) -> None:
    """Publish in small acknowledged chunks, so a worker sees a stream, not one backlog."""
    async with EventProducer(bootstrap) as producer:
        for i in range(0, len(events), chunk):
            for e in events[i : i + chunk]:
                await producer.send(e)
            await producer.flush()


@pytest.mark.integration
@ENGINES
async def test_kill_9_mid_stream_and_restart_ends_exactly_right(
    kafka, tmp_path: Path, workers: list[Worker], engine: str
) -> None:
    events = workload(agents=8, runs=100, seed=21)
    head = len(events) // 10
    await publish(kafka.bootstrap, events[:head])
    w1 = Worker(kafka.bootstrap, tmp_path, "w1", "--max-batch", "50", engine=engine)
    workers.append(w1)
    first, _ = await wait_committed_beyond(kafka.bootstrap, w1, 0, timeout_s=90)
    publishing = asyncio.create_task(paced_publish(kafka.bootstrap, events[head:]))
    # kill it the moment it has committed more while the stream is still arriving
    committed, on_log = await wait_committed_beyond(kafka.bootstrap, w1, first, timeout_s=60)
    w1.kill9()
    assert not publishing.done() or committed < on_log  # it died mid-stream
    await publishing
    assert committed < len(events)

    w2 = Worker(kafka.bootstrap, tmp_path, "w2", engine=engine)
    workers.append(w2)
    await wait_caught_up(kafka.bootstrap, len(events), timeout_s=150)
    assert w2.stop() == 0, w2.log()
    await assert_exact(kafka.bootstrap, events)
    assert "rebuilt partitions" in w2.log()
    if engine == "faust":
        assert "faust table vs rebuilt state" in w2.log()


async def group_members(bootstrap: str, group: str = DEFAULT_GROUP) -> tuple[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    (described,) = response.groups
    return described[2], len(described[5])  # state, members


@pytest.mark.integration
@ENGINES
async def test_two_workers_in_one_group_rebalance_and_end_exactly_right(
    kafka, tmp_path: Path, workers: list[Worker], engine: str
) -> None:
    events = workload(agents=8, runs=80, seed=33)
    third = len(events) // 3
    await publish(kafka.bootstrap, events[:third])
    a = Worker(kafka.bootstrap, tmp_path, "a", "--max-batch", "50", engine=engine)
    workers.append(a)
    await wait_committed_beyond(kafka.bootstrap, a, 0, timeout_s=90)
    b = Worker(kafka.bootstrap, tmp_path, "b", "--max-batch", "50", engine=engine)
    workers.append(b)
    # the rebalance happens while this part streams in and a is working on it
    await paced_publish(kafka.bootstrap, events[third : 2 * third])
    deadline = time.monotonic() + 90
    while await group_members(kafka.bootstrap) != ("Stable", 2):
        assert time.monotonic() < deadline, b.log()
        assert b.proc.poll() is None and a.proc.poll() is None, b.log() + a.log()
        await asyncio.sleep(0.2)
    await paced_publish(kafka.bootstrap, events[2 * third :])
    await wait_caught_up(kafka.bootstrap, len(events), timeout_s=150)
    assert "rebuilt partitions" in b.log()  # b owned partitions and worked on them
    assert b.stop() == 0, b.log()
    assert a.stop() == 0, a.log()
    await assert_exact(kafka.bootstrap, events)


# --- the CLI --------------------------------------------------------------------------------


@pytest.mark.integration
async def test_state_command_prints_the_published_state(kafka, tmp_path: Path) -> None:
    events = workload(agents=4, runs=6, seed=2)
    await publish(kafka.bootstrap, events)
    proc = build_app(bootstrap=kafka.bootstrap, data_dir=tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        await wait_caught_up(kafka.bootstrap, len(events), timeout_s=120)
    finally:
        stop.set()
        await task
    expected = fold(events)[0]["coder-1"]
    # a record on agent-state that is not an AgentState is skipped (with a warning)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(STATE, b"not a state", key=b"coder-1")
    finally:
        await producer.stop()
    assert await read_state(kafka.bootstrap, "coder-1") == expected
    env = {
        **os.environ,
        "AGENTSTREAM_KAFKA_URL": f"kafka://{kafka.bootstrap}",
        "AGENTSTREAM_DATA_DIR": str(tmp_path),
        "COLUMNS": "200",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agentstream.cli", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    as_json = cli("state", "coder-1", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert decode_state(as_json.stdout.encode()) == expected
    table = cli("state", "coder-1")
    assert table.returncode == 0, table.stderr
    assert "agent coder-1" in table.stdout and expected.status.value in table.stdout
    assert f"{expected.events_total}" in table.stdout
    missing = cli("state", "nobody")
    assert missing.returncode == 1
    assert "no state for agent 'nobody'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
