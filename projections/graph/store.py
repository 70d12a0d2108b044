"""The ``GraphStore`` interface both backends implement, and the factory that picks one.

Code above this line (projection, queries, CLI) only ever sees a ``GraphStore``: it sends
the shared Cypher of ``cypher.py`` with parameters and gets rows of plain Python values
back (str, int, float, bool, None, lists and dicts of those). Nothing returns driver types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

Params = Mapping[str, Any]
Statement = tuple[str, Params]


class GraphStoreError(RuntimeError):
    """A graph backend problem, phrased for a person: what went wrong and how to fix it."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem} — {fix}")


class GraphUnavailable(GraphStoreError):
    """The backend cannot be reached."""


class QueryTimeout(GraphStoreError):
    """A read ran longer than the timeout it was given (and was stopped by the server)."""


@dataclass(frozen=True)
class GraphCounts:
    """How many nodes per label and relationships per type a graph holds."""

    nodes: dict[str, int] = field(default_factory=dict)
    relationships: dict[str, int] = field(default_factory=dict)

    @property
    def total_nodes(self) -> int:
        return sum(self.nodes.values())

    @property
    def total_relationships(self) -> int:
        return sum(self.relationships.values())


@runtime_checkable
class GraphStore(Protocol):
    """One named graph in one backend."""

    backend: str  # "falkordb" or "neo4j"
    graph: str  # the graph (FalkorDB key / Neo4j database or alias) this store reads and writes

    def setup(self) -> None:
        """Create the indexes/constraints; safe to call again."""

    def read(
        self, statement: str, params: Params | None = None, timeout_ms: int | None = None
    ) -> list[tuple[Any, ...]]:
        """Run a read-only statement; rows in RETURN order. A graph never written reads empty.

        With ``timeout_ms`` the server stops the query after that long and
        :class:`QueryTimeout` is raised.
        """
        ...

    def write(self, statements: Sequence[Statement]) -> None:
        """Run write statements in order (in one transaction where the backend has them)."""

    def counts(self) -> GraphCounts:
        """Nodes per label and relationships per type."""
        ...

    def clear(self) -> None:
        """Delete everything in this graph."""

    def exists(self, graph: str) -> bool:
        """A graph of that name exists in this backend."""
        ...

    def replace_live_with(self, fresh: str) -> None:
        """Atomically make the graph named ``fresh`` (built separately) this store's graph.

        Readers see either the old graph or the new one, never a mix; ``fresh`` is gone
        afterwards. The replay engineer's rebuild: project into a fresh graph, then swap.
        """

    def close(self) -> None: ...


def open_store(
    url: str,
    graph: str,
    *,
    user: str | None = None,
    password: str | None = None,
) -> GraphStore:
    """A store for ``falkordb://host:port`` or ``bolt://``/``neo4j://`` URLs."""
    scheme = urlparse(url).scheme
    if scheme == "falkordb":
        from projections.graph.falkordb_store import FalkorDBStore

        return FalkorDBStore.from_url(url, graph, password=password)
    if scheme in ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"):
        from projections.graph.neo4j_store import Neo4jStore

        auth = (user, password or "") if user else None
        return Neo4jStore(url, graph, auth=auth)
    raise GraphStoreError(
        f"unsupported graph URL {url!r}",
        "use falkordb://host:port (embedded) or bolt:// / neo4j:// (Neo4j)",
    )
