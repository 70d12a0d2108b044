"""The ``tool_hour`` rollup and the tools dashboard that reads it, against raw ``events``.

Real chDB: per tenant, tool and hour the rollup holds the counts and the quantile state of
every completed action of that hour; ``dash_tool_reliability`` (whole hours from
``tool_hour``, the rest from ``tool_minute``) gives exactly the rows of the same figures
computed from ``events``, and of the query as it was before (``tool_minute`` alone), for
any bucket and range: after overlapping replays (each event counted once), on a store
created before the rollup existed (migration 8 creates it, the start-up check fills it) and
after a month of it was lost (rebuilt at start).
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime

import pytest

from projections.analytics import schema
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.queries import NAMED_QUERIES
from projections.analytics.rows import events_table
from projections.analytics.sample import sample_events
from projections.analytics.store import AnalyticsStore
from projections.runner import Record
from schemas.arrow import events_to_table
from schemas.topics import EVENTS

ROLLUP = """
SELECT tenant, tool, hour, sum(calls), sum(errors), sum(duration_ms_sum),
    quantilesBFloat16Merge(0.5, 0.95, 0.99)(duration_ms)
FROM tool_hour GROUP BY tenant, tool, hour ORDER BY tenant, tool, hour
"""
RAW = """
SELECT tenant, assumeNotNull(tool) AS t, toDateTime64(toStartOfHour(time), 0, 'UTC') AS hour,
    count(), countIf(status = 'error'), sum(ifNull(latency_ms, 0)),
    quantilesBFloat16If(0.5, 0.95, 0.99)(assumeNotNull(latency_ms), latency_ms IS NOT NULL)
FROM events WHERE startsWith(type, 'agent.act.completed.') AND tool IS NOT NULL
GROUP BY tenant, t, hour ORDER BY tenant, t, hour
"""
# the panel's figures from events; a minute counts when it starts in the range (the rule of
# every *_minute rollup), mismatches from violations as in the named query
RAW_PANEL = """
WITH mismatched AS
(
    SELECT toDateTime64(toStartOfInterval(v.time, toIntervalSecond({bucket:UInt32})), 0, 'UTC')
        AS bucket, assumeNotNull(v.tool) AS tool, count() AS n
    FROM violations AS v FINAL
    WHERE v.category = 'wrong_result' AND v.tool IS NOT NULL
      AND v.time >= {since:DateTime64(6, 'UTC')} AND v.time < {until:DateTime64(6, 'UTC')}
      AND ({tenant:String} = '' OR v.tenant = {tenant:String})
    GROUP BY bucket, tool
)
SELECT c.bucket, c.tool, c.calls, c.errors, ifNull(x.n, 0) AS mismatches,
    c.errors + mismatches AS failed, round(1 - failed / c.calls, 4),
    round(toFloat64(c.q[1]), 1), round(toFloat64(c.q[2]), 1)
FROM
(
    SELECT
        toDateTime64(toStartOfInterval(e.time, toIntervalSecond({bucket:UInt32})), 0, 'UTC')
            AS bucket,
        assumeNotNull(e.tool) AS tool,
        count() AS calls,
        countIf(e.status = 'error') AS errors,
        quantilesBFloat16If(0.5, 0.95)(assumeNotNull(e.latency_ms), e.latency_ms IS NOT NULL)
            AS q
    FROM events AS e
    WHERE startsWith(e.type, 'agent.act.completed.') AND e.tool IS NOT NULL
      AND toStartOfMinute(e.time) >= {since:DateTime64(6, 'UTC')}
      AND toStartOfMinute(e.time) < {until:DateTime64(6, 'UTC')}
      AND ({tenant:String} = '' OR e.tenant = {tenant:String})
    GROUP BY bucket, tool
) AS c
LEFT JOIN mismatched AS x ON x.bucket = c.bucket AND x.tool = c.tool
ORDER BY c.bucket, c.tool
"""
# dash_tool_reliability before tool_hour: every tool-minute's state merged
OLD_PANEL = """
WITH mismatched AS
(
    SELECT toDateTime64(toStartOfInterval(v.time, toIntervalSecond({bucket:UInt32})), 0, 'UTC')
        AS bucket, assumeNotNull(v.tool) AS tool, count() AS n
    FROM violations AS v FINAL
    WHERE v.category = 'wrong_result' AND v.tool IS NOT NULL
      AND v.time >= {since:DateTime64(6, 'UTC')} AND v.time < {until:DateTime64(6, 'UTC')}
      AND ({tenant:String} = '' OR v.tenant = {tenant:String})
    GROUP BY bucket, tool
)
SELECT c.bucket, c.tool, c.calls, c.errors, ifNull(x.n, 0) AS mismatches,
    c.errors + mismatches AS failed, round(1 - failed / c.calls, 4), c.p50_ms, c.p95_ms
FROM
(
    SELECT
        toDateTime64(toStartOfInterval(t.minute, toIntervalSecond({bucket:UInt32})), 0, 'UTC')
            AS bucket,
        t.tool AS tool, sum(t.calls) AS calls, sum(t.errors) AS errors,
        quantilesBFloat16Merge(0.5, 0.95)(t.duration_ms) AS q,
        round(toFloat64(q[1]), 1) AS p50_ms, round(toFloat64(q[2]), 1) AS p95_ms
    FROM tool_minute AS t
    WHERE t.minute >= {since:DateTime64(6, 'UTC')} AND t.minute < {until:DateTime64(6, 'UTC')}
      AND ({tenant:String} = '' OR t.tenant = {tenant:String})
    GROUP BY bucket, tool
    HAVING calls > 0
) AS c
LEFT JOIN mismatched AS x ON x.bucket = c.bucket AND x.tool = c.tool
ORDER BY c.bucket, c.tool
"""
PANEL_CASES: list[dict] = [
    {},  # all time, hourly buckets: tool_hour alone
    {"bucket": 60},  # minute buckets: tool_minute alone
    {"bucket": 900},
    {"bucket": 7200},
    {"bucket": 86400},
    {"tenant": "acme", "bucket": 3600},
    # unaligned ends: whole hours from tool_hour, the partial ones from tool_minute
    {"since": "2025-01-06 09:20:30", "until": "2025-01-06 11:40:00.5"},
    {"since": "2025-01-31 22:59:59", "until": "2025-02-01 02:00:00", "bucket": 7200},
    {"since": "2025-01-31 23:00:00", "until": "2025-02-01 01:00:00"},  # exactly two hours
    {"since": "2025-01-31 23:00:00", "until": "2025-02-01 00:59:59"},  # one minute short
    {"since": "2025-01-06 10:05:00", "until": "2025-01-06 10:50:00"},  # inside one hour
    {"tenant": "default", "since": "2025-01-06 09:00:00", "until": "2025-01-06 12:00:00.000001"},
]


@pytest.fixture(scope="module")
def events() -> list:
    """Two tenants over several hours each; the second one's cross a month boundary."""
    a = list(sample_events(3000, agents=6, step_ms=5000))
    b = list(
        sample_events(
            2000,
            agents=4,
            seed=8,
            start=datetime(2025, 1, 31, 22, 10, tzinfo=UTC),
            step_ms=10_000,
            tenant="acme",
        )
    )
    return a + b


def records(events, start: int = 0) -> list[Record]:
    out = []
    offsets: Counter[int] = Counter()
    for e in events:
        part = int(e.agentid.rsplit("-", 1)[1]) % 3
        out.append(Record(EVENTS, part, start + offsets[part], e.agentid.encode(), e, 0))
        offsets[part] += 1
    return out


def assert_rollup_equals_events(store: AnalyticsStore) -> None:
    rolled, raw = store.rows(ROLLUP), store.rows(RAW)
    assert len(rolled) == len(raw) > 10  # several hours, tools and tenants
    for r, e in zip(rolled, raw, strict=True):
        assert (r[:5], r[6]) == (e[:5], e[6])  # quantile states count values exactly
        assert math.isclose(r[5], e[5], rel_tol=1e-9)  # float sums, any order


def assert_panel_equals_events(store: AnalyticsStore) -> None:
    """The named query's rows equal the figures from events and the query it replaced."""
    q = NAMED_QUERIES["dash_tool_reliability"]
    assert "tool_hour" in q.sql
    for given in PANEL_CASES:
        params = q.bind(given)
        got = store.rows(q.sql, params)
        assert got, given
        assert got == store.rows(RAW_PANEL, params), given
        assert got == store.rows(OLD_PANEL, params), given


def test_the_rollup_and_panel_equal_events_after_overlapping_replays(projection, events):
    recs = records(events)
    projection.apply(recs[:2000])
    projection.apply(recs[1500:4000])  # overlaps the first batch
    projection.apply(recs[3000:])
    projection.apply(recs[100:900])  # a partial replay of history
    projection.apply(recs[:1000] + recs[:1000])  # the same events twice in one batch
    projection.apply_table(events_to_table(events))  # the archive's fast path, everything again
    store = projection.store
    assert store.scalar("SELECT count() FROM events") == len(events)
    completed = sum(1 for e in events if e.type.startswith("agent.act.completed."))
    assert store.scalar("SELECT sum(calls) FROM tool_hour") == completed > 0
    assert_rollup_equals_events(store)
    assert_panel_equals_events(store)
    assert projection.verify_rollups()["tool_hour"] == []


def test_a_store_from_before_the_rollup_is_migrated_and_filled(url, events):
    with AnalyticsStore(url) as store:
        assert schema.migrate(store, target=7) == [1, 2, 3, 4, 5, 6, 7]
        store.insert_arrow(store.table("events"), events_table(events))
        assert not store.scalar(
            "SELECT count() FROM system.tables WHERE database = currentDatabase() "
            "AND name = 'tool_hour'"
        )
    p = AnalyticsProjection(url)
    try:
        p.setup()  # migration 8, then the start-up check fills the new rollup from events
        s = p.store
        assert s.schema_version() == schema.SCHEMA_VERSION >= 8
        assert_rollup_equals_events(s)
        p.apply(records(events))  # a replay of everything: nothing counted twice
        assert_rollup_equals_events(s)
        assert_panel_equals_events(s)
    finally:
        p.close()


def test_a_rollup_left_short_is_rebuilt_at_start(url, events):
    p = AnalyticsProjection(url)
    p.setup()
    p.apply(records(events))
    p.store.command(f"ALTER TABLE {p.store.database}.tool_hour DROP PARTITION 202502")
    assert p.verify_rollups()["tool_hour"] == [202502]
    p.close()
    again = AnalyticsProjection(url)
    try:
        again.setup()
        assert again.verify_rollups()["tool_hour"] == []
        assert_rollup_equals_events(again.store)
        assert_panel_equals_events(again.store)
    finally:
        again.close()
