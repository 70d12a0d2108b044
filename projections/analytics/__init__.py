"""ClickHouse analytics: the projection, the store adapter and the analyst's query path.

Python entry point for analysts (see docs/analytics.md)::

    from projections.analytics import connect

    with connect() as db:                       # settings from AGENTSTREAM_* / agentstream.toml
        db.query("SELECT type, count() FROM events GROUP BY type")   # -> pyarrow.Table
        db.named("agent_leaderboard", {"limit": 10})
"""

from projections.analytics.projection import AnalyticsProjection
from projections.analytics.queries import NAMED_QUERIES, NamedQuery
from projections.analytics.reader import AnalyticsReader, QueryError, connect
from projections.analytics.readonly import ReadOnlyError, check_read_only
from projections.analytics.store import DEFAULT_DATABASE, AnalyticsError, AnalyticsStore

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
