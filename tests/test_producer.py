"""The producer SDK against a real Tansu broker, and the emitter's envelope/causes logic."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from agentstream.processes import free_port
from agentstream.settings import load_settings
from schemas import payloads as p
from schemas.codec import EventCodec, encode_event
from schemas.envelope import ActionCompletedEvent, ActionStartedEvent
from schemas.errors import InvalidEvent, RejectReason
from schemas.ids import is_uuid7
from schemas.topics import EVENTS
from streams.emitter import AgentEmitter, EventFactory
from streams.producer import (
    CONTENT_TYPE,
    EventProducer,
    ProducerError,
    SyncEventProducer,
    event_record,
    partition_for_key,
)
from streams.simulator import SimulationConfig, generate

pytestmark = pytest.mark.integration


async def consume_all(bootstrap: str, expected: int, deadline_s: float = 60.0) -> list:
    """Every record on agent-events, polling until ``expected`` arrived (or the deadline)."""
    consumer = AIOKafkaConsumer(
        EVENTS,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records = []
    try:
        end = time.monotonic() + deadline_s
        while len(records) < expected and time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                records.extend(msgs)
        # anything extra (duplicates) would show up in one more poll
        batch = await consumer.getmany(timeout_ms=300)
        for msgs in batch.values():
            records.extend(msgs)
    finally:
        await consumer.stop()
    return records


def fixed_clock(start: datetime, step_ms: int = 7):
    state = {"t": start}

    def now() -> datetime:
        state["t"] += timedelta(milliseconds=step_ms)
        return state["t"]

    return now


# --- round trips through the broker -------------------------------------------------------


async def test_round_trip_exact_counts_and_per_agent_order(kafka):
    events = list(generate(SimulationConfig(agents=12, runs=None, seed=7, max_events=4000)))
    sent_by_agent: dict[str, list[str]] = defaultdict(list)
    for e in events:
        sent_by_agent[e.agentid].append(e.id)

    async with EventProducer(kafka.bootstrap, linger_ms=2, max_batch_bytes=64 * 1024) as prod:
        for e in events:
            await prod.send(e)
        await prod.flush()
        assert prod.stats.acknowledged == len(events)
        assert prod.stats.failed == 0

    records = await consume_all(kafka.bootstrap, len(events))
    assert len(records) == len(events)  # exact: no loss, no duplicates
    codec = EventCodec()
    by_id = {e.id: e for e in events}
    got_by_agent: dict[str, list[str]] = defaultdict(list)
    partitions_of_agent: dict[str, set[int]] = defaultdict(set)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        decoded = codec.decode(r.value)
        assert decoded == by_id[decoded.id]
        assert r.value == encode_event(decoded)
        assert r.key == decoded.agentid.encode()
        headers = dict(r.headers)
        assert headers["ce_type"] == decoded.type.encode()
        assert headers["ce_id"] == decoded.id.encode()
        assert headers["content-type"] == CONTENT_TYPE
        assert r.timestamp == int(decoded.time.timestamp() * 1000)
        got_by_agent[decoded.agentid].append(decoded.id)
        partitions_of_agent[decoded.agentid].add(r.partition)
    assert got_by_agent == sent_by_agent  # same events, same order, per agent
    # same partition as aiokafka's default partitioner would pick on the plain path
    parts = list(range(6))
    for agent, ps in partitions_of_agent.items():
        assert ps == {DefaultPartitioner()(agent.encode(), parts, parts)}
        assert ps == {partition_for_key(agent.encode(), parts)}


async def test_send_raw_bytes_and_headers_arrive_unchanged(kafka):
    async with EventProducer(kafka.bootstrap) as prod:
        await prod.send_raw("agent-x", b"not json at all", [("why", b"test")])
        await prod.send_raw(None, b'{"half":', None)
        await prod.flush()
    records = await consume_all(kafka.bootstrap, 2)
    values = sorted(r.value for r in records)
    assert values == sorted([b'{"half":', b"not json at all"])
    keyed = next(r for r in records if r.key is not None)
    assert keyed.key == b"agent-x"
    assert list(keyed.headers) == [("why", b"test")]


async def test_too_large_event_is_refused_at_send(kafka):
    f = EventFactory("big-agent", clock=fixed_clock(datetime(2026, 1, 1, tzinfo=UTC)))
    event = f.thought("x" * 5000, model="m")
    async with EventProducer(kafka.bootstrap, max_event_bytes=2048) as prod:
        with pytest.raises(InvalidEvent) as err:
            await prod.send(event)
        assert err.value.reason == RejectReason.TOO_LARGE
        assert prod.stats.accepted == 0


async def test_start_is_idempotent_and_a_closed_producer_cannot_restart(kafka):
    prod = EventProducer(kafka.bootstrap)
    await prod.start()
    client = prod._producer
    await prod.start()
    assert prod._producer is client
    await prod.close()
    await prod.close()  # closing twice is harmless
    with pytest.raises(ProducerError, match="closed"):
        await prod.start()


async def test_flush_waits_only_for_events_accepted_before_it(kafka):
    events = list(generate(SimulationConfig(agents=4, runs=None, max_events=600)))
    async with EventProducer(kafka.bootstrap, linger_ms=20) as prod:
        for e in events[:300]:
            await prod.send(e)
        await prod.flush()
        assert prod.stats.acknowledged >= 300
        for e in events[300:]:
            await prod.send(e)
    # close() delivered the rest
    assert prod.stats.acknowledged == 600
    assert len(await consume_all(kafka.bootstrap, 600)) == 600


# --- failure: unreachable broker, broker dying, backpressure ------------------------------


async def test_unreachable_broker_raises_producer_error_naming_it():
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens here
    prod = EventProducer(bootstrap, delivery_timeout_ms=1500)
    with pytest.raises(ProducerError) as err:
        await asyncio.wait_for(prod.start(), timeout=20)
    assert bootstrap in str(err.value)
    assert err.value.bootstrap == bootstrap
    f = EventFactory("a")
    with pytest.raises(ProducerError, match="not started"):
        await prod.send(f.thought("t", model="m"))


async def test_broker_death_gives_producer_error_and_every_event_is_accounted_for(kafka):
    events = list(generate(SimulationConfig(agents=8, runs=None, max_events=20_000)))
    errors: list[ProducerError] = []
    prod = EventProducer(kafka.bootstrap, delivery_timeout_ms=2000, buffer_events=200)
    await prod.start()
    for e in events[:100]:
        await prod.send(e)
    await prod.flush()
    assert prod.stats.acknowledged == 100

    kafka.process.stop()  # the broker goes away

    refused = 0
    end = time.monotonic() + 60
    for e in events[100:]:
        try:
            await prod.send(e)
        except ProducerError as err:
            errors.append(err)
            refused += 1
            if len(errors) >= 2:
                break
        assert time.monotonic() < end, "send never reported the dead broker"
    assert errors, "no ProducerError although the broker is down"
    assert kafka.bootstrap in str(errors[0])
    try:
        await asyncio.wait_for(prod.close(), timeout=30)
    except ProducerError as err:
        errors.append(err)
    stats = prod.stats
    # every accepted event is acknowledged or reported failed; nothing vanished
    assert stats.accepted == stats.acknowledged + stats.failed
    assert stats.failed > 0
    assert sum(len(e.undelivered) for e in errors) == stats.failed
    undelivered_ids = {dict(r.headers)["ce_id"] for e in errors for r in e.undelivered}
    assert len(undelivered_ids) == stats.failed  # no record reported twice
    assert refused >= 1


async def test_backpressure_bounds_unacknowledged_events(kafka):
    """With a tiny buffer, send() waits: never more than buffer_events in flight."""
    events = list(generate(SimulationConfig(agents=4, runs=None, max_events=2000)))
    high_water = 0
    async with EventProducer(kafka.bootstrap, buffer_events=50, linger_ms=1) as prod:
        for e in events:
            await prod.send(e)
            high_water = max(high_water, prod.stats.in_flight)
        await prod.flush()
        assert prod.stats.acknowledged == len(events)
    assert 0 < high_water <= 50


async def test_buffer_full_with_dead_broker_refuses_instead_of_growing(kafka):
    """Also: failed (gzip-compressed) batches hand back the exact records that were sent."""
    prod = EventProducer(
        kafka.bootstrap, buffer_events=10, delivery_timeout_ms=1500, compression="gzip"
    )
    await prod.start()
    kafka.process.stop()
    f = EventFactory("agent-bp")
    sent = {}
    errors = []
    for i in range(50):
        event = f.thought(f"t{i}", model="m")
        try:
            await asyncio.wait_for(prod.send(event), timeout=20)
        except ProducerError as err:
            errors.append(err)
            break
        sent[event.id] = event
    assert errors
    assert prod.stats.accepted <= 10 + len(errors[0].undelivered)
    with pytest.raises(ProducerError) as closing:
        await asyncio.wait_for(prod.close(), timeout=30)
    errors.append(closing.value)
    assert prod.stats.accepted == prod.stats.acknowledged + prod.stats.failed == len(sent)
    handed_back = [r for e in errors for r in e.undelivered]
    assert len(handed_back) == len(sent)
    codec = EventCodec()
    for r in handed_back:
        event = codec.decode(r.value)
        assert event == sent[event.id]
        assert r.key == b"agent-bp"
        assert dict(r.headers)["ce_id"] == event.id.encode()


# --- sync facade and emitter ----------------------------------------------------------------


def test_sync_facade_round_trip_with_emitter(kafka):
    with SyncEventProducer(kafka.bootstrap, linger_ms=1) as prod:
        em = AgentEmitter(prod, agent_id="coder-1", run_id="run-1", task_id="task-1")
        started = em.run_started("fix the bug")
        t = em.thought("let me look at the failing test", model="gpt-4o", input_tokens=120)
        d = em.decision("run the tests", alternatives=["read the code"], confidence=0.8)
        a = em.action_started("run_tests", {"path": "tests/"}, expected="all pass")
        c = em.action_completed(a, status="error", actual="1 failed", error_type="AssertionError")
        lesson = em.lesson(
            situation="test fails", action="ran tests", outcome="1 failed", insight="read it"
        )
        fb = em.feedback(0.2, source="test", comment="red")
        m = em.message("planner-1", "tests are red")
        fin = em.run_finished("failed", "tests still red")
        prod.flush()
        assert prod.stats.acknowledged == 9
    emitted = [started, t, d, a, c, lesson, fb, m, fin]
    records = asyncio.run(consume_all(kafka.bootstrap, len(emitted)))
    codec = EventCodec()
    got = [codec.decode(r.value) for r in sorted(records, key=lambda r: r.offset)]
    assert got == emitted  # one agent -> one partition -> emission order


async def test_async_emitter_sends_and_returns_the_event(kafka):
    async with EventProducer(kafka.bootstrap) as prod:
        em = AgentEmitter(prod, agent_id="planner-1", run_id="r")
        t = await em.thought("plan it", model="o3")
        plan = await em.plan(
            "ship it",
            [
                {"id": "a", "description": "do a"},
                {"id": "b", "description": "b", "depends_on": ["a"]},
            ],
        )
        assert plan.causes == (t.id,)
        assert plan.data.steps[1].depends_on == ["a"]
    records = await consume_all(kafka.bootstrap, 2)
    assert sorted(EventCodec().decode(r.value).id for r in records) == sorted([t.id, plan.id])


def test_emitter_fills_envelope_and_default_causes():
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    f = EventFactory(
        "coder-1",
        run_id="run-9",
        task_id="task-2",
        tenant="acme",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        clock=fixed_clock(start, step_ms=100),
    )
    t = f.thought("why", model="claude-sonnet-4", input_tokens=10, output_tokens=5)
    assert is_uuid7(t.id)
    assert t.causes == ()
    assert (t.agentid, t.runid, t.taskid, t.tenant) == ("coder-1", "run-9", "task-2", "acme")
    assert t.source == "/agents/coder-1"
    assert t.traceparent.startswith("00-0af765")
    assert t.data.input_tokens == 10
    d = f.decision("use git", alternatives=["shell"], confidence=0.7)
    assert d.causes == (t.id,)
    a = f.action_started("git", {"cmd": "status"}, expected="clean")
    assert a.causes == (d.id,)
    assert isinstance(a, ActionStartedEvent)
    assert a.data.call_id.startswith("call-")
    other = f.message("tester-1", "meanwhile")
    c = f.action_completed(a, status="ok", actual="clean")
    assert isinstance(c, ActionCompletedEvent)
    assert c.causes == (a.id,)  # the start it completes, not the previous event (other)
    assert c.data.call_id == a.data.call_id and c.data.tool == "git"
    assert c.data.duration_ms == pytest.approx(200.0)  # two clock steps after the start
    assert other.causes == (a.id,)
    # explicit causes override, () means none, events or ids both work
    lesson = f.lesson(situation="s", action="a", outcome="o", insight="i", causes=[t, d.id])
    assert lesson.causes == (t.id, d.id)
    fb = f.feedback(1.0, causes=())
    assert fb.causes == ()
    # ids follow time: later events, larger ids
    assert [e.id for e in (t, d, a, other, c, lesson, fb)] == sorted(
        e.id for e in (t, d, a, other, c, lesson, fb)
    )
    # run_started can switch the run id
    rs = f.run_started("next", run_id="run-10")
    assert rs.runid == "run-10" and f.thought("x", model="m").runid == "run-10"


def test_emitter_completion_without_start_needs_call_id_and_tool():
    f = EventFactory("a")
    with pytest.raises(ValueError, match="call_id and tool"):
        f.action_completed(None, status="ok")
    c = f.action_completed(None, call_id="c-1", tool="git", status="error", causes=())
    assert c.causes == () and c.data.call_id == "c-1"
    with pytest.raises(TypeError):
        f.action_completed(f.thought("not a start", model="m"))


def test_event_record_matches_the_wire_contract():
    f = EventFactory(
        "agent-ü", clock=fixed_clock(datetime(2026, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC))
    )
    e = f.thought("t", model="m")
    r = event_record(e)
    assert r.key == "agent-ü".encode()
    assert r.value == encode_event(e)
    assert dict(r.headers) == {
        "ce_type": b"agent.think.thought.v1",
        "ce_id": e.id.encode(),
        "content-type": CONTENT_TYPE,
    }
    # exact milliseconds, no float rounding: 00:00:00.006999 -> ...006
    assert r.timestamp_ms == (e.time - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        milliseconds=1
    )


def test_from_settings_follows_settings():
    s = load_settings(kafka_url="kafka://127.0.0.1:1", producer_acks="1", producer_linger_ms=9)
    prod = EventProducer.from_settings(s, buffer_events=77)
    assert prod.bootstrap == "127.0.0.1:1"
    assert prod.acks == "1" and prod.linger_ms == 9 and prod.buffer_events == 77
    assert prod.enable_idempotence is False  # embedded broker: Tansu rejects InitProducerId v0
    external = load_settings(kafka_url="kafka://k:9092", kafka_embedded=False)
    assert EventProducer.from_settings(external).enable_idempotence is True


def test_the_install_provides_every_codec_including_the_default():
    """aiokafka's lz4/snappy/zstd need cramjam, which the aiokafka extras in pyproject pull in;
    without it the default (lz4) would fall back to uncompressed."""
    from streams.producer import compression_available

    for codec in ("gzip", "lz4", "snappy", "zstd"):
        assert compression_available(codec), codec
    assert EventProducer("127.0.0.1:1", compression="zstd").compression == "zstd"


def test_payload_helpers_cover_every_type():
    f = EventFactory("planner-1")
    built = [
        f.agent_started(role="planner", model="o3"),
        f.run_started("g"),
        f.thought("t", model="m"),
        f.plan("g", [p.PlanStep(id="s1", description="d")]),
        f.decision("x"),
        f.action_started("tool"),
        f.message("coder-1", "hi"),
        f.lesson(situation="s", action="a", outcome="o", insight="i"),
        f.feedback(0.5),
        f.run_finished("succeeded"),
        f.agent_stopped(),
    ]
    built.insert(6, f.action_completed(built[5]))
    from schemas.envelope import EVENT_CLASSES

    assert {type(e) for e in built} == set(EVENT_CLASSES)
    codec = EventCodec()
    for e in built:
        assert codec.decode(encode_event(e)) == e
