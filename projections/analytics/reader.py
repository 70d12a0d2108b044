"""The analyst's Python entry point: read-only SQL in, Arrow out.

    from agentstream.settings import load_settings
    from projections.analytics import connect

    with connect(load_settings()) as db:
        table = db.query("SELECT type, count() AS n FROM events GROUP BY type")  # pyarrow.Table
        board = db.named("agent_leaderboard", {"limit": 5})
        df = table.to_pandas()  # if pandas is installed

``connect`` picks the route: a ClickHouse server directly; on chDB, the read endpoint of
the process that holds the directory (the pipeline, while it runs: chDB allows one
process per directory), or the directory itself when nobody holds it. Every route runs
statements through :func:`projections.analytics.readonly.run_readonly`; the engines it
needs (chDB's own connection API, a ClickHouse server through clickhouse-connect) are here.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from projections.analytics.readonly import (
    QueryError,
    QueryLimits,
    QueryStats,
    ReadResult,
    classify_error,
    run_readonly,
)
from projections.analytics.store import (
    DEFAULT_DATABASE,
    AnalyticsError,
    Location,
    check_identifier,
    model_lock,
    open_client,
    parse_url,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from agentstream.settings import Settings
    from projections.analytics.service import ServiceInfo

__all__ = [
    "AnalyticsReader",
    "DirectReader",
    "QueryError",
    "ServiceReader",
    "connect",
    "limits_from",
]

_ARROW_STREAM_START = (b"\xff\xff\xff\xff", b"\x10\x00\x00\x00")  # IPC continuation / legacy


class AnalyticsReader(ABC):
    """Read-only queries against the analytics model; results are ``pyarrow.Table``."""

    via: str = ""
    last_stats: QueryStats | None = None

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """Run one reading statement (``{name:Type}`` placeholders take ``params``)."""
        return self.read(sql, params).table()

    def named(self, name: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """Run a query of the named library (``projections.analytics.queries``)."""
        from projections.analytics.queries import NAMED_QUERIES

        try:
            q = NAMED_QUERIES[name]
        except KeyError:
            raise AnalyticsError(
                f"no named query {name!r}", f"choose one of: {', '.join(NAMED_QUERIES)}"
            ) from None
        return self.query(q.sql, q.bind(params))

    def read(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        client_gone: Callable[[], bool] | None = None,
    ) -> ReadResult:
        """Like :meth:`query`, with the engine's figures (``result.stats``).

        ``client_gone``: for a server that runs statements for its own clients (the web
        UI); polled while the statement runs, and when it returns True the statement is
        killed and this raises ``QueryError(kind="cancelled")``.
        """
        result = self._read(sql, dict(params or {}), client_gone)
        self.last_stats = result.stats
        return result

    @abstractmethod
    def _read(
        self, sql: str, params: dict[str, Any], client_gone: Callable[[], bool] | None
    ) -> ReadResult:
        """Check and run one statement on this reader's route."""

    def close(self) -> None:  # noqa: B027 (optional: readers without a connection keep it)
        """Release the connection."""

    def __enter__(self) -> AnalyticsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- engines ------------------------------------------------------------------------------


def _engine_message(err: BaseException) -> str:
    """ClickHouse's message without the driver's wrapping, first line only."""
    text = str(err).strip()
    start = text.find("Code: ")
    if start > 0:
        text = text[start:]
    line = text.splitlines()[0] if text else text
    line = re.sub(r"^(Code: \d+\. DB::Exception: )+", r"\1", line)  # chDB repeats the prefix
    return line.split("(version ")[0].strip()


def _chdb_param(value: Any) -> str:
    """A query parameter as ClickHouse text (lists become array literals)."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if value is None:
        return "NULL"
    return _chdb_param(value)


def _check_ipc(data: bytes) -> bytes:
    if data and not data.startswith(_ARROW_STREAM_START):
        raise QueryError("the statement chose its own output format (FORMAT …); remove it")
    return data


def _ipc_rows(data: bytes) -> int:
    """Rows in an Arrow IPC stream (reads the batch headers; no copy)."""
    import pyarrow as pa

    if not data:
        return 0
    return sum(batch.num_rows for batch in pa.ipc.open_stream(data))


class ChdbEngine:
    """chDB through its own connection API: server-side parameters, the engine's statistics.

    Three handles on the process's engine: one runs statements (``readonly = 2`` and the
    limits are set on it once, so nothing else can lift them), one parses them for the
    check (``readonly = 2``, without the result limits, which would count the AST's lines),
    one kills them.
    """

    _table_functions: frozenset[str] | None = None

    def __init__(self, location: Location, database: str, limits: QueryLimits) -> None:
        import chdb

        assert location.path is not None
        if not (location.path / "metadata").is_dir():
            raise AnalyticsError(
                f"no analytics store at {location.path}",
                "run `agentstream demo` (or the analytics projection) first",
            )
        target = os.path.realpath(location.path)  # chDB compares engine paths literally
        try:
            self._conn = chdb.connect(target)
            self._parse = chdb.connect(target)
            self._ctl = chdb.connect(target)
        except RuntimeError as err:
            from projections.analytics.store import _open_error

            raise _open_error(location, err) from None
        self._lock = threading.Lock()
        try:
            exists = self._ctl.query(
                "SELECT count() FROM system.databases WHERE name = {db:String}",
                "TabSeparated",
                params={"db": database},
            )
            if exists.bytes().strip() != b"1":
                raise AnalyticsError(
                    f"no analytics database {database!r} at {location.display()}",
                    "run `agentstream demo` (or the analytics projection) first",
                )
            settings = {**limits.engine_settings(), "output_format_arrow_string_as_string": "1"}
            assigns = ", ".join(f"{k} = '{v}'" for k, v in settings.items())
            self._conn.query(f"USE {check_identifier(database)}", "TabSeparated")
            self._conn.query(f"SET {assigns}, readonly = 2", "TabSeparated")
            self._parse.query(f"USE {check_identifier(database)}", "TabSeparated")
            self._parse.query("SET max_execution_time = 10, readonly = 2", "TabSeparated")
        except BaseException:
            self.close()
            raise

    def _text(self, sql: str, params: Mapping[str, Any], fmt: str = "TabSeparated") -> str:
        with self._lock:
            try:
                res = self._parse.query(
                    sql, fmt, params={k: _chdb_param(v) for k, v in params.items()}
                )
            except Exception as err:  # chDB raises RuntimeError / ChdbError
                message = _engine_message(err)
                raise QueryError(message, classify_error(message)) from None
        return res.bytes().decode("utf-8", "replace")

    def explain_ast(self, sql: str, params: Mapping[str, Any]) -> list[str]:
        return self._text(f"EXPLAIN AST {sql}", params).splitlines()

    def format_query(self, sql: str) -> str:
        return self._text("SELECT formatQuerySingleLine({q:String})", {"q": sql}, "RawBLOB")

    def table_functions(self) -> frozenset[str]:
        if ChdbEngine._table_functions is None:
            res = self._ctl.query("SELECT name FROM system.table_functions", "TabSeparated")
            ChdbEngine._table_functions = frozenset(res.bytes().decode().split())
        return ChdbEngine._table_functions

    def execute(self, sql: str, params: Mapping[str, Any], tag: str) -> ReadResult:
        bound = {k: _chdb_param(v) for k, v in params.items()}
        with self._lock:
            try:
                self._conn.query(f"SET log_comment = '{tag}'", "TabSeparated")
                res = self._conn.query(sql, "ArrowStream", params=bound)
            except Exception as err:
                message = _engine_message(err)
                raise QueryError(message, classify_error(message)) from None
        data = _check_ipc(res.bytes())
        stats = QueryStats(
            elapsed_s=res.elapsed(),
            rows_read=res.storage_rows_read(),
            bytes_read=res.storage_bytes_read(),
            result_rows=_ipc_rows(data),
        )
        return ReadResult(data, stats)

    def kill(self, tag: str) -> None:
        self._ctl.query(f"KILL QUERY WHERE Settings['log_comment'] = '{tag}' ASYNC", "TabSeparated")

    def close(self) -> None:
        for name in ("_conn", "_parse", "_ctl"):
            conn = getattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(Exception):  # closing: nothing useful to report
                    conn.close()


class ServerEngine:
    """A ClickHouse server through clickhouse-connect (HTTP); the query id is the tag.

    ``readonly = 2`` and the limits ride with every statement, unless the server already
    holds this user at ``readonly = 1`` (then its profile's limits apply: nothing may be
    sent). The server does not report statistics on this route (``QueryStats()``).
    """

    def __init__(self, location: Location, database: str, limits: QueryLimits) -> None:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        self._error = ClickHouseError
        self._table_functions: frozenset[str] | None = None
        self._client = open_client(location, None)
        self._ctl = open_client(location, None)
        exists = self._client.query(
            "SELECT count() FROM system.databases WHERE name = {db:String}",
            parameters={"db": database},
        ).result_rows[0][0]
        if not exists:
            self.close()
            raise AnalyticsError(
                f"no analytics database {database!r} at {location.display()}",
                "run `agentstream demo` (or the analytics projection) first",
            )
        self._client.database = database
        current = self._client.server_settings.get("readonly")
        level = current.value if current is not None else "0"
        self._settings: dict[str, str] = {}
        if level != "1":
            self._settings = {"readonly": "2", **limits.engine_settings()}

    def _raw(self, sql: str, params: Mapping[str, Any], fmt: str, **settings: str) -> bytes:
        try:
            return self._client.raw_query(
                sql, parameters=dict(params), settings={**self._settings, **settings}, fmt=fmt
            )
        except self._error as err:
            message = _engine_message(err)
            raise QueryError(message, classify_error(message)) from None

    def explain_ast(self, sql: str, params: Mapping[str, Any]) -> list[str]:
        return self._raw(f"EXPLAIN AST {sql}", params, "TabSeparated").decode().splitlines()

    def format_query(self, sql: str) -> str:
        return self._raw("SELECT formatQuerySingleLine({q:String})", {"q": sql}, "RawBLOB").decode()

    def table_functions(self) -> frozenset[str]:
        if self._table_functions is None:  # once per connection: it is asked every statement
            self._table_functions = frozenset(
                self._raw("SELECT name FROM system.table_functions", {}, "TabSeparated")
                .decode()
                .split()
            )
        return self._table_functions

    def execute(self, sql: str, params: Mapping[str, Any], tag: str) -> ReadResult:
        extra = {"query_id": tag}
        if self._settings:
            extra["output_format_arrow_string_as_string"] = "1"
        return ReadResult(_check_ipc(self._raw(sql, params, "ArrowStream", **extra)))

    def kill(self, tag: str) -> None:
        self._ctl.command("KILL QUERY WHERE query_id = {t:String} ASYNC", parameters={"t": tag})

    def close(self) -> None:
        self._client.close()
        self._ctl.close()


def open_engine(
    location: Location, database: str, limits: QueryLimits
) -> ChdbEngine | ServerEngine:
    if location.backend == "chdb":
        return ChdbEngine(location, database, limits)
    return ServerEngine(location, database, limits)


# --- readers -------------------------------------------------------------------------------


class DirectReader(AnalyticsReader):
    """Queries on this process's own engine: a server, or the chDB directory in process."""

    def __init__(
        self,
        location: Location,
        database: str = DEFAULT_DATABASE,
        limits: QueryLimits | None = None,
    ) -> None:
        self.location = location
        self.database = check_identifier(database)
        self.limits = limits or QueryLimits()
        self.via = location.display()
        self.engine = open_engine(location, self.database, self.limits)
        self._model = model_lock(location, self.database)

    def _read(
        self, sql: str, params: dict[str, Any], client_gone: Callable[[], bool] | None
    ) -> ReadResult:
        with self._model.shared():
            return run_readonly(
                self.engine, sql, params, limits=self.limits, client_gone=client_gone
            )

    def close(self) -> None:
        self.engine.close()


class ServiceReader(AnalyticsReader):
    """Queries through the chDB owner's endpoint (``service.py``); the owner checks and runs
    them with its limits, and raises the same errors as :class:`DirectReader`."""

    def __init__(self, info: ServiceInfo, timeout_s: float = 300.0) -> None:
        self.info = info
        # never give up before the owner's own time limit has stopped the statement
        self.timeout_s = max(timeout_s, info.max_execution_s + 30)
        self.via = f"{info.url} (process {info.pid}, which holds {info.store})"

    def _read(
        self, sql: str, params: dict[str, Any], client_gone: Callable[[], bool] | None
    ) -> ReadResult:
        import json

        from projections.analytics.service import STATS_HEADER, request

        body = json.dumps({"sql": sql, "params": params}, default=str).encode()
        _, headers, data = request(self.info, body, self.timeout_s, client_gone)
        stats = json.loads(headers.get(STATS_HEADER.lower(), "{}"))
        return ReadResult(data, QueryStats(**stats))


def limits_from(settings: Any) -> QueryLimits:
    """The read path's limits from an agentstream ``Settings`` (its ``query_max_*`` fields)."""
    return QueryLimits(
        max_execution_s=float(settings.query_max_execution_s),
        max_result_rows=int(settings.query_max_result_rows),
        max_result_bytes=int(settings.query_max_result_bytes),
    )


def connect(
    settings: Settings | None = None,
    *,
    url: str | None = None,
    database: str | None = None,
    run_dir: Path | None = None,
    limits: QueryLimits | None = None,
) -> AnalyticsReader:
    """A read-only connection to the analytics model (see the module docstring).

    The database is ``database``, else the one in an http(s) URL's path, else ``agentstream``.
    ``limits`` default to the settings' ``query_max_*`` (or :class:`QueryLimits`); through
    the chDB owner's endpoint the owner's limits apply.
    """
    if url is None:
        if settings is None:
            from agentstream.settings import load_settings

            settings = load_settings()
        url = settings.analytics_url
        if run_dir is None:
            run_dir = settings.data_dir.resolve() / "run"
    if limits is None and settings is not None:
        limits = limits_from(settings)
    location = parse_url(url)
    database = database or location.database or DEFAULT_DATABASE
    if location.backend == "chdb" and run_dir is not None:
        from projections.analytics.service import find_service

        info = find_service(run_dir, str(location.path), database)
        if info is not None:
            return ServiceReader(info)
    return DirectReader(location, database, limits)
