"""The analytics model: DDL, versioned migrations and the rollups' definitions.

Why it looks like this (details and every column in docs/analytics.md):

- ``events`` is a plain MergeTree sorted by ``(tenant, agent_id, time, event_id)``:
  analysts filter by agent and time, and the projection's duplicate check is a
  primary-key range lookup on the same prefix. Partitions are months of event time.
- Rollups are fed by materialized views. A view sees every row inserted into ``events``
  and cannot tell a duplicate, so the projection only ever inserts *new* rows (it
  anti-joins each batch against ``events`` first); the views then count each event once.
- Rollup columns are ``SimpleAggregateFunction(sum, …)`` and quantile states: read them
  with ``sum(…)`` / ``quantilesBFloat16Merge(…)(…)`` and ``GROUP BY``; the rows of one key
  are merged in the background, the sums are exact at any time.
- ``violations``, ``episodes`` and ``agent_state`` are upserts: ReplacingMergeTree on the
  record's id with a version, read with ``FINAL``.
- Runs: ``run_totals`` (per run) and ``run_agent`` (per run and agent) are fed by views on
  ``events`` *and* on ``violations`` (mismatches are the processor's ``wrong_result``
  violations: only it pairs a completion with its start). The view ``runs`` reads
  ``run_totals`` with ``FINAL``: one row per run, keyed by run, not by start time (a run's
  start can still move earlier when another agent's events arrive late).

Every statement is idempotent (``IF NOT EXISTS``), so a crash between applying a migration
and recording it in ``schema_version`` is repaired by running the migration again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

COMPLETED_PREFIX = "agent.act.completed."
"""Wire types of completed actions start with this, whatever their version."""

QUANTILES = "0.5, 0.95, 0.99"
"""Levels kept in the rollups' quantile states.

``quantilesBFloat16``: each value is converted to float32 and *truncated* to bfloat16 (8
significant bits), then counted exactly, so merged states give the exact nearest-rank
quantile of the converted values, whatever the merge order: at most 2^-7 (0.78125%) below
the exact value, never above by more than 2^-24 (tested; docs/analytics.md). It costs about
a third of a t-digest per key at insert."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: Callable[[str], Sequence[str]]  # database name -> DDL


@dataclass(frozen=True)
class Rollup:
    """A rollup table fed by a materialized view over ``events``.

    ``select`` is the view's query with a slot for an extra filter, so the same text can
    rebuild the rollup, or one month of it, from its source (:func:`rollup_rebuild_sql`).
    Several rollups may feed one table (``run_agent`` is fed from ``events`` and from
    ``violations``): then each is checked on its own and the table is rebuilt from all.
    ``source_count`` / ``rollup_count`` count the same thing on both sides: when they differ
    (per month for a rollup partitioned by the month of each event's own time, in total
    otherwise) the rollup missed or doubled rows there, and that part is rebuilt.
    """

    table: str
    view: str
    month_column: str | None  # partitioned by toYYYYMM(this), or None: one partition
    select: str  # SELECT … FROM {db}.<source> {where} GROUP BY …
    source_count: str  # aggregate over the source table
    source_filter: str  # WHERE condition on the source table (or "1")
    rollup_count: str  # aggregate over the rollup
    source: str = "events"  # the table the view reads (``violations`` for quality counts)


def _events(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.events
(
    event_id        UUID,
    type            LowCardinality(String),
    kind            LowCardinality(String) DEFAULT replaceRegexpOne(type, '\\\\.v[0-9]+$', ''),
    category        LowCardinality(String),
    time            DateTime64(6, 'UTC'),
    agent_id        String,
    run_id          Nullable(String),
    task_id         Nullable(String),
    tenant          LowCardinality(String),
    source          LowCardinality(String),
    causes          Array(UUID),
    traceparent     Nullable(String),
    model           LowCardinality(Nullable(String)),
    tool            LowCardinality(Nullable(String)),
    call_id         Nullable(String),
    status          LowCardinality(Nullable(String)),
    input_tokens    UInt32,
    output_tokens   UInt32,
    cost_usd        Float64,
    latency_ms      Nullable(Float64),
    summary         String,
    payload         String CODEC(ZSTD(3)),
    log_partition   Nullable(Int32),
    log_offset      Nullable(Int64),
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_run_id run_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, agent_id, time, event_id)
"""


def _violations(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.violations
(
    violation_id    UUID,
    category        LowCardinality(String),
    agent_id        String,
    run_id          Nullable(String),
    task_id         Nullable(String),
    tenant          LowCardinality(String),
    time            DateTime64(6, 'UTC'),
    detected_by     UUID,
    event_ids       Array(UUID),
    tool            LowCardinality(Nullable(String)),
    call_id         Nullable(String),
    expected        Nullable(String),
    actual          Nullable(String),
    detail          String,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, agent_id, violation_id)
"""


def _episodes(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.episodes
(
    episode_id      UUID,
    revision        UInt32,
    agent_id        String,
    run_id          Nullable(String),
    task_id         Nullable(String),
    tenant          LowCardinality(String),
    time            DateTime64(6, 'UTC'),
    situation       String,
    action          String,
    tool            LowCardinality(String),
    outcome         LowCardinality(String),
    result          String,
    expected        Nullable(String),
    actual          Nullable(String),
    lesson          Nullable(String),
    event_ids       Array(UUID),
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, agent_id, episode_id)
"""


def _agent_state(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.agent_state
(
    agent_id            String,
    tenant              LowCardinality(String),
    version             UInt64,
    name                Nullable(String),
    role                Nullable(String),
    model               LowCardinality(Nullable(String)),
    status              LowCardinality(String),
    stopped             Bool,
    run_id              Nullable(String),
    task_id             Nullable(String),
    run_status          LowCardinality(Nullable(String)),
    run_goal            Nullable(String),
    open_actions        UInt32,
    events_total        UInt64,
    actions_ok          UInt64,
    actions_failed      UInt64,
    success_rate        Nullable(Float64),
    failures_in_a_row   UInt32,
    input_tokens        UInt64,
    output_tokens       UInt64,
    cost_usd            Float64,
    lessons             UInt32,
    last_feedback_score Nullable(Float64),
    first_event_time    Nullable(DateTime64(6, 'UTC')),
    last_event_time     Nullable(DateTime64(6, 'UTC')),
    last_event_id       Nullable(String),
    counts              Map(String, UInt64),
    tools               String,
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, agent_id)
"""


_AGENT_MINUTE_SELECT = f"""
SELECT
    e.tenant AS tenant,
    e.agent_id AS agent_id,
    toDateTime64(toStartOfMinute(e.time), 0, 'UTC') AS minute,
    e.type AS type,
    count() AS events,
    countIf(startsWith(e.type, '{COMPLETED_PREFIX}') AND e.status = 'error') AS errors,
    sum(e.input_tokens) AS input_tokens,
    sum(e.output_tokens) AS output_tokens,
    sum(e.cost_usd) AS cost_usd,
    quantilesBFloat16StateIf({QUANTILES})(assumeNotNull(e.latency_ms), e.latency_ms IS NOT NULL)
        AS latency_ms
FROM {{db}}.events AS e
{{where}}
GROUP BY tenant, agent_id, minute, type
"""

_TOOL_MINUTE_SELECT_V1 = f"""
SELECT
    e.tenant AS tenant,
    assumeNotNull(e.tool) AS tool,
    toDateTime64(toStartOfMinute(e.time), 0, 'UTC') AS minute,
    count() AS calls,
    countIf(e.status = 'error') AS failures,
    sum(ifNull(e.latency_ms, 0)) AS duration_ms_sum,
    quantilesBFloat16StateIf({QUANTILES})(assumeNotNull(e.latency_ms), e.latency_ms IS NOT NULL)
        AS duration_ms
FROM {{db}}.events AS e
WHERE startsWith(e.type, '{COMPLETED_PREFIX}') AND e.tool IS NOT NULL {{and_where}}
GROUP BY tenant, tool, minute
"""

_TOOL_MINUTE_SELECT = f"""
SELECT
    e.tenant AS tenant,
    assumeNotNull(e.tool) AS tool,
    toDateTime64(toStartOfMinute(e.time), 0, 'UTC') AS minute,
    count() AS calls,
    countIf(e.status = 'error') AS errors,
    sum(ifNull(e.latency_ms, 0)) AS duration_ms_sum,
    quantilesBFloat16StateIf({QUANTILES})(assumeNotNull(e.latency_ms), e.latency_ms IS NOT NULL)
        AS duration_ms
FROM {{db}}.events AS e
WHERE startsWith(e.type, '{COMPLETED_PREFIX}') AND e.tool IS NOT NULL {{and_where}}
GROUP BY tenant, tool, minute
"""

# the same states as tool_minute, per hour: a dashboard bucket of whole hours merges 60x fewer
_TOOL_HOUR_SELECT = _TOOL_MINUTE_SELECT.replace(
    "toDateTime64(toStartOfMinute(e.time), 0, 'UTC') AS minute",
    "toDateTime64(toStartOfHour(e.time), 0, 'UTC') AS hour",
).replace("GROUP BY tenant, tool, minute", "GROUP BY tenant, tool, hour")
assert "AS hour" in _TOOL_HOUR_SELECT and "tool, hour" in _TOOL_HOUR_SELECT

_MODEL_MINUTE_SELECT = """
SELECT
    e.tenant AS tenant,
    assumeNotNull(e.model) AS model,
    toDateTime64(toStartOfMinute(e.time), 0, 'UTC') AS minute,
    count() AS events,
    sum(e.input_tokens) AS input_tokens,
    sum(e.output_tokens) AS output_tokens,
    sum(e.cost_usd) AS cost_usd
FROM {db}.events AS e
WHERE e.model IS NOT NULL {and_where}
GROUP BY tenant, model, minute
"""

_RUN_SUMMARY_SELECT = f"""
SELECT
    e.tenant AS tenant,
    e.agent_id AS agent_id,
    assumeNotNull(e.run_id) AS run_id,
    count() AS events,
    countIf(startsWith(e.type, '{COMPLETED_PREFIX}')) AS actions,
    countIf(startsWith(e.type, '{COMPLETED_PREFIX}') AND e.status = 'error') AS errors,
    sum(e.input_tokens) AS input_tokens,
    sum(e.output_tokens) AS output_tokens,
    sum(e.cost_usd) AS cost_usd,
    min(e.time) AS first_time,
    max(e.time) AS last_time,
    maxIf(toString(assumeNotNull(e.status)), startsWith(e.type, 'agent.lifecycle.run_finished.'))
        AS status,
    maxIf(JSONExtractString(e.payload, 'goal'), startsWith(e.type, 'agent.lifecycle.run_started.'))
        AS goal
FROM {{db}}.events AS e
WHERE e.run_id IS NOT NULL {{and_where}}
GROUP BY tenant, agent_id, run_id
"""

RUN_FINISHED_PREFIX = "agent.lifecycle.run_finished."
RUN_STARTED_PREFIX = "agent.lifecycle.run_started."

STATUS_RANK = {"succeeded": 1, "cancelled": 2, "failed": 3}
"""Rank of a ``run_finished`` status: on equal event times the higher rank wins."""

_RUN_AGENT_SELECT_V3 = f"""
SELECT
    e.tenant AS tenant,
    assumeNotNull(e.run_id) AS run_id,
    e.agent_id AS agent_id,
    count() AS events,
    countIf(startsWith(e.type, '{COMPLETED_PREFIX}')) AS actions,
    countIf(startsWith(e.type, '{COMPLETED_PREFIX}') AND e.status = 'error') AS errors,
    toUInt64(0) AS mismatches,
    toUInt64(0) AS violations,
    sum(e.input_tokens) AS input_tokens,
    sum(e.output_tokens) AS output_tokens,
    sum(e.cost_usd) AS cost_usd,
    min(e.time) AS first_time,
    max(e.time) AS last_time,
    minIf(toNullable(e.time), startsWith(e.type, '{RUN_STARTED_PREFIX}')) AS run_started_at,
    argMinStateIf(
        JSONExtractString(e.payload, 'goal'),
        (e.time, JSONExtractString(e.payload, 'goal')),
        startsWith(e.type, '{RUN_STARTED_PREFIX}')
    ) AS goal,
    maxIf(
        toUnixTimestamp64Micro(e.time) * 4
            + multiIf(e.status = 'failed', 3, e.status = 'cancelled', 2, 1),
        startsWith(e.type, '{RUN_FINISHED_PREFIX}')
    ) AS finish,
    countIf(startsWith(e.type, '{RUN_FINISHED_PREFIX}')) AS finishes,
    groupBitOrIf(
        toUInt8(multiIf(e.status = 'failed', 4, e.status = 'cancelled', 2, 1)),
        startsWith(e.type, '{RUN_FINISHED_PREFIX}')
    ) AS reported
FROM {{db}}.events AS e
WHERE e.run_id IS NOT NULL {{and_where}}
GROUP BY tenant, run_id, agent_id
"""

_RUN_AGENT_VIOLATIONS_SELECT_V3 = """
SELECT
    v.tenant AS tenant,
    assumeNotNull(v.run_id) AS run_id,
    v.agent_id AS agent_id,
    toUInt64(0) AS events,
    toUInt64(0) AS actions,
    toUInt64(0) AS errors,
    countIf(v.category = 'wrong_result') AS mismatches,
    count() AS violations,
    toUInt64(0) AS input_tokens,
    toUInt64(0) AS output_tokens,
    toFloat64(0) AS cost_usd,
    CAST(NULL AS Nullable(DateTime64(6, 'UTC'))) AS first_time,
    CAST(NULL AS Nullable(DateTime64(6, 'UTC'))) AS last_time,
    CAST(NULL AS Nullable(DateTime64(6, 'UTC'))) AS run_started_at,
    argMinStateIf('', (toDateTime64(0, 6, 'UTC'), ''), 0) AS goal,
    toInt64(0) AS finish,
    toUInt64(0) AS finishes,
    toUInt8(0) AS reported
FROM {db}.violations AS v
WHERE v.run_id IS NOT NULL {and_where}
GROUP BY tenant, run_id, agent_id
"""

DECISION_PREFIX = "agent.think.decision."
FEEDBACK_PREFIX = "agent.learn.feedback."

# Migration 7: what the learning dashboard needs per agent and run, so it reads run_agent
# alone. The view parses JSON on every row it is given (no short-circuit inside aggregate
# arguments), so the score is read from the feedback rows' payload only, '' elsewhere.
_RUN_AGENT_LEARNING = f"""    countIf(startsWith(e.type, '{DECISION_PREFIX}')) AS decisions,
    countIf(
        startsWith(e.type, '{DECISION_PREFIX}')
        AND JSONLength(e.payload, 'recalled_episodes') > 0
    ) AS decisions_with_recall,
    sum(JSONExtractFloat(if(startsWith(e.type, '{FEEDBACK_PREFIX}'), e.payload, ''), 'score'))
        AS feedback_score_sum,
    countIf(startsWith(e.type, '{FEEDBACK_PREFIX}')) AS feedback_events
"""
_RUN_AGENT_SELECT = _RUN_AGENT_SELECT_V3.replace(
    "    ) AS reported\nFROM", "    ) AS reported,\n" + _RUN_AGENT_LEARNING + "FROM"
)
assert _RUN_AGENT_SELECT != _RUN_AGENT_SELECT_V3
_RUN_AGENT_VIOLATIONS_SELECT = _RUN_AGENT_VIOLATIONS_SELECT_V3.replace(
    "    toUInt8(0) AS reported\nFROM",
    """    toUInt8(0) AS reported,
    toUInt64(0) AS decisions,
    toUInt64(0) AS decisions_with_recall,
    toFloat64(0) AS feedback_score_sum,
    toUInt64(0) AS feedback_events
FROM""",
)
assert _RUN_AGENT_VIOLATIONS_SELECT != _RUN_AGENT_VIOLATIONS_SELECT_V3

_RUN_TOTALS_SELECT = f"""
SELECT
    e.tenant AS tenant,
    assumeNotNull(e.run_id) AS run_id,
    groupUniqArray(e.agent_id) AS agents,
    count() AS events,
    countIf(startsWith(e.type, '{COMPLETED_PREFIX}')) AS actions,
    countIf(startsWith(e.type, '{COMPLETED_PREFIX}') AND e.status = 'error') AS errors,
    toUInt64(0) AS mismatches,
    toUInt64(0) AS violations,
    sum(e.input_tokens) AS input_tokens,
    sum(e.output_tokens) AS output_tokens,
    sum(e.cost_usd) AS cost_usd,
    min(e.time) AS first_time,
    max(e.time) AS last_time,
    argMinStateIf(
        JSONExtractString(e.payload, 'goal'),
        (e.time, JSONExtractString(e.payload, 'goal')),
        startsWith(e.type, '{RUN_STARTED_PREFIX}')
    ) AS goal,
    argMinStateIf(e.agent_id, (e.time, e.agent_id), startsWith(e.type, '{RUN_STARTED_PREFIX}'))
        AS started_by,
    maxIf(
        toUnixTimestamp64Micro(e.time) * 4
            + multiIf(e.status = 'failed', 3, e.status = 'cancelled', 2, 1),
        startsWith(e.type, '{RUN_FINISHED_PREFIX}')
    ) AS finish,
    countIf(startsWith(e.type, '{RUN_FINISHED_PREFIX}')) AS finishes,
    groupBitOrIf(
        toUInt8(multiIf(e.status = 'failed', 4, e.status = 'cancelled', 2, 1)),
        startsWith(e.type, '{RUN_FINISHED_PREFIX}')
    ) AS reported
FROM {{db}}.events AS e
WHERE e.run_id IS NOT NULL {{and_where}}
GROUP BY tenant, run_id
"""

_RUN_TOTALS_VIOLATIONS_SELECT = """
SELECT
    v.tenant AS tenant,
    assumeNotNull(v.run_id) AS run_id,
    CAST([], 'Array(String)') AS agents,
    toUInt64(0) AS events,
    toUInt64(0) AS actions,
    toUInt64(0) AS errors,
    countIf(v.category = 'wrong_result') AS mismatches,
    count() AS violations,
    toUInt64(0) AS input_tokens,
    toUInt64(0) AS output_tokens,
    toFloat64(0) AS cost_usd,
    CAST(NULL AS Nullable(DateTime64(6, 'UTC'))) AS first_time,
    CAST(NULL AS Nullable(DateTime64(6, 'UTC'))) AS last_time,
    argMinStateIf('', (toDateTime64(0, 6, 'UTC'), ''), 0) AS goal,
    argMinStateIf('', (toDateTime64(0, 6, 'UTC'), ''), 0) AS started_by,
    toInt64(0) AS finish,
    toUInt64(0) AS finishes,
    toUInt8(0) AS reported
FROM {db}.violations AS v
WHERE v.run_id IS NOT NULL {and_where}
GROUP BY tenant, run_id
"""

ROLLUPS: tuple[Rollup, ...] = (
    Rollup(
        table="agent_minute",
        view="agent_minute_mv",
        month_column="minute",
        select=_AGENT_MINUTE_SELECT,
        source_count="count()",
        source_filter="1",
        rollup_count="sum(events)",
    ),
    Rollup(
        table="tool_minute",
        view="tool_minute_mv",
        month_column="minute",
        select=_TOOL_MINUTE_SELECT,
        source_count="count()",
        source_filter=f"startsWith(type, '{COMPLETED_PREFIX}') AND tool IS NOT NULL",
        rollup_count="sum(calls)",
    ),
    Rollup(
        table="tool_hour",
        view="tool_hour_mv",
        month_column="hour",
        select=_TOOL_HOUR_SELECT,
        source_count="count()",
        source_filter=f"startsWith(type, '{COMPLETED_PREFIX}') AND tool IS NOT NULL",
        rollup_count="sum(calls)",
    ),
    Rollup(
        table="model_minute",
        view="model_minute_mv",
        month_column="minute",
        select=_MODEL_MINUTE_SELECT,
        source_count="count()",
        source_filter="model IS NOT NULL",
        rollup_count="sum(events)",
    ),
    Rollup(
        table="run_agent",
        view="run_agent_mv",
        month_column=None,  # a run may span months: one partition
        select=_RUN_AGENT_SELECT,
        source_count="count()",
        source_filter="run_id IS NOT NULL",
        rollup_count="sum(events)",
    ),
    Rollup(
        table="run_agent",
        view="run_agent_violations_mv",
        month_column=None,
        select=_RUN_AGENT_VIOLATIONS_SELECT,
        source_count="count()",
        source_filter="run_id IS NOT NULL",
        rollup_count="sum(violations)",
        source="violations",
    ),
    Rollup(
        table="run_totals",
        view="run_totals_mv",
        month_column=None,
        select=_RUN_TOTALS_SELECT,
        source_count="count()",
        source_filter="run_id IS NOT NULL",
        rollup_count="sum(events)",
    ),
    Rollup(
        table="run_totals",
        view="run_totals_violations_mv",
        month_column=None,
        select=_RUN_TOTALS_VIOLATIONS_SELECT,
        source_count="count()",
        source_filter="run_id IS NOT NULL",
        rollup_count="sum(violations)",
        source="violations",
    ),
)
RUN_SUMMARY_V1 = Rollup(
    table="run_summary",
    view="run_summary_mv",
    month_column=None,
    select=_RUN_SUMMARY_SELECT,
    source_count="count()",
    source_filter="run_id IS NOT NULL",
    rollup_count="sum(events)",
)
"""Per agent and run, created by migration 1 and dropped by migration 5 (superseded by
``run_agent`` and ``runs``: it was one row per agent, not per run)."""

ROLLUP_TABLES: tuple[str, ...] = tuple(dict.fromkeys(r.table for r in ROLLUPS))
ROLLUPS_BY_TABLE: dict[str, tuple[Rollup, ...]] = {
    t: tuple(r for r in ROLLUPS if r.table == t) for t in ROLLUP_TABLES
}
ROLLUP_BY_VIEW = {r.view: r for r in ROLLUPS}


def _rollup_tables(db: str) -> list[str]:
    digest = f"AggregateFunction(quantilesBFloat16({QUANTILES}), Float64)"
    return [
        f"""
CREATE TABLE IF NOT EXISTS {db}.agent_minute
(
    tenant          LowCardinality(String),
    agent_id        String,
    minute          DateTime64(0, 'UTC'),
    type            LowCardinality(String),
    events          SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    input_tokens    SimpleAggregateFunction(sum, UInt64),
    output_tokens   SimpleAggregateFunction(sum, UInt64),
    cost_usd        SimpleAggregateFunction(sum, Float64),
    latency_ms      {digest}
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, agent_id, minute, type)
""",
        f"""
CREATE TABLE IF NOT EXISTS {db}.tool_minute
(
    tenant          LowCardinality(String),
    tool            LowCardinality(String),
    minute          DateTime64(0, 'UTC'),
    calls           SimpleAggregateFunction(sum, UInt64),
    failures        SimpleAggregateFunction(sum, UInt64),
    duration_ms_sum SimpleAggregateFunction(sum, Float64),
    duration_ms     {digest}
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, tool, minute)
""",
        f"""
CREATE TABLE IF NOT EXISTS {db}.run_summary
(
    tenant          LowCardinality(String),
    agent_id        String,
    run_id          String,
    events          SimpleAggregateFunction(sum, UInt64),
    actions         SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    input_tokens    SimpleAggregateFunction(sum, UInt64),
    output_tokens   SimpleAggregateFunction(sum, UInt64),
    cost_usd        SimpleAggregateFunction(sum, Float64),
    first_time      SimpleAggregateFunction(min, DateTime64(6, 'UTC')),
    last_time       SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    status          SimpleAggregateFunction(max, String),
    goal            SimpleAggregateFunction(max, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, agent_id, run_id)
""",
    ]


def _model_minute(db: str) -> str:
    """Cost and tokens per model and minute: the cost dashboard's by-model panel reads this
    instead of every event (``model`` is only on ``events``; thoughts and agent starts)."""
    return f"""
CREATE TABLE IF NOT EXISTS {db}.model_minute
(
    tenant          LowCardinality(String),
    model           LowCardinality(String),
    minute          DateTime64(0, 'UTC'),
    events          SimpleAggregateFunction(sum, UInt64),
    input_tokens    SimpleAggregateFunction(sum, UInt64),
    output_tokens   SimpleAggregateFunction(sum, UInt64),
    cost_usd        SimpleAggregateFunction(sum, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, minute, model)
"""


def _tool_hour(db: str) -> str:
    """``tool_minute`` per hour: the tools dashboard merges one quantile state per tool and
    hour for buckets of whole hours instead of sixty (28,800 states a day of 20 tools)."""
    digest = f"AggregateFunction(quantilesBFloat16({QUANTILES}), Float64)"
    return f"""
CREATE TABLE IF NOT EXISTS {db}.tool_hour
(
    tenant          LowCardinality(String),
    tool            LowCardinality(String),
    hour            DateTime64(0, 'UTC'),
    calls           SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    duration_ms_sum SimpleAggregateFunction(sum, Float64),
    duration_ms     {digest}
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, tool, hour)
"""


def _run_agent(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.run_agent
(
    tenant          LowCardinality(String),
    run_id          String,
    agent_id        String,
    events          SimpleAggregateFunction(sum, UInt64),
    actions         SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    mismatches      SimpleAggregateFunction(sum, UInt64),
    violations      SimpleAggregateFunction(sum, UInt64),
    input_tokens    SimpleAggregateFunction(sum, UInt64),
    output_tokens   SimpleAggregateFunction(sum, UInt64),
    cost_usd        SimpleAggregateFunction(sum, Float64),
    first_time      SimpleAggregateFunction(min, Nullable(DateTime64(6, 'UTC'))),
    last_time       SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC'))),
    run_started_at  SimpleAggregateFunction(min, Nullable(DateTime64(6, 'UTC'))),
    goal            AggregateFunction(argMin, String, Tuple(DateTime64(6, 'UTC'), String)),
    finish          SimpleAggregateFunction(max, Int64),
    finishes        SimpleAggregateFunction(sum, UInt64),
    reported        SimpleAggregateFunction(groupBitOr, UInt8)
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, run_id, agent_id)
"""


def _run_totals(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.run_totals
(
    tenant          LowCardinality(String),
    run_id          String,
    agents          SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    events          SimpleAggregateFunction(sum, UInt64),
    actions         SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    mismatches      SimpleAggregateFunction(sum, UInt64),
    violations      SimpleAggregateFunction(sum, UInt64),
    input_tokens    SimpleAggregateFunction(sum, UInt64),
    output_tokens   SimpleAggregateFunction(sum, UInt64),
    cost_usd        SimpleAggregateFunction(sum, Float64),
    first_time      SimpleAggregateFunction(min, Nullable(DateTime64(6, 'UTC'))),
    last_time       SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC'))),
    goal            AggregateFunction(argMin, String, Tuple(DateTime64(6, 'UTC'), String)),
    started_by      AggregateFunction(argMin, String, Tuple(DateTime64(6, 'UTC'), String)),
    finish          SimpleAggregateFunction(max, Int64),
    finishes        SimpleAggregateFunction(sum, UInt64),
    reported        SimpleAggregateFunction(groupBitOr, UInt8)
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, run_id)
"""


RUN_STATUS_SQL = (
    "multiIf({f} <= 0, 'running', {f} % 4 = 3, 'failed', {f} % 4 = 2, 'cancelled', 'succeeded')"
)
"""The status encoded in a ``finish`` value (event time in µs * 4 + rank; 0: none)."""


def _runs_view(db: str) -> str:
    """One row per run; plain types (the rollup's aggregate types are cast away)."""
    status = RUN_STATUS_SQL.format(f="r.finish")
    t64 = "Nullable(DateTime64(6, 'UTC'))"
    return f"""
CREATE OR REPLACE VIEW {db}.runs AS
SELECT
    r.tenant AS tenant,
    r.run_id AS run_id,
    nullIf(finalizeAggregation(r.goal), '') AS goal,
    {status} AS status,
    toBool(bitCount(r.reported) > 1) AS status_conflict,
    arraySort(CAST(r.agents, 'Array(String)')) AS agents,
    nullIf(finalizeAggregation(r.started_by), '') AS started_by,
    CAST(r.first_time AS {t64}) AS started_at,
    CAST(r.last_time AS {t64}) AS ended_at,
    if(r.finish <= 0, NULL, fromUnixTimestamp64Micro(intDiv(r.finish, 4), 'UTC')) AS finished_at,
    round(dateDiff('microsecond', r.first_time, r.last_time) / 1e6, 3) AS duration_s,
    toUInt64(r.events) AS events,
    toUInt64(r.actions) AS actions,
    toUInt64(r.errors) AS errors,
    toUInt64(r.mismatches) AS mismatches,
    toUInt64(r.errors + r.mismatches) AS failed,
    toUInt64(r.input_tokens) AS input_tokens,
    toUInt64(r.output_tokens) AS output_tokens,
    toFloat64(r.cost_usd) AS cost_usd,
    toUInt64(r.violations) AS violations,
    toUInt64(r.finishes) AS finishes
FROM {db}.run_totals AS r FINAL
"""


def rollup_select(rollup: Rollup, db: str, extra_filter: str | None = None) -> str:
    """The rollup's SELECT over its source table, optionally restricted (``extra_filter``)."""
    if rollup.source_filter == "1":
        where = f"WHERE {extra_filter}" if extra_filter else ""
        return rollup.select.format(db=db, where=where)
    and_where = f"AND ({extra_filter})" if extra_filter else ""
    return rollup.select.format(db=db, and_where=and_where)


def _view(r: Rollup, db: str) -> str:
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{r.view} TO {db}.{r.table} AS "
        + rollup_select(r, db)
    )


def _views(db: str, tables: Sequence[str]) -> list[str]:
    return [_view(r, db) for r in ROLLUPS if r.table in tables]


def _views_v1(db: str) -> list[str]:
    """The views of migration 1 as they were then (``tool_minute`` counted ``failures``)."""
    tool_minute = replace(ROLLUP_BY_VIEW["tool_minute_mv"], select=_TOOL_MINUTE_SELECT_V1)
    return [_view(r, db) for r in (ROLLUP_BY_VIEW["agent_minute_mv"], tool_minute, RUN_SUMMARY_V1)]


def _views_v3(db: str) -> list[str]:
    """The run views of migration 3 as they were then (``run_agent`` without the learning
    counts of migration 7)."""
    then = {
        "run_agent_mv": _RUN_AGENT_SELECT_V3,
        "run_agent_violations_mv": _RUN_AGENT_VIOLATIONS_SELECT_V3,
    }
    return [
        _view(replace(r, select=then.get(r.view, r.select)), db)
        for r in ROLLUPS
        if r.table in ("run_agent", "run_totals")
    ]


def _run_agent_learning(db: str) -> list[str]:
    """Migration 7: ``run_agent`` counts decisions, decisions with recall and feedback.

    Rows already there would read 0 for the new columns, which is wrong for every run with
    history, so the table is recomputed from ``events`` and ``violations`` (aside, then
    swapped in with EXCHANGE TABLES: readers see the old or the new table, never half; the
    views follow the name).
    Events inserted while this runs are caught by the rollup check that follows
    ``migrate`` in ``setup()``.
    """
    t = f"{db}.run_agent"
    scratch = f"{db}._migrate_run_agent"
    return [
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS decisions SimpleAggregateFunction(sum, UInt64)",
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS decisions_with_recall "
        "SimpleAggregateFunction(sum, UInt64)",
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS feedback_score_sum "
        "SimpleAggregateFunction(sum, Float64)",
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS feedback_events "
        "SimpleAggregateFunction(sum, UInt64)",
        f"DROP VIEW IF EXISTS {db}.run_agent_mv",
        f"DROP VIEW IF EXISTS {db}.run_agent_violations_mv",
        *_views(db, ("run_agent",)),
        f"DROP TABLE IF EXISTS {scratch} SYNC",
        f"CREATE TABLE {scratch} AS {t}",
        *(rollup_rebuild_sql(r, db, scratch, None) for r in ROLLUPS_BY_TABLE["run_agent"]),
        f"EXCHANGE TABLES {t} AND {scratch}",
        f"DROP TABLE IF EXISTS {scratch} SYNC",
    ]


def _vocabulary(db: str) -> list[str]:
    """Migration 4: one meaning per word (errors, mismatches, failed) in stored columns."""
    t = f"{db}.agent_state"
    return [
        f"ALTER TABLE {t} RENAME COLUMN IF EXISTS actions_failed TO failed",
        f"ALTER TABLE {t} RENAME COLUMN IF EXISTS success_rate TO recent_success_rate",
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS actions UInt64 AFTER events_total",
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS errors UInt64 AFTER actions",
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS mismatches UInt64 AFTER errors",
        f"ALTER TABLE {t} DROP COLUMN IF EXISTS actions_ok",
        f"ALTER TABLE {db}.tool_minute RENAME COLUMN IF EXISTS failures TO errors",
        f"DROP VIEW IF EXISTS {db}.tool_minute_mv",
        _view(ROLLUP_BY_VIEW["tool_minute_mv"], db),
    ]


def _schema_version(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.schema_version
(
    version     UInt32,
    description String,
    applied_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version
"""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events, violations, episodes; rollups agent_minute, tool_minute, run_summary",
        lambda db: [
            _events(db),
            _violations(db),
            _episodes(db),
            *_rollup_tables(db),
            *_views_v1(db),
        ],
    ),
    Migration(
        2, "agent_state: latest state per agent (from agent-state)", lambda db: [_agent_state(db)]
    ),
    Migration(
        3,
        "run model: rollups run_agent and run_totals (from events and violations), view runs",
        lambda db: [
            _run_agent(db),
            _run_totals(db),
            *_views_v3(db),
            _runs_view(db),
        ],
    ),
    Migration(
        4,
        "one vocabulary: agent_state actions/errors/mismatches/failed/recent_success_rate, "
        "tool_minute.errors",
        _vocabulary,
    ),
    Migration(
        5,
        "drop run_summary (one row per agent and run; superseded by run_agent and runs)",
        lambda db: [
            f"DROP VIEW IF EXISTS {db}.run_summary_mv",
            f"DROP TABLE IF EXISTS {db}.run_summary SYNC",
        ],
    ),
    Migration(
        6,
        "rollup model_minute: cost and tokens per model and minute (filled from events at the "
        "next start)",
        lambda db: [_model_minute(db), *_views(db, ("model_minute",))],
    ),
    Migration(
        7,
        "run_agent: decisions, decisions_with_recall, feedback_score_sum, feedback_events "
        "(views recreated, table recomputed from events and violations)",
        _run_agent_learning,
    ),
    Migration(
        8,
        "rollup tool_hour: tool_minute's states per hour (filled from events at the next start)",
        lambda db: [_tool_hour(db), *_views(db, ("tool_hour",))],
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

DATA_TABLES: tuple[str, ...] = (
    "events",
    "violations",
    "episodes",
    "agent_state",
    *ROLLUP_TABLES,
)
"""Tables that hold data (swapped by ``replace_live_with``); views follow them by name."""


def bootstrap_sql(db: str) -> list[str]:
    """What exists before any migration: the database and the version ledger."""
    return [f"CREATE DATABASE IF NOT EXISTS {db}", _schema_version(db)]


def rollup_rebuild_sql(rollup: Rollup, db: str, target: str, month: int | None) -> str:
    """INSERT the rollup's rows (of one month of event time, or all) computed from events."""
    where = f"toYYYYMM(e.time) = {int(month)}" if month is not None else None
    return f"INSERT INTO {target} " + rollup_select(rollup, db, where)


def source_counts_sql(rollup: Rollup, db: str) -> str:
    """Per month (or in total, month 0) what the rollup should have counted."""
    month = "toYYYYMM(time)" if rollup.month_column else "0"
    return (
        f"SELECT {month} AS month, {rollup.source_count} AS n FROM {db}.{rollup.source} "
        f"WHERE {rollup.source_filter} GROUP BY month"
    )


def rollup_counts_sql(rollup: Rollup, db: str) -> str:
    """Per month (or in total, month 0) what the rollup did count."""
    month = f"toYYYYMM({rollup.month_column})" if rollup.month_column else "0"
    return (
        f"SELECT {month} AS month, {rollup.rollup_count} AS n "
        f"FROM {db}.{rollup.table} GROUP BY month"
    )


class _Store(Protocol):
    database: str

    def command(self, sql: str) -> Any: ...

    def schema_version(self) -> int: ...


class SchemaTooNew(RuntimeError):
    """The store was migrated by a newer version of this code."""


def migrate(store: _Store, target: int = SCHEMA_VERSION) -> list[int]:
    """Apply the migrations the store lacks, up to ``target``; return the versions applied.

    Each migration's statements are idempotent, and its row in ``schema_version`` is written
    after them: a crash in between re-runs that migration, harmlessly.
    """
    db = store.database
    for sql in bootstrap_sql(db):
        store.command(sql)
    current = store.schema_version()
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"analytics database {db} is at schema version {current}, this code knows up to "
            f"{SCHEMA_VERSION} — upgrade agentstream, or rebuild the model into a new database"
        )
    applied: list[int] = []
    for m in MIGRATIONS:
        if current < m.version <= target:
            for sql in m.statements(db):
                store.command(sql)
            description = m.description.replace("\\", "\\\\").replace("'", "\\'")
            store.command(
                f"INSERT INTO {db}.schema_version (version, description) "
                f"VALUES ({m.version}, '{description}')"
            )
            applied.append(m.version)
    return applied
