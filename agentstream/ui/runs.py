"""The runs list: one row per run across agents, from the analytics run model.

Filters and sorting are bound as ClickHouse parameters (never pasted into the SQL); the
sort column comes from a fixed list. Paging is LIMIT/OFFSET with an exact total. The page
is chosen on the raw ``run_totals`` rollup rows (GROUP BY on plain columns), and only the
page's runs are merged and finalised; the ``runs`` view (which finalises every run with
FINAL on each read) is the fallback for a store without the rollup.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agentstream.ui.backends import Backends, NotFound
from projections.analytics.schema import RUN_STATUS_SQL

RUNS_FROM = "runs"
"""The analytics ``runs`` view: one row per run across agents (merged rollups)."""

COLUMNS = (
    "run_id",
    "tenant",
    "goal",
    "status",
    "agents",
    "started_at",
    "ended_at",
    "duration_s",
    "events",
    "actions",
    "errors",
    "mismatches",
    "failed",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "violations",
)
SORTS = {
    "started": "started_at",
    "duration": "duration_s",
    "events": "events",
    "actions": "actions",
    "errors": "errors",
    "violations": "violations",
    "tokens": "input_tokens + output_tokens",
    "cost": "cost_usd",
}
MAX_PAGE = 500


@dataclass(frozen=True)
class RunFilter:
    agent: str | None = None
    status: str | None = None
    tenant: str | None = None
    goal: str | None = None  # case-insensitive substring
    since: datetime | None = None  # started at or after
    until: datetime | None = None  # started before
    sort: str = "started"
    desc: bool = True
    limit: int = 50
    offset: int = 0

    def where(self) -> tuple[str, dict[str, Any]]:
        conds: list[str] = []
        params: dict[str, Any] = {}
        if self.agent:
            conds.append("has(agents, {agent:String})")
            params["agent"] = self.agent
        if self.status:
            conds.append("status = {status:String}")
            params["status"] = self.status
        if self.tenant:
            conds.append("tenant = {tenant:String}")
            params["tenant"] = self.tenant
        if self.goal:
            conds.append("positionCaseInsensitiveUTF8(goal, {goal:String}) > 0")
            params["goal"] = self.goal
        if self.since is not None:
            conds.append("started_at >= {since:DateTime64(6, 'UTC')}")
            params["since"] = self.since
        if self.until is not None:
            conds.append("started_at < {until:DateTime64(6, 'UTC')}")
            params["until"] = self.until
        return (" WHERE " + " AND ".join(conds) if conds else ""), params


_SELECT = """
SELECT run_id, tenant, goal, status, agents,
       toUnixTimestamp64Micro(started_at) AS started_us,
       if(ended_at IS NULL, NULL, toUnixTimestamp64Micro(assumeNotNull(ended_at))) AS ended_us,
       duration_s * 1000 AS duration_ms, events, actions, errors, mismatches, failed,
       input_tokens + output_tokens AS tokens, cost_usd, violations
FROM {src}{where}
"""


def _row(r: dict[str, Any]) -> dict[str, Any]:
    r["agents"] = list(r.get("agents") or [])
    return r


# Sort keys over the raw ``run_totals`` rollup, whose merged values the view shows: summing
# and taking min/max of plain columns is what FINAL does for them, without finalising every
# run's goal (the costly part of reading the view).
_RAW_SORTS = {
    "started": "min(first_time)",
    "duration": "dateDiff('microsecond', min(first_time), max(last_time))",
    "events": "sum(events)",
    "actions": "sum(actions)",
    "errors": "sum(errors)",
    "violations": "sum(violations)",
    "tokens": "sum(input_tokens) + sum(output_tokens)",
    "cost": "sum(cost_usd)",
}

# The page's rows, merged from ``run_totals`` by GROUP BY on the page's keys only: the same
# values as the ``runs`` view (schema.py ``_runs_view``), without FINAL over every run.
_PAGE_ROWS = f"""
SELECT run_id, tenant, m_goal AS goal, m_status AS status, m_agents AS agents,
       toUnixTimestamp64Micro(m_first) AS started_us,
       if(m_last IS NULL, NULL, toUnixTimestamp64Micro(assumeNotNull(m_last))) AS ended_us,
       round(dateDiff('microsecond', m_first, m_last) / 1e6, 3) * 1000 AS duration_ms,
       m_events AS events, m_actions AS actions, m_errors AS errors,
       m_mismatches AS mismatches, m_errors + m_mismatches AS failed,
       m_in + m_out AS tokens, m_cost AS cost_usd, m_violations AS violations
FROM
(
    SELECT r.tenant AS tenant, r.run_id AS run_id,
        nullIf(argMinMerge(r.goal), '') AS m_goal,
        {RUN_STATUS_SQL.format(f="max(r.finish)")} AS m_status,
        arraySort(CAST(groupUniqArrayArray(r.agents), 'Array(String)')) AS m_agents,
        CAST(min(r.first_time) AS Nullable(DateTime64(6, 'UTC'))) AS m_first,
        CAST(max(r.last_time) AS Nullable(DateTime64(6, 'UTC'))) AS m_last,
        toUInt64(sum(r.events)) AS m_events,
        toUInt64(sum(r.actions)) AS m_actions,
        toUInt64(sum(r.errors)) AS m_errors,
        toUInt64(sum(r.mismatches)) AS m_mismatches,
        toUInt64(sum(r.input_tokens)) AS m_in,
        toUInt64(sum(r.output_tokens)) AS m_out,
        toFloat64(sum(r.cost_usd)) AS m_cost,
        toUInt64(sum(r.violations)) AS m_violations
    FROM run_totals AS r
    WHERE r.run_id IN {{ids:Array(String)}}
    GROUP BY tenant, run_id
)
"""


def _page_keys(
    backends: Backends, flt: RunFilter, limit: int
) -> tuple[list[tuple[str, str]], int] | None:
    """The page's (tenant, run id) keys and the number of runs matching, chosen on the raw
    ``run_totals`` rows with GROUP BY on plain columns (sums, min/max, the status's ``finish``
    code); the goal is finalised only when the goal text is filtered on. None on a store
    without the rollup (the view answers)."""
    from projections.analytics.reader import QueryError

    conds, having, params = [], [], {}
    if flt.tenant:
        conds.append("tenant = {tenant:String}")
        params["tenant"] = flt.tenant
    if flt.agent:
        # rows naming the agent (one per insert batch at most), then every row of those runs
        conds.append(
            "(tenant, run_id) IN "
            "(SELECT tenant, run_id FROM run_totals WHERE has(agents, {agent:String}))"
        )
        params["agent"] = flt.agent
    if flt.status:
        having.append(RUN_STATUS_SQL.format(f="max(finish)") + " = {status:String}")
        params["status"] = flt.status
    if flt.goal:
        having.append("positionCaseInsensitiveUTF8(argMinMerge(goal), {goal:String}) > 0")
        params["goal"] = flt.goal
    if flt.since is not None:
        having.append("min(first_time) >= {since:DateTime64(6, 'UTC')}")
        params["since"] = flt.since
    if flt.until is not None:
        having.append("min(first_time) < {until:DateTime64(6, 'UTC')}")
        params["until"] = flt.until
    sql = (
        "SELECT tenant, run_id, count() OVER () AS total_matching FROM run_totals"
        + (" WHERE " + " AND ".join(conds) if conds else "")
        + " GROUP BY tenant, run_id"
        + (" HAVING " + " AND ".join(having) if having else "")
        + f" ORDER BY {_RAW_SORTS[flt.sort]} {'DESC' if flt.desc else 'ASC'}, run_id, tenant"
        + f" LIMIT {limit} OFFSET {max(0, flt.offset)}"
    )
    try:
        rows = backends.query(sql, params)
    except QueryError:
        return None  # a store without the rollup: the view answers
    if rows:
        return [(r["tenant"], r["run_id"]) for r in rows], int(rows[0]["total_matching"])
    if flt.offset <= 0:
        return [], 0
    # past the end: count separately
    count = (
        "SELECT count() AS n FROM (SELECT 1 FROM run_totals"
        + (" WHERE " + " AND ".join(conds) if conds else "")
        + " GROUP BY tenant, run_id"
        + (" HAVING " + " AND ".join(having) if having else "")
        + ")"
    )
    return [], int(backends.query(count, params)[0]["n"])


def list_runs(backends: Backends, flt: RunFilter) -> dict[str, Any]:
    """One page of runs, the exact number matching, and the filter echoed back.

    The page is chosen on the ``run_totals`` rollup (every filter and sort has a form over
    its plain columns), then only the page's runs are merged and finalised (goal, agents,
    status). Reading the ``runs`` view instead would finalise every run with FINAL on each
    request (docs/ui.md, figures)."""
    if flt.sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {flt.sort!r}")
    limit = max(1, min(flt.limit, MAX_PAGE))
    picked = _page_keys(backends, flt, limit)
    if picked is not None:
        keys, total = picked
        found = (
            {
                (r["tenant"], r["run_id"]): r
                for r in backends.query(_PAGE_ROWS, {"ids": sorted({k[1] for k in keys})})
            }
            if keys
            else {}
        )
        return {
            "runs": [_row(found[k]) for k in keys if k in found],
            "total": total,
            "offset": max(0, flt.offset),
            "limit": limit,
            "sort": flt.sort,
            "desc": flt.desc,
        }
    return _list_from_view(backends, flt, limit)


def _list_from_view(backends: Backends, flt: RunFilter, limit: int) -> dict[str, Any]:
    """The same page from the ``runs`` view (a store whose rollup cannot be read raw)."""
    where, params = flt.where()
    order = f"{SORTS[flt.sort]} {'DESC' if flt.desc else 'ASC'}, run_id"
    # one statement: the page and the number of matching runs (a window over the filtered
    # rows, computed before LIMIT), so the view is merged once per request
    rows = backends.query(
        _SELECT.format(src=RUNS_FROM, where=where).replace(
            "SELECT run_id,", "SELECT count() OVER () AS total_matching, run_id,", 1
        )
        + f" ORDER BY {order} LIMIT {limit} OFFSET {max(0, flt.offset)}",
        params,
    )
    if rows:
        total = rows[0]["total_matching"]
    elif flt.offset > 0:  # past the end: count separately
        total = backends.query(f"SELECT count() AS n FROM {RUNS_FROM}{where}", params)[0]["n"]
    else:
        total = 0
    for r in rows:
        del r["total_matching"]
    return {
        "runs": [_row(r) for r in rows],
        "total": int(total),
        "offset": max(0, flt.offset),
        "limit": limit,
        "sort": flt.sort,
        "desc": flt.desc,
    }


def get_run(backends: Backends, run_id: str) -> dict[str, Any]:
    """One run, merged from ``run_totals`` on its key only (the view would merge every run)."""
    from projections.analytics.reader import QueryError

    try:
        rows = backends.query(_PAGE_ROWS + " LIMIT 1", {"ids": [run_id]})
    except QueryError:
        rows = backends.query(
            _SELECT.format(src=RUNS_FROM, where=" WHERE run_id = {run:String}") + " LIMIT 1",
            {"run": run_id},
        )
    if not rows:
        raise NotFound(f"no run {run_id!r} in analytics")
    return _row(rows[0])


def facets(backends: Backends) -> dict[str, list[str]]:
    """Values for the filter pickers: statuses, tenants and agents that occur, read from the
    raw ``run_totals`` rows (the same sets as the view's, without finalising every run)."""
    from projections.analytics.reader import QueryError

    status = RUN_STATUS_SQL.format(f="max(finish)")
    raw = (
        (
            "statuses",
            f"SELECT DISTINCT s AS v FROM (SELECT {status} AS s FROM run_totals "
            "GROUP BY tenant, run_id) ORDER BY v LIMIT 100",
        ),
        ("tenants", "SELECT DISTINCT tenant AS v FROM run_totals ORDER BY v LIMIT 1000"),
        (
            "agents",
            "SELECT DISTINCT arrayJoin(agents) AS v FROM run_totals ORDER BY v LIMIT 5000",
        ),
    )
    view = (
        ("statuses", f"SELECT DISTINCT status AS v FROM {RUNS_FROM} ORDER BY v LIMIT 100"),
        ("tenants", f"SELECT DISTINCT tenant AS v FROM {RUNS_FROM} ORDER BY v LIMIT 1000"),
        (
            "agents",
            f"SELECT DISTINCT arrayJoin(agents) AS v FROM {RUNS_FROM} ORDER BY v LIMIT 5000",
        ),
    )
    out: dict[str, list[str]] = {}
    for (key, sql), (_, fallback) in zip(raw, view, strict=True):
        try:
            rows = backends.query(sql)
        except QueryError:
            rows = backends.query(fallback)
        out[key] = [str(r["v"]) for r in rows]
    return out
