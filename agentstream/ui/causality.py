"""why / impact / path for the graph page: the CLI's queries, returned as their JSON."""

from __future__ import annotations

from typing import Any

from agentstream.ui.backends import Backends, NotFound, Unavailable


def _call(backends: Backends, fn: Any, *args: Any) -> Any:
    from projections.graph.queries import NotInGraph
    from projections.graph.store import GraphStoreError

    try:
        return fn(backends.graph(), *args)
    except NotInGraph as err:
        raise NotFound(
            f"{err.ident} is not in the causality graph — check the id, or wait for the graph "
            "projection to catch up"
        ) from None
    except GraphStoreError as err:
        raise Unavailable(str(err)) from None


def why(backends: Backends, ident: str, depth: int) -> dict[str, Any]:
    from projections.graph import queries

    return _call(backends, queries.why, ident, depth).as_dict()


def impact(backends: Backends, ident: str, depth: int) -> dict[str, Any]:
    from projections.graph import queries

    return _call(backends, queries.impact, ident, depth).as_dict()


def path(backends: Backends, source: str, target: str, max_hops: int) -> dict[str, Any] | None:
    from projections.graph import queries

    result = _call(backends, queries.path, source, target, max_hops)
    return None if result is None else result.as_dict()
