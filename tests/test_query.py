"""The analyst's path: read-only SQL, named queries, formats, and reads routed through the
process that owns the chDB directory."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from agentstream.cli import app
from projections.analytics import QueryError, ReadOnlyError, check_read_only, connect
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.queries import NAMED_QUERIES
from projections.analytics.reader import DirectReader
from projections.analytics.rows import events_table
from projections.analytics.sample import SampleCounts, sample_events
from projections.analytics.service import SERVICE_FILE, read_service_file
from projections.runner import Record
from schemas.derived import Violation, ViolationCategory
from schemas.topics import VIOLATIONS

N = 2000


# --- the statement check (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "sent"),
    [
        ("SELECT 1", "SELECT 1"),
        ("select count() from events;", "select count() from events"),
        ("  WITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT * FROM x"),
        ("(SELECT 1) UNION ALL (SELECT 2)", "(SELECT 1) UNION ALL (SELECT 2)"),
        ("SHOW TABLES", "SHOW TABLES"),
        ("DESCRIBE TABLE events", "DESCRIBE TABLE events"),
        ("EXPLAIN SELECT 1", "EXPLAIN SELECT 1"),
        ("EXISTS TABLE events", "EXISTS TABLE events"),
        (
            "/* note; INSERT */ SELECT 'DROP TABLE x; --' -- trailing; comment\n;",
            "/* note; INSERT */ SELECT 'DROP TABLE x; --'",
        ),
        ("SELECT `weird;name` FROM events;;", "SELECT `weird;name` FROM events"),
    ],
)
def test_reading_statements_pass_as_written(sql, sent):
    assert check_read_only(sql) == sent


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("INSERT INTO events SELECT * FROM events", "INSERT statements are refused"),
        ("drop table events", "DROP statements are refused"),
        ("ALTER TABLE events DELETE WHERE 1", "ALTER statements are refused"),
        ("TRUNCATE TABLE events", "TRUNCATE statements are refused"),
        ("OPTIMIZE TABLE events FINAL", "OPTIMIZE statements are refused"),
        ("SYSTEM DROP MARK CACHE", "SYSTEM statements are refused"),
        ("SET readonly = 0", "SET statements are refused"),
        ("SELECT 1; DROP TABLE events", "one statement at a time"),
        ("SELECT * FROM events INTO OUTFILE 'x.csv'", "INTO OUTFILE"),
        ("-- only a comment", "empty statement"),
        ("SELECT 'unterminated", "unterminated"),
    ],
)
def test_writing_statements_are_refused(sql, why):
    with pytest.raises(ReadOnlyError, match=why):
        check_read_only(sql)


# --- a populated store --------------------------------------------------------------------


@pytest.fixture
def populated(tmp_path) -> Iterator[tuple[Path, str, SampleCounts, list[Violation]]]:
    """A store with N sample events and some violations, closed again (nobody holds it)."""
    url = f"chdb://{tmp_path / 'clickhouse'}"
    counts = SampleCounts()
    events = list(sample_events(N, agents=5, counts=counts))
    t0 = datetime(2025, 1, 6, 9, tzinfo=UTC)
    violations = [
        Violation(
            violation_id=f"00000000-0000-4000-8000-{i:012d}",
            category=[ViolationCategory.TOOL_ERROR, ViolationCategory.TIMEOUT][i % 2],
            agent_id=f"agent-00{i % 3}",
            run_id=f"agent-00{i % 3}-run-1",
            task_id=None,
            tenant="default",
            time=t0 + timedelta(seconds=i),
            detected_by=events[i].id,
            event_ids=(events[i].id,),
        )
        for i in range(9)
    ]
    p = AnalyticsProjection(url)
    p.setup()
    p.apply_table(events_table(events))
    p.apply([Record(VIOLATIONS, 0, i, None, v, 0) for i, v in enumerate(violations)])
    p.close()
    yield tmp_path, url, counts, violations


def _env(data_dir: Path, url: str) -> dict[str, str]:
    return {"AGENTSTREAM_DATA_DIR": str(data_dir), "AGENTSTREAM_CLICKHOUSE_URL": url}


def test_named_queries_answer_from_the_rollups(populated):
    data_dir, url, counts, _ = populated
    with connect(url=url, run_dir=data_dir / "run") as db:
        board = db.named("agent_leaderboard").to_pylist()
        assert {r["agent_id"]: r["events"] for r in board} == dict(counts.by_agent)
        assert sum(r["failed"] for r in board) == counts.failed_actions  # no mismatches
        rates = [r["success_rate"] for r in board]
        assert rates == sorted(rates, reverse=True)
        assert len(db.named("agent_leaderboard", {"limit": 2})) == 2

        trend = db.named("event_type_trend", {"hours": 48, "bucket_minutes": 5}).to_pylist()
        per_type: dict[str, int] = {}
        for r in trend:
            per_type[r["type"]] = per_type.get(r["type"], 0) + r["events"]
        assert per_type == dict(counts.by_type)

        completed = counts.by_type["agent.act.completed.v2"]
        for name in ("slowest_tools", "least_reliable_tools"):
            tools = db.named(name).to_pylist()
            assert sum(r["calls"] for r in tools) == completed
            assert sum(r["errors"] for r in tools) == counts.failed_actions
        p95 = [r["p95_ms"] for r in db.named("slowest_tools").to_pylist()]
        assert p95 == sorted(p95, reverse=True)

        runs = db.named("cost_per_run", {"limit": 100000}).to_pylist()
        assert len(runs) == counts.runs
        assert sum(r["events"] for r in runs) == counts.total
        assert sum(1 for r in runs if r["status"] == "failed") == counts.failed_runs

        cats = db.named("violations_by_category").to_pylist()
        assert {r["category"]: r["violations"] for r in cats} == {"tool_error": 5, "timeout": 4}

        failed = db.named("failed_runs", {"runs": 3, "events_per_run": 4}).to_pylist()
        failed_ids = {r["run_id"] for r in failed}
        assert len(failed_ids) == 3
        status = {
            r["run_id"]: r["status"]
            for r in db.named("cost_per_run", {"limit": 100000}).to_pylist()
        }
        assert all(status[run] == "failed" for run in failed_ids)
        assert all(sum(1 for r in failed if r["run_id"] == run) == 4 for run in failed_ids)
        with pytest.raises(KeyError, match="accepted: limit"):
            db.named("agent_leaderboard", {"limt": 3})


def test_every_named_query_runs(populated):
    data_dir, url, _, _ = populated
    with connect(url=url, run_dir=data_dir / "run") as db:
        for name in NAMED_QUERIES:
            assert db.named(name).num_rows > 0, name


def test_the_engine_refuses_writes_the_check_cannot_see(populated):
    data_dir, url, counts, _ = populated
    with connect(url=url, run_dir=data_dir / "run") as db:
        with pytest.raises(QueryError, match="readonly"):
            db.query("SELECT 1 SETTINGS readonly = 0")
        with pytest.raises(ReadOnlyError):
            db.query("INSERT INTO events SELECT * FROM events")
        assert db.query("SELECT count() AS n FROM events").column("n").to_pylist() == [counts.total]


def test_cli_formats_and_params(populated):
    data_dir, url, counts, _ = populated
    runner = CliRunner()
    env = _env(data_dir, url)
    res = runner.invoke(
        app,
        ["query", "SELECT type, count() AS n FROM events GROUP BY type ORDER BY type", "-f", "csv"],
        env=env,
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert {r["type"]: int(r["n"]) for r in rows} == dict(counts.by_type)

    res = runner.invoke(
        app,
        [
            "query",
            "SELECT agent_id, count() AS n, groupArray(1)(event_id) AS ids FROM events "
            "WHERE agent_id = {a:String} GROUP BY agent_id",
            "-p",
            "a=agent-001",
            "--format",
            "json",
        ],
        env=env,
    )
    assert res.exit_code == 0, res.output
    (line,) = [json.loads(x) for x in res.stdout.splitlines()]
    assert line["n"] == counts.by_agent["agent-001"]
    assert len(line["ids"][0]) == 36  # UUIDs come out as text

    out = data_dir / "board.parquet"
    res = runner.invoke(
        app, ["query", "--named", "agent_leaderboard", "-f", "parquet", "-o", str(out)], env=env
    )
    assert res.exit_code == 0, res.output
    assert sorted(pq.read_table(out).column("agent_id").to_pylist()) == sorted(counts.by_agent)

    wide = {**env, "COLUMNS": "300"}
    res = runner.invoke(app, ["query", "--named", "cost_per_run", "-p", "limit=3"], env=wide)
    assert res.exit_code == 0, res.output
    assert "cost_usd" in res.stdout and "3 rows" in res.output

    res = runner.invoke(app, ["query", "--list"], env=env)
    assert res.exit_code == 0
    for name in NAMED_QUERIES:
        assert name in res.stdout


def test_cli_refuses_writes_and_bad_input_in_one_line(populated):
    data_dir, url, counts, _ = populated
    runner = CliRunner()
    env = _env(data_dir, url)
    cases = [
        (["query", "DELETE FROM events WHERE 1"], "refused: DELETE statements are refused"),
        (["query", "SELECT nope FROM events"], "query failed"),
        (["query", "--named", "nope"], "no named query 'nope'"),
        (["query", "-n", "agent_leaderboard", "-p", "limit"], "is not NAME=VALUE"),
        (["query"], "give either SQL or --named"),
        (["query", "SELECT 1", "-o", "x.csv"], "add --format csv, json or parquet"),
    ]
    for args, message in cases:
        res = runner.invoke(app, args, env=env)
        assert res.exit_code == 1, (args, res.output)
        assert message in res.output, (args, res.output)
    with connect(url=url) as db:  # and nothing was deleted
        assert db.query("SELECT count() AS n FROM events").column("n")[0].as_py() == counts.total


def test_cli_says_when_there_is_no_store(tmp_path):
    res = CliRunner().invoke(
        app, ["query", "SELECT 1"], env=_env(tmp_path, f"chdb://{tmp_path / 'none'}")
    )
    assert res.exit_code == 1
    assert "no analytics store at" in res.output and "agentstream demo" in res.output


def test_reads_go_through_the_process_that_owns_the_store(populated):
    """While this process holds the chDB directory, `agentstream query` in another process
    works (it could not open the directory itself) and still refuses writes."""
    data_dir, url, counts, _ = populated
    owner = AnalyticsProjection(url, serve_queries_in=data_dir / "run")
    owner.setup()
    try:
        info = read_service_file(data_dir / "run")
        assert info is not None and info.pid == os.getpid()
        assert oct((data_dir / "run" / SERVICE_FILE).stat().st_mode & 0o777) == "0o600"
        env = {**os.environ, **_env(data_dir, url)}
        cli = [sys.executable, "-m", "agentstream.cli", "query"]
        done = subprocess.run(
            [*cli, "SELECT agent_id, count() AS n FROM events GROUP BY agent_id", "-f", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        got = {r["agent_id"]: r["n"] for r in map(json.loads, done.stdout.splitlines())}
        assert got == dict(counts.by_agent)

        refused = subprocess.run(
            [*cli, "DROP TABLE events"], env=env, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 1 and "refused" in refused.stderr
        engine = subprocess.run(
            [*cli, "SELECT 1 SETTINGS readonly=0"], env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert engine.returncode == 1 and "readonly" in engine.stderr

        # the endpoint wants the recorded token
        req = urllib.request.Request(info.url + "/health", headers={"Authorization": "Bearer x"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 401
    finally:
        owner.close()
    assert not (data_dir / "run" / SERVICE_FILE).exists()


def test_a_stale_endpoint_record_is_ignored(populated):
    data_dir, url, counts, _ = populated
    run = data_dir / "run"
    run.mkdir(exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / SERVICE_FILE).write_text(
        json.dumps(
            {
                "url": "http://127.0.0.1:9",
                "token": "t",
                "pid": dead.pid,
                "store": str(Path(url[len("chdb://") :]).resolve()),
                "database": "agentstream",
                "started_at": 0.0,
            }
        )
    )
    with connect(url=url, run_dir=run) as db:
        assert isinstance(db, DirectReader)
        assert db.query("SELECT count() AS n FROM events").column("n")[0].as_py() == counts.total


def test_docs_match_the_code(tmp_path):
    """docs/analytics.md shows every named query's SQL verbatim and every column of every
    table with its exact ClickHouse type."""
    from projections.analytics import schema
    from projections.analytics.store import AnalyticsStore

    doc = (Path(__file__).parent.parent / "docs" / "analytics.md").read_text()
    for q in NAMED_QUERIES.values():
        assert f"### `{q.name}`" in doc, q.name
        assert q.sql.strip() in doc, f"the SQL of {q.name} in docs/analytics.md is stale"
    with AnalyticsStore(f"chdb://{tmp_path / 'ch'}") as store:
        schema.migrate(store)
        columns = store.rows(
            "SELECT table, name, type FROM system.columns WHERE database = {db:String}",
            {"db": store.database},
        )
    tables = {*schema.DATA_TABLES, "schema_version"}
    checked = 0
    for table, name, ctype in columns:
        if table in tables:
            assert f"| `{name}` | {ctype} |" in doc, f"{table}.{name} {ctype} not documented"
            checked += 1
    assert checked > 90
