"""The analyst's Python entry point: read-only SQL in, Arrow out.

    from agentstream.settings import load_settings
    from projections.analytics import connect

    with connect(load_settings()) as db:
        table = db.query("SELECT type, count() AS n FROM events GROUP BY type")  # pyarrow.Table
        board = db.named("agent_leaderboard", {"limit": 5})
        df = table.to_pandas()  # if pandas is installed

``connect`` picks the route: a ClickHouse server directly; on chDB, the read endpoint of
the process that holds the directory (the pipeline, while it runs: chDB allows one
process per directory), or the directory itself when nobody holds it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from projections.analytics.queries import NAMED_QUERIES
from projections.analytics.readonly import check_read_only
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
    from clickhouse_connect.driver.client import Client

    from agentstream.settings import Settings


class AnalyticsReader(ABC):
    """Read-only queries against the analytics model; results are ``pyarrow.Table``."""

    via: str = ""

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """Run one reading statement (``{name:Type}`` placeholders take ``params``)."""
        return self._run(check_read_only(sql), dict(params or {}))

    def named(self, name: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """Run a query of the named library (``projections.analytics.queries``)."""
        try:
            q = NAMED_QUERIES[name]
        except KeyError:
            raise AnalyticsError(
                f"no named query {name!r}", f"choose one of: {', '.join(NAMED_QUERIES)}"
            ) from None
        return self.query(q.sql, q.bind(params))

    @abstractmethod
    def _run(self, sql: str, params: dict[str, Any]) -> pa.Table:
        """Execute an already checked statement on this reader's connection."""

    def close(self) -> None:  # noqa: B027 (optional: readers without a connection keep it)
        """Release the connection."""

    def __enter__(self) -> AnalyticsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DirectReader(AnalyticsReader):
    """Queries through clickhouse-connect: a server, or chDB in this process.

    Every query runs with the ``readonly`` setting: ``1`` on chDB; on a server ``2`` (reads
    only, while clickhouse-connect may still pass its per-query format settings), or
    nothing when the server already makes this user read-only.
    """

    def __init__(self, location: Location, database: str = DEFAULT_DATABASE) -> None:
        self.location = location
        self.database = check_identifier(database)
        self.via = location.display()
        if location.backend == "chdb":
            assert location.path is not None
            if not (location.path / "metadata").is_dir():
                raise AnalyticsError(
                    f"no analytics store at {location.path}",
                    "run `agentstream demo` (or the analytics projection) first",
                )
        self._client: Client = open_client(location, None)
        self._lock = threading.Lock()
        try:
            exists = self._client.query(
                "SELECT count() FROM system.databases WHERE name = {db:String}",
                parameters={"db": self.database},
            ).result_rows[0][0]
            if not exists:
                raise AnalyticsError(
                    f"no analytics database {self.database!r} at {location.display()}",
                    "run `agentstream demo` (or the analytics projection) first",
                )
            self._client.database = self.database
            self._settings = self._readonly_settings()
        except BaseException:
            self._client.close()
            raise
        self._model = model_lock(location, self.database)

    def _readonly_settings(self) -> dict[str, Any]:
        if self.location.backend == "chdb":
            return {"readonly": 1}
        current = self._client.server_settings.get("readonly")
        if current is not None and current.value != "0":
            return {}  # the server already holds this user read-only (and refuses changes)
        return {"readonly": 2}

    def _run(self, sql: str, params: dict[str, Any]) -> pa.Table:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        with self._model.shared(), self._lock:
            try:
                return self._client.query_arrow(sql, parameters=params, settings=self._settings)
            except ClickHouseError as err:
                raise QueryError(_clean_error(str(err))) from None

    def close(self) -> None:
        self._client.close()


class QueryError(RuntimeError):
    """ClickHouse refused or failed the query; the message is ClickHouse's."""


def _clean_error(text: str) -> str:
    """ClickHouse's message without the driver's wrapping, first line only."""
    line = text.strip().splitlines()[0] if text.strip() else text
    return line.split("(version ")[0].strip()


def connect(
    settings: Settings | None = None,
    *,
    url: str | None = None,
    database: str | None = None,
    run_dir: Path | None = None,
) -> AnalyticsReader:
    """A read-only connection to the analytics model (see the module docstring).

    The database is ``database``, else the one in an http(s) URL's path, else ``agentstream``.
    """
    if url is None:
        if settings is None:
            from agentstream.settings import load_settings

            settings = load_settings()
        url = settings.analytics_url
        if run_dir is None:
            run_dir = settings.data_dir.resolve() / "run"
    location = parse_url(url)
    database = database or location.database or DEFAULT_DATABASE
    if location.backend == "chdb" and run_dir is not None:
        from projections.analytics.service import ServiceReader, find_service

        info = find_service(run_dir, location, database)
        if info is not None:
            return ServiceReader(info)
    return DirectReader(location, database)
