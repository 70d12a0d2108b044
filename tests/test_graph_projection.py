"""The graph projection end to end: simulator workloads into FalkorDB, directly and through
the broker with the runner, and the CLI on top.

The expected answers are computed independently from the produced events (their
``causes``), never read back from the graph.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from agentstream.cli import app
from projections.graph import queries
from projections.graph.falkordb_store import FalkorDBStore
from projections.graph.model import (
    ChainWindow,
    build_batch,
    chain_key,
    epoch_us,
    plan_next,
    seq_event_id,
    seq_key,
)
from projections.graph.projection import GraphProjection, project
from projections.graph.store import GraphStore
from projections.runner import ProjectionRunner, RunnerConfig, wait_until
from schemas import payloads as p
from schemas.codec import encode_event
from schemas.derived import Violation, ViolationCategory, derived_id, encode_derived
from schemas.envelope import Event, new_event
from schemas.topics import EVENTS, VIOLATIONS
from streams.simulator import SimulationConfig, generate

SIM = SimulationConfig(agents=6, runs=8, seed=42)


@pytest.fixture(scope="module")
def sim_events() -> list[Event]:
    return list(generate(SIM))


def open_store(server, name: str = "agentstream") -> FalkorDBStore:
    store = FalkorDBStore(server.host, server.port, name)
    store.setup()
    return store


def batches(events: list[Event], size: int) -> list[list[Event]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


# --- the independent oracle ----------------------------------------------------------------


def expected_ancestors(events: list[Event], target: str) -> list[tuple[str, int]]:
    """BFS over the events' own ``causes``: (id, hops), nearest first, then newest first.

    An id that no event carries (a cause that never arrived) counts as an ancestor with
    no time; it sorts after the timed ones at its distance.
    """
    by_id = {e.id: e for e in events}
    dist = {target: 0}
    queue = deque([target])
    while queue:
        eid = queue.popleft()
        for cause in by_id[eid].causes if eid in by_id else ():
            if cause not in dist:
                dist[cause] = dist[eid] + 1
                queue.append(cause)

    def key(eid: str) -> tuple[int, bool, int, str]:
        e = by_id.get(eid)
        return (dist[eid], e is None, -epoch_us(e.time) if e else 0, eid)

    return [(i, dist[i]) for i in sorted(set(dist) - {target}, key=key)]


def dump(store: GraphStore) -> tuple[list, list]:
    """Everything in the graph, canonically ordered: two graphs are equal iff dumps are."""
    nodes = store.read(
        "MATCH (n) RETURN labels(n)[0], coalesce(n.id, n.name), n.type, n.time, n.status, "
        "n.summary, n.chain, n.agent, n.run, n.task, n.tool, n.tenant, n.category, n.detail"
    )
    edges = store.read(
        "MATCH (a)-[r]->(b) "
        "RETURN type(r), labels(a)[0], coalesce(a.id, a.name), labels(b)[0], coalesce(b.id, b.name)"
    )
    return sorted(nodes, key=repr), sorted(edges)


# --- pure model ----------------------------------------------------------------------------


def test_seq_key_sorts_like_time_then_id():
    ids = ["0190aaaa-0000-7000-8000-000000000002", "0190aaaa-0000-7000-8000-000000000001"]
    pairs = [(t, i) for t in (-5_000_000, 0, 1, 1_772_366_400_000_000) for i in ids]
    rng = random.Random(0)
    rng.shuffle(pairs)
    assert sorted(pairs) == sorted(pairs, key=lambda ti: seq_key(*ti))
    assert seq_event_id(seq_key(-5, ids[0])) == ids[0]
    t = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert epoch_us(t) == 1_767_323_045_678_901  # exact, no float rounding


def test_build_batch_rows():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [f"0190aaaa-0000-7000-8000-00000000000{i}" for i in range(4)]
    start = new_event(p.ActionStarted(call_id="c", tool="git"), id=ids[0], time=t, agentid="a")
    done = new_event(
        p.ActionCompleted(call_id="c", tool="git", status="error"),
        id=ids[1],
        time=t + timedelta(seconds=1),
        agentid="a",
        runid="r",
        taskid="k",
        causes=[ids[0], ids[0], ids[3]],
    )
    msg = new_event(p.Message(to_agent="b", text="hi"), id=ids[2], time=t, agentid="a", runid="r")
    v = Violation(
        violation_id="v1",
        category=ViolationCategory.TOOL_ERROR,
        agent_id="a",
        run_id="r",
        task_id="k",
        tenant="default",
        time=t,
        detected_by=ids[1],
        event_ids=(ids[0], ids[1]),
    )
    batch = build_batch([done, start, msg, done], [v, v])
    assert [r["id"] for r in batch.events] == [ids[0], ids[1], ids[2]]  # deduplicated, sorted
    row = batch.events[1]
    assert (row["status"], row["tool"], row["chain"], row["time"]) == (
        "error",
        "git",
        chain_key("a", "r"),
        epoch_us(t) + 1_000_000,
    )
    assert batch.events[0]["chain"] == chain_key("a", None) != row["chain"]
    assert batch.caused_by == [
        {"effect": ids[1], "cause": ids[0]},
        {"effect": ids[1], "cause": ids[3]},
    ]
    assert batch.in_run == [{"event": ids[1], "run": "r"}, {"event": ids[2], "run": "r"}]
    assert batch.about == [{"event": ids[1], "task": "k"}]
    assert batch.used == [{"event": ids[0], "tool": "git"}, {"event": ids[1], "tool": "git"}]
    assert batch.messaged == [{"sender": "a", "recipient": "b"}]
    assert [r["id"] for r in batch.violations] == ["v1"]
    assert batch.involves == [
        {"violation": "v1", "event": ids[0]},
        {"violation": "v1", "event": ids[1]},
    ]
    chains = {c["chain"]: (c["lo"], c["hi"]) for c in batch.chains}
    assert chains[chain_key("a", "r")] == (
        seq_key(epoch_us(t), ids[2]),
        seq_key(row["time"], row["id"]),
    )


def test_plan_next_links_a_window_and_marks_head_and_tail():
    s = [seq_key(t, f"id{t}") for t in range(5)]
    # the chain's first events: a head marker, links, and the old successor kept in
    assert plan_next([ChainWindow("c", None, [s[1], s[0]], s[2])]) == [
        {"a": "", "b": "id0"},
        {"a": "id0", "b": "id1"},
        {"a": "id1", "b": "id2"},
    ]
    # appended at the end: from the old tail, then a tail marker
    assert plan_next([ChainWindow("c", s[2], [s[3], s[4]], None)]) == [
        {"a": "id2", "b": "id3"},
        {"a": "id3", "b": "id4"},
        {"a": "id4", "b": ""},
    ]


# --- end to end on FalkorDB ----------------------------------------------------------------


def failures_with_history(events: list[Event]) -> list[Event]:
    fails = [e for e in events if getattr(e.data, "status", None) == "error"]
    assert len(fails) >= 5, "the workload should contain failures"
    return fails


def test_why_of_simulated_failures_returns_exactly_their_causal_ancestors(falkordb, sim_events):
    store = open_store(falkordb)
    for batch in batches(sim_events, 250):
        project(store, batch)
    fails = failures_with_history(sim_events)
    deep = 0
    for fail in fails:
        expected = expected_ancestors(sim_events, fail.id)
        result = queries.why(store, fail.id, depth=1000)
        assert [(n.id, result.distance[n.id]) for n in result.ancestors()] == expected
        assert not result.truncated
        roots = {n.id for n in result.roots()}
        by_id = {e.id: e for e in sim_events}
        assert roots == {i for i, _ in expected if i not in by_id or not by_id[i].causes}
        deep = max(deep, len(expected))
    assert deep >= 5  # the oracle is not trivially empty


def test_replaying_the_stream_again_changes_no_count(falkordb, sim_events):
    store = open_store(falkordb)
    for batch in batches(sim_events, 300):
        project(store, batch)
    before = store.counts()
    snapshot = dump(store)
    for batch in batches(sim_events, 170):  # other batch boundaries this time
        project(store, batch)
    assert store.counts() == before
    assert dump(store) == snapshot
    assert before.nodes["Event"] == len({e.id for e in sim_events} | _missing_causes(sim_events))


def _missing_causes(events: list[Event]) -> set[str]:
    ids = {e.id for e in events}
    return {c for e in events for c in e.causes if c not in ids}


def test_causes_after_their_effects_end_with_the_same_graph(falkordb, sim_events):
    in_order = open_store(falkordb, "in-order")
    for batch in batches(sim_events, 200):
        project(in_order, batch)
    backwards = open_store(falkordb, "backwards")
    rng = random.Random(7)
    reversed_events = sim_events[::-1]
    for batch in batches(reversed_events, 64):  # effects first, causes later
        project(backwards, batch)
        if rng.random() < 0.3:
            project(backwards, batch)  # and some batches twice
    assert dump(backwards) == dump(in_order)
    fail = failures_with_history(sim_events)[-1]
    got = queries.why(backwards, fail.id, depth=1000)
    assert [(n.id, got.distance[n.id]) for n in got.ancestors()] == expected_ancestors(
        sim_events, fail.id
    )


# --- through the broker with the runner ----------------------------------------------------


async def produce(bootstrap: str, records: list[tuple[str, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def test_the_runner_feeds_the_graph_from_the_broker(kafka, falkordb):
    events = list(generate(SimulationConfig(agents=4, runs=3, seed=3)))
    fails = [e for e in events if getattr(e.data, "status", None) == "error"]
    assert fails, "the workload should contain a failure"
    v = Violation(
        violation_id=derived_id("violation", fails[0].id),
        category=ViolationCategory.TOOL_ERROR,
        agent_id=fails[0].agentid,
        run_id=fails[0].runid,
        task_id=fails[0].taskid,
        tenant="default",
        time=fails[0].time,
        detected_by=fails[0].id,
        event_ids=(*fails[0].causes, fails[0].id),
    )
    records = [(EVENTS, e.agentid.encode(), encode_event(e)) for e in events]
    records.insert(len(records) // 2, (EVENTS, b"x", b"{not json"))
    records.append((VIOLATIONS, v.agent_id.encode(), encode_derived(v)))
    await produce(kafka.bootstrap, records)

    store = open_store(falkordb, "from-broker")
    runner = ProjectionRunner(
        GraphProjection(store),
        kafka.bootstrap,
        group_id="graph-test",
        config=RunnerConfig(max_batch=150, max_wait_ms=50, session_timeout_ms=6000),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        assert await wait_until(runner.caught_up, timeout_s=60), runner.stats
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert runner.stats.rejected == 1  # the bad record was counted, not applied
    assert runner.stats.applied == len(events) + 1

    direct = open_store(falkordb, "direct")
    project(direct, events, [v])
    assert dump(store) == dump(direct)
    result = queries.why(store, v.violation_id)
    assert result.violation is not None
    assert set(result.targets) == set(v.event_ids)


# --- the CLI -------------------------------------------------------------------------------


def test_cli_why_impact_and_path(falkordb, sim_events):
    store = open_store(falkordb, "cli")
    project(store, sim_events)
    fail = failures_with_history(sim_events)[-1]
    expected = expected_ancestors(sim_events, fail.id)
    root = expected[-1][0]
    env = {"AGENTSTREAM_GRAPH_URL": falkordb.url, "AGENTSTREAM_GRAPH_NAME": "cli"}
    cli = CliRunner()

    out = cli.invoke(app, ["why", fail.id, "--json"], env=env)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert [(e["id"], e["distance"]) for e in doc["events"][1:]] == expected

    tree = cli.invoke(app, ["why", fail.id, "--depth", "2"], env={**env, "COLUMNS": "300"})
    assert tree.exit_code == 0
    assert fail.id in tree.output and "more beyond --depth 2" in tree.output

    out = cli.invoke(app, ["impact", root, "--json"], env=env)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert fail.id in {e["id"] for e in doc["events"]}
    assert doc["failures"] >= 1

    out = cli.invoke(app, ["path", fail.id, root, "--json"], env=env)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["relation"] == "caused_by" and doc["hops"] == expected[-1][1]

    missing = cli.invoke(app, ["why", "01900000-0000-7000-8000-000000000000"], env=env)
    assert missing.exit_code == 1
    assert "is not in graph 'cli'" in missing.output
    down = cli.invoke(
        app, ["why", fail.id], env={**env, "AGENTSTREAM_GRAPH_URL": "falkordb://127.0.0.1:1"}
    )
    assert down.exit_code == 1 and "cannot reach FalkorDB" in down.output
