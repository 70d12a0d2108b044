"""No record can stop a stage: one admission rule everywhere, processing errors dead-lettered,
infrastructure errors retried (docs/processing.md, "No record can stop a stage").

Expected outcomes are computed independently: states by folding the admitted events with
:func:`streams.reducer.reduce` (skipping the one the test makes raise), graph and archive
contents from the produced ids.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pyarrow.dataset as ds
import pytest
import redis.exceptions
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from projections.analytics.projection import AnalyticsProjection
from projections.graph.falkordb_store import FalkorDBStore
from projections.graph.projection import GraphProjection
from projections.graph.store import GraphUnavailable
from projections.runner import ProjectionRunner, Record, RunnerConfig, wait_until
from schemas.admission import admit, is_infrastructure_error, processing_error
from schemas.codec import EventCodec, encode_event
from schemas.deadletter import DeadLetter, decode_dead_letter
from schemas.envelope import Event
from schemas.errors import InvalidEvent, RejectReason
from schemas.ids import new_event_id
from schemas.topics import DLQ, EVENTS
from streams import archive
from streams.archive import Archiver, SegmentWriter
from streams.processor import DEFAULT_GROUP, BatchOutput, InRecord, StateCore, build_app
from streams.reducer import advance, reduce
from streams.simulator import SimulationConfig, generate
from streams.state_reader import fetch_high_watermarks, read_states

CODEC = EventCodec()
FAST = RunnerConfig(max_batch=200, max_wait_ms=50, session_timeout_ms=6000, retry_max_s=1.0)


def workload(agents: int = 4, runs: int = 6, seed: int = 5) -> list[Event]:
    return list(generate(SimulationConfig(agents=agents, runs=runs, seed=seed)))


def clean_fold(events: list[Event], skip: set[str] = frozenset()) -> dict[str, Any]:
    """Per-agent states of ``events`` minus ``skip``, with the pure ``reduce`` (no shortcut)."""
    states: dict[str, Any] = {}
    for e in events:
        if e.id in skip:
            continue
        states[e.agentid], _ = reduce(states.get(e.agentid), e)
    return states


class PoisonStep:
    """Wraps the reducer step: for one event id it half-applies the event, then raises.

    Half-applying (the real step runs first) is the hard case: the state was mutated in
    place before the exception, and the worker must undo that.
    """

    def __init__(self, poison_id: str) -> None:
        self.poison_id = poison_id
        self.raised = 0

    def __call__(self, state: Any, event: Event, config: Any, out: list[Any]) -> bool:
        changed = advance(state, event, config, out)
        if event.id == self.poison_id:
            self.raised += 1
            raise RuntimeError("reducer bug triggered by this event")
        return changed


async def produce(bootstrap: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(EVENTS, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    hw = await fetch_high_watermarks(bootstrap, topic)
    if not any(hw.values()):
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[Any] = []
    try:
        todo = {TopicPartition(topic, p): end for p, end in hw.items() if end > 0}
        consumer.assign(list(todo))
        deadline = time.monotonic() + 60
        while todo and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(*todo, timeout_ms=200)).values():
                out.extend(msgs)
            for tp in [tp for tp, end in todo.items() if await consumer.position(tp) >= end]:
                del todo[tp]
        assert not todo, f"could not read {topic} to its end"
    finally:
        await consumer.stop()
    return out


async def dead_letters(bootstrap: str) -> list[DeadLetter]:
    return [decode_dead_letter(m.value) for m in await read_topic(bootstrap, DLQ)]


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(EVENTS, p) for p in range(6)]
        got = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp.partition: meta.offset for tp, meta in got.items() if meta.offset >= 0}
    finally:
        await admin.close()


def graph_event_ids(store: FalkorDBStore) -> set[str]:
    """Events the graph holds as events (a cause that never arrived is a bare node)."""
    return {row[0] for row in store.read("MATCH (e:Event) WHERE e.type IS NOT NULL RETURN e.id")}


async def run_until(runner: ProjectionRunner, predicate: Any, timeout_s: float = 90) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        assert await wait_until(predicate, timeout_s=timeout_s), runner.stats
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


# --- the admission rule (pure) ----------------------------------------------------------------


def test_admit_checks_the_codec_and_the_key_and_never_raises() -> None:
    e = workload(agents=1, runs=1)[0]
    raw = encode_event(e)
    assert admit(e.agentid.encode(), raw, CODEC.decode) == e
    for key in (None, b"someone-else", b""):
        got = admit(key, raw, CODEC.decode)
        assert isinstance(got, InvalidEvent) and got.reason == RejectReason.KEY_MISMATCH, key
    tomb = admit(e.agentid.encode(), None, CODEC.decode)
    assert isinstance(tomb, InvalidEvent) and tomb.reason == RejectReason.EMPTY
    bad = admit(b"a", b"{not json", CODEC.decode)
    assert isinstance(bad, InvalidEvent)

    def broken_codec(_: bytes) -> Event:
        raise RecursionError("maximum recursion depth exceeded")

    crashed = admit(b"a", raw, broken_codec)
    assert isinstance(crashed, InvalidEvent) and "RecursionError" in crashed.detail


def test_processing_error_names_the_stage_and_the_exception_type() -> None:
    err = processing_error("projection:graph", OverflowError("int too big to convert"))
    assert err.reason == RejectReason.PROCESSING_ERROR
    assert err.detail.startswith("projection:graph raised OverflowError")


def test_infrastructure_errors_are_told_apart_from_data_errors() -> None:
    infra: list[BaseException] = [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        KafkaConnectionError("broker gone"),
        KafkaError("any broker error"),
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.BusyLoadingError("LOADING"),
    ]
    for err in infra:
        assert is_infrastructure_error(err), err
    try:  # the graph store wraps the client's error: the cause tells
        try:
            raise redis.exceptions.ConnectionError("gone")
        except redis.exceptions.ConnectionError as inner:
            raise GraphUnavailable("graph: cannot reach FalkorDB", "start it") from inner
    except GraphUnavailable as wrapped:
        assert is_infrastructure_error(wrapped)
    for data in (ValueError("x"), OverflowError("x"), KeyError("x"), RecursionError()):
        assert not is_infrastructure_error(data), data
    assert not is_infrastructure_error(redis.exceptions.ResponseError("Type mismatch"))


# --- the processor's core: a reducer failure is dead-lettered, the state stays exact -------


def test_core_undoes_a_half_applied_step_and_dead_letters_it() -> None:
    events = workload()
    poison = events[len(events) // 2]
    core = StateCore()
    core.advance = PoisonStep(poison.id)
    out = BatchOutput()
    for i, e in enumerate(events):
        if i % 50 == 0:
            core.forget_journal()  # batch boundaries, as the worker has them
        core.apply(InRecord(EVENTS, 0, i, e.agentid.encode(), encode_event(e)), out)
    assert core.stats.processing_errors == 1
    [dead] = [decode_dead_letter(r.value) for r in out.dead]
    assert dead.reason == "processing_error"
    assert (dead.stage, dead.error_type) == ("processor", "RuntimeError")
    assert dead.offset == events.index(poison) and dead.original == encode_event(poison)
    expected = clean_fold(events, skip={poison.id})
    assert core.states == expected  # not the half-applied state

    # a rebuild from the log meets the same record and skips it silently: same states
    again = StateCore()
    again.advance = PoisonStep(poison.id)
    scratch: list[Any] = []
    for i, e in enumerate(events):
        again.replay(InRecord(EVENTS, 0, i, e.agentid.encode(), encode_event(e)), scratch)
    assert again.states == expected


def test_core_drops_the_state_of_an_agent_whose_first_event_raises() -> None:
    events = workload(agents=1, runs=1)
    core = StateCore()
    core.advance = PoisonStep(events[0].id)
    out = BatchOutput()
    core.apply(InRecord(EVENTS, 0, 0, events[0].agentid.encode(), encode_event(events[0])), out)
    assert core.states == {} and out.changed == {} and len(out.dead) == 1


# --- the archiver: a row it cannot build goes to dlq/ with its bytes ---------------------------


def test_archiver_sets_aside_an_event_whose_row_cannot_be_built(tmp_path: Path, monkeypatch):
    events = workload(agents=1, runs=2)
    poison = events[3]
    real = archive.events_to_table

    def fragile(evs: list[Event], parts: list[int], offsets: list[int]) -> Any:
        if any(e.id == poison.id for e in evs):
            raise OverflowError("value too large for the column")
        return real(evs, parts, offsets)

    monkeypatch.setattr(archive, "events_to_table", fragile)
    writer = SegmentWriter(tmp_path, 1, 0, row_group_rows=5)
    for i, e in enumerate(events):
        rec = SimpleNamespace(
            offset=i,
            value=encode_event(e),
            key=e.agentid.encode(),
            timestamp=1_700_000_000_000,
        )
        writer.add(rec, e)  # type: ignore[arg-type]
    writer.close()
    assert writer.processing_errors == 1
    kept = ds.dataset(tmp_path / "events", format="parquet").to_table()
    assert sorted(kept.column("event_id").to_pylist()) == sorted(
        e.id for e in events if e.id != poison.id
    )
    dlq = ds.dataset(tmp_path / "dlq", format="parquet").to_table().to_pylist()
    assert [(r["log_offset"], r["reason"], r["raw"]) for r in dlq] == [
        (3, "processing_error", encode_event(poison))
    ]
    assert dlq[0]["detail"].startswith("archiver raised OverflowError")


# --- through the real broker -------------------------------------------------------------------


async def test_one_admission_rule_keeps_rejects_out_of_every_read_model_and_the_archive(
    kafka, falkordb, tmp_path: Path
) -> None:
    events = workload()
    mismatch = msgspec.structs.replace(events[5], id=new_event_id())
    null_key = msgspec.structs.replace(events[9], id=new_event_id())
    records: list[tuple[bytes | None, bytes]] = [
        (e.agentid.encode(), encode_event(e)) for e in events
    ]
    records.insert(20, (b"not-the-agent", encode_event(mismatch)))
    records.insert(40, (None, encode_event(null_key)))
    records.insert(60, (b"x", b"{not json"))
    await produce(kafka.bootstrap, records)
    rejected_ids = {mismatch.id, null_key.id}

    store = FalkorDBStore(falkordb.host, falkordb.port, "admission")
    graph = ProjectionRunner(GraphProjection(store), kafka.bootstrap, "g-adm", FAST)
    analytics_p = AnalyticsProjection(f"chdb://{tmp_path / 'ch'}")
    analytics = ProjectionRunner(analytics_p, kafka.bootstrap, "a-adm", FAST)
    archiver = Archiver(kafka.bootstrap, tmp_path / "archive", max_segment_age_s=0.5)
    proc = build_app(bootstrap=kafka.bootstrap, engine="aiokafka", max_batch=200)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(graph.run(stop)),
        asyncio.create_task(analytics.run(stop)),
        asyncio.create_task(archiver.run(stop)),
        asyncio.create_task(proc.run(stop)),
    ]
    try:
        total = len(records)
        assert await wait_until(
            lambda: (
                graph.caught_up()
                and analytics.caught_up()
                and sum(archiver.stats.positions.values()) == total
            ),
            timeout_s=120,
        ), (graph.stats, analytics.stats, archiver.stats)
        assert await wait_until(lambda: proc.stats.records >= total, timeout_s=60)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    try:
        assert graph.stats.rejected == analytics.stats.rejected == 3
        assert not rejected_ids & graph_event_ids(store)
        assert graph_event_ids(store) >= {e.id for e in events}
        in_ch = {
            str(r[0])
            for r in analytics_p.store.rows(f"SELECT event_id FROM {analytics_p.database}.events")
        }
        assert in_ch == {e.id for e in events}
    finally:
        analytics_p.close()
    archived = ds.dataset(tmp_path / "archive" / "events", format="parquet").to_table()
    assert set(archived.column("event_id").to_pylist()) == {e.id for e in events}
    dlq = ds.dataset(tmp_path / "archive" / "dlq", format="parquet").to_table().to_pylist()
    assert sorted(r["reason"] for r in dlq) == [
        "key_mismatch",
        "key_mismatch",
        "not_json",
    ]
    on_topic = await dead_letters(kafka.bootstrap)
    assert sorted(d.reason for d in on_topic) == [
        "key_mismatch",
        "key_mismatch",
        "not_json",
    ]


@pytest.mark.parametrize("engine", ["aiokafka", "faust"])
async def test_worker_dead_letters_an_event_the_reducer_raises_on(
    kafka, tmp_path: Path, engine: str
) -> None:
    events = workload()
    poison = events[len(events) // 3]
    await produce(kafka.bootstrap, [(e.agentid.encode(), encode_event(e)) for e in events])
    proc = build_app(bootstrap=kafka.bootstrap, data_dir=tmp_path, engine=engine, max_batch=100)  # type: ignore[arg-type]
    step = PoisonStep(poison.id)
    proc.core.advance = step
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:

        async def done() -> bool:
            got = await committed(kafka.bootstrap, DEFAULT_GROUP)
            hw = await fetch_high_watermarks(kafka.bootstrap, EVENTS)
            return all(got.get(p, 0) >= end for p, end in hw.items())

        deadline = time.monotonic() + 120
        while not await done():
            assert not task.done(), "the worker stopped"
            assert time.monotonic() < deadline, proc.stats
            await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert step.raised == 1 and proc.stats.processing_errors == 1
    [dead] = await dead_letters(kafka.bootstrap)
    assert (dead.reason, dead.stage, dead.error_type) == (
        "processing_error",
        "processor",
        "RuntimeError",
    )
    assert dead.original == encode_event(poison)
    published = await read_states(kafka.bootstrap)
    assert published == clean_fold(events, skip={poison.id})


class PoisonGraph(GraphProjection):
    """Test-only: the graph projection raising (a data error) whenever one event is applied."""

    def __init__(self, store: FalkorDBStore, poison_id: str) -> None:
        super().__init__(store)
        self.poison_id = poison_id

    def apply(self, records: list[Record]) -> None:
        if any(getattr(r.value, "id", None) == self.poison_id for r in records):
            raise ValueError("this event breaks the graph projection")
        super().apply(records)


async def test_a_projection_raising_on_one_record_dead_letters_it_and_moves_on(
    kafka, falkordb
) -> None:
    events = workload()
    poison = events[len(events) // 2]
    await produce(kafka.bootstrap, [(e.agentid.encode(), encode_event(e)) for e in events])
    store = FalkorDBStore(falkordb.host, falkordb.port, "poison")
    runner = ProjectionRunner(PoisonGraph(store, poison.id), kafka.bootstrap, "g-poison", FAST)
    await run_until(runner, runner.caught_up)
    assert runner.stats.dead_lettered == 1 and runner.stats.bisections >= 1
    assert runner.stats.retries == 0  # a data error is not retried as if the store were down
    assert graph_event_ids(store) == {e.id for e in events} - {poison.id}
    [dead] = await dead_letters(kafka.bootstrap)
    assert dead.reason == "processing_error"
    assert (dead.stage, dead.error_type) == ("projection:graph", "ValueError")
    assert dead.original == encode_event(poison) and dead.key == poison.agentid.encode()
    hw = await fetch_high_watermarks(kafka.bootstrap, EVENTS)
    assert await committed(kafka.bootstrap, "g-poison") == {p: n for p, n in hw.items() if n}


async def test_a_graph_outage_mid_stream_is_retried_never_dead_lettered(kafka, falkordb) -> None:
    events = workload(agents=4, runs=10)
    half = len(events) // 2
    store = FalkorDBStore(falkordb.host, falkordb.port, "outage", socket_timeout=5.0)
    runner = ProjectionRunner(GraphProjection(store), kafka.bootstrap, "g-outage", FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await produce(
            kafka.bootstrap,
            [(e.agentid.encode(), encode_event(e)) for e in events[:half]],
        )
        assert await wait_until(runner.caught_up, timeout_s=60), runner.stats
        falkordb.process.stop()  # SIGTERM: FalkorDB saves and exits
        await produce(
            kafka.bootstrap,
            [(e.agentid.encode(), encode_event(e)) for e in events[half:]],
        )
        assert await wait_until(lambda: runner.stats.retries >= 2, timeout_s=60), runner.stats
        assert runner.stats.last_error and not runner.caught_up()
        falkordb.process.start()
        falkordb.process.wait_for_port(falkordb.host, falkordb.port, deadline_s=30)
        assert await wait_until(runner.caught_up, timeout_s=120), runner.stats
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert runner.stats.dead_lettered == 0
    assert await dead_letters(kafka.bootstrap) == []
    assert graph_event_ids(store) == {e.id for e in events}
