"""The embedded backend: FalkorDB over its RESP protocol (the ``falkordb`` client).

RESP, not Bolt: LOCAL_STACK.md lists what FalkorDB's Bolt endpoint breaks. A FalkorDB
graph is one Redis key, so a graph built under another name swaps in with ``RENAME``:
atomic (Redis runs one command at a time) and O(1) whatever the graph's size.

The store also owns the server-side walk (``traversal.py``, a FalkorDB UDF library). UDF
libraries belong to the server, not to a graph, and a restarted or fresh server may not
have it: a read that calls it and finds it missing loads it and runs again, so no caller
ever has to think about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import redis.exceptions
from falkordb import FalkorDB

from projections.graph import traversal
from projections.graph.cypher import COUNT_NODES, COUNT_RELATIONSHIPS, FALKORDB_DDL
from projections.graph.store import (
    GraphCounts,
    GraphStoreError,
    GraphUnavailable,
    Params,
    QueryTimeout,
    Statement,
)

_EMPTY_KEY = "empty key"  # "Invalid graph operation on empty key": the graph does not exist
_ALREADY_INDEXED = "already indexed"
_TIMED_OUT = "timed out"  # "Query timed out"
_MISSING_WALK = f"Unknown function '{traversal.LIBRARY}."


class FalkorDBStore:
    """One FalkorDB graph (a Redis key) on one server."""

    backend = "falkordb"

    def __init__(
        self,
        host: str,
        port: int,
        graph: str,
        *,
        password: str | None = None,
        socket_timeout: float | None = 60.0,
    ) -> None:
        if not graph:
            raise GraphStoreError("empty graph name", "set AGENTSTREAM_GRAPH_NAME")
        self.host, self.port, self.graph = host, port, graph
        try:  # the client connects at once (it asks the server whether it is a sentinel)
            self._db = FalkorDB(
                host=host,
                port=port,
                password=password,
                socket_timeout=socket_timeout,
                socket_connect_timeout=5.0,
            )
        except redis.exceptions.ConnectionError as err:
            raise self._unavailable(err) from err
        self._g = self._db.select_graph(graph)

    @classmethod
    def from_url(cls, url: str, graph: str, *, password: str | None = None) -> FalkorDBStore:
        u = urlparse(url)
        return cls(u.hostname or "127.0.0.1", u.port or 6379, graph, password=password)

    @property
    def url(self) -> str:
        return f"falkordb://{self.host}:{self.port}"

    def _unavailable(self, err: Exception) -> GraphUnavailable:
        return GraphUnavailable(
            f"graph: cannot reach FalkorDB at {self.url} ({err})",
            "start the stack (`agentstream up`) or set AGENTSTREAM_GRAPH_URL",
        )

    def setup(self) -> None:
        self.load_traversal()
        for ddl in FALKORDB_DDL:
            try:
                self._g.query(ddl)
            except redis.exceptions.ConnectionError as err:
                raise self._unavailable(err) from err
            except redis.exceptions.ResponseError as err:
                if _ALREADY_INDEXED not in str(err):
                    raise

    def load_traversal(self) -> None:
        """(Re)load the walk UDF library on the server; harmless if it is already there."""
        try:
            self._db.udf_load(traversal.LIBRARY, traversal.SCRIPT, True)
        except redis.exceptions.ConnectionError as err:
            raise self._unavailable(err) from err

    def read(
        self, statement: str, params: Params | None = None, timeout_ms: int | None = None
    ) -> list[tuple[Any, ...]]:
        try:
            return self._read(statement, params, timeout_ms)
        except redis.exceptions.ResponseError as err:
            if _MISSING_WALK not in str(err):
                raise
        self.load_traversal()
        return self._read(statement, params, timeout_ms)

    def _read(
        self, statement: str, params: Params | None, timeout_ms: int | None
    ) -> list[tuple[Any, ...]]:
        try:
            result = self._g.ro_query(
                statement, dict(params) if params else None, timeout=timeout_ms
            )
        except redis.exceptions.ConnectionError as err:
            raise self._unavailable(err) from err
        except redis.exceptions.ResponseError as err:
            if _EMPTY_KEY in str(err):
                return []  # never written: reads like an empty graph
            if _TIMED_OUT in str(err):
                limit = f"after {timeout_ms} ms" if timeout_ms else "by the server's time limit"
                raise QueryTimeout(
                    f"graph query stopped {limit}", "narrow the query (e.g. a smaller --depth)"
                ) from err
            raise
        return [tuple(row) for row in result.result_set]

    def write(self, statements: Sequence[Statement]) -> None:
        # Each GRAPH.QUERY is atomic on its own. A batch is not (FalkorDB has no multi-
        # statement transactions); the projection's statements are idempotent and ordered
        # so that a batch cut short and re-applied ends the same.
        try:
            for statement, params in statements:
                self._g.query(statement, dict(params))
        except redis.exceptions.ConnectionError as err:
            raise self._unavailable(err) from err

    def counts(self) -> GraphCounts:
        nodes = {str(label): int(n) for label, n in self.read(COUNT_NODES)}
        rels = {str(t): int(n) for t, n in self.read(COUNT_RELATIONSHIPS)}
        return GraphCounts(nodes, rels)

    def exists(self, graph: str) -> bool:
        try:
            return graph in self._db.list_graphs()
        except redis.exceptions.ConnectionError as err:
            raise self._unavailable(err) from err

    def clear(self) -> None:
        try:
            self._g.delete()
        except redis.exceptions.ConnectionError as err:
            raise self._unavailable(err) from err
        except redis.exceptions.ResponseError as err:
            if _EMPTY_KEY not in str(err):
                raise

    def replace_live_with(self, fresh: str) -> None:
        if fresh == self.graph:
            raise GraphStoreError(
                f"cannot replace graph {self.graph!r} with itself", "build into another name"
            )
        if not self.exists(fresh):
            raise GraphStoreError(
                f"graph {fresh!r} does not exist on {self.url}",
                "build it first (a projection on a store opened with that graph name)",
            )
        try:
            # RENAME overwrites the live key in one step; the old graph is freed with it.
            self._db.connection.execute_command("RENAME", fresh, self.graph)
        except redis.exceptions.ConnectionError as err:
            raise self._unavailable(err) from err
        # The client caches label/property ids per graph; the key now holds another graph.
        self._g = self._db.select_graph(self.graph)

    def close(self) -> None:
        self._db.close()
