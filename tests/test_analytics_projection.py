"""The analytics projection: exact counts in raw tables AND rollups under every redelivery.

In-process tests drive ``apply`` with decoded records like the runner does; the crash
test runs the real runner against a real broker in a child process that dies between
the insert and the offset commit.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from projections.analytics import schema
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.queries import NAMED_QUERIES
from projections.analytics.rows import events_table
from projections.analytics.sample import SampleCounts, sample_events
from projections.analytics.store import AnalyticsStore
from projections.runner import ProjectionRunner, Record, RunnerConfig, wait_until
from schemas import payloads as p
from schemas.arrow import events_to_table
from schemas.codec import encode_event
from schemas.derived import Episode, Violation, ViolationCategory, encode_derived
from schemas.envelope import new_event
from schemas.ids import Uuid7Generator
from schemas.state import AgentState, Outlook, encode_state
from schemas.topics import EPISODES, EVENTS, STATE, VIOLATIONS

N = 3000


@pytest.fixture(scope="module")
def sample() -> tuple[list, SampleCounts]:
    counts = SampleCounts()
    events = list(sample_events(N, agents=6, counts=counts))
    return events, counts


def records(events, start: int = 0) -> list[Record]:
    """As the runner hands them over: one agent's events on one partition, in order."""
    out = []
    offsets: Counter[int] = Counter()
    for e in events:
        part = int(e.agentid.rsplit("-", 1)[1]) % 3
        out.append(Record(EVENTS, part, start + offsets[part], e.agentid.encode(), e, 0))
        offsets[part] += 1
    return out


def assert_exact(store: AnalyticsStore, counts: SampleCounts) -> None:
    """Raw table and every rollup hold each produced event exactly once."""
    by_type = dict(store.rows("SELECT type, count() FROM events GROUP BY type"))
    assert by_type == dict(counts.by_type)
    by_agent = dict(store.rows("SELECT agent_id, count() FROM events GROUP BY agent_id"))
    assert by_agent == dict(counts.by_agent)
    assert store.scalar("SELECT uniqExact(event_id) FROM events") == counts.total
    rolled = dict(store.rows("SELECT type, sum(events) FROM agent_minute GROUP BY type"))
    assert rolled == dict(counts.by_type)
    rolled_agents = dict(
        store.rows("SELECT agent_id, sum(events) FROM agent_minute GROUP BY agent_id")
    )
    assert rolled_agents == dict(counts.by_agent)
    assert store.scalar("SELECT sum(errors) FROM agent_minute") == counts.failed_actions
    assert store.scalar("SELECT sum(input_tokens) FROM agent_minute") == counts.input_tokens
    assert store.scalar("SELECT sum(output_tokens) FROM agent_minute") == counts.output_tokens
    completed = sum(v for k, v in counts.by_type.items() if k.startswith("agent.act.completed"))
    assert store.rows("SELECT sum(calls), sum(errors) FROM tool_minute") == [
        (completed, counts.failed_actions)
    ]
    runs_finished = counts.by_type["agent.lifecycle.run_finished.v1"]
    # the run model: one row per run, the same totals
    runs = store.rows(
        "SELECT count(), uniqExact(run_id), sum(events), sum(actions), sum(errors), "
        "countIf(status = 'failed'), countIf(status != 'running') FROM runs"
    )
    assert runs == [
        (
            *(counts.runs, counts.runs, counts.total, completed, counts.failed_actions),
            *(counts.failed_runs, runs_finished),
        )
    ]
    per_agent = store.rows("SELECT sum(events), sum(actions), sum(errors) FROM run_agent")
    assert per_agent == [(counts.total, completed, counts.failed_actions)]


def test_columnar_rows_equal_the_shared_arrow_rows(sample):
    events, _ = sample
    parts, offs = list(range(len(events))), [i * 3 for i in range(len(events))]
    assert events_table(events, parts, offs).equals(events_to_table(events, parts, offs))
    assert events_table(events).equals(events_to_table(events))


def test_one_pass_gives_exact_counts(projection, sample):
    events, counts = sample
    projection.apply(records(events))
    assert_exact(projection.store, counts)
    assert projection.verify_rollups() == {r.table: [] for r in schema.ROLLUPS}


def test_the_same_batch_applied_twice_counts_once(projection, sample):
    events, counts = sample
    batch = records(events)
    projection.apply(batch)
    projection.apply(batch)
    assert_exact(projection.store, counts)


def test_duplicates_inside_one_batch_count_once(projection, sample):
    """A producer retry can put the same event twice in the log (different offsets)."""
    events, counts = sample
    doubled = records(events) + records(events[:500], start=10_000)
    projection.apply(doubled)
    assert_exact(projection.store, counts)


def test_partial_and_overlapping_replays_count_once(projection, sample):
    events, counts = sample
    recs = records(events)
    projection.apply(recs[:1000])
    projection.apply(recs[500:2000])  # overlaps the first batch
    projection.apply(recs[1500:])  # overlaps the second
    projection.apply(recs[700:1200])  # a partial replay of history
    assert_exact(projection.store, counts)


def test_replay_through_apply_table_counts_once(projection, sample):
    """The archive fast path (Arrow rows, no JSON) dedups against what the log delivered."""
    events, counts = sample
    projection.apply(records(events[:2000]))
    projection.apply_table(events_to_table(events))
    assert_exact(projection.store, counts)


def test_a_view_failing_mid_insert_is_repaired_before_the_retry(projection, sample):
    """ClickHouse commits events before (some) views: a failed insert leaves rollups short.

    The retry finds the rows in events and skips them; the projection rebuilds the short
    rollup months from events first, so the counts come out exact anyway.
    """
    events, counts = sample
    store = projection.store
    recs = records(events)
    projection.apply(recs[:1000])
    db = store.database
    store.command(f"CREATE TABLE {db}.boom (n UInt8) ENGINE = MergeTree ORDER BY n")
    store.command(
        f"CREATE MATERIALIZED VIEW {db}.zz_boom_mv TO {db}.boom AS "
        f"SELECT throwIf(agent_id = 'agent-003', 'injected') AS n FROM {db}.events"
    )
    with pytest.raises(Exception, match="injected"):
        projection.apply(recs[1000:2000])
    # the raw rows went in, at least one rollup did not: the failure really left a hole
    assert store.scalar("SELECT count() FROM events") == 2000
    assert any(projection.verify_rollups().values())
    store.command(f"DROP VIEW {db}.zz_boom_mv")
    projection.apply(recs[1000:2000])  # the runner's retry
    projection.apply(recs[2000:])
    assert_exact(store, counts)


def test_rollups_left_short_by_a_crash_are_repaired_at_start(url, sample):
    events, counts = sample
    p = AnalyticsProjection(url)
    p.setup()
    p.apply(records(events))
    db = p.store.database
    p.store.command(f"TRUNCATE TABLE {db}.tool_minute")  # as if killed before the views wrote
    p.store.command(f"ALTER TABLE {db}.agent_minute DROP PARTITION 202501")
    p.close()
    again = AnalyticsProjection(url)
    try:
        again.setup()
        assert_exact(again.store, counts)
    finally:
        again.close()


def test_crash_between_insert_and_commit_counts_once(kafka, url, sample, tmp_path):
    """The real runner, killed (os._exit) right after its first apply, before the commit."""
    events, counts = sample
    asyncio.run(_produce(kafka.bootstrap, events))
    child = textwrap.dedent(
        f"""
        import asyncio, os
        from projections.analytics.projection import AnalyticsProjection
        from projections.runner import RunnerConfig, run_projection

        p = AnalyticsProjection({url!r})
        real_apply = p.apply

        def apply_then_die(records):
            real_apply(records)
            os._exit(17)  # the insert is durable, the offsets are not committed

        p.apply = apply_then_die
        config = RunnerConfig(max_batch=800, max_wait_ms=200, session_timeout_ms=6000)
        asyncio.run(run_projection(p, {kafka.bootstrap!r}, asyncio.Event(), config=config))
        """
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=240)
    assert done.returncode == 17, done.stderr.decode()[-2000:]
    with AnalyticsStore(url) as s:
        inserted_before_crash = s.scalar("SELECT count() FROM events")
    assert 0 < inserted_before_crash < N

    p = AnalyticsProjection(url)
    try:
        runner = ProjectionRunner(
            p,
            kafka.bootstrap,
            config=RunnerConfig(max_batch=800, max_wait_ms=100, session_timeout_ms=6000),
        )
        asyncio.run(_run_until_caught_up(runner))
        assert runner.stats.applied == N  # nothing was committed: everything redelivered
        assert_exact(p.store, counts)
    finally:
        p.close()


def test_violations_episodes_and_states_upsert(projection):
    t0 = datetime(2025, 1, 6, 9, tzinfo=UTC)
    violations = [
        Violation(
            violation_id=f"00000000-0000-4000-8000-{i:012d}",
            category=ViolationCategory.TOOL_ERROR if i % 3 else ViolationCategory.WRONG_RESULT,
            agent_id=f"agent-{i % 4}",
            run_id=f"run-{i}",
            task_id=None,
            tenant="default",
            time=t0 + timedelta(seconds=i),
            detected_by=f"0194a000-0000-7000-8000-{i:012d}",
            event_ids=(f"0194a000-0000-7000-8000-{i:012d}",),
            tool="search",
        )
        for i in range(30)
    ]
    episodes = [
        Episode(
            episode_id=f"00000000-0000-4000-9000-{i:012d}",
            revision=0,
            agent_id=f"agent-{i % 4}",
            run_id=None,
            task_id=None,
            tenant="default",
            time=t0 + timedelta(seconds=i),
            situation="s",
            action="a",
            tool="search",
            outcome="failure",
            result="r",
        )
        for i in range(10)
    ]
    revised = [msgspec.structs.replace(e, revision=1, lesson="retry later") for e in episodes[:4]]
    states = [
        AgentState(
            agent_id="agent-1",
            events_total=n,
            world=Outlook(actions=n, errors=1, mismatches=2, failed=3, recent_success_rate=0.5),
        )
        for n in (3, 7, 12)
    ]

    def recs(topic, values):
        return [Record(topic, 0, i, None, v, 0) for i, v in enumerate(values)]

    for _ in range(2):  # everything delivered twice
        projection.apply(recs(VIOLATIONS, violations))
        projection.apply(recs(EPISODES, episodes))
        projection.apply(recs(EPISODES, revised))
        projection.apply(recs(STATE, states))
    s = projection.store
    assert s.scalar("SELECT count() FROM violations") == 30  # exact even without FINAL
    assert dict(s.rows("SELECT category, count() FROM violations FINAL GROUP BY category")) == {
        "tool_error": 20,
        "wrong_result": 10,
    }
    assert s.scalar("SELECT count() FROM episodes FINAL") == 10
    assert s.scalar("SELECT countIf(revision = 1) FROM episodes FINAL") == 4
    assert s.scalar("SELECT count() FROM episodes") == 14  # each (id, revision) once
    assert s.rows(
        "SELECT agent_id, events_total, actions, errors, mismatches, failed, recent_success_rate "
        "FROM agent_state FINAL"
    ) == [("agent-1", 12, 12, 1, 2, 3, 0.5)]


def test_decoders_read_what_the_processors_write(projection):
    ev = next(iter(sample_events(1)))
    v = Violation(
        violation_id="00000000-0000-4000-8000-000000000001",
        category=ViolationCategory.TIMEOUT,
        agent_id="a",
        run_id=None,
        task_id=None,
        tenant="default",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        detected_by="0194a000-0000-7000-8000-000000000001",
        event_ids=(),
    )
    state = AgentState(agent_id="a")
    d = projection.decoders
    assert d[EVENTS](encode_event(ev)) == ev
    assert d[VIOLATIONS](encode_derived(v)) == v
    assert d[STATE](encode_state(state)) == state
    assert set(d) == set(projection.topics)


def test_build_aside_and_swap_in(url, sample):
    """The replay hook: rebuild into another database, then swap it in atomically."""
    events, counts = sample
    live = AnalyticsProjection(url)
    live.setup()
    try:
        live.apply(records(events[:100]))
        rebuild = AnalyticsProjection(url, database="rebuild_1")
        rebuild.setup()
        rebuild.apply_table(events_to_table(events))
        rebuild.close()
        live.store.replace_live_with("rebuild_1")
        assert_exact(live.store, counts)
        live.apply(records(events))  # the live projection goes on, idempotently
        assert_exact(live.store, counts)
    finally:
        live.close()


async def _produce(bootstrap: str, events) -> None:
    from streams.producer import EventProducer

    async with EventProducer(bootstrap) as producer:
        for e in events:
            await producer.send(e)
        await producer.flush()


async def _run_until_caught_up(runner: ProjectionRunner) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        assert await wait_until(lambda: runner.caught_up() and runner.stats.applied >= N, 120), (
            runner.stats
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


# --- the run model across agents ------------------------------------------------------------


def _run_truth(events: list) -> dict[str, dict]:
    """Per run, from the raw events: what the `runs` view must say (docs/analytics.md)."""
    from streams.simulator import is_mismatch

    starts = {(e.agentid, e.data.call_id): e for e in events if e.type == "agent.act.started.v1"}
    rank = {"succeeded": 1, "cancelled": 2, "failed": 3}
    out: dict[str, dict] = {}
    for e in events:
        if e.runid is None:
            continue
        r = out.setdefault(
            e.runid,
            {"agents": set(), "events": 0, "actions": 0, "errors": 0, "mismatches": 0,
             "cost": 0.0, "finish": None, "goal": None, "first": e.time, "last": e.time},
        )  # fmt: skip
        r["agents"].add(e.agentid)
        r["events"] += 1
        r["first"], r["last"] = min(r["first"], e.time), max(r["last"], e.time)
        r["cost"] += getattr(e.data, "cost_usd", 0.0)
        if e.type == "agent.act.completed.v2":
            r["actions"] += 1
            r["errors"] += e.data.status == "error"
            start = starts.get((e.agentid, e.data.call_id))
            r["mismatches"] += start is not None and is_mismatch(start, e)
        elif e.type == "agent.lifecycle.run_finished.v1":
            key = (e.time, rank[e.data.status])
            if r["finish"] is None or key > r["finish"]:
                r["finish"] = key
        elif e.type == "agent.lifecycle.run_started.v1" and (
            r["goal"] is None or (e.time, e.data.goal) < r["goal"]
        ):
            r["goal"] = (e.time, e.data.goal)
    names = {v: k for k, v in rank.items()}
    for r in out.values():
        r["status"] = names[r["finish"][1]] if r["finish"] else "running"
        r["goal"] = r["goal"][1] if r["goal"] else None
    return out


def _team_records(events: list, derived: list) -> list[Record]:
    recs = records_by_agent(events)
    vs = [d for d in derived if isinstance(d, Violation)]
    return recs + [Record(VIOLATIONS, 0, i, None, v, 0) for i, v in enumerate(vs)]


def records_by_agent(events: list) -> list[Record]:
    """Like the runner: one agent's events on one partition (by a stable hash), in order."""
    import zlib

    out = []
    offsets: Counter[int] = Counter()
    for e in events:
        part = zlib.crc32(e.agentid.encode()) % 4
        out.append(Record(EVENTS, part, offsets[part], e.agentid.encode(), e, 0))
        offsets[part] += 1
    return out


def test_team_runs_are_one_row_each_and_match_the_raw_events(projection):
    """A simulated team workload: a run has events of up to four agents, every member
    reports run_finished. `runs` has one row per run with the raw events' answers, also
    after the whole log is applied again in another order."""
    from streams.reducer import fold
    from streams.simulator import SimulationConfig, generate

    events = list(generate(SimulationConfig(agents=8, runs=40, seed=5)))
    states, derived = fold(events)
    truth = _run_truth(events)
    recs = _team_records(events, derived)
    projection.apply(recs[: len(recs) // 2])
    projection.apply(recs[len(recs) // 3 :])  # overlapping: redelivery
    projection.apply(list(reversed(recs)))  # the whole log again, violations first
    rows = projection.store.query_arrow("SELECT * FROM runs").to_pylist()
    assert len(rows) == len(truth) == 40
    assert max(len(t["agents"]) for t in truth.values()) >= 3  # really team runs
    assert sum(r["finishes"] for r in rows) > len(rows)  # several reports per run
    for r in rows:
        t = truth[r["run_id"]]
        assert r["agents"] == sorted(t["agents"])
        assert (r["status"], r["goal"]) == (t["status"], t["goal"])
        assert (r["events"], r["actions"], r["errors"], r["mismatches"]) == (
            t["events"], t["actions"], t["errors"], t["mismatches"]
        )  # fmt: skip
        assert r["failed"] == t["errors"] + t["mismatches"]
        assert r["cost_usd"] == pytest.approx(t["cost"], abs=1e-9)
        assert r["started_at"] == t["first"] and r["ended_at"] == t["last"]
    assert sum(t["mismatches"] for t in truth.values()) > 0
    # a page of one agent's runs, newest first
    page = projection.store.query_arrow(
        _q("recent_runs"), NAMED_QUERIES["recent_runs"].bind({"agent": "coder-1", "limit": 500})
    ).to_pylist()
    want = sorted(
        (k for k, t in truth.items() if "coder-1" in t["agents"]),
        key=lambda k: (-truth[k]["first"].timestamp(), k),
    )
    assert [r["run_id"] for r in page] == want and want
    # each agent's own status: the same in ClickHouse and in the agent's folded state
    shares = projection.store.query_arrow(
        NAMED_QUERIES["run_agent_costs"].sql, {"run_id": "", "limit": 100_000}
    ).to_pylist()
    compared = 0
    for row in shares:
        run = states[row["agent_id"]].runs.get(row["run_id"])
        if run is not None:  # the state keeps the agent's latest run_window runs
            assert row["agent_status"] == run.status, (row["agent_id"], row["run_id"])
            assert (row["actions"], row["errors"], row["mismatches"], row["failed"]) == (
                run.world.actions, run.world.errors, run.world.mismatches, run.world.failed
            )  # fmt: skip
            compared += 1
    assert compared >= 20
    by_run: dict[str, float] = {}
    for row in shares:
        by_run[row["run_id"]] = by_run.get(row["run_id"], 0.0) + row["cost_share"]
    assert all(abs(v - 1) < 1e-3 for v in by_run.values() if v)


def test_conflicting_run_finished_reports_follow_the_documented_rule(projection):
    """Latest event time wins; equal times: failed > cancelled > succeeded; flagged."""
    ids = Uuid7Generator(3)
    t0 = datetime(2025, 3, 1, tzinfo=UTC)

    def ev(agent: str, run: str, data, at: float):
        when = t0 + timedelta(seconds=at)
        return new_event(
            data, id=ids.new(int(when.timestamp() * 1000)), time=when, agentid=agent, runid=run
        )

    fin = p.RunFinished
    events = [
        ev("lead", "late-wins", p.RunStarted(goal="g1"), 0),
        ev("lead", "late-wins", fin(status="failed"), 10),
        ev("member", "late-wins", fin(status="succeeded"), 11),
        ev("lead", "tie", p.RunStarted(goal="g2"), 0),
        ev("lead", "tie", fin(status="succeeded"), 10),
        ev("member", "tie", fin(status="cancelled"), 10),
        ev("lead", "agree", p.RunStarted(goal="g3"), 0),
        ev("lead", "agree", fin(status="succeeded"), 10),
        ev("member", "agree", fin(status="succeeded"), 9),
        ev("lead", "open", p.RunStarted(goal="g4"), 0),
    ]
    projection.apply(records_by_agent(events))
    got = {
        r[0]: r[1:]
        for r in projection.store.rows(
            "SELECT run_id, status, status_conflict, finishes, started_by, "
            "toString(finished_at) FROM runs"
        )
    }
    assert got == {
        "late-wins": ("succeeded", True, 2, "lead", "2025-03-01 00:00:11.000000"),
        "tie": ("cancelled", True, 2, "lead", "2025-03-01 00:00:10.000000"),
        "agree": ("succeeded", False, 2, "lead", "2025-03-01 00:00:10.000000"),
        "open": ("running", False, 0, "lead", None),
    }
    assert dict(
        projection.store.rows("SELECT status, runs FROM (" + _q("runs_by_status") + ")")
    ) == {
        "succeeded": 2,
        "cancelled": 1,
        "running": 1,
    }


def _q(name: str) -> str:
    return NAMED_QUERIES[name].sql


def test_docs_describe_every_column_of_the_runs_view(projection):
    """docs/analytics.md documents the view `runs` column by column with exact types (the
    tables are checked by tests/test_query.py) and the final-status rule."""
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "analytics.md").read_text()
    cols = projection.store.rows(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = 'runs'",
        {"db": projection.store.database},
    )
    assert len(cols) == 21
    section = doc[doc.index("### `runs`") : doc.index("### Rollups")]
    for name, ctype in cols:
        assert f"| `{name}` | {ctype} |" in section, f"runs.{name} {ctype} not documented"
    assert "latest event time" in section and "more severe" in section
    for name in ("run_agent_costs", "runs_by_status", "recent_runs"):
        assert f"### `{name}`" in doc


def _state_field(path: str) -> bool:
    """Whether ``path`` (``world.actions``, ``run.goal``) names a field of AgentState's JSON."""
    import typing

    from schemas.state import RunState

    nested = {"world": Outlook, "run": RunState}
    head, _, rest = path.partition(".")
    if head not in AgentState.__struct_fields__:
        return False
    if not rest:
        return True
    inner = nested.get(head)
    assert inner is not None, f"no struct known for {head}"
    assert typing.get_type_hints(AgentState)[head] in (inner, inner | None)
    return rest in inner.__struct_fields__


def test_docs_map_every_agent_state_column_to_the_state_json(projection):
    """docs/analytics.md maps the `agent_state` table to `agentstream state --json` column by
    column (issue 15: the state nests totals under `world`, the table is flat): every
    column is in the mapping exactly once, every state field it names exists, and every
    top-level field of the state is either mapped or listed as not in the table."""
    import re
    from pathlib import Path

    from schemas.state import ToolStats

    doc = (Path(__file__).parent.parent / "docs" / "analytics.md").read_text()
    start = doc.index("#### `agent_state` columns and the state's JSON")
    section = doc[start : doc.index("\n### ", start)]
    columns = {
        name
        for (name,) in projection.store.rows(
            "SELECT name FROM system.columns WHERE database = {db:String} "
            "AND table = 'agent_state'",
            {"db": projection.store.database},
        )
    }
    mapped: list[str] = []
    named_fields: set[str] = set()
    not_in_table: set[str] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("column", "---"):
            continue
        left = re.findall(r"`([\w.]+)`", cells[0])
        right = re.findall(r"`([\w.]+)`", cells[1])
        if cells[0] == "—":  # state fields the table leaves out
            assert right and all(_state_field(f) for f in right), right
            not_in_table |= {f.split(".")[0] for f in right if "." not in f}
            continue
        mapped += left
        if cells[1].startswith("—"):  # a column of the table only
            continue
        if cells[1] == "the field of the same name":
            fields = left
        elif cells[1].startswith("`world.` + the same name"):
            fields = [f"world.{name}" for name in left]
        else:
            mapping, _, per_tool = cells[1].partition("(per tool:")
            fields = re.findall(r"`([\w.]+)`", mapping)
            for name in re.findall(r"`(\w+)`", per_tool):
                assert name in ToolStats.__struct_fields__, name
        assert fields and all(_state_field(f) for f in fields), (left, fields)
        named_fields |= {f.split(".")[0] for f in fields}
    assert sorted(mapped) == sorted(columns), "each agent_state column mapped exactly once"
    unaccounted = set(AgentState.__struct_fields__) - named_fields - not_in_table
    assert not unaccounted, f"state fields neither mapped nor listed as left out: {unaccounted}"


QUANTILE_LOW_BOUND = 2**-7
"""Documented (docs/analytics.md, "Quantiles"): a rollup quantile is at most 2^-7 (0.78125%)
below the exact nearest-rank quantile and never above it by more than 2^-24 (float32)."""


def nearest_rank(values: list[float], level: float) -> float:
    """The smallest value with at least level * N values <= it (the rollups' rank rule)."""
    ordered = sorted(values)
    k = max(1, math.ceil(level * len(ordered)))
    return ordered[k - 1]


def test_tool_quantiles_stay_within_the_documented_bound(projection):
    """Seeded simulator durations (log-normal per tool, 0.1 ms resolution) through the
    projection; `slowest_tools` against the exact nearest-rank quantiles of the raw values."""
    from streams.simulator import SimulationConfig, generate

    events = list(generate(SimulationConfig(agents=8, runs=150, seed=21)))
    projection.apply(records_by_agent(events))
    raw: dict[str, list[float]] = {}
    for e in events:
        if e.type == "agent.act.completed.v2":
            raw.setdefault(e.data.tool, []).append(e.data.duration_ms)
    rows = projection.store.query_arrow(
        _q("slowest_tools"), {"limit": 100, "min_calls": 1}
    ).to_pylist()
    assert {r["tool"] for r in rows} == set(raw)
    worst = 0.0
    checked = 0
    for r in rows:
        values = raw[r["tool"]]
        assert r["calls"] == len(values)
        for level, col in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            exact = nearest_rank(values, level)
            got = r[col]
            slack = 0.05 / exact  # the query rounds to 0.1 ms
            rel = (exact - got) / exact
            assert -(2**-24) - slack <= rel < QUANTILE_LOW_BOUND + slack, (r["tool"], level)
            worst = max(worst, rel - slack)
            checked += 1
    assert checked >= 30
    assert worst < QUANTILE_LOW_BOUND
    # without the rounding of the query: the merged states themselves
    q = projection.store.rows(
        "SELECT tool, quantilesBFloat16Merge(0.5, 0.95, 0.99)(duration_ms) FROM tool_minute "
        "GROUP BY tool"
    )
    raw_worst = 0.0
    for tool, qs in q:
        for level, got in zip((0.5, 0.95, 0.99), qs, strict=True):
            exact = nearest_rank(raw[tool], level)
            rel = (exact - got) / exact
            assert -(2**-24) <= rel < QUANTILE_LOW_BOUND
            raw_worst = max(raw_worst, rel)
    print(f"worst relative error: {raw_worst:.5%} (bound {QUANTILE_LOW_BOUND:.5%})")


def test_run_rollups_left_short_are_rebuilt_from_events_and_violations(url):
    """Both sources of the run rollups are checked and both are replayed into the repair."""
    from streams.reducer import fold
    from streams.simulator import SimulationConfig, generate

    events = list(generate(SimulationConfig(agents=6, runs=15, seed=8)))
    _, derived = fold(events)
    p = AnalyticsProjection(url)
    p.setup()
    p.apply(_team_records(events, derived))
    snapshot = "SELECT * EXCEPT cost_usd, round(cost_usd, 9) FROM runs ORDER BY run_id"
    before = p.store.rows(snapshot)
    assert sum(r[14] for r in before) > 0  # mismatches, from violations
    db = p.store.database
    p.store.command(f"TRUNCATE TABLE {db}.run_totals")
    p.store.command(
        f"INSERT INTO {db}.run_agent "
        + schema.rollup_select(schema.ROLLUP_BY_VIEW["run_agent_violations_mv"], db)
    )  # violations counted twice in run_agent
    assert p.verify_rollups()["run_totals"] == [0]
    assert p.verify_rollups()["run_agent"] == [0]
    p.close()
    again = AnalyticsProjection(url)
    try:
        again.setup()
        assert not any(again.verify_rollups().values())
        assert again.store.rows(snapshot) == before  # cost: float sums in another order
    finally:
        again.close()


def test_a_version_2_store_is_upgraded_and_its_runs_backfilled(url, sample):
    """A store from before the run model: migrations 3 and 4 add the run rollups and rename
    the columns; the start-up check fills the new rollups from the events already held."""
    events, counts = sample
    with AnalyticsStore(url) as store:
        assert schema.migrate(store, target=2) == [1, 2]
        store.insert_arrow(store.table("events"), events_table(events))
        store.command(
            "INSERT INTO agent_state (agent_id, tenant, version, status, stopped, "
            "open_actions, events_total, actions_ok, actions_failed, success_rate, "
            "failures_in_a_row, input_tokens, output_tokens, cost_usd, lessons, counts, tools) "
            "VALUES ('agent-000', 'default', 5, 'idle', false, 0, 5, 3, 2, 0.6, 0, 0, 0, 0, 0, "
            "map(), '{}')"
        )
        assert store.scalar("SELECT sum(failures) FROM tool_minute") == counts.failed_actions
    p = AnalyticsProjection(url)
    try:
        p.setup()
        s = p.store
        assert s.schema_version() == schema.SCHEMA_VERSION
        assert s.scalar("SELECT sum(errors) FROM tool_minute") == counts.failed_actions
        assert s.rows("SELECT count(), sum(events) FROM runs") == [(counts.runs, counts.total)]
        assert s.rows(
            "SELECT failed, recent_success_rate, actions, errors FROM agent_state FINAL"
        ) == [(2, 0.6, 0, 0)]  # renamed; the new counters come with the agent's next state
        p.apply(records(events))  # the views feed the upgraded tables, nothing twice
        assert_exact(s, counts)
    finally:
        p.close()
