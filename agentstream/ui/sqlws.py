"""The SQL workspace's data: run a statement through the read path ``agentstream query``
uses (no second guard: the same :class:`~projections.analytics.reader.AnalyticsReader`,
which checks it with ``readonly.check`` and runs it read-only within the limits), page and
sort the result, render CSV/Parquet with the CLI's writers, and refuse with the CLI's words.

A result is kept (a few, bounded in bytes) so that paging, sorting and downloading it do
not run the statement again. A statement whose HTTP client goes away is killed: the reader
polls ``client_gone`` and the engine stops the query (``QueryError(kind="cancelled")``).
"""

from __future__ import annotations

import collections
import hashlib
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from agentstream.ui.backends import Backends

MAX_PAGE = 1000  # rows per page of the grid
KEEP_RESULTS = 8  # results kept for paging/sorting/downloads
KEEP_BYTES = 64 << 20  # a result bigger than this is not kept (paging runs it again)


class SqlRefused(ValueError):
    """The read path said no; ``line`` is exactly what ``agentstream query`` prints."""

    def __init__(self, kind: str, line: str) -> None:
        super().__init__(line)
        self.kind = kind
        self.line = line


@dataclass
class Ran:
    """One statement's result and what it cost."""

    key: str
    table: pa.Table
    engine_s: float | None
    server_ms: float
    rows_read: int | None


class ResultCache:
    """The last few results, by statement text and parameters (LRU, bounded in bytes)."""

    def __init__(self) -> None:
        self._items: collections.OrderedDict[str, Ran] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Ran | None:
        with self._lock:
            ran = self._items.get(key)
            if ran is not None:
                self._items.move_to_end(key)
            return ran

    def put(self, ran: Ran) -> None:
        if ran.table.nbytes > KEEP_BYTES:
            return
        with self._lock:
            self._items[ran.key] = ran
            self._items.move_to_end(ran.key)
            while len(self._items) > KEEP_RESULTS:
                self._items.popitem(last=False)


def result_key(sql: str, params: dict[str, Any]) -> str:
    text = sql + "\x00" + repr(sorted(params.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def run(
    backends: Backends,
    cache: ResultCache,
    sql: str,
    params: dict[str, Any],
    client_gone: Callable[[], bool] | None = None,
    fresh: bool = False,
) -> Ran:
    """The statement's result (from the cache unless ``fresh``); raise SqlRefused."""
    from agentstream.commands.query import error_line
    from agentstream.ui.backends import Unavailable
    from projections.analytics.output import plain_table
    from projections.analytics.readonly import QueryError, ReadOnlyError
    from projections.analytics.store import AnalyticsError

    key = result_key(sql, params)
    if not fresh and (hit := cache.get(key)) is not None:
        return hit
    started = time.perf_counter()
    try:
        result = backends.analytics().read(sql, params, client_gone)
        table = plain_table(result.table())
    except ReadOnlyError as err:
        raise SqlRefused("readonly", error_line("readonly", str(err))) from None
    except QueryError as err:
        kind = "engine_readonly" if err.kind == "readonly" else err.kind
        raise SqlRefused(kind, error_line(kind, str(err))) from None
    except KeyError as err:
        raise SqlRefused("named", error_line("named", str(err.args[0]))) from None
    except AnalyticsError as err:
        backends.forget_analytics()
        raise Unavailable(str(err)) from None
    ran = Ran(
        key,
        table,
        result.stats.elapsed_s,
        round((time.perf_counter() - started) * 1000, 2),
        result.stats.rows_read,
    )
    cache.put(ran)
    return ran


def _jsonable(v: Any) -> Any:
    import datetime as dt
    import decimal

    from projections.analytics.output import jsonable

    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return jsonable(v)


def page(ran: Ran, offset: int, limit: int, sort: str | None, desc: bool) -> dict[str, Any]:
    """One page of the result as JSON (sorted by a column first when asked)."""
    import pyarrow.compute as pc

    from agentstream.ui.arrowrows import row_lists

    table = ran.table
    if sort:
        if sort not in table.column_names:
            raise ValueError(f"no column {sort!r} in the result")
        # nulls last (pyarrow's default)
        order = pc.sort_indices(table, sort_keys=[(sort, "descending" if desc else "ascending")])
        table = table.take(order)
    shown = table.slice(offset, limit)
    rows = [[_jsonable(v) for v in row] for row in row_lists(shown)]
    return {
        "ok": True,
        "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
        "rows": rows,
        "total": table.num_rows,
        "offset": offset,
        "limit": limit,
        "sort": sort,
        "desc": desc,
        "engine_ms": None if ran.engine_s is None else round(ran.engine_s * 1000, 2),
        "server_ms": ran.server_ms,
        "rows_read": ran.rows_read,
        "result": ran.key,
    }


def render(ran: Ran, fmt: str) -> tuple[str, bytes]:
    """(content type, file) in the CLI's formats, by the CLI's writers."""
    from projections.analytics.output import WRITERS

    if fmt not in ("csv", "parquet"):
        raise ValueError("format must be csv or parquet")
    buf = io.BytesIO()
    WRITERS[fmt](ran.table, buf)
    return ("text/csv" if fmt == "csv" else "application/vnd.apache.parquet"), buf.getvalue()


SCHEMA_SQL = """
SELECT table, name, type
FROM system.columns
WHERE database = currentDatabase()
ORDER BY table, position
"""


def schema(backends: Backends) -> dict[str, Any]:
    """Tables and their columns (through the same read path)."""
    tables: dict[str, list[dict[str, str]]] = {}
    for row in backends.query(SCHEMA_SQL):
        tables.setdefault(row["table"], []).append({"name": row["name"], "type": row["type"]})
    return {"tables": [{"name": t, "columns": cols} for t, cols in tables.items()]}


def named_queries() -> dict[str, Any]:
    """The named-query library (``agentstream query --list``) with SQL and parameters."""
    from projections.analytics.queries import NAMED_QUERIES

    return {
        "queries": [
            {
                "name": q.name,
                "title": q.title,
                "sql": q.sql.strip(),
                "params": {
                    k: {"type": p.type, "default": p.default, "help": p.help}
                    for k, p in q.params.items()
                },
            }
            for q in NAMED_QUERIES.values()
        ]
    }


def resolve(
    sql: str | None, named: str | None, params: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """(statement, bound parameters) of a SQL text or a named query (``bind`` fills defaults)."""
    from agentstream.commands.query import error_line
    from projections.analytics.queries import NAMED_QUERIES

    if (sql is None) == (named is None):
        raise ValueError("give either sql or named")
    if named is not None:
        q = NAMED_QUERIES.get(named)
        if q is None:
            msg = f"no named query {named!r} — choose one of: {', '.join(NAMED_QUERIES)}"
            raise SqlRefused("named", error_line("named", msg))
        try:
            return q.sql, q.bind(params)
        except KeyError as err:
            raise SqlRefused("named", error_line("named", str(err.args[0]))) from None
    assert sql is not None
    return sql, params
