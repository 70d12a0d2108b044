"""``agentstream replay rebuild | debug | verify``: replaying history from Kafka or the archive.

- ``rebuild`` rebuilds read models into fresh targets and switches them in
  (:mod:`agentstream.rebuild`), with a progress bar (rate and ETA).
- ``debug`` steps through a run's events with the agent's state after each one
  (:mod:`agentstream.debug_replay`), interactively or as JSON.
- ``verify`` re-runs the current reducer over history and compares with the states the
  processor recorded on ``agent-state``; exit code 1 when they diverge.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from agentstream.console import console, err_console, fail, settings_or_exit

replay_app = typer.Typer(
    name="replay",
    help="Replay history: rebuild read models, step through a run, verify the reducer.",
    no_args_is_help=True,
)

MODEL_CHOICES = ("analytics", "graph", "memory", "state", "all")


def parse_time(text: str | None, option: str) -> datetime | None:
    """ISO 8601 (``2026-01-01T12:00:00Z``; no zone means UTC) or epoch milliseconds."""
    if text is None:
        return None
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        t = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option}: {text!r} is not a time — use ISO 8601 (2026-01-01T12:00:00Z) or epoch ms")
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _ms(t: datetime | None) -> int | None:
    return None if t is None else int(t.timestamp() * 1000)


def _check_source(source: str, settings: Any) -> Path | None:
    if source not in ("kafka", "archive"):
        fail(f"--source must be kafka or archive, got {source!r}")
    if source == "archive":
        root = settings.archive_location
        if not root.is_dir():
            fail(
                f"no archive at {root} — run `agentstream archive` (or `agentstream up`), "
                "or set AGENTSTREAM_ARCHIVE_DIR"
            )
        return root
    return settings.archive_location


def _quiet_kafka() -> None:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


# --- rebuild ----------------------------------------------------------------------------------


@replay_app.command("rebuild")
def rebuild_cmd(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="analytics, graph, memory, state or all (default: all)"),
    ] = None,
    source: Annotated[str, typer.Option("--source", help="kafka or archive")] = "kafka",
    from_time: Annotated[
        str | None, typer.Option("--from", help="only events logged from this time (ISO 8601)")
    ] = None,
    to_time: Annotated[
        str | None,
        typer.Option("--to", help="only events logged before this time (needs --no-switch)"),
    ] = None,
    switch: Annotated[
        bool,
        typer.Option(
            "--switch/--no-switch",
            help="swap the rebuilt models in and continue live (default) or keep them aside",
        ),
    ] = True,
) -> None:
    """Rebuild read models from the log into fresh targets, then switch over atomically."""
    import asyncio

    from agentstream.rebuild import RebuildError, RebuildOptions

    settings = settings_or_exit()
    chosen = _models(models)
    root = _check_source(source, settings)
    options = RebuildOptions(
        settings.bootstrap_servers,
        source,  # type: ignore[arg-type]
        root,
        _ms(parse_time(from_time, "--from")),
        _ms(parse_time(to_time, "--to")),
        switch,
    )
    if options.to_ms is not None and switch:
        fail("--to builds a point-in-time model that cannot continue live — add --no-switch")
    _quiet_kafka()
    targets = _targets(settings, chosen)
    try:
        result = asyncio.run(_run_rebuild(targets, options))
    except RebuildError as err:
        fail(f"rebuild: {err}")
    except TimeoutError as err:
        fail(f"rebuild: {err} — check the broker (`agentstream status`)")
    _print_result(result, settings)


def _models(models: list[str] | None) -> list[str]:
    chosen = list(models or ["all"])
    for m in chosen:
        if m not in MODEL_CHOICES:
            fail(f"unknown model {m!r} — choose from {', '.join(MODEL_CHOICES)}")
    if "all" in chosen:
        return ["analytics", "graph", "memory", "state"]
    return list(dict.fromkeys(chosen))


def _targets(settings: Any, models: list[str]) -> list[Any]:
    from agentstream.rebuild import (
        AnalyticsTarget,
        GraphTarget,
        MemoryTarget,
        StateTarget,
        build_suffix,
    )

    suffix = build_suffix()
    out: list[Any] = []
    for m in models:
        try:
            if m == "analytics":
                out.append(AnalyticsTarget(settings.analytics_url, suffix))
            elif m == "graph":
                out.append(
                    GraphTarget(
                        settings.graph_url,
                        settings.graph_name,
                        f"{settings.graph_name}_{suffix}",
                        user=settings.neo4j_user,
                        password=settings.neo4j_password,
                    )
                )
            elif m == "memory":
                from projections.memory.recall import default_store

                live = default_store(settings, create=True)
                out.append(MemoryTarget(live, f"{settings.memory_collection}-{suffix}"))
            elif m == "state":
                out.append(StateTarget(settings.bootstrap_servers))
        except Exception as err:  # each store says what is wrong and how to fix it
            fail(f"rebuild {m}: {err}")
    return out


async def _run_rebuild(targets: list[Any], options: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from agentstream.rebuild import rebuild

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    with bar:
        task = bar.add_task("rebuild", total=None, rate="")
        started = [0.0]

        def on_progress(p: Any) -> None:
            import time

            now = time.monotonic()
            if not started[0]:
                started[0] = now
            rate = p.read / (now - started[0]) if now > started[0] else 0.0
            bar.update(
                task,
                completed=p.read,
                total=p.total,
                description=p.phase,
                rate=f"{rate:,.0f} records/s",
            )

        return await rebuild(targets, options, on_progress=on_progress)


def _print_result(result: Any, settings: Any) -> None:
    from rich.table import Table

    table = Table(title="rebuild", title_justify="left")
    table.add_column("model")
    table.add_column("built into")
    table.add_column("seconds", justify="right")
    for m in result.models:
        table.add_row(m, result.build_names[m], f"{result.model_seconds.get(m, 0.0):.1f}")
    console.print(table)
    console.print(
        f"{result.events} events folded ({result.events_applied} in the window, "
        f"{result.invalid} invalid skipped), {result.violations} violations, "
        f"{result.episodes} episodes, {result.agents} agents from {result.source} in "
        f"{result.seconds:.1f}s ({result.rate:,.0f} events/s)",
        highlight=False,
        soft_wrap=True,
    )
    if result.switched:
        ends = result.end_offsets.get("agent-events", {})
        console.print(
            "switched: the rebuilt models are live; live projections continue from "
            f"agent-events offsets {ends}"
            + (
                f"; {result.states_published} agent states corrected"
                if "state" in result.models
                else ""
            ),
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            "not switched: the rebuilt models are kept aside under the names above",
            highlight=False,
        )


# --- reading history for debug and verify ------------------------------------------------------


async def _history(
    settings: Any, source: str, root: Path | None, agent: str | None
) -> list[tuple[Any, Any]]:
    """Every valid event of the chosen source with its record: partitions merged by log time,
    each partition (so each agent) in log order."""
    from agentstream.debug_replay import read_history

    return await read_history(settings.bootstrap_servers, source, root, agent)


async def _recorded_states(bootstrap: str) -> dict[str, list[Any]]:
    """Every state the processor published on agent-state, per agent, in log order."""
    from schemas.state import decode_state
    from schemas.topics import STATE
    from streams.log_reader import KafkaLogSource

    out: dict[str, list[Any]] = {}
    async for batch in KafkaLogSource(bootstrap, STATE).batches():
        for rec in batch.records:
            if rec.key is None or not rec.value:
                continue
            try:
                state = decode_state(rec.value)
            except Exception:  # not a state: nothing to compare with
                continue
            out.setdefault(state.agent_id, []).append(state)
    return out


# --- debug ------------------------------------------------------------------------------------


@replay_app.command("debug")
def debug_cmd(
    run: Annotated[str, typer.Option("--run", help="the run to step through")],
    agent: Annotated[str | None, typer.Option("--agent", help="only this agent's events")] = None,
    from_time: Annotated[
        str | None, typer.Option("--from", help="event time from (ISO 8601)")
    ] = None,
    to_time: Annotated[
        str | None, typer.Option("--to", help="event time before (ISO 8601)")
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--types", help="event types: wire type, base type, category or short name (repeat)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the timeline as JSON")] = False,
    source: Annotated[str, typer.Option("--source", help="kafka or archive")] = "kafka",
    speed: Annotated[
        float, typer.Option("--speed", min=0.1, help="steps per second when continuing")
    ] = 2.0,
) -> None:
    """Step through a run: each event and the agent's state after it (the reducer re-run)."""
    from agentstream.debug_replay import (
        Stepper,
        TimelineFilter,
        build_timeline,
        interactive_keys,
        run_interactive,
        timeline_json,
    )

    settings = settings_or_exit()
    root = _check_source(source, settings)
    flt = TimelineFilter(
        run_id=run,
        agent_id=agent,
        from_time=parse_time(from_time, "--from"),
        to_time=parse_time(to_time, "--to"),
        types=tuple(t for spec in (types or []) for t in spec.split(",") if t),
    )
    _quiet_kafka()
    history = _read_or_fail(settings, source, root, agent)
    timeline = build_timeline(history, flt)
    if as_json:
        sys.stdout.write(json.dumps(timeline_json(timeline), default=str) + "\n")
        return
    if not timeline.steps:
        fail(
            f"no events of run {run!r}"
            + (f" by agent {agent!r}" if agent else "")
            + f" in {source} ({timeline.events_folded} events read) — check the run id "
            "(`agentstream query` lists runs) or try --source archive"
        )
    keys, mode = interactive_keys()
    with mode, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C quits like q
        run_interactive(Stepper(timeline, speed), console, keys, clear=console.is_terminal)


def _read_or_fail(settings: Any, source: str, root: Path | None, agent: str | None) -> Any:
    import asyncio

    from aiokafka.errors import KafkaConnectionError, KafkaError

    try:
        return asyncio.run(_history(settings, source, root, agent))
    except (KafkaConnectionError, OSError) as err:
        fail(
            f"cannot read the log at {settings.bootstrap_servers} ({type(err).__name__}) — "
            "start it with `agentstream up`, set AGENTSTREAM_KAFKA_URL, or use --source archive"
        )
    except (KafkaError, RuntimeError, TimeoutError) as err:
        fail(f"reading {source}: {err} — check `agentstream status`")


# --- verify -----------------------------------------------------------------------------------


@replay_app.command("verify")
def verify_cmd(
    run: Annotated[
        str | None, typer.Option("--run", help="only states recorded after this run's events")
    ] = None,
    source: Annotated[str, typer.Option("--source", help="kafka or archive")] = "kafka",
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Re-run the current reducer over history; compare with the states on agent-state."""
    import asyncio

    from agentstream.debug_replay import divergence_json, verify

    settings = settings_or_exit()
    root = _check_source(source, settings)
    _quiet_kafka()
    history = _read_or_fail(settings, source, root, None)
    try:
        recorded = asyncio.run(_recorded_states(settings.bootstrap_servers))
    except Exception as err:
        fail(f"cannot read agent-state at {settings.bootstrap_servers}: {err} — is the broker up?")
    report = verify(history, recorded, run_id=run)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "ok": report.ok,
                    "events": report.events,
                    "snapshots": report.snapshots,
                    "unmatched": report.unmatched,
                    "agents": report.agents,
                    "divergences": [divergence_json(d) for d in report.divergences.values()],
                },
                default=str,
            )
            + "\n"
        )
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(
        f"{report.events} events re-folded, {report.snapshots} recorded states compared "
        f"({report.unmatched} recorded after events not in this history)",
        highlight=False,
    )
    if report.ok:
        console.print("[green]no divergence[/]: the reducer reproduces every recorded state")
        return
    for d in report.divergences.values():
        since = f", last agreed after {d.last_agreement}" if d.last_agreement else ""
        console.print(
            f"[bold red]{escape(d.agent_id)}[/] diverges after event {d.event.id} "
            f"({d.event.type}, {d.event.time.isoformat()}; {d.snapshots_agreed} states "
            f"agreed before{since})",
            highlight=False,
        )
        table = Table(show_header=True, box=None, padding=(0, 2))
        table.add_column("field")
        table.add_column("recorded")
        table.add_column("recomputed")
        for path, (a, b) in list(d.differences.items())[:40]:
            table.add_row(escape(path), escape(_short(a)), escape(_short(b)))
        console.print(table)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def register(app: typer.Typer) -> None:
    app.add_typer(replay_app, name="replay")
