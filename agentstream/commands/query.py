"""``agentstream query``: read-only SQL over the analytics model, from the terminal.

    agentstream query "SELECT type, count() FROM events GROUP BY type"
    agentstream query --named agent_leaderboard --param limit=5 --format csv
    agentstream query --list

On the embedded backend the query goes through the process that holds the chDB directory
while the pipeline runs (see projections/analytics/service.py), else to the directory.

Fast path: when that process is recorded and alive, this command finds it without loading
the settings model (:func:`quick_store` reads the two settings it needs the same way) and
lets it check, run and render the statement, so it needs neither pyarrow nor the engine.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from agentstream.console import console, err_console, fail

if TYPE_CHECKING:
    import pyarrow as pa

    from projections.analytics.readonly import QueryStats

TABLES = (
    "events, violations, episodes, agent_state, agent_minute, tool_minute, tool_hour, "
    "model_minute, run_agent, run_totals; view runs"
)


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
    """Extension types (UUID) as strings (see ``projections.analytics.output``)."""
    from projections.analytics.output import plain_table as plain

    return plain(table)


def _print_rows(columns: list[str], rows: list[list[str]], total: int, title: str | None) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    for name in columns:
        t.add_column(name, overflow="fold")
    for row in rows:
        t.add_row(*row)
    console.print(t)
    more = total - len(rows)
    note = f"{total} row{'s' if total != 1 else ''}"
    if more:
        note += f" ({more} not shown: use --format csv/json/parquet or --output)"
    err_console.print(note, style="dim", highlight=False)


def print_table(table: pa.Table, title: str | None, max_rows: int) -> None:
    from projections.analytics.output import table_rows

    shown = table_rows(table, max_rows)
    _print_rows(shown["columns"], shown["rows"], shown["total"], title)


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


# --- finding the chDB owner without the settings model ----------------------------------


def _env(name: str) -> str | None:
    """An ``AGENTSTREAM_*`` variable, matched without regard to case (as pydantic-settings)."""
    wanted = f"AGENTSTREAM_{name}".lower()
    for key, value in os.environ.items():
        if key.lower() == wanted:
            return value
    return None


def quick_store() -> tuple[Path, str] | None:
    """(run dir, chDB directory) exactly as ``Settings`` resolves them, or None when the
    analytics URL is not ``chdb://``. Reads only the environment and the TOML file (the
    settings model costs ~0.1 s to import); tests check it against ``load_settings()``."""
    from urllib.parse import unquote

    config: dict[str, Any] = {}
    path = Path(_env("CONFIG") or "agentstream.toml")
    if path.is_file():
        import tomllib

        try:
            config = tomllib.loads(path.read_text())
        except (OSError, ValueError):
            return None
    data_dir = Path(_env("DATA_DIR") or config.get("data_dir") or ".agentstream")
    url = _env("CLICKHOUSE_URL") or config.get("clickhouse_url")
    if url is None:
        url = f"chdb://{(data_dir / 'clickhouse').resolve()}"
    if not url.startswith("chdb://") or len(url) <= len("chdb://"):
        return None
    store = Path(unquote(url[len("chdb://") :])).expanduser().resolve()
    return data_dir.resolve() / "run", str(store)


def error_line(kind: str, message: str) -> str:
    """The one-line error for each way the read path says no (the CLI prints it; the web
    UI's SQL workspace shows the same text)."""
    if kind == "readonly":
        return f"refused: {message}"
    if kind == "engine_readonly":
        return (
            f"refused by the engine's read-only mode: {message} — the analyst path cannot "
            "write or lift read-only mode"
        )
    if kind == "limit":
        return (
            f"stopped by a limit of the read path: {message} — narrow the query (LIMIT, a "
            "time range) or raise query_max_execution_s / query_max_result_rows / "
            "query_max_result_bytes in the settings"
        )
    if kind == "cancelled":
        return f"cancelled: {message}"
    if kind == "named":
        return f"{message} — see agentstream query --list"
    return f"query failed: {message} — fix the SQL (tables: {TABLES})"


def _fail_query(kind: str, message: str) -> NoReturn:
    fail(error_line(kind, message))


def _print_timing(stats: dict[str, Any] | QueryStats | None, wall_s: float) -> None:
    raw = stats if isinstance(stats, dict) else (stats.as_dict() if stats is not None else {})
    elapsed, rows, size = raw.get("elapsed_s"), raw.get("rows_read"), raw.get("bytes_read")
    if elapsed is None:
        err_console.print(
            "timing: engine figures not reported by this backend; "
            f"{wall_s * 1e3:.1f} ms in the command (after start-up)",
            style="dim",
            highlight=False,
        )
        return
    err_console.print(
        f"timing: engine {elapsed * 1e3:.1f} ms, {rows:,} rows read ({size:,} bytes); "
        f"{wall_s * 1e3:.1f} ms in the command (after start-up)",
        style="dim",
        highlight=False,
    )


def _via_owner(
    request: dict[str, Any], fmt: Format, output: Path | None, title: str | None, timing: bool,
    started: float,
) -> bool:  # fmt: skip
    """Run through the recorded chDB owner; False when there is none (or it is gone)."""
    import json
    import time

    from projections.analytics.service import STATS_HEADER, post, recorded_service

    located = quick_store()
    if located is None:
        return False
    info = recorded_service(located[0], located[1], "agentstream")
    if info is None:
        return False
    try:
        wait_s = info.max_execution_s + 30  # the owner stops a statement at its limit
        status, headers, data = post(
            info, "/query", json.dumps(request, default=str).encode(), wait_s
        )
    except OSError:
        return False  # the owner stopped since it was recorded: open the store directly
    if status != 200:
        try:
            detail = json.loads(data)
        except ValueError:
            detail = {"kind": "query", "error": f"HTTP {status} from {info.url}"}
        _fail_query(str(detail.get("kind")), str(detail.get("error")))
    stats = json.loads(headers.get(STATS_HEADER.lower(), "{}"))
    if request["format"] == "table":
        shown = json.loads(data)
        _print_rows(shown["columns"], shown["rows"], shown["total"], title)
    elif output is not None:
        output.write_bytes(data)
        err_console.print(f"{stats.get('result_rows')} rows written to {output}", highlight=False)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    if timing:
        _print_timing(stats, time.perf_counter() - started)
    return True


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
    timing: Annotated[
        bool, typer.Option("--timing", help="print the engine's time and rows read (stderr)")
    ] = False,
) -> None:
    """Run read-only SQL (or a named query) against the analytics model."""
    import time

    started = time.perf_counter()
    if list_:
        list_named()
        return
    if (sql is None) == (named is None):
        fail('give either SQL or --named NAME — e.g. agentstream query "SELECT 1"; see --list')
    if fmt is Format.table and output is not None:
        fail("--output needs a file format — add --format csv, json or parquet")
    if fmt is Format.parquet and output is None and sys.stdout.isatty():
        fail("parquet is binary — add --output FILE (or redirect stdout)")
    try:
        params = parse_params(param or [])
    except ValueError as err:
        fail(f"{err} — write --param NAME=VALUE")
    request = {
        "sql": sql,
        "named": named,
        "params": params,
        "format": fmt.value,
        "max_rows": max_rows,
    }
    if _via_owner(request, fmt, output, named, timing, started):
        return
    _direct(sql, named, params, fmt, output, max_rows, timing, started)


def _direct(
    sql: str | None, named: str | None, params: dict[str, Any], fmt: Format,
    output: Path | None, max_rows: int, timing: bool, started: float,
) -> None:  # fmt: skip
    """Open the store in this process (or find its owner through the full settings)."""
    import time

    from agentstream.console import settings_or_exit
    from projections.analytics.queries import NAMED_QUERIES
    from projections.analytics.reader import connect
    from projections.analytics.readonly import QueryError, ReadOnlyError
    from projections.analytics.store import AnalyticsError

    if named is not None and named not in NAMED_QUERIES:
        fail(f"no named query {named!r} — choose one of: {', '.join(NAMED_QUERIES)}")
    settings = settings_or_exit()
    try:
        with connect(settings) as db:
            if named is not None:
                q = NAMED_QUERIES[named]
                result = db.read(q.sql, q.bind(params))
            else:
                assert sql is not None
                result = db.read(sql, params)
            table = result.table()
    except ReadOnlyError as err:
        _fail_query("readonly", str(err))
    except QueryError as err:
        _fail_query("engine_readonly" if err.kind == "readonly" else err.kind, str(err))
    except KeyError as err:
        _fail_query("named", str(err.args[0]))
    except AnalyticsError as err:
        fail(str(err))
    emit(plain_table(table), fmt, output, title=named, max_rows=max_rows)
    if timing:
        _print_timing(result.stats, time.perf_counter() - started)


def emit(
    table: pa.Table, fmt: Format, output: Path | None, title: str | None, max_rows: int
) -> None:
    """Write the result in the chosen format to ``output`` or stdout."""
    from projections.analytics.output import WRITERS

    if fmt is Format.table and output is None:
        print_table(table, title, max_rows)
        return
    writer = WRITERS[fmt.value]
    if output is not None:
        with open(output, "wb") as f:
            writer(table, f)
        err_console.print(f"{table.num_rows} rows written to {output}", highlight=False)
    else:
        writer(table, sys.stdout.buffer)
        sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("query")(query)
