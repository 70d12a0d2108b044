"""The learning measures in analytics: ``run_agent``'s decisions, decisions with recall and
feedback (schema version 7) equal a fold of the raw events, an older store is migrated
with them recomputed, and ``dash_learning``'s slices and fits equal the same computation
done here in Python over the raw events."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from projections.analytics import schema
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.queries import NAMED_QUERIES
from projections.analytics.store import AnalyticsStore
from schemas.arrow import events_to_table
from schemas.derived import Violation, ViolationCategory
from streams.reducer import fold
from streams.simulator import SimulationConfig, generate

pytestmark = pytest.mark.integration

POINTS = 4


@pytest.fixture(scope="module")
def workload() -> tuple[list, list[Violation]]:
    events = list(generate(SimulationConfig(agents=6, runs=40, seed=5)))
    _, derived = fold(events)
    return events, [d for d in derived if isinstance(d, Violation)]


@dataclass
class Run:
    """What one agent did in one run, folded from its raw events."""

    start: datetime | None = None  # its earliest run_started
    first: datetime | None = None  # its earliest event
    actions: int = 0
    errors: int = 0
    mismatches: int = 0
    decisions: int = 0
    recalled: int = 0
    scores: list[float] = field(default_factory=list)

    @property
    def started(self) -> datetime:
        return self.start or self.first  # type: ignore[return-value]

    def values(self) -> dict[str, float | None]:
        return {
            "success": 1 - (self.errors + self.mismatches) / self.actions if self.actions else None,
            "feedback": sum(self.scores) / len(self.scores) if self.scores else None,
            "recall": self.recalled / self.decisions if self.decisions else None,
        }


def fold_runs(events: list, violations: list[Violation]) -> dict[tuple[str, str], Run]:
    runs: dict[tuple[str, str], Run] = defaultdict(Run)
    for e in events:
        if e.runid is None:
            continue
        r = runs[(e.agentid, e.runid)]
        r.first = e.time if r.first is None else min(r.first, e.time)
        kind = e.type.rsplit(".", 1)[0]
        if kind == "agent.lifecycle.run_started":
            r.start = e.time if r.start is None else min(r.start, e.time)
        elif kind == "agent.act.completed":
            r.actions += 1
            r.errors += e.data.status == "error"
        elif kind == "agent.think.decision":
            r.decisions += 1
            r.recalled += bool(e.data.recalled_episodes)
        elif kind == "agent.learn.feedback":
            r.scores.append(e.data.score)
    for v in violations:
        if v.run_id is not None and v.category == ViolationCategory.WRONG_RESULT:
            runs[(v.agent_id, v.run_id)].mismatches += 1
    return runs


def load(projection: AnalyticsProjection, events: list, violations: list[Violation]) -> None:
    projection.apply_table(events_to_table(events))
    projection.apply_violations(violations)


def rollup(store: AnalyticsStore) -> dict[tuple[str, str], tuple]:
    rows = store.rows(
        "SELECT agent_id, run_id, decisions, decisions_with_recall, feedback_events, "
        "feedback_score_sum, actions, errors + mismatches FROM run_agent FINAL"
    )
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def expected_rollup(runs: dict[tuple[str, str], Run]) -> dict[tuple[str, str], tuple]:
    return {
        k: (
            r.decisions,
            r.recalled,
            len(r.scores),
            sum(r.scores),
            r.actions,
            r.errors + r.mismatches,
        )
        for k, r in runs.items()
    }


def assert_rollup_equals(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k, w in want.items():
        g = got[k]
        assert g[:3] == w[:3] and g[4:] == w[4:], k
        assert g[3] == pytest.approx(w[3], abs=1e-9), k


def test_run_agent_counts_equal_a_fold_of_the_raw_events(projection, workload) -> None:
    events, violations = workload
    runs = fold_runs(events, violations)
    assert sum(r.recalled for r in runs.values()) > 0 and sum(len(r.scores) for r in runs.values())
    load(projection, events, violations)
    assert_rollup_equals(rollup(projection.store), expected_rollup(runs))
    # applying the same events again changes nothing (the projection inserts only new rows)
    load(projection, events, violations)
    assert_rollup_equals(rollup(projection.store), expected_rollup(runs))
    assert projection.verify_rollups()["run_agent"] == []


def test_a_version_6_store_is_migrated_with_the_counts_recomputed(url, workload) -> None:
    events, violations = workload
    half = len(events) // 2
    # an older store: rows of decision v1 (no recall field) and v2 both in its history
    store = AnalyticsStore(url)
    try:
        assert schema.migrate(store, target=6)[-1] == 6
        old = events_to_table(events[:half])
        store.insert_arrow(store.table("events"), old)
        cols = {r[0] for r in store.rows("DESCRIBE TABLE run_agent")}
        assert "decisions" not in cols
    finally:
        store.close()
    p = AnalyticsProjection(url)
    try:
        p.setup()  # migrates to 7: columns added, views recreated, table recomputed
        assert p.store.schema_version() == schema.SCHEMA_VERSION >= 7
        p.apply_violations(violations)
        p.apply_table(events_to_table(events[half:]))  # new events flow through new views
        assert_rollup_equals(rollup(p.store), expected_rollup(fold_runs(events, violations)))
        assert p.verify_rollups()["run_agent"] == []
    finally:
        p.close()


def test_v1_decisions_in_the_store_count_as_decisions_without_recall(projection) -> None:
    from schemas import payloads as pl
    from schemas.envelope import new_event

    t = datetime(2026, 3, 1, tzinfo=UTC)
    ev = new_event(
        pl.Decision(chosen="x"),
        id="019c1c38-a402-7096-8bd1-799e309d6b79",
        time=t,
        agentid="old-agent",
        runid="old-run",
    )
    table = events_to_table([ev])
    table = table.set_column(1, "type", [["agent.think.decision.v1"]])  # as archived before v2
    projection.apply_table(table)
    got = rollup(projection.store)[("old-agent", "old-run")]
    assert got[:3] == (1, 0, 0)


# --- dash_learning -----------------------------------------------------------------------


def reference(runs: dict[tuple[str, str], Run], points: int) -> dict[tuple, dict]:
    """dash_learning computed in Python: per agent, runs in start order numbered 1..N and
    cut into ``points`` slices; fleet slices pool every agent's same slice; fits over the
    runs with a value (x = run number), tenths = first/last ceil(N/10) runs of each agent."""
    by_agent: dict[str, list[Run]] = defaultdict(list)
    for (agent, _run), r in sorted(runs.items(), key=lambda kv: (kv[1].started, kv[0][1])):
        by_agent[agent].append(r)
    acc: dict[tuple, dict] = {}

    def add(key: tuple, x: int, r: Run, first: bool, last: bool) -> None:
        a = acc.setdefault(key, {"runs": 0, "x": [], "decisions": 0, "recalled": 0, "m": {}})
        a["runs"] += 1
        a["x"].append(x)
        a["decisions"] += r.decisions
        a["recalled"] += r.recalled
        for m, y in r.values().items():
            if y is not None:
                a["m"].setdefault(m, []).append((x, y, first, last))

    for agent, rs in by_agent.items():
        n = len(rs)
        tenth = math.ceil(n / 10)
        for i, r in enumerate(rs, start=1):
            at = (i - 1) * points // n
            first, last = i <= tenth, i > n - tenth
            for key in (
                ("agent", agent, at),
                ("fleet", "", at),
                ("agent", agent, None),
                ("fleet", "", None),
            ):
                add(key, i, r, first, last)
    return acc


def test_dash_learning_equals_the_computation_over_raw_events(projection, workload) -> None:
    events, violations = workload
    load(projection, events, violations)
    runs = fold_runs(events, violations)
    starts = defaultdict(list)
    for (agent, _), r in runs.items():
        starts[agent].append(r.started)
    assert all(len(set(v)) == len(v) for v in starts.values())  # no ties: order is by start
    q = NAMED_QUERIES["dash_learning"]
    names, raw = _query(projection.store, q.sql, q.bind({"points": POINTS}))
    rows = [dict(zip(names, row, strict=True)) for row in raw]
    want = reference(runs, POINTS)
    metrics = {"success_rate": "success", "feedback_score": "feedback", "recall_rate": "recall"}
    assert {(r["scope"], r["agent_id"], r["metric"], r["point"]) for r in rows} == {
        (*key[:2], metric, key[2]) for key in want for metric in metrics
    }
    for r in rows:
        w = want[(r["scope"], r["agent_id"], r["point"])]
        assert r["runs"] == w["runs"] and (r["run_from"], r["run_to"]) == (min(w["x"]), max(w["x"]))
        assert (r["decisions"], r["decisions_with_recall"]) == (w["decisions"], w["recalled"])
        pts = w["m"].get(metrics[r["metric"]], [])
        assert r["runs_with_value"] == len(pts)
        mean = sum(y for _, y, _, _ in pts) / len(pts) if pts else None
        assert r["value"] == (None if mean is None else pytest.approx(mean, abs=6e-5))
        if r["point"] is not None:
            assert r["slope"] is None and r["first_tenth"] is None and r["change"] is None
            continue
        slope = _slope(pts)
        assert r["slope"] == (None if slope is None else pytest.approx(slope, abs=2e-6))
        for part, flag in (("first_tenth", 2), ("last_tenth", 3)):
            ys = [p[1] for p in pts if p[flag]]
            exp = sum(ys) / len(ys) if ys else None
            assert r[part] == (None if exp is None else pytest.approx(exp, abs=2e-6))
    (fleet,) = [
        r for r in rows if (r["scope"], r["metric"], r["point"]) == ("fleet", "recall_rate", None)
    ]
    assert fleet["change"] > 0 and fleet["slope"] > 0  # the simulated agents recall more


def test_dash_learning_filters_by_tenant_and_time(projection, workload) -> None:
    events, violations = workload
    load(projection, events, violations)
    q = NAMED_QUERIES["dash_learning"]
    _, none = _query(projection.store, q.sql, q.bind({"tenant": "nobody"}))
    assert none == []
    _, rows = _query(projection.store, q.sql, q.bind({"until": "2026-01-01 00:00:00"}))
    assert rows == []  # the workload starts at 2026-01-01


def _slope(pts: list[tuple[int, float, bool, bool]]) -> float | None:
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, *_ in pts) / n
    my = sum(y for _, y, *_ in pts) / n
    sxx = sum((x - mx) ** 2 for x, *_ in pts)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y, *_ in pts) / sxx


def _query(store: AnalyticsStore, sql: str, params: dict) -> tuple[list[str], list[tuple]]:
    res = store.client.query(sql, parameters=params)
    return list(res.column_names), list(res.result_rows)
