"""The read-only path reaches nothing outside its store, stays within its limits, and stops
a statement whose client went away: checked against real chDB, in process, through the
CLI and through the chDB owner's query service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentstream.cli import app
from projections.analytics import QueryError, ReadOnlyError, connect
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.reader import ChdbEngine, DirectReader
from projections.analytics.readonly import (
    QueryLimits,
    ReadResult,
    VerdictCache,
    check,
    check_settings,
    parse_ast,
    settings_in,
)
from projections.analytics.rows import events_table
from projections.analytics.sample import sample_events
from projections.analytics.service import SERVICE_FILE, read_service_file

N = 300
SECRET = "agentstream-secret-line"

# --- pure parts -----------------------------------------------------------------------------


def test_ast_lines_become_a_tree():
    lines = [
        "DescribeQuery (children 1)",
        " TableExpression (children 1)",
        "  Function file (children 1)",
        "   ExpressionList (children 2)",
        "    Literal '/etc/passwd'",
        "    Literal 'TSVWithNames'",
    ]
    (root,) = parse_ast(lines)
    assert root.kind == "DescribeQuery"
    (texpr,) = root.children
    (func,) = texpr.children
    assert (texpr.kind, func.kind, func.name) == ("TableExpression", "Function", "file")
    assert [n.kind for n, _ in root.walk()][-2:] == ["Literal", "Literal"]


def test_settings_are_read_from_clickhouse_formatting():
    clauses, options = settings_in(
        "EXPLAIN header = 1, indexes = 1 SELECT 'SETTINGS a = 1' AS x FROM t "
        "SETTINGS max_threads = 2, format_csv_delimiter = ','"
    )
    assert options == [("header", "1"), ("indexes", "1")]
    assert clauses == [[("max_threads", "2"), ("format_csv_delimiter", "','")]]
    limits = QueryLimits(max_execution_s=60)
    check_settings([[("max_execution_time", "5"), ("join_use_nulls", "1")]], [], limits)
    for bad in ("61", "0", "'x'"):
        with pytest.raises(ReadOnlyError, match="only lower"):
            check_settings([[("max_execution_time", bad)]], [], limits)
    with pytest.raises(ReadOnlyError, match="log_comment is refused"):
        check_settings([[("log_comment", "'x'")]], [], limits)
    with pytest.raises(ReadOnlyError, match="EXPLAIN option"):
        check_settings([], [("nope", "1")], limits)
    # a value the reader cannot take apart must not hide the settings after it
    for hidden in (
        "SELECT 1 SETTINGS max_threads = 1, additional_table_filters = {'t': 'x'}, "
        "max_execution_time = 99999",
        "SELECT 1 SETTINGS max_threads = f(1), max_execution_time = 99999",
    ):
        with pytest.raises(ReadOnlyError, match="could not read"):
            settings_in(hidden)


# --- a store, a file outside it, a URL that counts requests ---------------------------------


class Outside:
    """A local file and an HTTP endpoint the store must never reach."""

    def __init__(self, tmp: Path) -> None:
        self.file = tmp / "outside.tsv"
        self.file.write_text(f"{SECRET}\tx\n1\t2\n")
        self.requests = 0
        outer = self

        class Count(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"a,b\n1,2\n")

            do_HEAD = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Count)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/data.csv"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def store(tmp_path) -> Iterator[tuple[Path, str, Outside]]:
    url = f"chdb://{tmp_path / 'clickhouse'}"
    p = AnalyticsProjection(url)
    p.setup()
    p.apply_table(events_table(list(sample_events(N, agents=3))))
    p.close()
    outside = Outside(tmp_path)
    try:
        yield tmp_path, url, outside
    finally:
        outside.close()


def attacks(o: Outside) -> list[str]:
    f, u = str(o.file), o.url
    return [
        f"DESCRIBE file('{f}', 'TSVWithNames')",
        f"DESC TABLE file('{f}')",
        f"DESCRIBE url('{u}', 'CSV')",
        f"DESCRIBE (SELECT * FROM url('{u}', 'CSV'))",
        f"EXPLAIN SELECT * FROM file('{f}')",
        f"EXPLAIN AST SELECT * FROM url('{u}', 'CSV')",
        f"EXPLAIN SYNTAX SELECT * FROM url('{u}', 'CSV')",
        f"EXPLAIN PLAN header = 1 SELECT * FROM url('{u}', 'CSV')",
        f"EXPLAIN ESTIMATE SELECT * FROM file('{f}')",
        f"SELECT * FROM file('{f}', 'TSVWithNames')",
        f"SELECT file('{f}')",
        f"SELECT * FROM url('{u}', 'CSV')",
        f"WITH x AS (SELECT * FROM url('{u}', 'CSV')) SELECT * FROM x",
        f"SELECT count() FROM events WHERE agent_id IN (SELECT a FROM url('{u}', 'CSV'))",
        f"SELECT * FROM events AS e JOIN url('{u}', 'CSV') AS u ON e.agent_id = u.a",
        f"SELECT 1 IN file('{f}')",
        f"SELECT * FROM s3('{u}', 'CSV')",
        "SELECT * FROM hdfs('hdfs://127.0.0.1:9/x', 'CSV')",
        "SELECT * FROM remote('127.0.0.1:9', system.one)",
        "SELECT * FROM remoteSecure('127.0.0.1:9', system.one)",
        "SELECT * FROM cluster('default', system.one)",
        "SELECT * FROM mysql('127.0.0.1:9', 'd', 't', 'u', 'p')",
        "SELECT * FROM postgresql('127.0.0.1:9', 'd', 't', 'u', 'p')",
        "SELECT * FROM sqlite('/etc/x.db', 't')",
        "SELECT * FROM executable('cat /etc/passwd', 'TSV', 'x String')",
        "SELECT * FROM python(os)",
        "SELECT * FROM input('x String')",
        "SELECT * FROM merge('system', '^one$')",
        "SELECT * FROM dictionary('d')",
        "SELECT dictGet('d', 'a', toUInt64(1))",
        "SELECT * FROM `file`('/etc/passwd')",
        "SELECT * FROM numbers(3) INTO OUTFILE 'stolen.csv'",
        f"INSERT INTO events FROM INFILE '{f}' FORMAT TSV",
        "SELECT 1; SELECT * FROM file('/etc/passwd')",
        "SELECT 1 FORMAT CSV",
        "EXPLAIN INSERT INTO events SELECT * FROM events",
        "SELECT 1 SETTINGS max_execution_time = 100000",
        "SELECT 1 SETTINGS max_result_rows = 0",
        "SELECT 1 SETTINGS max_result_bytes = 99999999999999",
        "SELECT 1 SETTINGS timeout_overflow_mode = 'break'",
        "SELECT 1 SETTINGS log_comment = 'x'",
        "SELECT 1 SETTINGS max_threads = 1, additional_table_filters = {'events': 'x = 1'}, "
        "max_execution_time = 99999",
        "SELECT * FROM (SELECT 1 SETTINGS max_execution_time = 100000)",
        "SELECT 1 INTERSECT SELECT * FROM url('" + u + "', 'CSV')",
    ]


def test_every_attack_is_refused_before_it_runs(store):
    _, url, outside = store
    with connect(url=url) as db:
        assert isinstance(db, DirectReader)
        for sql in attacks(outside):
            with pytest.raises(ReadOnlyError):
                db.query(sql)
    assert outside.requests == 0  # nothing went out, in any statement form
    assert not (Path.cwd() / "stolen.csv").exists()


def test_the_same_attacks_fail_through_the_cli_without_leaking(store):
    data_dir, url, outside = store
    runner = CliRunner()
    env = {"AGENTSTREAM_DATA_DIR": str(data_dir), "AGENTSTREAM_CLICKHOUSE_URL": url}
    for sql in attacks(outside)[:12]:
        res = runner.invoke(app, ["query", sql, "-f", "csv"], env=env)
        assert res.exit_code == 1, (sql, res.output)
        assert "refused" in res.output, (sql, res.output)
        assert SECRET not in res.output
    assert outside.requests == 0


def test_harmless_statements_and_settings_work(store):
    _, url, _ = store
    with connect(url=url) as db:
        assert db.query("SELECT sum(number) AS s FROM numbers(10)").to_pylist() == [{"s": 45}]
        assert db.query("SELECT a FROM generateRandom('a UInt8', 1) LIMIT 5").num_rows == 5
        assert db.query("SELECT * FROM values('x UInt8', 1, 2)").num_rows == 2
        assert db.query("SELECT * FROM view(SELECT 1 AS one)").to_pylist() == [{"one": 1}]
        assert db.query("SELECT format('{}-{}', 'a', 'b') AS f").to_pylist() == [{"f": "a-b"}]
        got = db.query(
            "SELECT count() AS n FROM events "
            "SETTINGS join_use_nulls = 1, max_threads = 1, max_execution_time = 5"
        )
        assert got.to_pylist() == [{"n": N}]
        assert db.query("EXPLAIN PLAN indexes = 1 SELECT count() FROM events").num_rows > 0
        assert db.query("DESCRIBE TABLE events").num_rows > 10
        assert db.query("SHOW TABLES").num_rows > 3
        assert db.query("SELECT {a:String} AS a", {"a": "it's"}).to_pylist() == [{"a": "it's"}]
        stats = db.read("SELECT agent_id, count() FROM events GROUP BY agent_id").stats
        assert stats.rows_read == N and stats.result_rows == 3 and stats.elapsed_s is not None


def test_the_engine_refuses_lifting_readonly_and_says_so(store):
    data_dir, url, _ = store
    with connect(url=url) as db, pytest.raises(QueryError) as err:
        db.query("SELECT 1 SETTINGS readonly = 0")
    assert err.value.kind == "readonly"
    res = CliRunner().invoke(
        app,
        ["query", "SELECT 1 SETTINGS readonly = 0"],
        env={"AGENTSTREAM_DATA_DIR": str(data_dir), "AGENTSTREAM_CLICKHOUSE_URL": url},
    )
    assert res.exit_code == 1
    assert "refused by the engine's read-only mode" in res.output
    assert "fix the SQL" not in res.output


def test_limits_stop_long_and_large_statements(store):
    _, url, _ = store
    with connect(url=url, limits=QueryLimits(max_execution_s=0.5)) as db:
        with pytest.raises(QueryError) as err:
            db.query("SELECT sum(number) FROM numbers(200000000000)")
        assert err.value.kind == "limit" and "TIMEOUT_EXCEEDED" in str(err.value)
    small = QueryLimits(max_result_rows=10, max_result_bytes=4096)
    with connect(url=url, limits=small) as db:
        with pytest.raises(QueryError) as err:
            db.query("SELECT number FROM numbers(100)")
        assert err.value.kind == "limit" and "TOO_MANY_ROWS_OR_BYTES" in str(err.value)
        with pytest.raises(QueryError) as err:
            db.query("SELECT repeat('x', 2048 + number) AS s FROM numbers(5)")
        assert err.value.kind == "limit" and "TOO_MANY_ROWS_OR_BYTES" in str(err.value)
        assert db.query("SELECT number FROM numbers(10)").num_rows == 10
        with pytest.raises(ReadOnlyError, match="only lower"):
            db.query("SELECT 1 SETTINGS max_result_rows = 11")


def test_default_limits_come_from_the_settings(store, monkeypatch):
    data_dir, url, _ = store
    monkeypatch.setenv("AGENTSTREAM_DATA_DIR", str(data_dir))
    monkeypatch.setenv("AGENTSTREAM_CLICKHOUSE_URL", url)
    monkeypatch.setenv("AGENTSTREAM_QUERY_MAX_RESULT_ROWS", "5")
    res = CliRunner().invoke(app, ["query", "SELECT number FROM numbers(6)", "-f", "csv"])
    assert res.exit_code == 1 and "stopped by a limit of the read path" in res.output
    res = CliRunner().invoke(app, ["query", "SELECT number FROM numbers(5)", "-f", "csv"])
    assert res.exit_code == 0 and res.stdout.splitlines()[-1] == "4"


# --- through the owner's query service (another process) ------------------------------------

OWNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from projections.analytics.projection import AnalyticsProjection
    from projections.analytics.readonly import QueryLimits
    p = AnalyticsProjection(sys.argv[1], serve_queries_in=Path(sys.argv[2]),
                            query_limits=QueryLimits(max_execution_s=float(sys.argv[3])))
    p.setup()
    print("ready", flush=True)
    sys.stdin.read()
    p.close()
    """
)


@pytest.fixture
def owner(store) -> Iterator[tuple[Path, str, Outside, subprocess.Popen[str]]]:
    """A separate process holding the chDB directory and serving reads (limit 120 s)."""
    data_dir, url, outside = store
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, url, str(data_dir / "run"), "120"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield data_dir, url, outside, proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentstream.cli", *args]


def _env(data_dir: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTSTREAM_DATA_DIR": str(data_dir),
        "AGENTSTREAM_CLICKHOUSE_URL": url,
    }


def test_attacks_through_the_service(owner):
    data_dir, url, outside, proc = owner
    info = read_service_file(data_dir / "run")
    assert info is not None and info.pid == proc.pid
    env = _env(data_dir, url)
    for sql in attacks(outside)[:16]:
        done = subprocess.run(
            _cli("query", sql, "-f", "json"),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, (sql, done.stdout, done.stderr)
        assert "refused" in done.stderr and SECRET not in done.stdout + done.stderr
    with connect(url=url, run_dir=data_dir / "run") as db:
        assert "process" in db.via  # the Python API goes through the owner as well
        with pytest.raises(ReadOnlyError):
            db.query(f"DESCRIBE file('{outside.file}', 'TSVWithNames')")
        with pytest.raises(QueryError) as err:
            db.query("SELECT 1 SETTINGS readonly = 0")
        assert err.value.kind == "readonly"
        assert db.query("SELECT 1 AS x SETTINGS max_threads = 1").to_pylist() == [{"x": 1}]
    engine = subprocess.run(
        _cli("query", "SELECT 1 SETTINGS readonly = 0"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert engine.returncode == 1 and "engine's read-only mode" in engine.stderr
    timed = subprocess.run(
        _cli("query", "--named", "agent_leaderboard", "--timing", "-f", "csv"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert timed.returncode == 0, timed.stderr
    assert "timing: engine" in timed.stderr and "rows read" in timed.stderr
    assert outside.requests == 0


def _running(data_dir: Path, url: str, marker: str) -> int:
    """Statements in the owner's engine whose text holds ``marker`` (asked through it)."""
    with connect(url=url, run_dir=data_dir / "run") as db:
        rows = db.query(
            "SELECT count() AS n FROM system.processes "
            "WHERE position(query, {m:String}) > 0 AND position(query, 'system.processes') = 0",
            {"m": marker},
        )
    return int(rows.column("n")[0].as_py())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_statement_stops_when_its_client_goes_away(owner):
    """kill -9 of the CLI mid-statement: the owner kills the statement (poll, deadline)."""
    data_dir, url, _, proc = owner
    marker = "2e11"
    client = subprocess.Popen(
        _cli("query", f"SELECT sum(number) FROM numbers({marker})"),
        env=_env(data_dir, url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while _running(data_dir, url, marker) == 0:
            assert client.poll() is None, "the statement ended before it could be cancelled"
            assert time.monotonic() < deadline, "the statement never started"
            time.sleep(0.05)
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    deadline = time.monotonic() + 20  # far below the owner's 120 s execution limit
    while _running(data_dir, url, marker):
        assert time.monotonic() < deadline, "the statement kept running after its client died"
        time.sleep(0.05)
    # and the owner stops burning CPU (its statement threads are gone)
    deadline = time.monotonic() + 20
    while True:
        before = _cpu_s(proc.pid)
        time.sleep(0.5)
        if _cpu_s(proc.pid) - before < 0.25:
            break
        assert time.monotonic() < deadline, "the owner process keeps a core busy"


def test_the_service_speaks_every_output_format(owner):
    data_dir, _, _, _ = owner
    info = read_service_file(data_dir / "run")
    assert info is not None
    from projections.analytics.service import post

    body = {"sql": "SELECT number AS n, [number] AS a FROM numbers(3)", "format": "csv"}
    status, headers, data = post(info, "/query", json.dumps(body).encode(), 30)
    assert status == 200 and data.decode().splitlines() == [
        '"n","a"',
        '0,"[0]"',
        '1,"[1]"',
        '2,"[2]"',
    ]
    assert json.loads(headers["x-agentstream-stats"])["result_rows"] == 3
    body = {"named": "agent_leaderboard", "params": {"limit": 1}, "format": "table"}
    status, _, data = post(info, "/query", json.dumps(body).encode(), 30)
    shown = json.loads(data)
    assert status == 200 and shown["total"] == 1 and "agent_id" in shown["columns"]
    body = {"named": "agent_leaderboard", "params": {"limt": 1}}
    status, _, data = post(info, "/query", json.dumps(body).encode(), 30)
    assert status == 400 and json.loads(data)["kind"] == "named"
    assert (data_dir / "run" / SERVICE_FILE).exists()


# --- the CLI finds the owner without the settings model -------------------------------------


@pytest.mark.parametrize("where", ["env", "toml", "default", "mixed-case-env"])
def test_quick_store_matches_the_settings(tmp_path, monkeypatch, where):
    from agentstream.commands.query import quick_store
    from agentstream.settings import load_settings
    from projections.analytics.store import parse_url

    for key in list(os.environ):
        if key.upper().startswith("AGENTSTREAM_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    if where == "env":
        monkeypatch.setenv("AGENTSTREAM_DATA_DIR", str(tmp_path / "d"))
    elif where == "toml":
        (tmp_path / "cfg.toml").write_text('data_dir = "rel/dir"\n')
        monkeypatch.setenv("AGENTSTREAM_CONFIG", str(tmp_path / "cfg.toml"))
    elif where == "mixed-case-env":
        monkeypatch.setenv("agentstream_Data_Dir", str(tmp_path / "m"))
        monkeypatch.setenv("AGENTSTREAM_CLICKHOUSE_URL", "chdb://store/../ch")
    s = load_settings()
    assert quick_store() == (s.data_dir.resolve() / "run", str(parse_url(s.analytics_url).path))


def test_a_server_of_its_own_clients_can_cancel_a_read(owner):
    """The web UI's route: read(..., client_gone=...) through the owner's service, and on a
    store opened in process: the statement is killed when its client goes away."""
    data_dir, url, _, _ = owner
    with connect(url=url, run_dir=data_dir / "run") as db:
        assert "process" in db.via
        _cancel_while_running(db, data_dir, url, "2e11 + 1")


def test_a_read_on_a_store_opened_in_process_can_be_cancelled(store):
    data_dir, url, _ = store
    with connect(url=url, run_dir=data_dir / "run") as db:
        assert isinstance(db, DirectReader)
        _cancel_while_running(db, data_dir, url, "2e11 + 2")


def _cancel_while_running(db, data_dir: Path, url: str, marker: str) -> None:
    gone = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            db.read(f"SELECT sum(number) FROM numbers({marker})", client_gone=gone.is_set)
        except BaseException as err:  # handed to the test thread
            outcome.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while _running(data_dir, url, marker) == 0:
        assert worker.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.05)
    gone.set()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the read did not return after its client went away"
    assert isinstance(outcome[0], QueryError) and outcome[0].kind == "cancelled", outcome
    deadline = time.monotonic() + 20
    while _running(data_dir, url, marker):
        assert time.monotonic() < deadline, "the statement kept running"
        time.sleep(0.05)


# --- remembered verdicts ----------------------------------------------------------------------


class CountingEngine:
    """A real engine that counts its parses (the verdict cache must skip only repeats)."""

    def __init__(self, engine: ChdbEngine) -> None:
        self.engine = engine
        self.parses = 0

    def explain_ast(self, sql: str, params: Mapping[str, Any]) -> list[str]:
        self.parses += 1
        return self.engine.explain_ast(sql, params)

    def format_query(self, sql: str) -> str:
        return self.engine.format_query(sql)

    def table_functions(self) -> frozenset[str]:
        return self.engine.table_functions()

    def execute(self, sql: str, params: Mapping[str, Any], tag: str) -> ReadResult:
        return self.engine.execute(sql, params, tag)

    def kill(self, tag: str) -> None:
        self.engine.kill(tag)


def test_a_remembered_verdict_is_only_reused_for_the_same_text_params_and_limits(store):
    _, url, outside = store
    verdicts = VerdictCache(size=64)
    with connect(url=url) as db:
        assert isinstance(db, DirectReader) and isinstance(db.engine, ChdbEngine)
        eng = CountingEngine(db.engine)

        def ok(sql: str, params: dict[str, Any] | None = None, **kw: Any) -> str:
            return check(sql, eng, params or {}, kw.get("limits"), verdicts)

        harmless = "SELECT * FROM numbers(3)"
        assert ok(harmless) == harmless and eng.parses == 1
        assert ok(harmless) == harmless and eng.parses == 1  # remembered: no second parse
        # one character more is another statement: parsed again, and refused
        for near in (
            harmless + " FORMAT CSV",
            harmless + " SETTINGS log_comment = 'x'",
            harmless + " INTO OUTFILE 'stolen.csv'",
            harmless.replace("numbers", "file"),
        ):
            with pytest.raises(ReadOnlyError):
                ok(near)
        # parameters are part of the verdict: another value is parsed again
        before = eng.parses
        assert ok("SELECT {x:UInt8} AS x", {"x": 1}) and eng.parses == before + 1
        assert ok("SELECT {x:UInt8} AS x", {"x": 1}) and eng.parses == before + 1
        assert ok("SELECT {x:UInt8} AS x", {"x": 2}) and eng.parses == before + 2
        assert ok("SELECT {x:UInt8} AS x", {"x": "2"}) and eng.parses == before + 3  # a str
        with pytest.raises(QueryError):  # the parser refuses the value: not a cached pass
            ok("SELECT {x:UInt8} AS x", {"x": "not a number"})
        # so are the limits: a setting allowed under one ceiling is refused under a lower one
        lowered = "SELECT 1 SETTINGS max_result_rows = 100"
        assert ok(lowered, limits=QueryLimits()) == lowered
        with pytest.raises(ReadOnlyError, match="only lower"):
            ok(lowered, limits=QueryLimits(max_result_rows=10))
        # refusals are never remembered: every attack, twice, is refused both times
        for sql in attacks(outside):
            for _ in range(2):
                with pytest.raises(ReadOnlyError):
                    ok(sql)
        assert len(verdicts) == 5  # the allowed ones only
    assert outside.requests == 0
    assert not (Path.cwd() / "stolen.csv").exists()


def test_the_verdict_cache_is_bounded(store):
    verdicts = VerdictCache(size=2)
    keys = [VerdictCache.key(f"SELECT {i}", {}, QueryLimits(), frozenset()) for i in range(3)]
    for i, k in enumerate(keys):
        verdicts.put(k, f"SELECT {i}")
    assert len(verdicts) == 2
    assert verdicts.get(keys[0]) is None and verdicts.get(keys[2]) == "SELECT 2"
    _, url, _ = store
    long_text = "SELECT 1 AS x" + " " * VerdictCache.MAX_TEXT  # too long to keep
    with connect(url=url) as db:
        assert isinstance(db, DirectReader)
        empty = VerdictCache()
        assert check(long_text, db.engine, {}, None, empty) == "SELECT 1 AS x"
        assert len(empty) == 0
