"""Result formats of the read path, the same whichever process renders them.

``agentstream query`` renders in its own process when it opens the store itself, and asks
the chDB owner's query service to render when it goes through it (so the CLI needs neither
pyarrow nor the engine to print an answer). Both use these functions.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("arrow", "table", "csv", "json", "parquet")


def plain_table(table: pa.Table) -> pa.Table:
    """Extension types (UUID) as strings, so every writer and printer understands them."""
    import pyarrow as pa

    columns, fields = [], []
    for fld, column in zip(table.schema, table.columns, strict=True):
        if isinstance(fld.type, pa.ExtensionType) or str(fld.type).startswith("extension"):
            values = [None if v is None else str(v) for v in column.to_pylist()]
            column = pa.chunked_array([pa.array(values, pa.string())])
            fld = pa.field(fld.name, pa.string(), fld.nullable)
        columns.append(column)
        fields.append(fld)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _is_nested(t: pa.DataType) -> bool:
    import pyarrow.types as pt

    return pt.is_list(t) or pt.is_large_list(t) or pt.is_map(t) or pt.is_struct(t)


def jsonable(value: Any) -> Any:
    """Arrow maps (lists of pairs) as objects, recursively."""
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, tuple) and len(v) == 2 for v in value)
    ):
        return {str(k): jsonable(v) for k, v in value}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def write_csv(table: pa.Table, out: BinaryIO) -> None:
    """A header line; nested values (arrays, maps) as JSON text."""
    import msgspec
    import pyarrow as pa
    import pyarrow.csv as pcsv

    cols = []
    for fld, column in zip(table.schema, table.columns, strict=True):
        if _is_nested(fld.type):
            text = [
                None if v is None else msgspec.json.encode(jsonable(v)).decode()
                for v in column.to_pylist()
            ]
            column = pa.chunked_array([pa.array(text, pa.string())])
        cols.append(column)
    flat = pa.Table.from_arrays(cols, names=table.column_names)
    pcsv.write_csv(flat, out)


def write_json_lines(table: pa.Table, out: BinaryIO) -> None:
    """One JSON object per row (ClickHouse's JSONEachRow shape)."""
    import msgspec

    enc = msgspec.json.Encoder(decimal_format="number")
    for row in table.to_pylist():
        out.write(enc.encode({k: jsonable(v) for k, v in row.items()}) + b"\n")


def write_parquet(table: pa.Table, out: BinaryIO) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, out)


def cell(v: Any) -> str:
    """One value as the terminal table shows it."""
    if v is None:
        return ""
    if isinstance(v, dt.datetime):
        text = v.isoformat(sep=" ", timespec="milliseconds" if v.microsecond else "seconds")
        return text.removesuffix("+00:00")
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e15 else repr(v)
    return str(jsonable(v))


def table_rows(table: pa.Table, max_rows: int) -> dict[str, Any]:
    """What a terminal table needs: column names, the first rows as text, the row count."""
    shown = table.slice(0, max_rows)
    return {
        "columns": table.column_names,
        "rows": [[cell(v) for v in row.values()] for row in shown.to_pylist()],
        "total": table.num_rows,
    }


WRITERS = {"csv": write_csv, "json": write_json_lines, "parquet": write_parquet}
