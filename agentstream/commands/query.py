"""``agentstream query``: read-only SQL over the analytics model, from the terminal.

    agentstream query "SELECT type, count() FROM events GROUP BY type"
    agentstream query --named agent_leaderboard --param limit=5 --format csv
    agentstream query --list

On the embedded backend the query goes through the process that holds the chDB directory
while the pipeline runs (see projections/analytics/service.py), else to the directory.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentstream.console import console, err_console, fail

if TYPE_CHECKING:
    import pyarrow as pa


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; a value that is a JSON array (``[1,2]``, ``["a"]``) becomes a list."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {pair!r} is not NAME=VALUE")
        value_out: Any = value
        if value.startswith("[") and value.endswith("]"):
            try:
                value_out = json.loads(value)
            except ValueError:
                value_out = value
        out[key.strip()] = value_out
    return out


def plain_table(table: pa.Table) -> pa.Table:
    """Extension types (UUID) as strings, so every writer and printer understands them."""
    import pyarrow as pa

    columns, fields = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        if isinstance(field.type, pa.ExtensionType) or str(field.type).startswith("extension"):
            values = [None if v is None else str(v) for v in column.to_pylist()]
            column = pa.chunked_array([pa.array(values, pa.string())])
            field = pa.field(field.name, pa.string(), field.nullable)
        columns.append(column)
        fields.append(field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _is_nested(t: pa.DataType) -> bool:
    import pyarrow.types as pt

    return pt.is_list(t) or pt.is_large_list(t) or pt.is_map(t) or pt.is_struct(t)


def _jsonable(value: Any) -> Any:
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, tuple) and len(v) == 2 for v in value)
    ):
        return {str(k): _jsonable(v) for k, v in value}  # Arrow maps arrive as pairs
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def write_csv(table: pa.Table, out: Any) -> None:
    import msgspec
    import pyarrow as pa
    import pyarrow.csv as pcsv

    cols = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if _is_nested(field.type):
            text = [
                None if v is None else msgspec.json.encode(_jsonable(v)).decode()
                for v in column.to_pylist()
            ]
            column = pa.chunked_array([pa.array(text, pa.string())])
        cols.append(column)
    flat = pa.Table.from_arrays(cols, names=table.column_names)
    pcsv.write_csv(flat, out)


def write_json_lines(table: pa.Table, out: Any) -> None:
    """One JSON object per row (ClickHouse's JSONEachRow shape)."""
    import msgspec

    enc = msgspec.json.Encoder(decimal_format="number")
    for row in table.to_pylist():
        out.write(enc.encode({k: _jsonable(v) for k, v in row.items()}) + b"\n")


def print_table(table: pa.Table, title: str | None, max_rows: int) -> None:
    from rich.table import Table

    shown = table.slice(0, max_rows)
    t = Table(title=title, title_justify="left", header_style="bold")
    for name in table.column_names:
        t.add_column(name, overflow="fold")
    for row in shown.to_pylist():
        t.add_row(*("" if v is None else _cell(v) for v in row.values()))
    console.print(t)
    more = table.num_rows - shown.num_rows
    note = f"{table.num_rows} row{'s' if table.num_rows != 1 else ''}"
    if more:
        note += f" ({more} not shown: use --format csv/json/parquet or --output)"
    err_console.print(note, style="dim", highlight=False)


def _cell(v: Any) -> str:
    import datetime as dt

    if isinstance(v, dt.datetime):
        text = v.isoformat(sep=" ", timespec="milliseconds" if v.microsecond else "seconds")
        return text.removesuffix("+00:00")
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e15 else repr(v)
    return str(_jsonable(v))


def list_named() -> None:
    from rich.table import Table

    from projections.analytics.queries import NAMED_QUERIES

    t = Table(title="named queries (agentstream query --named NAME)", title_justify="left")
    t.add_column("name", style="bold")
    t.add_column("what it answers")
    t.add_column("parameters (default)")
    for q in NAMED_QUERIES.values():
        params = ", ".join(f"{k}={p.default}" for k, p in q.params.items()) or "-"
        t.add_row(q.name, q.title, params)
    console.print(t)


def query(
    sql: Annotated[str | None, typer.Argument(help="one reading SQL statement")] = None,
    named: Annotated[
        str | None, typer.Option("--named", "-n", help="run a named query (see --list)")
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the named queries")] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="query parameter NAME=VALUE for {NAME:Type}"),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write to this file instead of stdout")
    ] = None,
    max_rows: Annotated[
        int, typer.Option("--max-rows", min=1, help="rows printed by --format table")
    ] = 100,
) -> None:
    """Run read-only SQL (or a named query) against the analytics model."""
    from pydantic import ValidationError

    from agentstream.settings import load_settings
    from projections.analytics import (
        NAMED_QUERIES,
        AnalyticsError,
        QueryError,
        ReadOnlyError,
        connect,
    )

    if list_:
        list_named()
        return
    if (sql is None) == (named is None):
        fail('give either SQL or --named NAME — e.g. agentstream query "SELECT 1"; see --list')
    if named is not None and named not in NAMED_QUERIES:
        fail(f"no named query {named!r} — choose one of: {', '.join(NAMED_QUERIES)}")
    if fmt is Format.table and output is not None:
        fail("--output needs a file format — add --format csv, json or parquet")
    if fmt is Format.parquet and output is None and sys.stdout.isatty():
        fail("parquet is binary — add --output FILE (or redirect stdout)")
    try:
        params = parse_params(param or [])
    except ValueError as err:
        fail(f"{err} — write --param NAME=VALUE")
    try:
        settings = load_settings()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        fail(f"settings: {where}: {first['msg']} — fix AGENTSTREAM_{where.upper()}")
    try:
        with connect(settings) as db:
            if named is not None:
                table = db.named(named, params)
            else:
                assert sql is not None
                table = db.query(sql, params)
    except ReadOnlyError as err:
        fail(f"refused: {err}")
    except QueryError as err:
        fail(
            f"query failed: {err} — fix the SQL (tables: events, violations, episodes, "
            "agent_state, agent_minute, tool_minute, run_summary)"
        )
    except KeyError as err:
        fail(f"{err.args[0]} — see agentstream query --list")
    except AnalyticsError as err:
        fail(str(err))
    emit(plain_table(table), fmt, output, title=named, max_rows=max_rows)


def emit(
    table: pa.Table, fmt: Format, output: Path | None, title: str | None, max_rows: int
) -> None:
    """Write the result in the chosen format to ``output`` or stdout."""
    import pyarrow.parquet as pq

    if fmt is Format.table and output is None:
        print_table(table, title, max_rows)
        return
    if fmt is Format.parquet:
        pq.write_table(table, output if output is not None else sys.stdout.buffer)
    else:
        writer = write_csv if fmt is Format.csv else write_json_lines
        if output is not None:
            with open(output, "wb") as f:
                writer(table, f)
        else:
            writer(table, sys.stdout.buffer)
            sys.stdout.flush()
    if output is not None:
        err_console.print(f"{table.num_rows} rows written to {output}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("query")(query)
