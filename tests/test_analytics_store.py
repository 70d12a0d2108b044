"""Contract tests of the analytics store adapter, on every backend this machine has.

chDB (in a tmp dir) always runs; a ClickHouse server runs when ``CLICKHOUSE_URL`` is set
(e.g. ``http://default:@127.0.0.1:8123``; each test uses and drops its own databases).
chDB allows one engine directory per process at a time, so every test closes what it opens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from projections.analytics import schema
from projections.analytics.rows import events_table
from projections.analytics.sample import sample_events
from projections.analytics.store import AnalyticsError, AnalyticsStore, parse_url
from schemas.arrow import EVENT_ROW_SCHEMA

pytestmark = pytest.mark.integration

BACKENDS = ["chdb", "http"]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Iterator[tuple[str, str]]:
    """(url, database prefix) of a store location; databases made by a test are dropped."""
    if request.param == "chdb":
        yield f"chdb://{tmp_path / 'ch'}", "t"
        return
    url = os.environ.get("CLICKHOUSE_URL")
    if not url:
        pytest.skip("CLICKHOUSE_URL is not set: no ClickHouse server to test against")
    prefix = f"t_{uuid.uuid4().hex[:8]}"
    yield url, prefix
    with AnalyticsStore(url, "default", create=False) as s:
        for (name,) in s.rows(
            "SELECT name FROM system.databases WHERE startsWith(name, {p:String})", {"p": prefix}
        ):
            s.command(f"DROP DATABASE IF EXISTS {name} SYNC")


@pytest.fixture
def store(backend) -> Iterator[AnalyticsStore]:
    url, prefix = backend
    s = AnalyticsStore(url, f"{prefix}_live")
    try:
        yield s
    finally:
        s.close()


def test_migrate_creates_every_table_and_records_the_version(store):
    assert schema.migrate(store) == [m.version for m in schema.MIGRATIONS]
    assert store.schema_version() == schema.SCHEMA_VERSION
    tables = store.tables()
    for name in (*schema.DATA_TABLES, "schema_version", *(r.view for r in schema.ROLLUPS)):
        assert name in tables
    assert schema.migrate(store) == []  # nothing left to do
    versions = [r[0] for r in store.rows(f"SELECT version FROM {store.table('schema_version')}")]
    assert sorted(versions) == [m.version for m in schema.MIGRATIONS]


def test_upgrade_from_an_older_version_applies_only_what_is_missing(store):
    assert schema.migrate(store, target=1) == [1]
    assert "agent_state" not in store.tables()
    assert schema.migrate(store) == [m.version for m in schema.MIGRATIONS[1:]]
    assert "agent_state" in store.tables()
    assert store.schema_version() == schema.SCHEMA_VERSION


def test_a_store_newer_than_the_code_is_refused(store):
    schema.migrate(store)
    store.command(
        f"INSERT INTO {store.table('schema_version')} (version, description) VALUES (999, 'x')"
    )
    with pytest.raises(schema.SchemaTooNew, match="999"):
        schema.migrate(store)


def test_event_rows_round_trip_with_their_types(store):
    schema.migrate(store)
    events = list(sample_events(50, agents=3))
    table = events_table(events, [1] * 50, list(range(50)))
    store.insert_arrow(store.table("events"), table)
    back = store.query_arrow(
        "SELECT toString(event_id) AS event_id, type, kind, time, agent_id, run_id, "
        "input_tokens, latency_ms, payload, log_offset, causes FROM events ORDER BY log_offset"
    )
    assert back.num_rows == 50
    assert back.column("event_id").to_pylist() == [e.id for e in events]
    assert back.column("type").to_pylist() == [e.type for e in events]
    assert back.column("kind").to_pylist() == [e.type.rsplit(".v", 1)[0] for e in events]
    # microseconds and the UTC zone survive
    assert back.column("time").to_pylist() == [e.time for e in events]
    assert back.schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert back.column("payload").to_pylist() == table.column("payload").to_pylist()
    assert back.column("latency_ms").to_pylist() == table.column("latency_ms").to_pylist()


def test_rollups_are_fed_by_their_views(store):
    schema.migrate(store)
    events = list(sample_events(300, agents=4))
    store.insert_arrow(store.table("events"), events_table(events))
    assert store.scalar("SELECT sum(events) FROM agent_minute") == 300
    completed = sum(1 for e in events if e.type.startswith("agent.act.completed."))
    assert store.scalar("SELECT sum(calls) FROM tool_minute") == completed
    with_run = sum(1 for e in events if e.runid is not None)
    assert store.scalar("SELECT sum(events) FROM run_agent") == with_run
    assert store.scalar("SELECT sum(events) FROM runs") == with_run


def test_replace_live_with_swaps_every_table_and_views_keep_feeding(backend):
    url, prefix = backend
    live = AnalyticsStore(url, f"{prefix}_live")
    build = AnalyticsStore(url, f"{prefix}_build")
    try:
        schema.migrate(live)
        schema.migrate(build)
        old = events_table(list(sample_events(100, agents=2, seed=1)))
        new = events_table(list(sample_events(250, agents=5, seed=2)))
        live.insert_arrow(live.table("events"), old)
        build.insert_arrow(build.table("events"), new)
        build.close()

        live.replace_live_with(f"{prefix}_build")

        assert live.scalar("SELECT count() FROM events") == 250
        assert live.scalar("SELECT sum(events) FROM agent_minute") == 250
        assert live.scalar("SELECT uniqExact(agent_id) FROM events") == 5
        assert f"{prefix}_build" not in {
            r[0] for r in live.rows("SELECT name FROM system.databases")
        }
        # the live views now read the swapped-in events and feed the swapped-in rollups
        more = events_table(list(sample_events(10, agents=1, seed=3, tenant="other")))
        live.insert_arrow(live.table("events"), more)
        assert live.scalar("SELECT count() FROM events") == 260
        assert live.scalar("SELECT sum(events) FROM agent_minute") == 260
    finally:
        live.close()
        build.close()


def test_replace_live_with_refuses_a_build_at_another_schema_version(backend):
    url, prefix = backend
    live = AnalyticsStore(url, f"{prefix}_live")
    build = AnalyticsStore(url, f"{prefix}_build")
    try:
        schema.migrate(live)
        schema.migrate(build, target=1)
        build.close()
        with pytest.raises(AnalyticsError, match="schema version 1"):
            live.replace_live_with(f"{prefix}_build")
        assert live.scalar("SELECT count() FROM system.tables WHERE name = 'events'") >= 1
    finally:
        live.close()
        build.close()


def test_names_and_urls_are_validated(backend):
    url, _ = backend
    with pytest.raises(AnalyticsError, match="invalid database name"):
        AnalyticsStore(url, "x; DROP DATABASE y")
    with pytest.raises(AnalyticsError, match="chdb://PATH or http"):
        parse_url("postgres://h/db")
    with pytest.raises(AnalyticsError, match="no directory"):
        parse_url("chdb://")


def test_opening_a_missing_database_without_create_says_what_to_do(backend):
    url, prefix = backend
    with pytest.raises(AnalyticsError, match="run the analytics projection first"):
        AnalyticsStore(url, f"{prefix}_absent", create=False)


def test_rows_in_the_event_row_schema_insert_as_they_are(store):
    """The archive's Parquet rows (EVENT_ROW_SCHEMA) insert without conversion."""
    schema.migrate(store)
    t = pa.Table.from_pylist(
        [
            {
                "event_id": "0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b",
                "type": "agent.act.completed.v2",
                "category": "act",
                "time": datetime(2025, 2, 3, 4, 5, 6, 789012, tzinfo=UTC),
                "agent_id": "a",
                "run_id": None,
                "task_id": None,
                "tenant": "default",
                "source": "/agents/a",
                "causes": [],
                "traceparent": None,
                "model": None,
                "tool": "search",
                "call_id": "c1",
                "status": "error",
                "input_tokens": 0,
                "output_tokens": 0,
                "cost_usd": 0.0,
                "latency_ms": 12.5,
                "summary": "search error: x",
                "payload": "{}",
                "log_partition": None,
                "log_offset": None,
            }
        ],
        schema=EVENT_ROW_SCHEMA,
    )
    store.insert_arrow(store.table("events"), t)
    assert store.rows("SELECT sum(calls), sum(errors) FROM tool_minute") == [(1, 1)]
    assert store.scalar("SELECT toString(time) FROM events") == "2025-02-03 04:05:06.789012"


def test_a_second_process_gets_a_clear_error_naming_the_owner(tmp_path):
    """chDB: one process per directory; the error says which process holds it."""
    url = f"chdb://{tmp_path / 'ch'}"
    with AnalyticsStore(url, "t_live"):
        code = (
            "from projections.analytics.store import AnalyticsStore, AnalyticsError\n"
            "try:\n"
            f"    AnalyticsStore({url!r}, 't_live')\n"
            "except AnalyticsError as e:\n"
            "    print('ERR', e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        ).stdout
    assert f"locked by process {os.getpid()}" in out
