"""ClickHouse analytics: the projection, the store adapter and the analyst's query path.

Python entry point for analysts (see docs/analytics.md)::

    from projections.analytics import connect

    with connect() as db:                       # settings from AGENTSTREAM_* / agentstream.toml
        db.query("SELECT type, count() FROM events GROUP BY type")   # -> pyarrow.Table
        db.named("agent_leaderboard", {"limit": 10})

The names below are imported on first use (PEP 562), so that importing a light submodule
(the query service's client half, used by ``agentstream query``) does not load the
projection, pyarrow and the schema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from projections.analytics.projection import AnalyticsProjection
    from projections.analytics.queries import NAMED_QUERIES, NamedQuery
    from projections.analytics.reader import AnalyticsReader, QueryError, connect
    from projections.analytics.readonly import ReadOnlyError, check_read_only
    from projections.analytics.store import DEFAULT_DATABASE, AnalyticsError, AnalyticsStore

_WHERE = {
    "AnalyticsProjection": "projection",
    "NAMED_QUERIES": "queries",
    "NamedQuery": "queries",
    "AnalyticsReader": "reader",
    "QueryError": "readonly",
    "connect": "reader",
    "ReadOnlyError": "readonly",
    "check_read_only": "readonly",
    "DEFAULT_DATABASE": "store",
    "AnalyticsError": "store",
    "AnalyticsStore": "store",
}

__all__ = [
    "DEFAULT_DATABASE",
    "NAMED_QUERIES",
    "AnalyticsError",
    "AnalyticsProjection",
    "AnalyticsReader",
    "AnalyticsStore",
    "NamedQuery",
    "QueryError",
    "ReadOnlyError",
    "check_read_only",
    "connect",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
