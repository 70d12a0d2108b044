"""One contract suite for every GraphStore backend.

FalkorDB (the `falkordb` fixture) always runs. Neo4j runs when NEO4J_URI is set
(NEO4J_USER / NEO4J_PASSWORD / NEO4J_DATABASE optional; docs/graph.md shows how with
docker compose). The alias swap on Neo4j needs Enterprise: set NEO4J_ALIASES=1 to run it.

The last tests smoke-test the Neo4j adapter's result mapping against FalkorDB's Bolt
endpoint, with tiny inputs only (LOCAL_STACK.md lists what that endpoint breaks).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from agentstream.processes import ManagedProcess, falkordb_argv, free_port, port_bindable
from projections.graph import cypher, queries
from projections.graph.falkordb_store import FalkorDBStore
from projections.graph.model import chain_key, epoch_us, seq_event_id, seq_key, seq_params
from projections.graph.neo4j_store import Neo4jStore
from projections.graph.projection import project
from projections.graph.store import GraphStore, GraphStoreError, QueryTimeout
from schemas import payloads as p
from schemas.derived import Violation, ViolationCategory, derived_id
from schemas.envelope import Event, new_event
from schemas.ids import Uuid7Generator

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# --- backends ------------------------------------------------------------------------------


def _neo4j_store(database: str | None = None) -> Neo4jStore:
    uri = os.environ.get("NEO4J_URI")
    if not uri:
        pytest.skip("NEO4J_URI not set (see docs/graph.md: contract suite against Neo4j)")
    user = os.environ.get("NEO4J_USER", "neo4j")
    auth = (user, os.environ.get("NEO4J_PASSWORD", "")) if user else None
    return Neo4jStore(uri, database or os.environ.get("NEO4J_DATABASE", "neo4j"), auth=auth)


@pytest.fixture(params=["falkordb", "neo4j"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def open_graph(backend: str, request: pytest.FixtureRequest) -> Iterator:
    """A function name -> fresh, set-up store on the current backend; all cleared after."""
    opened: list[GraphStore] = []
    # set up before the stores, so torn down after them
    server = request.getfixturevalue("falkordb") if backend == "falkordb" else None

    def open_(name: str) -> GraphStore:
        if server is not None:
            store: GraphStore = FalkorDBStore(server.host, server.port, name)
        else:
            store = _neo4j_store(None if name == "contract" else name)
        store.clear()
        store.setup()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.clear()
        store.close()


@pytest.fixture
def store(open_graph) -> GraphStore:
    return open_graph("contract")


# --- events --------------------------------------------------------------------------------


class Scenario:
    """Builds events with deterministic ids and times, one second apart by default."""

    def __init__(self, seed: int = 1) -> None:
        self.ids = Uuid7Generator(seed)
        self.clock = 0

    def event(
        self,
        data: p.Payload,
        *causes: Event | str,
        agent: str = "a1",
        run: str | None = "r1",
        task: str | None = None,
        at: int | None = None,
    ) -> Event:
        if at is None:
            self.clock += 1
            at = self.clock
        t = T0 + timedelta(seconds=at)
        return new_event(
            data,
            id=self.ids.new(int(t.timestamp() * 1000)),
            time=t,
            agentid=agent,
            runid=run,
            taskid=task,
            causes=[c if isinstance(c, str) else c.id for c in causes],
        )


def thought(text: str) -> p.Thought:
    return p.Thought(text=text, model="gpt-4o")


def completed(status: str = "ok", tool: str = "run_tests") -> p.ActionCompleted:
    return p.ActionCompleted(call_id="c1", tool=tool, status=status, result="r")  # type: ignore[arg-type]


def violation(events: list[Event], category: ViolationCategory) -> Violation:
    last = events[-1]
    return Violation(
        violation_id=derived_id("violation", category, *[e.id for e in events]),
        category=category,
        agent_id=last.agentid,
        run_id=last.runid,
        task_id=last.taskid,
        tenant="default",
        time=last.time,
        detected_by=last.id,
        event_ids=tuple(e.id for e in events),
        tool="run_tests",
        expected="all tests pass",
        actual="1 failed",
        detail="tests failed",
    )


def small_run() -> tuple[list[Event], list[Violation]]:
    """A run with every node and relationship kind; counts are asserted exactly below."""
    s = Scenario()
    start = s.event(p.RunStarted(goal="fix checkout"))
    think = s.event(thought("the checkout test flakes"), start, task="t1")
    decide = s.event(p.Decision(chosen="rerun"), think, task="t1")
    act = s.event(
        p.ActionStarted(call_id="c1", tool="run_tests", expected="all tests pass"),
        decide,
        task="t1",
    )
    done = s.event(completed("error"), act, task="t1")
    msg = s.event(p.Message(to_agent="a2", text="tests fail"), done)
    lesson = s.event(
        p.Lesson(situation="flaky", action="rerun", outcome="failed", insight="quarantine"),
        done,
        think,
    )
    events = [start, think, decide, act, done, msg, lesson]
    return events, [violation([act, done], ViolationCategory.TOOL_ERROR)]


SMALL_NODES = {"Agent": 2, "Run": 1, "Task": 1, "Tool": 1, "Event": 7, "Violation": 1}
SMALL_RELS = {
    "EMITTED": 7,
    "IN_RUN": 7,
    "ABOUT": 4,
    "USED": 2,
    "CAUSED_BY": 7,
    "NEXT": 6,
    "MESSAGED": 1,
    "INVOLVES": 2,
}


def next_chain(store: GraphStore, agent: str, run: str) -> list[str]:
    """The chain as the graph links it: from the head along NEXT."""
    rows = store.read(
        "MATCH (a:Event)-[:NEXT]->(b:Event) WHERE a.agent = $agent AND a.run = $run "
        "RETURN a.id, b.id",
        {"agent": agent, "run": run},
    )
    succ = dict(rows)
    assert len(succ) == len(rows), "an event has two successors"
    assert len(set(succ.values())) == len(rows), "an event has two predecessors"
    heads = set(succ) - set(succ.values())
    if not succ:
        return []
    assert len(heads) == 1, f"chain has {len(heads)} heads"
    chain = [heads.pop()]
    while chain[-1] in succ:
        chain.append(succ[chain[-1]])
    return chain


# --- the store contract --------------------------------------------------------------------


def test_setup_is_repeatable_and_a_new_graph_reads_empty(store):
    store.setup()
    store.setup()
    assert store.read("MATCH (e:Event) RETURN e.id") == []
    counts = store.counts()
    assert counts.total_nodes == 0 and counts.total_relationships == 0


def test_values_come_back_as_plain_python(store):
    text = "quote \" apostrophe ' backslash \\ newline \n tab \t unicode é 🎉"
    store.write(
        [
            (
                "CREATE (:Probe {id: $id, big: $big, neg: $neg, f: $f, s: $s, l: $l})",
                {
                    "id": "p1",
                    "big": 1_772_366_400_123_456,
                    "neg": -5,
                    "f": 0.1,
                    "s": text,
                    "l": ["a", "b"],
                },
            )
        ]
    )
    rows = store.read(
        "MATCH (n:Probe {id: $id}) "
        "RETURN n.big, n.neg, n.f, n.s, n.l, n.missing, {k: n.neg, t: true}, [n.big, null]",
        {"id": "p1"},
    )
    assert rows == [
        (
            1_772_366_400_123_456,
            -5,
            0.1,
            text,
            ["a", "b"],
            None,
            {"k": -5, "t": True},
            [1_772_366_400_123_456, None],
        )
    ]
    assert type(rows[0][0]) is int and type(rows[0][3]) is str


def test_parameters_are_data_never_cypher(store):
    hostile = "x'}) MATCH (n) DETACH DELETE n //"
    store.write(
        [("CREATE (:Probe {id: 'keep'})", {}), ("CREATE (:Probe {id: $id})", {"id": hostile})]
    )
    ids = sorted(r[0] for r in store.read("MATCH (n:Probe) RETURN n.id"))
    assert ids == sorted(["keep", hostile])


def test_write_runs_statements_in_order(store):
    store.write(
        [
            ("CREATE (:Probe {id: $id, n: 1})", {"id": "o"}),
            ("MATCH (n:Probe {id: $id}) SET n.n = n.n * 10", {"id": "o"}),
            ("MATCH (n:Probe {id: $id}) SET n.n = n.n + 2", {"id": "o"}),
        ]
    )
    assert store.read("MATCH (n:Probe) RETURN n.n") == [(12,)]


def test_a_batch_maps_to_the_documented_nodes_and_relationships(store):
    events, violations = small_run()
    project(store, events, violations)
    counts = store.counts()
    assert counts.nodes == SMALL_NODES
    assert counts.relationships == SMALL_RELS
    _start, think, decide, act, done, _msg, _lesson = events
    # edge directions as documented: effect -> cause, earlier -> later, sender -> recipient
    assert store.read(
        "MATCH (e:Event {id: $id})-[:CAUSED_BY]->(c:Event) RETURN c.id", {"id": done.id}
    ) == [(act.id,)]
    assert store.read(
        "MATCH (a:Event {id: $id})-[:NEXT]->(b:Event) RETURN b.id", {"id": think.id}
    ) == [(decide.id,)]
    assert store.read("MATCH (a:Agent)-[:MESSAGED]->(b:Agent) RETURN a.id, b.id") == [("a1", "a2")]
    assert store.read(
        "MATCH (:Agent {id: 'a1'})-[:EMITTED]->(e:Event {id: $id})-[:USED]->(t:Tool) "
        "RETURN e.status, e.tool, t.name, e.time",
        {"id": done.id},
    ) == [("error", "run_tests", "run_tests", 1_772_366_405_000_000)]
    assert store.read(
        "MATCH (v:Violation)-[:INVOLVES]->(e:Event) RETURN v.category, e.id ORDER BY e.id"
    ) == sorted([("tool_error", act.id), ("tool_error", done.id)], key=lambda r: r[1])


def test_applying_the_same_batch_twice_changes_nothing(store):
    events, violations = small_run()
    project(store, events, violations)
    before = store.counts()
    props = store.read("MATCH (e:Event) RETURN e.id, e.summary, e.time, e.chain ORDER BY e.id")
    project(store, events, violations)
    project(store, events[3:] + events[:3], violations)
    assert store.counts() == before
    assert (
        store.read("MATCH (e:Event) RETURN e.id, e.summary, e.time, e.chain ORDER BY e.id") == props
    )


def test_the_store_builds_the_chain_order_key_exactly_like_the_model(store):
    """``seq`` is not stored: CHAIN_WINDOWS derives it from time and id in Cypher. It must be
    model.seq_key to the character, at both ends of the time range (the NEXT upkeep compares
    it with keys the model builds), and Event nodes carry no seq or category."""
    ids = Uuid7Generator(11)
    times = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # below the codec's range
        T0,
        datetime(2105, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ]
    events = [
        new_event(thought(f"t{i}"), id=ids.new(1_000 + i), time=t, agentid="a1", runid="r1")
        for i, t in enumerate(times)
    ]
    project(store, events)
    rows = store.read(
        cypher.CHAIN_WINDOWS,
        {"chains": [{"chain": chain_key("a1", "r1"), "lo": "", "hi": "~"}], **seq_params()},
    )
    assert len(rows) == 1
    _chain, before, inside, after = rows[0]
    want = sorted(seq_key(epoch_us(e.time), e.id) for e in events)
    assert (before, sorted(inside), after) == (None, want, None)
    assert next_chain(store, "a1", "r1") == [seq_event_id(k) for k in want]
    assert store.read(
        "MATCH (e:Event) WHERE e.seq IS NOT NULL OR e.category IS NOT NULL RETURN count(e)"
    ) == [(0,)]


def test_an_effect_before_its_cause_keeps_the_edge_on_a_placeholder(store):
    s = Scenario()
    root = s.event(thought("root"))
    mid = s.event(thought("mid"), root)
    leaf = s.event(completed("error"), mid)
    project(store, [leaf])
    placeholder = store.read("MATCH (e:Event {id: $id}) RETURN e.type, e.summary", {"id": mid.id})
    assert placeholder == [(None, None)]
    partial = queries.why(store, leaf.id)
    assert [n.id for n in partial.ancestors()] == [mid.id]
    assert partial.ancestors()[0].placeholder
    project(store, [mid])
    project(store, [root])
    full = queries.why(store, leaf.id)
    assert [(n.id, n.summary) for n in full.ancestors()] == [(mid.id, "mid"), (root.id, "root")]
    assert store.counts().nodes["Event"] == 3


def test_next_orders_each_chain_by_time_then_id_whatever_the_batch_order(store):
    s = Scenario(seed=5)
    r1 = [s.event(thought(f"r1-{i}"), at=i // 3) for i in range(24)]  # ties on time
    r2 = [s.event(thought(f"r2-{i}"), run="r2", at=100 + i) for i in range(10)]
    other = [s.event(thought(f"b-{i}"), agent="b1", at=i) for i in range(5)]
    everything = r1 + r2 + other
    rng = random.Random(3)
    shuffled = everything[:]
    rng.shuffle(shuffled)
    for i in range(0, len(shuffled), 4):  # small batches, out of order, some twice
        project(store, shuffled[i : i + 4])
        if i % 8 == 0:
            project(store, shuffled[max(0, i - 6) : i + 2])
    expected = sorted(r1, key=lambda e: (e.time, e.id))
    assert next_chain(store, "a1", "r1") == [e.id for e in expected]
    assert next_chain(store, "a1", "r2") == [e.id for e in r2]
    assert next_chain(store, "b1", "r1") == [e.id for e in other]
    assert store.counts().relationships["NEXT"] == (24 - 1) + (10 - 1) + (5 - 1)


def diamond(store: GraphStore) -> dict[str, Event]:
    r"""root <- a, root <- b, a <- c, b <- c, c <- fail (error), fail <- retry (ok)."""
    s = Scenario(seed=9)
    e: dict[str, Event] = {}
    e["root"] = s.event(p.RunStarted(goal="g"))
    e["a"] = s.event(thought("a"), e["root"])
    e["b"] = s.event(p.Decision(chosen="b"), e["root"])
    e["c"] = s.event(p.ActionStarted(call_id="c1", tool="lint"), e["a"], e["b"])
    e["fail"] = s.event(completed("error", tool="lint"), e["c"])
    e["retry"] = s.event(completed("ok", tool="lint"), e["fail"], e["c"])
    project(store, list(e.values()), [violation([e["c"], e["fail"]], ViolationCategory.TOOL_ERROR)])
    return e


# None: the backend's default; 1: one query per level; more: unrolled BFS statements
WALKS = [None, 1, 2, 3, queries.LEVELS_PER_TRIP]


@pytest.mark.parametrize("levels_per_trip", WALKS)
def test_why_walks_back_to_the_root_causes_with_exact_distances(store, levels_per_trip):
    e = diamond(store)
    walk = {"levels_per_trip": levels_per_trip}
    result = queries.why(store, e["retry"].id, **walk)
    got = [(n.id, result.distance[n.id]) for n in result.ancestors()]
    # nearest first; at equal distance newest first
    assert got == [
        (e["fail"].id, 1),
        (e["c"].id, 1),
        (e["b"].id, 2),
        (e["a"].id, 2),
        (e["root"].id, 3),
    ]
    assert [n.id for n in result.roots()] == [e["root"].id]
    assert result.nodes[e["c"].id].causes == tuple(sorted([e["a"].id, e["b"].id]))
    assert not result.truncated
    shallow = queries.why(store, e["retry"].id, depth=2, **walk)
    assert {n.id for n in shallow.ancestors()} == {e[k].id for k in ("c", "fail", "a", "b")}
    assert shallow.truncated


def ladder(store: GraphStore, n: int) -> list[Event]:
    """Each event caused by the previous two: ~1.6^n paths through n events."""
    s = Scenario(seed=21)
    events: list[Event] = []
    for i in range(n):
        events.append(s.event(thought(f"step {i}"), *events[-2:]))
    project(store, events)
    return events


@pytest.mark.parametrize("levels_per_trip", [None, 1, 7, queries.LEVELS_PER_TRIP])
def test_why_stays_exact_and_cheap_where_paths_explode(store, levels_per_trip):
    events = ladder(store, 45)
    result = queries.why(store, events[-1].id, depth=44, levels_per_trip=levels_per_trip)
    assert [(n.id, result.distance[n.id]) for n in result.ancestors()] == [
        (events[-1 - k].id, (k + 1) // 2) for k in range(1, 45)
    ]
    impact = queries.impact(store, events[0].id, levels_per_trip=levels_per_trip)
    assert len(impact.downstream()) == 44 and impact.distance[events[-1].id] == 22


def random_dag(store: GraphStore, n: int, seed: int) -> list[Event]:
    """``n`` events, each caused by up to three random earlier ones (some by none: extra
    roots), plus a cause that never arrives (a placeholder)."""
    rng = random.Random(seed)
    s = Scenario(seed=seed)
    events: list[Event] = []
    for i in range(n):
        picks = rng.sample(events, k=min(len(events), rng.randrange(4))) if events else []
        causes: list[Event | str] = list(picks)
        if i == n // 2:
            causes.append("never-arrived")
        events.append(s.event(thought(f"step {i}"), *causes))
    project(store, events)
    return events


def _walk_view(result: queries.WhyResult | queries.ImpactResult) -> dict[str, object]:
    return {
        i: (result.distance[i], n.causes, n.type, n.time_us, n.summary)
        for i, n in result.nodes.items()
    }


def test_every_walk_finds_the_same_events_at_the_same_distances(store):
    """The backend's own walk (on FalkorDB: the server-side UDF) against the portable
    Cypher walks, on a random DAG, for why and impact at several depths."""
    events = random_dag(store, 120, seed=4)
    walks = [None, 1, 3, queries.LEVELS_PER_TRIP]
    for target in (events[-1], events[-7], events[60]):
        for depth in (1, 2, 5, 50):
            views = [_walk_view(queries.why(store, target.id, depth, w)) for w in walks]
            assert all(v == views[0] for v in views[1:]), (target.id, depth)
    for source in (events[0], events[3], events[40]):
        for depth in (1, 4, 100):
            impacts = [queries.impact(store, source.id, depth, w) for w in walks]
            views = [(_walk_view(r), r.effects) for r in impacts]
            assert all(v == views[0] for v in views[1:]), (source.id, depth)
    assert queries.why(store, events[60].id, depth=1).nodes["never-arrived"].placeholder


def test_falkordb_reloads_its_walk_after_the_server_lost_it(falkordb):
    """UDF libraries live in the server, not in a graph: a fresh or restarted server has
    none, and the next walk loads it (no setup() call needed by a reader)."""
    writer = FalkorDBStore(falkordb.host, falkordb.port, "udf")
    writer.setup()
    events = ladder(writer, 10)
    redis.Redis(host=falkordb.host, port=falkordb.port).execute_command("GRAPH.UDF", "FLUSH")
    reader = FalkorDBStore(falkordb.host, falkordb.port, "udf")
    result = queries.why(reader, events[-1].id)
    assert len(result.ancestors()) == 9 and not result.truncated
    writer.clear()


def test_a_read_with_a_timeout_is_stopped_by_the_server(store):
    events = ladder(store, 45)
    exploding = "MATCH p = (:Event {id: $id})-[:CAUSED_BY*1..44]->(a) RETURN count(p)"
    with pytest.raises(QueryTimeout):
        store.read(exploding, {"id": events[-1].id}, timeout_ms=50)
    assert store.read(
        "MATCH (e:Event {id: $id}) RETURN e.id", {"id": events[0].id}, timeout_ms=1000
    )


def test_why_of_a_violation_starts_from_the_events_it_involves(store):
    e = diamond(store)
    vid = store.read("MATCH (v:Violation) RETURN v.id")[0][0]
    result = queries.why(store, vid)
    assert result.violation is not None and result.violation.category == "tool_error"
    assert set(result.targets) == {e["c"].id, e["fail"].id}
    assert {n.id for n in result.ancestors()} == {e["a"].id, e["b"].id, e["root"].id}


def test_impact_lists_everything_downstream_with_failures(store):
    e = diamond(store)
    result = queries.impact(store, e["b"].id)
    assert [(n.id, result.distance[n.id]) for n in result.downstream()] == [
        (e["c"].id, 1),
        (e["fail"].id, 2),
        (e["retry"].id, 2),
    ]
    assert [n.id for n in result.failures()] == [e["fail"].id]
    assert len(result.violations) == 1
    assert result.by_type() == {"agent.act.completed.v2": 2, "agent.act.started.v1": 1}
    assert not result.truncated
    assert result.effects[e["b"].id] == (e["c"].id,)
    assert result.effects[e["c"].id] == tuple(sorted([e["fail"].id, e["retry"].id]))
    assert result.nodes[e["retry"].id].causes == tuple(sorted([e["c"].id, e["fail"].id]))
    assert queries.impact(store, e["b"].id, depth=1).truncated


def test_path_finds_the_shortest_chain_in_either_direction(store):
    e = diamond(store)
    up = queries.path(store, e["retry"].id, e["root"].id)
    assert up is not None and up.relation == "caused_by" and up.hops == 3
    assert up.events[0].id == e["retry"].id and up.events[-1].id == e["root"].id
    assert up.events[1].id == e["c"].id  # the shortcut retry -> c, not retry -> fail -> c
    down = queries.path(store, e["root"].id, e["fail"].id)
    assert down is not None and down.relation == "led_to"
    assert down.events[0].id == e["root"].id and down.hops == 3
    assert queries.path(store, e["a"].id, e["b"].id) is None  # siblings: no causal path
    with pytest.raises(queries.NotInGraph):
        queries.path(store, e["a"].id, "01900000-0000-7000-8000-000000000000")


def test_unknown_ids_raise_not_in_graph(store):
    with pytest.raises(queries.NotInGraph):
        queries.why(store, "01900000-0000-7000-8000-000000000000")
    with pytest.raises(queries.NotInGraph):
        queries.impact(store, "nope")


def test_clear_deletes_everything(store):
    events, violations = small_run()
    project(store, events, violations)
    store.clear()
    assert store.counts().total_nodes == 0


def test_replace_live_with_swaps_a_rebuilt_graph_in(backend, open_graph):
    if backend == "neo4j" and not os.environ.get("NEO4J_ALIASES"):
        pytest.skip("alias swap needs Neo4j Enterprise: set NEO4J_ALIASES=1 to run it")
    live = open_graph("contract")
    fresh = open_graph("contract-rebuild")
    events, violations = small_run()
    project(live, events[:2])
    project(fresh, events, violations)
    assert live.exists("contract-rebuild")
    live.replace_live_with("contract-rebuild")
    assert live.counts().nodes == SMALL_NODES
    assert queries.why(live, events[-1].id).roots()[0].id == events[0].id
    if backend == "falkordb":
        assert not live.exists("contract-rebuild")  # RENAME: the rebuilt name is gone
    with pytest.raises(GraphStoreError):
        live.replace_live_with("no-such-graph")


# --- the Neo4j adapter over FalkorDB's Bolt endpoint ------------------------------------------


def low_free_port(host: str = "127.0.0.1") -> int:
    """A free port below 32768: FalkorDB 4.16 silently ignores a BOLT_PORT above 32767
    (measured), and the kernel hands out ephemeral ports from 32768 up."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_768)
        if port_bindable(host, port):
            return port
    raise RuntimeError("no free port below 32768")


@pytest.fixture(scope="module")
def bolt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """FalkorDB with its experimental Bolt listener; no AOF (AOF + Bolt writes crash it)."""
    data: Path = tmp_path_factory.mktemp("bolt")
    host, port, bolt = "127.0.0.1", free_port(), low_free_port()
    argv = [*falkordb_argv(host, port, data, appendonly=False), "BOLT_PORT", str(bolt)]
    proc = ManagedProcess("graph-bolt", argv, data / "falkordb.log")
    proc.start()
    try:
        proc.wait_for_port(host, port, deadline_s=15)
        proc.wait_for_port(host, bolt, deadline_s=15)
        yield port, bolt
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def bolt_store(bolt_server) -> Iterator[Neo4jStore]:
    from neo4j import GraphDatabase

    _, bolt = bolt_server
    uri = f"bolt://127.0.0.1:{bolt}"
    # One pooled connection for the whole module: the endpoint leaks closed connections'
    # slots and every second new connection hangs.
    driver = GraphDatabase.driver(uri, auth=None, max_connection_pool_size=1, connection_timeout=10)
    store = Neo4jStore(uri, None, driver=driver)
    yield store
    store.close()


def test_neo4j_adapter_maps_scalars_lists_maps_and_nodes(bolt_store):
    rows = bolt_store.read(
        "RETURN 1772366400123456 AS big, 'abc' AS s, null AS n, [1, 2] AS l, "
        "{k: 1, v: 'w'} AS m, true AS b, $p AS p",
        {"p": ["x", 7]},
    )
    assert rows == [
        (1_772_366_400_123_456, "abc", None, [1, 2], {"k": 1, "v": "w"}, True, ["x", 7])
    ]
    bolt_store.write([("CREATE (:Probe {id: $id, n: $n})", {"id": "bolt1", "n": 3})])
    (node,) = bolt_store.read("MATCH (n:Probe {id: $id}) RETURN n", {"id": "bolt1"})[0]
    assert node == {"id": "bolt1", "n": 3}  # a driver Node comes back as its properties


def test_neo4j_adapter_projects_and_queries_a_tiny_graph(bolt_server, bolt_store):
    s = Scenario(seed=11)
    first = s.event(thought("one"))
    second = s.event(thought("two"), first)
    third = s.event(completed("error"), second)
    project(bolt_store, [first, second, third])  # three short rows: well under the 4 KB limit
    counts = bolt_store.counts()
    assert counts.nodes["Event"] == 3
    assert counts.relationships["CAUSED_BY"] == 2 and counts.relationships["NEXT"] == 2
    # The Bolt endpoint writes the graph named "falkordb": RESP must see the same graph.
    resp = FalkorDBStore("127.0.0.1", bolt_server[0], "falkordb")
    try:
        assert resp.counts() == counts
    finally:
        resp.close()
    # The endpoint pastes statement and parameters into a 4 KB buffer (and crashes past
    # it): keep the unrolled BFS statement short with few levels per round trip.
    for levels in (1, 3):
        why = queries.why(bolt_store, third.id, levels_per_trip=levels)
        assert [n.summary for n in why.ancestors()] == ["two", "one"]
        impact = queries.impact(bolt_store, first.id, levels_per_trip=levels)
        assert impact.failures()[0].id == third.id
    found = queries.path(bolt_store, third.id, first.id)
    assert found is not None and found.hops == 2
