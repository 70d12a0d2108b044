"""The one adapter over ClickHouse: chDB in-process (``chdb://PATH``) or a server (``http(s)://``).

Both go through clickhouse-connect (``interface="chdb"`` for the embedded engine), so the
DDL, the SQL and the Arrow insert/query calls are the same; code above this module does
not know which backend it talks to.

chDB allows one OS process per data directory (LOCAL_STACK.md). Inside that process any
number of clients may share the engine; each client serialises its own calls, so every
thread that queries concurrently uses its own client (:meth:`AnalyticsStore.reader`).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pyarrow as pa

from projections.analytics import schema

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

DEFAULT_DATABASE = "agentstream"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class AnalyticsError(RuntimeError):
    """A one-line, actionable problem with the analytics store."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem} — {fix}")


def check_identifier(name: str, what: str = "database name") -> str:
    """Names are pasted into SQL, so only plain identifiers are accepted."""
    if not _IDENT.match(name):
        raise AnalyticsError(
            f"invalid {what} {name!r}",
            "use letters, digits and underscores, not starting with a digit",
        )
    return name


@dataclass(frozen=True)
class Location:
    """Where the store lives, parsed from its URL."""

    backend: str  # "chdb" or "http"
    path: Path | None = None  # chdb
    database: str | None = None  # http: from the URL's path (``…:8123/agentstream``)
    host: str | None = None  # http
    port: int | None = None
    secure: bool = False
    username: str | None = None
    password: str = ""

    @property
    def key(self) -> str:
        if self.backend == "chdb":
            return f"chdb:{self.path}"
        return f"http:{self.host}:{self.port}"

    def display(self) -> str:
        if self.backend == "chdb":
            return f"chdb://{self.path}"
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.host}:{self.port}"


def parse_url(url: str) -> Location:
    """``chdb://PATH`` (absolute or relative path) or
    ``http(s)://[user[:pw]@]host[:port][/database]``."""
    parsed = urlparse(url)
    if parsed.scheme == "chdb":
        raw = url[len("chdb://") :]
        if not raw or raw in ("memory", ":memory:"):
            raise AnalyticsError(
                f"analytics url {url!r} has no directory",
                "use chdb:///absolute/path or chdb://relative/path",
            )
        return Location("chdb", path=Path(unquote(raw)).expanduser().resolve())
    if parsed.scheme in ("http", "https"):
        secure = parsed.scheme == "https"
        database = unquote(parsed.path.strip("/")) or None
        return Location(
            "http",
            host=parsed.hostname or "localhost",
            port=parsed.port or (8443 if secure else 8123),
            secure=secure,
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else "",
            database=check_identifier(database) if database else None,
        )
    raise AnalyticsError(
        f"analytics url must be chdb://PATH or http(s)://host:port, got {url!r}",
        "set AGENTSTREAM_CLICKHOUSE_URL",
    )


def chdb_owner_pid(path: Path) -> int | None:
    """The PID recorded in a chDB directory's ``status`` file while an engine has it open."""
    try:
        text = (path / "status").read_text()
    except OSError:
        return None
    m = re.search(r"PID:\s*(\d+)", text)
    return int(m.group(1)) if m else None


def open_client(location: Location, database: str | None = None, session: bool = False) -> Client:
    """A clickhouse-connect client for the location; raises :class:`AnalyticsError`."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        if location.backend == "chdb":
            assert location.path is not None
            location.path.mkdir(parents=True, exist_ok=True)
            return clickhouse_connect.get_client(
                interface="chdb", path=str(location.path), database=database
            )
        kwargs: dict[str, Any] = {}
        if session:  # temporary tables live in an HTTP session
            kwargs["session_id"] = f"agentstream-{uuid.uuid4().hex}"
        return clickhouse_connect.get_client(
            host=location.host,
            port=location.port,
            secure=location.secure,
            username=location.username or "default",
            password=location.password,
            database=database or "",
            **kwargs,
        )
    except ClickHouseError as err:
        raise _open_error(location, err) from err
    except OSError as err:
        raise AnalyticsError(
            f"cannot open {location.display()}: {err}", "check the path's permissions"
        ) from err


def _open_error(location: Location, err: Exception) -> AnalyticsError:
    text = str(err)
    if location.backend == "chdb":
        assert location.path is not None
        if "already initialized with path" in text:
            return AnalyticsError(
                f"this process already has another chDB directory open ({text.split('path')[1]})",
                "chDB allows one data directory per process; open the store in a new process",
            )
        pid = chdb_owner_pid(location.path)
        if pid is not None:
            return AnalyticsError(
                f"{location.path} is locked by process {pid} (chDB allows one process per "
                "directory)",
                "query through that process (it serves reads if it runs the analytics "
                "projection), or stop it",
            )
        return AnalyticsError(f"cannot open chDB at {location.path}: {text}", "see the log")
    return AnalyticsError(
        f"cannot connect to ClickHouse at {location.display()}: {text.splitlines()[0][:300]}",
        "check AGENTSTREAM_CLICKHOUSE_URL, the server and the credentials",
    )


class _ModelLock:
    """Readers and writers share it; swapping the model in takes it alone.

    EXCHANGE TABLES is atomic per table, not across tables: holding this while swapping
    means no query served by this process sees new events with old rollups.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting_exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_exclusive += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_locks: dict[str, _ModelLock] = {}
_locks_guard = threading.Lock()


def model_lock(location: Location, database: str) -> _ModelLock:
    """The process-wide lock of one database at one location."""
    key = f"{location.key}/{database}"
    with _locks_guard:
        return _locks.setdefault(key, _ModelLock())


class AnalyticsStore:
    """One database of the analytics model at one location.

    The database is ``database``, else the one named in an http(s) URL's path, else
    ``agentstream``.

    ``AnalyticsStore(url, database="rebuild_1")`` builds a model aside; the live store's
    :meth:`replace_live_with` swaps it in.
    """

    def __init__(self, url: str, database: str = DEFAULT_DATABASE, *, create: bool = True) -> None:
        self.url = url
        self.location = parse_url(url)
        self.database = check_identifier(database)
        self.lock = model_lock(self.location, self.database)
        self._client = open_client(self.location, None, session=True)
        if create:
            for sql in schema.bootstrap_sql(self.database):
                self._client.command(sql)
        elif not self.exists():
            self._client.close()
            raise AnalyticsError(
                f"no analytics database {self.database!r} at {self.location.display()}",
                "run the analytics projection first (e.g. `agentstream demo`)",
            )
        self._client.database = self.database

    # --- plumbing ------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self.location.backend

    @property
    def client(self) -> Client:
        """The store's own client (the writer's); other threads use :meth:`reader`."""
        return self._client

    def reader(self) -> Client:
        """A new client on the same engine/server with this database as its default."""
        return open_client(self.location, self.database)

    def table(self, name: str) -> str:
        return f"{self.database}.{check_identifier(name, 'table name')}"

    def exists(self) -> bool:
        rows = self._client.query(
            "SELECT count() FROM system.databases WHERE name = {db:String}",
            parameters={"db": self.database},
        ).result_rows
        return bool(rows[0][0])

    def command(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> Any:
        return self._client.command(
            sql, parameters=dict(parameters or {}), settings=dict(settings or {})
        )

    def query_arrow(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> pa.Table:
        return self._client.query_arrow(
            sql, parameters=dict(parameters or {}), settings=dict(settings or {})
        )

    def rows(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self._client.query(sql, parameters=dict(parameters or {})).result_rows)

    def scalar(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        rows = self.rows(sql, parameters)
        return rows[0][0] if rows else None

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        self._client.insert_arrow(table, data)

    def tables(self) -> set[str]:
        rows = self.rows(
            "SELECT name FROM system.tables WHERE database = {db:String}", {"db": self.database}
        )
        return {r[0] for r in rows}

    def schema_version(self) -> int:
        return int(self.scalar(f"SELECT max(version) FROM {self.table('schema_version')}") or 0)

    # --- swapping a rebuilt model in -----------------------------------------------------
    def replace_live_with(self, build_database: str, drop_old: bool = True) -> None:
        """Make the tables of ``build_database`` this store's live tables.

        Each data table is exchanged atomically (EXCHANGE TABLES); the views stay and
        follow the names, so new inserts keep feeding the (new) rollups. Queries served by
        this process never see a half-swapped model (they wait on the model lock). Stop the
        live projection first, or let the rebuild cover everything it committed.
        """
        build = check_identifier(build_database)
        if build == self.database:
            raise AnalyticsError("cannot replace a database with itself", "build into another one")
        other = AnalyticsStore(self.url, build, create=False)
        try:
            if other.schema_version() != self.schema_version():
                raise AnalyticsError(
                    f"{build} is at schema version {other.schema_version()}, the live model at "
                    f"{self.schema_version()}",
                    "run the projection's setup() on both before swapping",
                )
            pairs = ", ".join(f"{self.table(t)} AND {other.table(t)}" for t in schema.DATA_TABLES)
            with self.lock.exclusive():
                self.command(f"EXCHANGE TABLES {pairs}")
        finally:
            other.close()
        if drop_old:
            self.command(f"DROP DATABASE IF EXISTS {build} SYNC")

    def drop(self) -> None:
        """Delete this database and everything in it (frees disk at once: SYNC)."""
        self._client.database = "default"
        self.command(f"DROP DATABASE IF EXISTS {self.database} SYNC")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AnalyticsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
