"""The ``model_minute`` rollup (cost and tokens per model and minute) against raw ``events``.

Real chDB: the rollup's figures, and the cost dashboard's by-model panel that reads it, must
equal the same aggregation over ``events`` after overlapping replays (the projection inserts
only new event ids, so the view counts each event once), after an archive replay through
``apply_table``, and on a store created before the rollup existed (migration 6 creates it,
the start-up check fills it from the events already held).
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
SELECT tenant, model, minute, sum(events), sum(input_tokens), sum(output_tokens), sum(cost_usd)
FROM model_minute GROUP BY tenant, model, minute ORDER BY tenant, model, minute
"""
RAW = """
SELECT tenant, assumeNotNull(model) AS m, toDateTime64(toStartOfMinute(time), 0, 'UTC') AS minute,
    count(), sum(input_tokens), sum(output_tokens), sum(cost_usd)
FROM events WHERE model IS NOT NULL
GROUP BY tenant, m, minute ORDER BY tenant, m, minute
"""
# what dash_cost_by_model computed from events before the rollup (bounds on whole minutes)
RAW_PANEL = """
SELECT
    toDateTime64(toStartOfInterval(e.time, toIntervalSecond({bucket:UInt32})), 0, 'UTC') AS bucket,
    assumeNotNull(e.model) AS model,
    round(sum(e.cost_usd), 6) AS cost_usd,
    sum(e.input_tokens) AS input_tokens,
    sum(e.output_tokens) AS output_tokens,
    input_tokens + output_tokens AS tokens
FROM events AS e
WHERE e.model IS NOT NULL
  AND e.time >= {since:DateTime64(6, 'UTC')} AND e.time < {until:DateTime64(6, 'UTC')}
  AND ({tenant:String} = '' OR e.tenant = {tenant:String})
GROUP BY bucket, model
ORDER BY bucket, model
"""


@pytest.fixture(scope="module")
def events() -> list:
    """Two tenants; the second one's events cross a month boundary (two partitions)."""
    a = list(sample_events(3000, agents=6))
    b = list(
        sample_events(
            2000,
            agents=4,
            seed=8,
            start=datetime(2025, 1, 31, 23, 45, tzinfo=UTC),
            step_ms=1000,
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
    assert len(rolled) == len(raw) > 0
    for r, e in zip(rolled, raw, strict=True):
        assert r[:6] == e[:6]
        assert math.isclose(r[6], e[6], rel_tol=1e-9, abs_tol=1e-12)  # float sums, any order


def assert_panel_equals_events(store: AnalyticsStore) -> None:
    """The dashboard's named query (rollup) gives the rows the events-based SQL gives."""
    q = NAMED_QUERIES["dash_cost_by_model"]
    cases = [
        {},
        {"bucket": 60},
        {"tenant": "acme", "bucket": 300},
        {"tenant": "default", "since": "2025-01-06 09:03:00", "until": "2025-01-06 09:09:00"},
        {"since": "2025-01-31 23:59:00", "until": "2025-02-01 00:10:00", "bucket": 60},
    ]
    for given in cases:
        params = q.bind(given)
        got, want = store.rows(q.sql, params), store.rows(RAW_PANEL, params)
        assert got and len(got) == len(want), given
        for g, w in zip(got, want, strict=True):
            # cost is rounded to 6 decimals after a float sum: the last digit may differ
            assert (g[:2], g[3:]) == (w[:2], w[3:]) and abs(g[2] - w[2]) <= 1.01e-6, given


def test_the_rollup_equals_events_after_overlapping_replays(projection, events):
    recs = records(events)
    projection.apply(recs[:2000])
    projection.apply(recs[1500:4000])  # overlaps the first batch
    projection.apply(recs[3000:])
    projection.apply(recs[100:900])  # a partial replay of history
    projection.apply(recs[:1000] + recs[:1000])  # the same events twice in one batch
    projection.apply_table(events_to_table(events))  # the archive's fast path, everything again
    store = projection.store
    assert store.scalar("SELECT count() FROM events") == len(events)
    assert store.scalar("SELECT sum(events) FROM model_minute") == sum(
        1 for e in events if getattr(e.data, "model", None)
    )
    assert_rollup_equals_events(store)
    assert_panel_equals_events(store)
    assert projection.verify_rollups()["model_minute"] == []


def test_a_store_from_before_the_rollup_is_migrated_and_filled(url, events):
    with AnalyticsStore(url) as store:
        assert schema.migrate(store, target=5) == [1, 2, 3, 4, 5]
        store.insert_arrow(store.table("events"), events_table(events))
        assert not store.scalar(
            "SELECT count() FROM system.tables WHERE database = currentDatabase() "
            "AND name = 'model_minute'"
        )
    p = AnalyticsProjection(url)
    try:
        p.setup()  # migration 6, then the start-up check fills the new rollup from events
        s = p.store
        assert s.schema_version() == schema.SCHEMA_VERSION >= 6
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
    p.store.command(f"ALTER TABLE {p.store.database}.model_minute DROP PARTITION 202502")
    assert p.verify_rollups()["model_minute"] == [202502]
    p.close()
    again = AnalyticsProjection(url)
    try:
        again.setup()
        assert_rollup_equals_events(again.store)
    finally:
        again.close()
