"""The workload simulator: determinism, count control, validity, causality, ground truth."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer
from typer.testing import CliRunner

from agentstream.cli import app
from schemas.codec import EventCodec, encode_event
from schemas.ids import uuid7_time_ms
from schemas.topics import EVENTS
from streams.producer import EventProducer
from streams.simulator import (
    SCENARIOS,
    TOOLS,
    SimulationConfig,
    agent_names,
    generate,
    is_mismatch,
    publish,
    scenario_of,
)

MEDIUM = SimulationConfig(agents=8, runs=120, seed=11)


@pytest.fixture(scope="module")
def medium() -> list:
    return list(generate(MEDIUM))


def test_same_config_same_bytes_different_seed_different_bytes():
    cfg = SimulationConfig(agents=6, runs=15, seed=42)
    a = [encode_event(e) for e in generate(cfg)]
    b = [encode_event(e) for e in generate(cfg)]
    assert a == b and len(a) > 500
    c = [encode_event(e) for e in generate(SimulationConfig(agents=6, runs=15, seed=43))]
    assert c != a
    assert not {e for e in a} & {e for e in c}  # not even one identical event


def test_start_time_moves_the_whole_stream():
    later = datetime(2027, 6, 1, tzinfo=UTC)
    events = list(generate(SimulationConfig(runs=2, start=later)))
    assert min(e.time for e in events) == later


def test_max_events_is_exact_and_a_prefix():
    full = [
        encode_event(e) for e in generate(SimulationConfig(agents=5, runs=None, max_events=3000))
    ]
    assert len(full) == 3000
    short = [
        encode_event(e) for e in generate(SimulationConfig(agents=5, runs=None, max_events=1234))
    ]
    assert short == full[:1234]
    assert list(generate(SimulationConfig(max_events=0))) == []
    # bounded runs: max_events caps, never pads
    few = list(generate(SimulationConfig(runs=1, max_events=10_000)))
    assert 0 < len(few) < 10_000


def test_config_validation():
    with pytest.raises(ValueError, match="max_events"):
        SimulationConfig(runs=None)
    with pytest.raises(ValueError):
        SimulationConfig(agents=0)
    with pytest.raises(ValueError, match="timezone"):
        SimulationConfig(start=datetime(2026, 1, 1))


def test_every_event_decodes_and_round_trips(medium):
    codec = EventCodec()
    for e in medium:
        assert codec.decode(encode_event(e)) == e


def test_ids_unique_and_time_ordered(medium):
    ids = [e.id for e in medium]
    assert len(set(ids)) == len(ids)
    for e in medium:  # each id carries its event's own millisecond
        ms = (e.time - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000
        assert uuid7_time_ms(e.id) == pytest.approx(ms, abs=1)
    times = [e.time for e in medium]
    assert times == sorted(times)  # the stream is in time order, so each agent's is too


def test_causes_point_to_earlier_events_of_the_same_run(medium):
    seen_run: dict[str, str | None] = {}
    orphans = 0
    for e in medium:
        for cause in e.causes:
            if cause not in seen_run:
                # the only allowed dangling cause: a completion whose start never happened
                assert e.type == "agent.act.completed.v2"
                assert e.data.call_id.startswith("orphan-")
                orphans += 1
                continue
            assert seen_run[cause] == e.runid, (e.type, e.runid, seen_run[cause])
        seen_run[e.id] = e.runid
    assert orphans > 0


def test_workload_has_the_promised_shape(medium):
    types = Counter(e.type for e in medium)
    for t in (
        "agent.lifecycle.agent_started.v2",
        "agent.lifecycle.run_started.v1",
        "agent.think.thought.v1",
        "agent.think.plan.v1",
        "agent.think.decision.v2",
        "agent.act.started.v1",
        "agent.act.completed.v2",
        "agent.act.message.v1",
        "agent.learn.lesson.v1",
        "agent.learn.feedback.v1",
        "agent.lifecycle.run_finished.v1",
        "agent.lifecycle.agent_stopped.v1",
    ):
        assert types[t] > 0, t
    assert {e.agentid for e in medium} == {a for a, _ in agent_names(8)}
    roles = {e.data.role for e in medium if e.type == "agent.lifecycle.agent_started.v2"}
    assert roles == {"planner", "coder", "tester", "reviewer"}

    starts = {e.data.call_id: e for e in medium if e.type == "agent.act.started.v1"}
    completions = {e.data.call_id: e for e in medium if e.type == "agent.act.completed.v2"}
    errors = [c for c in completions.values() if c.data.status == "error"]
    mismatches = [c for k, c in completions.items() if k in starts and is_mismatch(starts[k], c)]
    assert errors and mismatches
    assert set(starts) - set(completions), "some actions should stay open"
    assert set(completions) - set(starts), "some completions should have no start"
    # retries: a start caused by a failed completion
    error_ids = {c.id for c in errors}
    assert any(error_ids & set(s.causes) for s in starts.values())
    # completions are caused by their start and take a tool-like time
    for k, c in completions.items():
        if k in starts:
            assert c.causes == (starts[k].id,)
            assert c.data.duration_ms == pytest.approx(
                (c.time - starts[k].time).total_seconds() * 1000
            )
    # tool latencies differ by tool: run_tests is slower than read_file
    by_tool = defaultdict(list)
    for c in completions.values():
        by_tool[c.data.tool].append(c.data.duration_ms)
    median = {t: sorted(v)[len(v) // 2] for t, v in by_tool.items()}
    assert median["run_tests"] > 100 * median["read_file"]
    assert set(by_tool) <= set(TOOLS)
    # thoughts: realistic sizes, tokens, cost
    thoughts = [e for e in medium if e.type == "agent.think.thought.v1"]
    sizes = [len(t.data.text.encode()) for t in thoughts]
    assert min(sizes) >= 200 and max(sizes) <= 4096
    assert max(sizes) > 2000  # the range is used, not just the bottom
    assert all(t.data.output_tokens > 0 and t.data.cost_usd > 0 for t in thoughts)
    # plans have dependencies that name existing steps
    for plan in (e for e in medium if e.type == "agent.think.plan.v1"):
        step_ids = {s.id for s in plan.data.steps}
        assert any(s.depends_on for s in plan.data.steps)
        assert all(set(s.depends_on) <= step_ids for s in plan.data.steps)
    # messages go between agents of the workload
    names = {a for a, _ in agent_names(8)}
    assert all(e.data.to_agent in names for e in medium if e.type == "agent.act.message.v1")


def test_scenario_ground_truth(medium):
    act_or_lesson = [
        e
        for e in medium
        if e.type in ("agent.act.started.v1", "agent.act.completed.v2", "agent.learn.lesson.v1")
    ]
    for e in act_or_lesson:
        sc = scenario_of(e)
        assert sc is not None, e
        assert e.subject == f"scenario/{sc.name}"
        if e.type == "agent.learn.lesson.v1":
            assert e.data.situation in sc.situations
            assert e.data.insight == sc.insight
        if e.type == "agent.act.started.v1":
            assert e.data.arguments["situation"] in sc.situations
            assert e.data.tool == sc.tool
    used = {scenario_of(e).name for e in act_or_lesson}
    assert len(used) >= len(SCENARIOS) - 2
    for sc in SCENARIOS.values():
        assert len(sc.situations) >= 3 and len(set(sc.situations)) == len(sc.situations)
    # several paraphrases of one scenario actually appear
    lessons_by_sc = defaultdict(set)
    for e in act_or_lesson:
        if e.type == "agent.learn.lesson.v1":
            lessons_by_sc[e.subject].add(e.data.situation)
    assert max(len(v) for v in lessons_by_sc.values()) >= 2


def test_fewer_agents_than_roles_still_works():
    events = list(generate(SimulationConfig(agents=1, runs=5, seed=3)))
    assert {e.agentid for e in events} == {"planner-1"}
    codec = EventCodec()
    assert all(codec.decode(encode_event(e)) == e for e in events)


@pytest.mark.integration
async def test_publish_sends_everything(kafka):
    events = list(generate(SimulationConfig(agents=4, runs=None, max_events=500)))
    progress: list[int] = []
    async with EventProducer(kafka.bootstrap) as prod:
        result = await publish(
            events, prod, rate=20_000, on_progress=progress.append, progress_every=100
        )
        assert result.events == 500
        assert prod.stats.acknowledged == 500
    assert progress[-1] == 500 and progress[:5] == [100, 200, 300, 400, 500]


async def _count(bootstrap: str, expected: int) -> int:
    consumer = AIOKafkaConsumer(
        EVENTS, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    n = 0
    try:
        for _ in range(40):
            batch = await consumer.getmany(timeout_ms=250)
            n += sum(len(v) for v in batch.values())
            if n >= expected and not batch:
                break
    finally:
        await consumer.stop()
    return n


@pytest.mark.integration
def test_cli_simulate_publishes_exactly_and_says_so(kafka, monkeypatch):
    monkeypatch.setenv("AGENTSTREAM_KAFKA_URL", f"kafka://{kafka.bootstrap}")
    monkeypatch.setenv("AGENTSTREAM_PRODUCER_COMPRESSION", "none")
    result = CliRunner().invoke(
        app, ["simulate", "--agents", "5", "--seed", "2", "--events", "700", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("produced 700 events (")
    assert asyncio.run(_count(kafka.bootstrap, 700)) == 700


def test_cli_simulate_unreachable_broker_is_one_line(monkeypatch):
    from agentstream.processes import free_port

    monkeypatch.setenv("AGENTSTREAM_KAFKA_URL", f"kafka://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(app, ["simulate", "--events", "10", "--no-progress"])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot reach the Kafka broker" in lines[0]
    assert "agentstream up" in lines[0]


def test_cli_simulate_rejects_a_start_without_zone():
    result = CliRunner().invoke(app, ["simulate", "--start", "2026-01-01T00:00:00"])
    assert result.exit_code == 1
    assert "no time zone" in result.output
