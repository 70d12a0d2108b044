"""``agentstream up / status / down``: the embedded stack from the command line.

Thin on purpose: all logic is in :mod:`agentstream.stack`; this module turns its plain
results into a table (or JSON) and its errors into one line and a non-zero exit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agentstream.console import console, fail, settings_or_exit

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="data directory (default: AGENTSTREAM_DATA_DIR or .agentstream)",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="print plain JSON instead of a table")]
Timeout = Annotated[
    float, typer.Option("--timeout", min=1.0, help="seconds each part may take to become ready")
]


def _stack(data_dir: Path | None, timeout: float = 30.0) -> Any:
    """Settings errors become one line too, not a pydantic traceback."""
    from agentstream.stack import Stack

    overrides: dict[str, object] = {} if data_dir is None else {"data_dir": data_dir}
    settings = settings_or_exit(**overrides)
    return Stack(settings, deadline_s=timeout)


def _print_json(rows: list[dict[str, Any]]) -> None:
    print(json.dumps(rows, indent=2))


def up(data_dir: DataDir = None, timeout: Timeout = 30.0, as_json: AsJson = False) -> None:
    """Start the embedded stack (broker, graph) in the background and create the topics."""
    from agentstream.processes import StackError
    from agentstream.stack import BROKER_NOTE

    stack = _stack(data_dir, timeout)
    try:
        results = stack.up()
    except StackError as err:
        fail(str(err))
    if as_json:
        _print_json([r.as_dict() for r in results])
        return
    for r in results:
        pid = f"pid {r.pid}" if r.pid else ""
        port = f"port {r.port}" if r.port else ""
        console.print(
            f"{r.part:<8} {r.action:<16} {pid:<11} {port:<11} {r.detail}", highlight=False
        )
    if any(r.part == "broker" and r.action == "started" for r in results):
        console.print(f"note: the broker is {BROKER_NOTE}", highlight=False)
    console.print(f"data: {stack.data_dir}  logs: {stack.data_dir / 'logs'}", highlight=False)


def status(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Show each part of the stack; exit 1 if any part is down or unhealthy."""
    from agentstream.processes import StackError
    from agentstream.stack import format_uptime

    stack = _stack(data_dir)
    try:
        parts = stack.status()
    except StackError as err:
        fail(str(err))
    if as_json:
        _print_json([p.as_dict() for p in parts])
    else:
        table = Table(title=f"agentstream stack ({stack.data_dir})", title_justify="left")
        for col in ("part", "state", "pid", "port", "uptime", "detail"):
            table.add_column(col, overflow="fold")
        colour = {"running": "green", "external": "cyan", "disabled": "dim"}
        for p in parts:
            table.add_row(
                p.part,
                f"[{colour.get(p.state, 'red')}]{p.state}[/]",
                str(p.pid or ""),
                str(p.port or ""),
                format_uptime(p.uptime_s) if p.uptime_s is not None else "",
                p.detail,
            )
        console.print(table)
        for p in parts:
            if p.note and p.state == "running":
                console.print(f"{p.part}: {p.note}", highlight=False)
    if not all(p.ok for p in parts):
        raise typer.Exit(1)


def down(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Stop exactly the processes `agentstream up` started under this data directory."""
    from agentstream.processes import StackError

    stack = _stack(data_dir)
    try:
        results = stack.down()
    except StackError as err:
        fail(str(err))
    if as_json:
        _print_json([r.as_dict() for r in results])
        return
    if not results:
        console.print(f"nothing recorded as running under {stack.data_dir}", highlight=False)
    for r in results:
        console.print(f"{r.part:<8} {r.action:<13} pid {r.pid:<8} {r.detail}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("status")(status)
    app.command("down")(down)
