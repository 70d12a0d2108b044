"""Arrow results as Python rows, fast, with exactly ``Table.to_pylist``'s values.

``to_pylist`` builds each UTC timestamp through ``zoneinfo`` (about 5 µs a value): for a
dashboard of a few thousand rows that was most of the request's Python time. Here a
timestamp column in UTC (or without a zone) becomes datetimes through numpy, and gets the
very ``tzinfo`` object pyarrow would have given it; every other column is converted by
pyarrow as before.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "+00:00", "Z"})
_FAST_UNITS = frozenset({"s", "ms", "us"})  # ns does not fit a datetime: pyarrow's way


def column_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """The column's values as ``column.to_pylist()`` gives them."""
    import pyarrow as pa

    t = column.type
    if not (pa.types.is_timestamp(t) and t.unit in _FAST_UNITS) or (
        t.tz is not None and t.tz not in _UTC_NAMES
    ):
        return column.to_pylist()
    naive = column.cast(pa.timestamp(t.unit)).to_numpy(zero_copy_only=False)
    values: list[dt.datetime | None] = naive.astype("datetime64[us]").astype(object).tolist()
    if t.tz is None:
        return values
    tz = pa.scalar(0, type=t).as_py().tzinfo  # the object pyarrow itself attaches
    aware: dict[dt.datetime, dt.datetime] = {}  # time buckets repeat: one object per value
    out: list[dt.datetime | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        a = aware.get(v)
        if a is None:
            a = aware[v] = v.replace(tzinfo=tz)
        out.append(a)
    return out


def pylist(table: pa.Table) -> list[dict[str, Any]]:
    """``table.to_pylist()``: one dict per row, column names as keys."""
    names = table.column_names
    if not names:
        return [{} for _ in range(table.num_rows)]
    columns = [column_values(c) for c in table.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def row_lists(table: pa.Table) -> list[list[Any]]:
    """The rows as lists, in column order."""
    columns = [column_values(c) for c in table.columns]
    return [list(row) for row in zip(*columns, strict=True)]
