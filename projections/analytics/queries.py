"""The named-query library: the questions analysts ask most, as reviewed SQL.

Each query reads the rollups where it can (fast on any history size; the run queries read
the view ``runs``, i.e. ``run_totals`` with ``FINAL``, which merges its rows per run in key
order, cheaper than a hash ``GROUP BY`` over a quarter million runs, and pick the rows
they return before computing them) and takes
ClickHouse query parameters (``{name:Type}``) with defaults. docs/analytics.md shows each
one's SQL; ``agentstream query --list`` lists them, ``--named NAME --param k=v`` runs one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from projections.analytics.schema import RUN_STATUS_SQL


@dataclass(frozen=True)
class Param:
    type: str  # ClickHouse type of the {name:Type} placeholder
    default: str
    help: str


@dataclass(frozen=True)
class NamedQuery:
    name: str
    title: str
    sql: str
    params: Mapping[str, Param] = field(default_factory=dict)

    def bind(self, given: Mapping[str, object] | None = None) -> dict[str, object]:
        """Defaults overlaid with ``given``; unknown names are an error."""
        given = dict(given or {})
        unknown = set(given) - set(self.params)
        if unknown:
            accepted = ", ".join(sorted(self.params)) or "none"
            raise KeyError(
                f"query {self.name!r} has no parameter(s) {', '.join(sorted(unknown))} "
                f"(accepted: {accepted})"
            )
        return {k: given.get(k, p.default) for k, p in self.params.items()}


_LIMIT = Param("UInt32", "20", "rows to return")

AGENT_LEADERBOARD = NamedQuery(
    "agent_leaderboard",
    "Agents ranked by action success rate (1 - failed / actions), with their cost and tokens",
    """
WITH mismatched AS
(
    SELECT v.tenant AS tenant, v.agent_id AS agent_id, count() AS n
    FROM violations AS v FINAL
    WHERE v.category = 'wrong_result'
    GROUP BY tenant, agent_id
)
SELECT
    m.tenant AS tenant,
    m.agent_id AS agent_id,
    sum(m.events) AS events,
    sumIf(m.events, startsWith(m.type, 'agent.act.completed.')) AS actions,
    sum(m.errors) AS errors,
    any(ifNull(x.n, 0)) AS mismatches,
    errors + mismatches AS failed,
    round(if(actions = 0, NULL, 1 - failed / actions), 4) AS success_rate,
    sum(m.input_tokens) + sum(m.output_tokens) AS tokens,
    round(sum(m.cost_usd), 6) AS cost_usd,
    max(m.minute) AS last_active
FROM agent_minute AS m
LEFT JOIN mismatched AS x ON x.tenant = m.tenant AND x.agent_id = m.agent_id
GROUP BY tenant, agent_id
ORDER BY success_rate DESC NULLS LAST, cost_usd ASC, agent_id
LIMIT {limit:UInt32}
""",
    {"limit": _LIMIT},
)

EVENT_TYPE_TREND = NamedQuery(
    "event_type_trend",
    "Events per type per time bucket over the most recent hours of data",
    """
SELECT
    toDateTime64(toStartOfInterval(m.minute, toIntervalMinute({bucket_minutes:UInt32})), 0, 'UTC')
        AS bucket,
    m.type AS type,
    sum(m.events) AS events
FROM agent_minute AS m
WHERE m.minute > (SELECT max(minute) FROM agent_minute) - toIntervalHour({hours:UInt32})
GROUP BY bucket, type
ORDER BY bucket, type
""",
    {
        "bucket_minutes": Param("UInt32", "60", "bucket width in minutes"),
        "hours": Param("UInt32", "24", "hours back from the newest event"),
    },
)

_TOOLS_SELECT = """
WITH mismatched AS
(
    SELECT v.tenant AS tenant, assumeNotNull(v.tool) AS tool, count() AS n
    FROM violations AS v FINAL
    WHERE v.category = 'wrong_result' AND v.tool IS NOT NULL
    GROUP BY tenant, tool
)
SELECT
    t.tenant AS tenant,
    t.tool AS tool,
    sum(t.calls) AS calls,
    sum(t.errors) AS errors,
    any(ifNull(x.n, 0)) AS mismatches,
    errors + mismatches AS failed,
    round(failed / calls, 4) AS failure_rate,
    quantilesBFloat16Merge(0.5, 0.95, 0.99)(t.duration_ms) AS q,
    round(toFloat64(q[1]), 1) AS p50_ms,
    round(toFloat64(q[2]), 1) AS p95_ms,
    round(toFloat64(q[3]), 1) AS p99_ms,
    round(sum(t.duration_ms_sum) / calls, 1) AS mean_ms
FROM tool_minute AS t
LEFT JOIN mismatched AS x ON x.tenant = t.tenant AND x.tool = t.tool
GROUP BY tenant, tool
HAVING calls >= {min_calls:UInt32}
"""

SLOWEST_TOOLS = NamedQuery(
    "slowest_tools",
    "Tools by p95 duration (bfloat16: at most 0.79% below the exact value), with call counts",
    "SELECT * EXCEPT q FROM (" + _TOOLS_SELECT + ")\nORDER BY p95_ms DESC, tool\n"
    "LIMIT {limit:UInt32}\n",
    {"limit": _LIMIT, "min_calls": Param("UInt32", "1", "ignore tools with fewer calls")},
)

LEAST_RELIABLE_TOOLS = NamedQuery(
    "least_reliable_tools",
    "Tools by failure rate (failed / calls; failed = errors + mismatches)",
    "SELECT * EXCEPT q FROM (" + _TOOLS_SELECT + ")\nORDER BY failure_rate DESC, calls DESC, "
    "tool\nLIMIT {limit:UInt32}\n",
    {"limit": _LIMIT, "min_calls": Param("UInt32", "1", "ignore tools with fewer calls")},
)

COST_PER_RUN = NamedQuery(
    "cost_per_run",
    "Runs by cost (one row per run, all agents together), with outcome and counts",
    """
SELECT
    r.tenant AS tenant,
    r.run_id AS run_id,
    r.status AS status,
    round(r.cost_usd, 6) AS cost_usd,
    r.input_tokens AS input_tokens,
    r.output_tokens AS output_tokens,
    r.actions AS actions,
    r.errors AS errors,
    r.mismatches AS mismatches,
    r.failed AS failed,
    r.events AS events,
    r.agents AS agents,
    r.started_at AS started_at,
    r.duration_s AS duration_s,
    r.goal AS goal
FROM runs AS r
WHERE (r.tenant, r.run_id) IN
(
    SELECT x.tenant, x.run_id FROM runs AS x ORDER BY x.cost_usd DESC, x.run_id LIMIT {limit:UInt32}
)
ORDER BY r.cost_usd DESC, r.run_id
""",
    {"limit": _LIMIT},
)

RUN_AGENT_COSTS = NamedQuery(
    "run_agent_costs",
    "Each agent's share of a run: cost, tokens, actions and its own reported status",
    f"""
WITH shares AS
(
    SELECT
        a.tenant AS tenant,
        a.run_id AS run_id,
        a.agent_id AS agent_id,
        {RUN_STATUS_SQL.format(f="a.finish")} AS agent_status,
        a.cost_usd AS cost,
        a.input_tokens AS input_tokens,
        a.output_tokens AS output_tokens,
        a.events AS events,
        a.actions AS actions,
        a.errors AS errors,
        a.mismatches AS mismatches,
        a.violations AS violations,
        a.first_time AS first_time,
        a.last_time AS last_time
    FROM run_agent AS a FINAL
    WHERE {{run_id:String}} = '' OR a.run_id = {{run_id:String}}
    ORDER BY cost DESC, run_id, agent_id
    LIMIT {{limit:UInt32}}
)
SELECT
    s.tenant AS tenant,
    s.run_id AS run_id,
    s.agent_id AS agent_id,
    s.agent_status AS agent_status,
    round(s.cost, 6) AS cost_usd,
    round(s.cost / nullIf(x.run_cost, 0), 4) AS cost_share,
    toUInt64(s.input_tokens) AS input_tokens,
    toUInt64(s.output_tokens) AS output_tokens,
    toUInt64(s.events) AS events,
    toUInt64(s.actions) AS actions,
    toUInt64(s.errors) AS errors,
    toUInt64(s.mismatches) AS mismatches,
    toUInt64(s.errors + s.mismatches) AS failed,
    toUInt64(s.violations) AS violations,
    s.first_time AS first_time,
    s.last_time AS last_time
FROM shares AS s
LEFT JOIN
(
    SELECT r.tenant AS tenant, r.run_id AS run_id, toFloat64(r.cost_usd) AS run_cost
    FROM run_totals AS r FINAL
    WHERE (r.tenant, r.run_id) IN (SELECT tenant, run_id FROM shares)
) AS x ON x.tenant = s.tenant AND x.run_id = s.run_id
ORDER BY cost_usd DESC, run_id, agent_id
""",
    {
        "run_id": Param("String", "", "only this run ('' = every run)"),
        "limit": Param("UInt32", "100", "rows to return"),
    },
)

RUNS_BY_STATUS = NamedQuery(
    "runs_by_status",
    "How many runs ended in each final status (one count per run, not per agent)",
    """
SELECT
    r.status AS status,
    count() AS runs,
    countIf(r.status_conflict) AS conflicting,
    round(sum(r.cost_usd), 6) AS cost_usd,
    sum(r.failed) AS failed
FROM runs AS r
GROUP BY status
ORDER BY runs DESC, status
""",
)

RECENT_RUNS = NamedQuery(
    "recent_runs",
    "One page of runs, newest start first (optionally of one final status or one agent)",
    """
WITH page AS
(
    SELECT r.tenant AS tenant, r.run_id AS run_id
    FROM runs AS r
    WHERE ({status:String} = '' OR r.status = {status:String})
      AND ({agent:String} = '' OR has(r.agents, {agent:String}))
    ORDER BY r.started_at DESC, r.run_id
    LIMIT {limit:UInt32} OFFSET {offset:UInt32}
)
SELECT *
FROM runs
WHERE (tenant, run_id) IN (SELECT tenant, run_id FROM page)
ORDER BY started_at DESC, run_id
""",
    {
        "limit": Param("UInt32", "50", "runs per page"),
        "offset": Param("UInt32", "0", "runs to skip"),
        "status": Param("String", "", "only runs of this final status ('' = all)"),
        "agent": Param("String", "", "only runs this agent took part in ('' = all)"),
    },
)

VIOLATIONS_BY_CATEGORY = NamedQuery(
    "violations_by_category",
    "Expectation violations per category: how many, how many agents and runs",
    """
SELECT
    category,
    count() AS violations,
    uniqExact(agent_id) AS agents,
    uniqExact(run_id) AS runs,
    min(time) AS first_seen,
    max(time) AS last_seen
FROM violations FINAL
GROUP BY category
ORDER BY violations DESC, category
""",
)

FAILED_RUNS = NamedQuery(
    "failed_runs",
    "The most recent failed runs and the last events of each",
    """
WITH failed AS
(
    SELECT r.tenant AS tenant, r.run_id AS run_id
    FROM runs AS r
    WHERE r.status = 'failed'
    ORDER BY r.ended_at DESC, r.run_id
    LIMIT {runs:UInt32}
)
SELECT run_id, agent_id, time, type, tool, status, summary
FROM events
WHERE run_id IN (SELECT run_id FROM failed)
  AND (tenant, run_id) IN (SELECT tenant, run_id FROM failed)
ORDER BY run_id, time DESC
LIMIT {events_per_run:UInt32} BY run_id
""",
    {
        "runs": Param("UInt32", "10", "how many failed runs"),
        "events_per_run": Param("UInt32", "5", "last events shown per run"),
    },
)

NAMED_QUERIES: dict[str, NamedQuery] = {
    q.name: q
    for q in (
        AGENT_LEADERBOARD,
        EVENT_TYPE_TREND,
        SLOWEST_TOOLS,
        LEAST_RELIABLE_TOOLS,
        COST_PER_RUN,
        RUN_AGENT_COSTS,
        RUNS_BY_STATUS,
        RECENT_RUNS,
        VIOLATIONS_BY_CATEGORY,
        FAILED_RUNS,
    )
}

# the web UI's dashboards (defined in dashboards.py; same text in the UI and the CLI)
from projections.analytics.dashboards import DASHBOARD_QUERIES  # noqa: E402

NAMED_QUERIES.update(
    {
        q.name: NamedQuery(q.name, q.title, q.sql, {k: Param(*v) for k, v in q.params.items()})
        for q in DASHBOARD_QUERIES
    }
)
