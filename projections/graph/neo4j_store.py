"""The production backend: Neo4j through the official ``neo4j`` driver (Bolt).

Same Cypher as FalkorDB; only the DDL differs (uniqueness constraints, because Neo4j runs
transactions concurrently). A projection batch is one write transaction here.

A graph name is a Neo4j database name or alias. Swapping in a rebuilt graph re-points an
alias (``CREATE OR REPLACE ALIAS``, Neo4j Enterprise): see docs/graph.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neo4j import Driver, GraphDatabase, ManagedTransaction, Query, RoutingControl
from neo4j.exceptions import AuthError, ClientError, ServiceUnavailable
from neo4j.graph import Node, Path, Relationship

from projections.graph.cypher import COUNT_NODES, COUNT_RELATIONSHIPS, NEO4J_DDL
from projections.graph.store import (
    GraphCounts,
    GraphStoreError,
    GraphUnavailable,
    Params,
    QueryTimeout,
    Statement,
)

CLEAR_CHUNK = 10_000
_DELETE_CHUNK = "MATCH (n) WITH n LIMIT $limit DETACH DELETE n RETURN count(*)"
_REPLACE_ALIAS = "CREATE OR REPLACE ALIAS $alias FOR DATABASE $target"


def plain(value: Any) -> Any:
    """A driver value as plain Python (the store contract: no driver types escape)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (Node, Relationship)):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return [plain(n) for n in value.nodes]
    to_native = getattr(value, "to_native", None)  # neo4j.time types
    if callable(to_native):
        return to_native()
    raise GraphStoreError(
        f"Neo4j returned a {type(value).__name__}, which the graph store does not map",
        "return scalars, lists or maps from the statement",
    )


class Neo4jStore:
    """One Neo4j database (or alias) behind one driver."""

    backend = "neo4j"

    def __init__(
        self,
        uri: str,
        graph: str | None,
        *,
        auth: tuple[str, str] | None = None,
        driver: Driver | None = None,
    ) -> None:
        self.uri = uri
        self.graph = graph or "neo4j"
        self._database = graph or None  # None: the server's default database
        self._driver = driver or GraphDatabase.driver(uri, auth=auth)

    # --- error mapping -----------------------------------------------------------------
    def _translate(self, err: Exception) -> Exception:
        if isinstance(err, ServiceUnavailable):
            return GraphUnavailable(
                f"graph: cannot reach Neo4j at {self.uri} ({err})",
                "start Neo4j (docker compose up neo4j) or set AGENTSTREAM_GRAPH_URL",
            )
        if isinstance(err, AuthError):
            return GraphStoreError(
                f"graph: Neo4j at {self.uri} rejected the credentials",
                "set AGENTSTREAM_NEO4J_USER and AGENTSTREAM_NEO4J_PASSWORD",
            )
        if isinstance(err, ClientError) and (err.code or "").endswith("DatabaseNotFound"):
            return GraphStoreError(
                f"graph: Neo4j has no database or alias {self.graph!r}",
                "create it (Enterprise) or set AGENTSTREAM_GRAPH_NAME=neo4j (Community)",
            )
        return err

    # --- GraphStore --------------------------------------------------------------------
    def setup(self) -> None:
        try:
            for ddl in NEO4J_DDL:  # schema commands each in their own transaction
                self._driver.execute_query(ddl, database_=self._database)
        except Exception as err:
            raise self._translate(err) from err

    def read(
        self, statement: str, params: Params | None = None, timeout_ms: int | None = None
    ) -> list[tuple[Any, ...]]:
        query = Query(statement, timeout=timeout_ms / 1000) if timeout_ms else statement
        try:
            result = self._driver.execute_query(
                query,  # type: ignore[arg-type]
                dict(params) if params else None,
                routing_=RoutingControl.READ,
                database_=self._database,
            )
        except ClientError as err:
            if "TransactionTimedOut" in (err.code or ""):
                raise QueryTimeout(
                    f"graph query stopped after {timeout_ms} ms", "narrow the query"
                ) from err
            raise self._translate(err) from err
        except Exception as err:
            raise self._translate(err) from err
        return [tuple(plain(v) for v in record.values()) for record in result.records]

    def write(self, statements: Sequence[Statement]) -> None:
        def work(tx: ManagedTransaction) -> None:
            for statement, params in statements:
                tx.run(statement, dict(params)).consume()

        try:
            with self._driver.session(database=self._database) as session:
                session.execute_write(work)  # retried by the driver on transient errors
        except Exception as err:
            raise self._translate(err) from err

    def counts(self) -> GraphCounts:
        nodes = {str(label): int(n) for label, n in self.read(COUNT_NODES)}
        rels = {str(t): int(n) for t, n in self.read(COUNT_RELATIONSHIPS)}
        return GraphCounts(nodes, rels)

    def exists(self, graph: str) -> bool:
        try:
            self._driver.execute_query("RETURN 1", database_=graph)
        except ClientError as err:
            if (err.code or "").endswith("DatabaseNotFound"):
                return False
            raise self._translate(err) from err
        except Exception as err:
            raise self._translate(err) from err
        return True

    def clear(self) -> None:
        try:
            while True:
                records, _, _ = self._driver.execute_query(
                    _DELETE_CHUNK, {"limit": CLEAR_CHUNK}, database_=self._database
                )
                if not records or records[0][0] == 0:
                    return
        except Exception as err:
            raise self._translate(err) from err

    def replace_live_with(self, fresh: str) -> None:
        """Re-point the live alias at database ``fresh`` (Neo4j Enterprise).

        The live graph name must be an alias (or not exist yet); the database it pointed at
        before is left in place for the operator to drop.
        """
        if fresh == self.graph:
            raise GraphStoreError(
                f"cannot replace graph {self.graph!r} with itself", "build into another name"
            )
        if not self.exists(fresh):
            raise GraphStoreError(
                f"Neo4j has no database {fresh!r}", "create it and build the graph there first"
            )
        try:
            self._driver.execute_query(
                _REPLACE_ALIAS, {"alias": self.graph, "target": fresh}, database_="system"
            )
        except ClientError as err:
            raise GraphStoreError(
                f"Neo4j could not point alias {self.graph!r} at {fresh!r} ({err.message})",
                "aliases need Neo4j Enterprise, and the live graph name must be an alias, "
                "not a database",
            ) from err
        except Exception as err:
            raise self._translate(err) from err

    def close(self) -> None:
        self._driver.close()
