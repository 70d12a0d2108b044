"""The dashboards' SQL, as named queries: the web UI's dashboards and ``agentstream query
--named`` run exactly this text (the UI links each chart to it in the SQL workspace).

Every query takes a time range (``since`` inclusive, ``until`` exclusive), a tenant (``''``:
all) and, for series, a bucket width in seconds. They read the rollups where one exists
(``agent_minute``, ``model_minute``, ``tool_minute``, ``run_agent``); feedback scores are
only on ``events``.
"""

from __future__ import annotations

from typing import NamedTuple


class Param(NamedTuple):
    """``queries.Param``'s fields (this module imports nothing: ``queries`` imports it)."""

    type: str
    default: str
    help: str


class NamedQuery(NamedTuple):
    """``queries.NamedQuery``'s fields; ``queries`` turns each into one of its own."""

    name: str
    title: str
    sql: str
    params: dict[str, Param]


_RANGE = {
    "since": Param("DateTime64(6, 'UTC')", "1970-01-01 00:00:00", "from this time (UTC)"),
    "until": Param("DateTime64(6, 'UTC')", "2100-01-01 00:00:00", "before this time (UTC)"),
    "tenant": Param("String", "", "only this tenant ('' = every tenant)"),
}
_SERIES = {**_RANGE, "bucket": Param("UInt32", "3600", "bucket width in seconds")}


def _tenant(alias: str) -> str:
    return f"({{tenant:String}} = '' OR {alias}.tenant = {{tenant:String}})"


def _between(column: str) -> str:
    return (
        f"{column} >= {{since:DateTime64(6, 'UTC')}} AND {column} < {{until:DateTime64(6, 'UTC')}}"
    )


def _bucket(column: str) -> str:
    # a DateTime64 (a timestamp in Arrow, CSV and JSON; a plain DateTime would be a number)
    return (
        f"toDateTime64(toStartOfInterval({column}, toIntervalSecond({{bucket:UInt32}})), 0, 'UTC')"
    )


DASH_COST_BY_AGENT = NamedQuery(
    "dash_cost_by_agent",
    "Dashboard: cost (USD) and tokens per time bucket and agent (agent_minute rollup)",
    f"""
SELECT
    {_bucket("m.minute")} AS bucket,
    m.agent_id AS agent_id,
    round(sum(m.cost_usd), 6) AS cost_usd,
    sum(m.input_tokens) AS input_tokens,
    sum(m.output_tokens) AS output_tokens,
    input_tokens + output_tokens AS tokens
FROM agent_minute AS m
WHERE {_between("m.minute")} AND {_tenant("m")}
GROUP BY bucket, agent_id
ORDER BY bucket, agent_id
""",
    _SERIES,
)

DASH_COST_BY_MODEL = NamedQuery(
    "dash_cost_by_model",
    "Dashboard: cost (USD) and tokens per time bucket and model (model_minute rollup: "
    "the events that name a model)",
    f"""
SELECT
    {_bucket("m.minute")} AS bucket,
    m.model AS model,
    round(sum(m.cost_usd), 6) AS cost_usd,
    sum(m.input_tokens) AS input_tokens,
    sum(m.output_tokens) AS output_tokens,
    input_tokens + output_tokens AS tokens
FROM model_minute AS m
WHERE {_between("m.minute")} AND {_tenant("m")}
GROUP BY bucket, model
ORDER BY bucket, model
""",
    _SERIES,
)

DASH_TOOL_RELIABILITY = NamedQuery(
    "dash_tool_reliability",
    "Dashboard: per tool and time bucket, calls, errors, mismatches, success rate "
    "(1 - failed / calls; failed = errors + mismatches) and p50/p95 duration (tool_minute "
    "rollup, mismatches from wrong_result violations; bfloat16 quantiles)",
    f"""
WITH mismatched AS
(
    SELECT {_bucket("v.time")} AS bucket, assumeNotNull(v.tool) AS tool, count() AS n
    FROM violations AS v FINAL
    WHERE v.category = 'wrong_result' AND v.tool IS NOT NULL
      AND {_between("v.time")} AND {_tenant("v")}
    GROUP BY bucket, tool
)
SELECT
    c.bucket AS bucket,
    c.tool AS tool,
    c.calls AS calls,
    c.errors AS errors,
    ifNull(x.n, 0) AS mismatches,
    errors + mismatches AS failed,
    round(1 - failed / calls, 4) AS success_rate,
    c.p50_ms AS p50_ms,
    c.p95_ms AS p95_ms
FROM
(
    SELECT
        {_bucket("t.minute")} AS bucket,
        t.tool AS tool,
        sum(t.calls) AS calls,
        sum(t.errors) AS errors,
        quantilesBFloat16Merge(0.5, 0.95)(t.duration_ms) AS q,
        round(toFloat64(q[1]), 1) AS p50_ms,
        round(toFloat64(q[2]), 1) AS p95_ms
    FROM tool_minute AS t
    WHERE {_between("t.minute")} AND {_tenant("t")}
    GROUP BY bucket, tool
    HAVING calls > 0
) AS c
LEFT JOIN mismatched AS x ON x.bucket = c.bucket AND x.tool = c.tool
ORDER BY bucket, tool
""",
    _SERIES,
)

DASH_VIOLATIONS = NamedQuery(
    "dash_violations",
    "Dashboard: expectation violations per time bucket and category",
    f"""
SELECT
    {_bucket("v.time")} AS bucket,
    v.category AS category,
    count() AS violations
FROM violations AS v FINAL
WHERE {_between("v.time")} AND {_tenant("v")}
GROUP BY bucket, category
ORDER BY bucket, category
""",
    _SERIES,
)

DASH_VIOLATION_EVENTS = NamedQuery(
    "dash_violation_events",
    "Dashboard drill-down: the violations of one category in a time range, newest first",
    f"""
SELECT
    v.time AS time,
    v.category AS category,
    v.agent_id AS agent_id,
    v.run_id AS run_id,
    v.tool AS tool,
    v.expected AS expected,
    v.actual AS actual,
    v.detail AS detail,
    toString(v.detected_by) AS detected_by
FROM violations AS v FINAL
WHERE ({{category:String}} = '' OR v.category = {{category:String}})
  AND {_between("v.time")} AND {_tenant("v")}
ORDER BY v.time DESC, v.violation_id
LIMIT {{limit:UInt32}}
""",
    {
        **_RANGE,
        "category": Param("String", "", "one category ('' = all)"),
        "limit": Param("UInt32", "200", "rows to return"),
    },
)

DASH_LEARNING = NamedQuery(
    "dash_learning",
    "Dashboard: every (agent, run) in start order with its action success rate "
    "(1 - (errors + mismatches) / actions) and mean feedback score",
    f"""
WITH feedback AS
(
    SELECT f.tenant AS tenant, assumeNotNull(f.run_id) AS run_id, f.agent_id AS agent_id,
        avg(JSONExtractFloat(f.payload, 'score')) AS score, count() AS n
    FROM events AS f
    WHERE f.kind = 'agent.learn.feedback' AND f.run_id IS NOT NULL
      AND {_between("f.time")} AND {_tenant("f")}
    GROUP BY tenant, run_id, agent_id
)
SELECT
    a.agent_id AS agent_id,
    a.run_id AS run_id,
    a.tenant AS tenant,
    ifNull(a.run_started_at, a.first_time) AS started,
    a.actions AS actions,
    a.errors + a.mismatches AS failed,
    if(a.actions = 0, NULL, round(1 - failed / a.actions, 4)) AS success_rate,
    if(x.n = 0, NULL, round(x.score, 4)) AS feedback_score,
    x.n AS feedback_events
FROM run_agent AS a FINAL
LEFT JOIN feedback AS x
    ON x.tenant = a.tenant AND x.run_id = a.run_id AND x.agent_id = a.agent_id
WHERE {_between("ifNull(a.run_started_at, a.first_time)")} AND {_tenant("a")}
ORDER BY started, agent_id, run_id
""",
    _RANGE,
)

DASHBOARD_QUERIES: tuple[NamedQuery, ...] = (
    DASH_COST_BY_AGENT,
    DASH_COST_BY_MODEL,
    DASH_TOOL_RELIABILITY,
    DASH_VIOLATIONS,
    DASH_VIOLATION_EVENTS,
    DASH_LEARNING,
)
