"""``agentstream demo``: start everything, simulate, process, project, summarise.

The work is :mod:`agentstream.demo`; this module draws the progress display and the
summary, and turns failures into one-line errors.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from agentstream.console import console, err_console, fail

# = agentstream.demo.DEFAULT_EVENTS (a test checks): importing agentstream.demo here would
# load the settings model and the codec for every `agentstream --help`
DEFAULT_EVENTS = 10_000


def demo(
    events: Annotated[
        int, typer.Option("--events", "-n", min=1, help="events to simulate")
    ] = DEFAULT_EVENTS,
    agents: Annotated[int, typer.Option("--agents", min=1, help="simulated agents")] = 12,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="simulator seed (default: a new one per run)"),
    ] = None,
    reset: Annotated[
        bool,
        typer.Option("--reset", help="stop the stack and delete the data directory first"),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="seconds to wait for catching up")
    ] = 600.0,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running/--stop",
            help="leave the stack running afterwards (the UI link stays live; "
            "`agentstream down` stops it), or stop a stack the demo started",
        ),
    ] = True,
    timings: Annotated[
        bool, typer.Option("--timings", help="print where the time went, phase by phase")
    ] = False,
) -> None:
    """Run the whole pipeline on simulated agents, then show what each read model holds and
    explain one failed action (why, recall, replay verify)."""
    import asyncio
    import time

    from pydantic import ValidationError

    started = time.monotonic()

    from agentstream.demo import DemoConfig, DemoError
    from agentstream.settings import load_settings

    noisy_loggers = ("aiokafka", "faust", "mode", "projections", "clickhouse_connect", "chromadb")
    for noisy in (*noisy_loggers, "sentence_transformers", "streams"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        settings = load_settings()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        fail(f"settings: {where}: {first['msg']} — fix AGENTSTREAM_{where.upper()}")
    config = DemoConfig(
        events=events,
        agents=agents,
        seed=seed,
        reset=reset,
        timeout_s=timeout,
        keep_running=keep_running,
    )
    try:
        result = asyncio.run(_run_with_display(settings, config))
    except DemoError as err:
        fail(str(err))
    _summary(result)
    _explained(result)
    if timings:
        _timings(result, started)


async def _run_with_display(settings: Any, config: Any) -> Any:
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agentstream.demo import Progress as DemoProgress
    from agentstream.demo import run_demo

    state = DemoProgress()
    bar = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    tasks = {
        "produced": bar.add_task("simulate + publish", total=config.events),
        "processed": bar.add_task("stream processor", total=config.events),
        "projected": bar.add_task("analytics projection", total=config.events),
        "graphed": bar.add_task("graph projection", total=config.events),
    }
    status = bar.add_task("starting", total=None)

    def tick(p: DemoProgress) -> None:
        total = p.total or config.events
        for name, task in tasks.items():
            bar.update(task, completed=getattr(p, name), total=total)
        bar.update(status, description=p.phase)

    import signal

    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # cancel: the demo cleans up what it started
        loop.add_signal_handler(sig, main.cancel)  # type: ignore[union-attr]
    with bar:
        try:
            return await run_demo(settings, config, state, tick)
        except asyncio.CancelledError:
            fail("interrupted — the demo stopped what it had started")


def _summary(result: Any) -> None:
    from agentstream.commands.query import plain_table, print_table

    state = {
        "fresh": "a fresh data directory",
        "reused": "the existing data directory (earlier runs' data kept; --reset starts over)",
        "reset": "a reset data directory",
    }[result.data_dir_state]
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items() if not k.startswith(" "))
    console.print(
        f"[bold]demo done[/]: {result.produced} events simulated (seed {result.seed}) into "
        f"{state}: {result.data_dir}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"analytics store: {result.events_in_store} events ({result.new_in_store} new from this "
        f"run); stack ({result.parts}): {result.stack}; {secs}",
        highlight=False,
        soft_wrap=True,
    )
    print_table(plain_table(result.by_type), "events by type", 50)
    board = plain_table(result.leaderboard).select(
        ["agent_id", "events", "actions", "failed", "success_rate", "tokens", "cost_usd"]
    )
    print_table(board, "agent leaderboard (by action success rate)", 10)
    print_table(plain_table(result.violations), "violations by category", 20)
    console.print(
        "\n[bold]query further[/] (the store is on disk: this works with the stack down too):\n"
        "  agentstream query --list\n"
        "  agentstream query --named failed_runs\n"
        "  agentstream query --named slowest_tools --format csv\n"
        '  agentstream query "SELECT agent_id, count() FROM events GROUP BY agent_id"\n'
        '  python -c "from projections.analytics import connect; '
        "print(connect().named('cost_per_run'))\"\n"
        "  docs/analytics.md: every table, column and named query",
        highlight=False,
        soft_wrap=True,
    )


def _explained(result: Any) -> None:
    """The failed action: its causal chain, what memory recalls for it, replay verify."""
    from rich.markup import escape
    from rich.table import Table

    ex = result.explained
    if ex is None:
        console.print("\nno failed action in this run to explain", highlight=False)
        return
    console.print(
        f"\n[bold]one failed action, explained[/]: {escape(ex.tool)} by {escape(ex.agent_id)} "
        f"in run {escape(ex.run_id or '-')} — event {ex.event_id}",
        highlight=False,
        soft_wrap=True,
    )
    if ex.summary:
        console.print(f"  {escape(ex.summary[:200])}", highlight=False, soft_wrap=True)
    console.print(
        f"\n[bold]why[/] (the causal chain from the graph; `agentstream why {ex.event_id}`):"
    )
    if ex.why is not None:
        from agentstream.commands.graph import why_tree

        console.print(why_tree(ex.why))
        roots = ex.why.roots()
        console.print(
            f"{len(ex.why.ancestors())} causes, {len(roots)} root cause(s)", highlight=False
        )
    else:
        console.print(f"  {escape(ex.why_note)}", highlight=False)
    console.print("\n[bold]recall[/] (episodes memory finds for this situation):")
    if ex.situation:
        console.print(f"  situation: {escape(ex.situation[:200])}", highlight=False)
    if ex.recalled:
        table = Table(show_header=True, box=None, padding=(0, 2))
        for col in ("dist", "outcome", "tool / agent", "situation and lesson"):
            table.add_column(col, overflow="fold")
        for e in ex.recalled:
            text = escape(e.situation[:160])
            if e.lesson:
                text += f"\n[green]lesson:[/] {escape(e.lesson[:160])}"
            colour = "green" if e.outcome == "success" else "red"
            table.add_row(
                f"{e.distance:.3f}",
                f"[{colour}]{e.outcome}[/]",
                f"{escape(e.tool)} / {escape(e.agent_id)}",
                text,
            )
        console.print(table)
    console.print(f"  {escape(ex.memory_note)}", highlight=False)
    console.print(f"\n[bold]replay verify[/] (agent {escape(ex.agent_id)}, from the log):")
    v = ex.verify
    if v is None:
        console.print(f"  {escape(ex.verify_note)}", highlight=False)
    elif v.ok:
        console.print(
            f"  [green]passed[/]: {v.events} events re-folded, {v.snapshots} recorded states "
            "equal to the reducer's",
            highlight=False,
        )
    else:
        agents = ", ".join(escape(a) for a in v.divergences)
        console.print(
            f"  [bold red]FAILED[/]: {len(v.divergences)} agent(s) diverge ({agents}) — "
            "`agentstream replay verify` shows where",
            highlight=False,
        )
    if ex.ui_url and "stopped again" in result.stack:
        console.print(
            f"\nthis run in the UI (after `agentstream up`): {ex.ui_url}", highlight=False
        )
    elif ex.ui_url:
        console.print(f"\n[bold]open this run in the UI:[/] {ex.ui_url}", highlight=False)


def _timings(result: Any, started: float) -> None:
    """Phases in order (indented: parts of the phase above, run side by side), then the
    command's own wall time; the Python start-up and imports before it are not in it."""
    import time

    from rich.table import Table

    table = Table(title="where the time went", show_header=True, box=None, padding=(0, 2))
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for name, secs in result.seconds.items():
        table.add_row(name, f"{secs:.1f}")
    table.add_row("command, until now", f"{time.monotonic() - started:.1f}")
    console.print()
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
