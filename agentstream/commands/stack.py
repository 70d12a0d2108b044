"""``agentstream up / status / down`` (and the hidden ``supervise``): the stack from the shell.

Thin on purpose: the logic is in :mod:`agentstream.stack` (client) and
:mod:`agentstream.supervisor` (daemon); this module turns their plain results into tables
(or JSON), long starts into progress bars, and errors into one line and a non-zero exit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from agentstream.console import console, err_console, fail, settings_or_exit

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
    float,
    typer.Option(
        "--timeout",
        min=1.0,
        help="seconds each part may take to become ready (a loading graph: without progress)",
    ),
]


def _settings(data_dir: Path | None) -> Any:
    """Settings errors become one line too, not a pydantic traceback."""
    overrides: dict[str, object] = {} if data_dir is None else {"data_dir": data_dir}
    return settings_or_exit(**overrides)


def _stack(data_dir: Path | None, timeout: float = 30.0) -> Any:
    from agentstream.stack import Stack

    return Stack(_settings(data_dir), deadline_s=timeout)


def _print_json(rows: list[dict[str, Any]]) -> None:
    print(json.dumps(rows, indent=2))


class _Bars:
    """Progress bars for parts that report one (graph loading, log restore) while up waits."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.fields[part]:<9}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=err_console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def update(self, parts: dict[str, dict[str, Any]]) -> None:
        for name, entry in parts.items():
            prog = entry.get("progress")
            if not prog:
                continue
            if name not in self.tasks:
                self.tasks[name] = self.bar.add_task("", part=name, total=prog.get("total"))
            self.bar.update(
                self.tasks[name],
                description=prog.get("text", ""),
                completed=prog.get("done") or 0,
                total=prog.get("total"),
            )


def up(data_dir: DataDir = None, timeout: Timeout = 30.0, as_json: AsJson = False) -> None:
    """Start the whole pipeline under a supervisor: broker, graph, archiver, worker,
    projections, UI, OTLP receiver (each can be switched off in settings)."""
    from agentstream.processes import StackError
    from agentstream.stack import BROKER_NOTE

    stack = _stack(data_dir, timeout)
    try:
        with _Bars() as bars:
            results = stack.up(on_progress=bars.update)
    except StackError as err:
        fail(str(err))
    if as_json:
        _print_json([r.as_dict() for r in results])
        return
    for r in results:
        pid = f"pid {r.pid}" if r.pid else ""
        port = f"port {r.port}" if r.port else ""
        console.print(
            f"{r.part:<12} {r.action:<16} {pid:<11} {port:<11} {r.detail}",
            highlight=False,
            soft_wrap=True,
        )
    if any(r.part == "broker" and r.action == "started" for r in results):
        console.print(f"note: the broker is {BROKER_NOTE}", highlight=False, soft_wrap=True)
    s = stack.settings
    if any(r.part == "ui" and r.action in ("started", "already running") for r in results):
        console.print(f"[bold]UI:[/] http://{s.ui_host}:{s.ui_port}", highlight=False)
    console.print(
        f"data: {stack.data_dir}  logs: {stack.data_dir / 'logs'}  "
        "(`agentstream status` for restarts and lag)",
        highlight=False,
        soft_wrap=True,
    )


def _lag_text(lag: dict[str, int] | None) -> str:
    if not lag:
        return ""
    if len(lag) == 1:
        return f"{next(iter(lag.values())):,}"
    return " ".join(f"{g} {n:,}" for g, n in lag.items())


def status(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Show each part: state, pid, restarts, consumer lag, last error, metrics URL; exit 1
    if any part is down, unhealthy or in a crash loop."""
    from agentstream.processes import StackError
    from agentstream.stack import format_uptime, loss_report

    stack = _stack(data_dir)
    try:
        parts = stack.status()
        sup = stack.supervisor_status()
    except StackError as err:
        fail(str(err))
    loss = loss_report(stack.settings)
    if as_json:
        rows = [p.as_dict() for p in parts]
        if sup is not None:
            rows.insert(0, sup.as_dict())
        _print_json(rows)
    else:
        from rich.table import Table

        table = Table(title=f"agentstream stack ({stack.data_dir})", title_justify="left")
        for col in ("part", "state", "pid", "restarts", "lag", "uptime", "detail"):
            table.add_column(col, overflow="fold")
        colour = {
            "running": "green",
            "external": "cyan",
            "disabled": "dim",
            "not installed": "dim",
            "starting": "yellow",
            "restoring": "yellow",
            "waiting": "yellow",
            "backoff": "yellow",
        }
        for p in ([sup] if sup is not None else []) + parts:
            detail = p.detail
            if p.last_error and p.state != "running":
                detail += f"\nlast error: {p.last_error}"
            elif p.last_error and p.restarts:
                detail += f"\nlast error before restart: {p.last_error}"
            if p.last_exit is not None and p.restarts:
                detail += f" (exit {p.last_exit})"
            if p.metrics_url:
                detail += f"\nmetrics: {p.metrics_url}/metrics"
            table.add_row(
                p.part,
                f"[{colour.get(p.state, 'red')}]{p.state}[/]",
                str(p.pid or ""),
                str(p.restarts) if p.part != "supervisor" else "",
                _lag_text(p.lag),
                format_uptime(p.uptime_s) if p.uptime_s is not None else "",
                detail,
            )
        console.print(table)
        for p in parts:
            if p.note and p.state == "running":
                console.print(f"{p.part}: {p.note}", highlight=False, soft_wrap=True)
        if loss:
            console.print(f"[bold red]log loss:[/] {loss}", highlight=False, soft_wrap=True)
    if not all(p.ok for p in parts) or (sup is not None and not sup.ok):
        raise typer.Exit(1)


def down(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Stop the stack: dependents first, each given time to flush, then the supervisor."""
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
        console.print(
            f"{r.part:<12} {r.action:<13} pid {r.pid:<8} {r.detail}",
            highlight=False,
            soft_wrap=True,
        )


def supervise() -> None:
    """The supervisor daemon that `agentstream up` starts (not for direct use)."""
    from agentstream.supervisor import main

    raise typer.Exit(main(settings_or_exit()))


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("status")(status)
    app.command("down")(down)
    app.command("supervise", hidden=True)(supervise)
