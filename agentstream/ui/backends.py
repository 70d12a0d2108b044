"""Where the UI's reads go, opened lazily and shared by every request.

- Analytics: on chDB only through the loopback endpoint of the process that owns the
  directory (the analytics projection): opening the directory here would lock the
  projection out (chDB allows one process per directory). ``analytics_direct`` opts into
  opening it (for browsing a store nobody projects into). A ClickHouse server is read
  directly.
- Graph: one :class:`~projections.graph.store.GraphStore` (its client pools connections).
- Log: the Kafka bootstrap and the archive root, read per request by the callers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentstream.settings import Settings
    from projections.analytics.reader import AnalyticsReader
    from projections.graph.store import GraphStore


class Unavailable(RuntimeError):
    """A read model the page needs cannot be reached; the message says how to fix it."""


class NotFound(LookupError):
    """The id names nothing in the read model asked."""


@dataclass
class Backends:
    settings: Settings
    analytics_direct: bool = False
    _reader: AnalyticsReader | None = field(default=None, init=False, repr=False)
    _graph: GraphStore | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap_servers

    @property
    def archive_root(self) -> Path:
        return self.settings.archive_location

    # --- analytics ---------------------------------------------------------------------
    def analytics(self) -> AnalyticsReader:
        with self._lock:
            if self._reader is None:
                self._reader = self._open_analytics()
            return self._reader

    def _open_analytics(self) -> AnalyticsReader:
        from projections.analytics.reader import DirectReader
        from projections.analytics.service import ServiceReader, find_service
        from projections.analytics.store import DEFAULT_DATABASE, AnalyticsError, parse_url

        location = parse_url(self.settings.analytics_url)
        database = location.database or DEFAULT_DATABASE
        try:
            if location.backend != "chdb":
                return DirectReader(location, database)
            info = find_service(self.settings.data_dir.resolve() / "run", location, database)
            if info is not None:
                return ServiceReader(info, timeout_s=self.settings.query_max_execution_s)
            if self.analytics_direct:
                return DirectReader(location, database)
        except AnalyticsError as err:
            raise Unavailable(str(err)) from None
        raise Unavailable(
            f"analytics at {location.display()} is not being served: start the analytics "
            "projection (`agentstream up`, or `agentstream project analytics`), or run "
            "`agentstream ui --analytics-direct` to open the store from the UI process"
        )

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts, through the same reader ``agentstream query`` uses. A failed
        endpoint is dropped so that the next request looks for the owner again."""
        from agentstream.ui.arrowrows import pylist
        from projections.analytics.reader import QueryError
        from projections.analytics.store import AnalyticsError

        reader = self.analytics()
        try:
            return pylist(reader.query(sql, params or {}))
        except AnalyticsError as err:
            self.forget_analytics()
            raise Unavailable(str(err)) from None
        except QueryError as err:
            if "UNKNOWN_TABLE" in str(err) or "doesn't exist" in str(err):
                raise Unavailable(
                    f"analytics: {err} — the store's schema is older than this UI; "
                    "run the analytics projection once to migrate it"
                ) from None
            raise

    def forget_analytics(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
            self._reader = None

    # --- graph -------------------------------------------------------------------------
    def graph(self) -> GraphStore:
        from projections.graph.store import GraphStoreError, open_store

        with self._lock:
            if self._graph is None:
                s = self.settings
                try:
                    self._graph = open_store(
                        s.graph_url, s.graph_name, user=s.neo4j_user, password=s.neo4j_password
                    )
                except GraphStoreError as err:
                    raise Unavailable(str(err)) from None
            return self._graph

    def close(self) -> None:
        self.forget_analytics()
        with self._lock:
            if self._graph is not None:
                self._graph.close()
                self._graph = None
