"""The dashboards' SQL, as named queries: the web UI's dashboards and ``agentstream query
--named`` run exactly this text (the UI links each chart to it in the SQL workspace).

Every query takes a time range (``since`` inclusive, ``until`` exclusive), a tenant (``''``:
all) and, for series, a bucket width in seconds. They read the rollups where one exists
(``agent_minute``, ``model_minute``, ``tool_minute``, ``tool_hour``, ``run_agent``).
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


def _whole_hours(column: str) -> str:
    """``column`` (an hour) is a whole hour inside the range: every minute of it passes
    ``_between`` (the minute rollups' rule: a minute counts if it starts in the range)."""
    return (
        f"{column} >= {{since:DateTime64(6, 'UTC')}} "
        f"AND {column} < {{until:DateTime64(6, 'UTC')}} - toIntervalSecond(3540)"
    )


# buckets of whole hours read tool_hour for the range's whole hours, tool_minute for the rest
_HOURLY = "{bucket:UInt32} % 3600 = 0"

DASH_TOOL_RELIABILITY = NamedQuery(
    "dash_tool_reliability",
    "Dashboard: per tool and time bucket, calls, errors, mismatches, success rate "
    "(1 - failed / calls; failed = errors + mismatches) and p50/p95 duration (tool_hour "
    "rollup for the whole hours of the range when the bucket is whole hours, tool_minute for "
    "the rest; mismatches from wrong_result violations; bfloat16 quantiles)",
    f"""
WITH mismatched AS
(
    SELECT {_bucket("v.time")} AS bucket, assumeNotNull(v.tool) AS tool, count() AS n
    FROM violations AS v FINAL
    WHERE v.category = 'wrong_result' AND v.tool IS NOT NULL
      AND {_between("v.time")} AND {_tenant("v")}
    GROUP BY bucket, tool
),
states AS
(
    SELECT {_bucket("h.hour")} AS bucket, h.tool AS tool, h.calls AS calls, h.errors AS errors,
        h.duration_ms AS duration_ms
    FROM tool_hour AS h
    WHERE {_HOURLY} AND {_whole_hours("h.hour")} AND {_tenant("h")}
    UNION ALL
    SELECT {_bucket("t.minute")} AS bucket, t.tool AS tool, t.calls AS calls, t.errors AS errors,
        t.duration_ms AS duration_ms
    FROM tool_minute AS t
    WHERE {_between("t.minute")} AND {_tenant("t")}
      AND NOT ({_HOURLY} AND {_whole_hours("toStartOfHour(t.minute)")})
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
        s.bucket AS bucket,
        s.tool AS tool,
        sum(s.calls) AS calls,
        sum(s.errors) AS errors,
        quantilesBFloat16Merge(0.5, 0.95)(s.duration_ms) AS q,
        round(toFloat64(q[1]), 1) AS p50_ms,
        round(toFloat64(q[2]), 1) AS p95_ms
    FROM states AS s
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

# Learning: per agent and for the fleet, three per-run values over successive runs.
# metric name -> (has a value in this run, the value), from one run_agent row.
_LEARNING_METRICS: dict[str, tuple[str, str]] = {
    "success_rate": ("a.actions > 0", "1 - (a.errors + a.mismatches) / a.actions"),
    "feedback_score": ("a.feedback_events > 0", "a.feedback_score_sum / a.feedback_events"),
    "recall_rate": ("a.decisions > 0", "a.decisions_with_recall / a.decisions"),
}
# Per metric, nine additive sums from which a slice's mean and a series' least-squares fit
# over its runs are exact: n, sum y, sum x, sum x^2, sum xy (x = the run's number in its
# agent's history), n and sum y over the first tenth of the agent's runs, and over the last.
# Each is (value, weight): has-a-value flag h or value y, times 1, x, x^2, first or last.
_SUMS = (("h", "1"), ("y", "1"), ("h", "x"), ("h", "xx"), ("y", "x"))
_SUMS += (("h", "first"), ("y", "first"), ("h", "last"), ("y", "last"))


def _learning_sql() -> str:
    """The query is written to be cheap to plan as well as to run: chDB spends about a
    millisecond per expression analysing it, so the sums travel as one array from the
    cells on and the three metrics share one set of expressions (rows, not columns). Per
    run the sums are plain ``sum``s (one array per run cost more than their planning), the
    agent and fleet scopes one ``GROUPING SETS`` over the cells (``HAVING``: the empty set's
    row exists even when no run is in range)."""
    per_run = ",\n".join(
        f"        toUInt8({has}) AS h{i},\n        if(h{i}, {value}, 0) AS y{i}"
        for i, (has, value) in enumerate(_LEARNING_METRICS.values())
    )
    n = len(_LEARNING_METRICS)
    sums = ",\n            ".join(
        f"toFloat64(sum({v}{i}))" if w == "1" else f"toFloat64(sum({v}{i} * {w}))"
        for i in range(n)
        for v, w in _SUMS
    )
    offsets = ", ".join(f"('{m}', {i * len(_SUMS)})" for i, m in enumerate(_LEARNING_METRICS))
    last = n * len(_SUMS)
    start = "ifNull(a.run_started_at, a.first_time)"
    return f"""
WITH
runs AS
(
    SELECT
        a.agent_id AS agent,
        cityHash64(a.run_id) AS run_key,
        {start} AS run_start,
        toFloat64(a.decisions) AS decided,
        toFloat64(a.decisions_with_recall) AS recalled,
{per_run}
    FROM run_agent AS a FINAL
    WHERE {_between(start)} AND {_tenant("a")}
),
numbered AS
(
    SELECT
        *,
        row_number() OVER w AS x,
        x * x AS xx,
        count() OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS total,
        toUInt64(ceil(total / 10)) AS tenth,
        toUInt8(x <= tenth) AS first,
        toUInt8(x > total - tenth) AS last,
        intDiv((x - 1) * {{points:UInt32}}, total) AS at
    FROM runs
    WINDOW w AS (PARTITION BY cityHash64(agent), agent ORDER BY run_start, run_key)
),
cells AS
(
    SELECT
        agent,
        at,
        min(x) AS c_from,
        max(x) AS c_to,
        min(run_start) AS c_started,
        count() AS c_runs,
        [
            {sums},
            sum(decided), sum(recalled)
        ] AS c
    FROM numbered
    GROUP BY agent, at
),
points AS
(
    SELECT
        grouping(agent, at) AS g,
        if(g >= 2, 'fleet', 'agent') AS scope,
        if(g >= 2, '', agent) AS who,
        g % 2 = 1 AS whole,
        if(whole, NULL, at) AS pt,
        min(c_from) AS run_from,
        max(c_to) AS run_to,
        min(c_started) AS started,
        sum(c_runs) AS n_runs,
        sumForEach(c) AS t
    FROM cells
    GROUP BY GROUPING SETS ((agent, at), (agent), (at), ())
    HAVING n_runs > 0
),
series AS
(
    SELECT *, tupleElement(m, 1) AS metric, tupleElement(m, 2) AS b
    FROM points
    ARRAY JOIN [{offsets}] AS m
)
SELECT
    scope,
    who AS agent_id,
    metric,
    pt AS point,
    run_from,
    run_to,
    started,
    n_runs AS runs,
    toUInt64(t[b + 1]) AS runs_with_value,
    round(t[b + 2] / nullIf(t[b + 1], 0), 4) AS value,
    if(whole AND t[b + 1] >= 2,
        round((t[b + 1] * t[b + 5] - t[b + 3] * t[b + 2])
            / nullIf(t[b + 1] * t[b + 4] - t[b + 3] * t[b + 3], 0), 6),
        NULL) AS slope,
    if(whole, round(t[b + 7] / nullIf(t[b + 6], 0), 6), NULL) AS first_tenth,
    if(whole, round(t[b + 9] / nullIf(t[b + 8], 0), 6), NULL) AS last_tenth,
    round(last_tenth - first_tenth, 6) AS change,
    toUInt64(t[{last + 1}]) AS decisions,
    toUInt64(t[{last + 2}]) AS decisions_with_recall
FROM series
ORDER BY scope = 'agent', agent_id, metric, point NULLS FIRST
"""


DASH_LEARNING = NamedQuery(
    "dash_learning",
    "Dashboard: learning over successive runs, per agent and for the fleet (run_agent alone), "
    "for each metric (success_rate: 1 - (errors + mismatches) / actions; feedback_score; "
    "recall_rate: decisions citing a recalled episode / decisions). A row with a point is one "
    "of `points` slices of each agent's runs in start order (fleet: that slice of every "
    "agent) with the mean per-run value; the row with point NULL is the whole series, with "
    "the least-squares slope per run and the means over the first and the last tenth of runs",
    _learning_sql(),
    {**_RANGE, "points": Param("UInt32", "20", "slices of each agent's runs (chart points)")},
)

DASHBOARD_QUERIES: tuple[NamedQuery, ...] = (
    DASH_COST_BY_AGENT,
    DASH_COST_BY_MODEL,
    DASH_TOOL_RELIABILITY,
    DASH_VIOLATIONS,
    DASH_VIOLATION_EVENTS,
    DASH_LEARNING,
)
