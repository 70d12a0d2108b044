"""``agentstream worker`` (the stream processor) and ``agentstream state AGENT``.

The processor itself is :mod:`streams.processor`; this module picks the broker and data
directory from the settings, turns SIGTERM/SIGINT into a clean stop and reports errors in
one line. ``state`` reads the latest published state of one agent from ``agent-state``.
"""

from __future__ import annotations

import logging
import signal
from typing import Annotated, Any

import typer

from agentstream.console import console, fail, settings_or_exit


def _unreachable(bootstrap: str, err: BaseException) -> str:
    return (
        f"cannot reach the Kafka broker at {bootstrap} ({type(err).__name__}) — "
        "start it with `agentstream up` or set AGENTSTREAM_KAFKA_URL"
    )


def worker(
    group: Annotated[
        str, typer.Option("--group", help="consumer group (workers sharing it split partitions)")
    ] = "agentstream-processor",
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="events per batch, at most")
    ] = 5000,
    batch_wait: Annotated[
        float, typer.Option("--batch-wait", min=0.001, help="seconds to wait to fill a batch")
    ] = 0.1,
    action_timeout: Annotated[
        float,
        typer.Option("--action-timeout", min=0.001, help="seconds (event time) until stuck"),
    ] = 300.0,
    engine: Annotated[
        str,
        typer.Option(
            "--engine", help="faust (the faust app) or aiokafka (same processing, faster)"
        ),
    ] = "faust",
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run the stream processor until stopped: agent state, violations, episodes, DLQ."""
    import asyncio

    if engine not in ("faust", "aiokafka"):
        fail(f"worker: unknown engine {engine!r} — use --engine faust or --engine aiokafka")
    settings = settings_or_exit()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for noisy in ("aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    stats = asyncio.run(_run(settings, group, max_batch, batch_wait, action_timeout, engine))
    console.print(
        f"{stats.records} records delivered, {stats.gap_records} more read from the log; "
        f"{stats.applied} applied, {stats.duplicates} duplicates, {stats.rejected} to the DLQ; "
        f"{stats.violations} violations, {stats.episodes} episodes; "
        f"{stats.rebuilds} partitions rebuilt",
        highlight=False,
        soft_wrap=True,
    )


async def _run(
    settings: Any,
    group: str,
    max_batch: int,
    batch_wait: float,
    action_timeout: float,
    engine: Any,
) -> Any:
    import asyncio
    from datetime import timedelta

    from aiokafka.errors import KafkaConnectionError, KafkaError

    from streams.processor import build_app
    from streams.reducer import ReducerConfig

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    processor = build_app(
        settings,
        group_id=group,
        config=ReducerConfig(action_timeout=timedelta(seconds=action_timeout)),
        max_batch=max_batch,
        batch_wait_s=batch_wait,
        engine=engine,
    )
    bootstrap = settings.bootstrap_servers
    from agentstream.telemetry import heartbeat, register_stats, serve_part_metrics

    endpoint = serve_part_metrics("worker", settings)
    register_stats("agentstream_processor", {"worker": lambda: processor.stats})
    beat = asyncio.create_task(
        heartbeat(endpoint, lambda: (True, f"{engine} engine processing"), stop)
    )
    try:
        await processor.run(stop)
    except (KafkaConnectionError, OSError) as err:
        fail(f"worker: {_unreachable(bootstrap, err)}")
    except (KafkaError, RuntimeError) as err:
        fail(f"worker: {err} — check the broker (`agentstream status`) and the log above")
    finally:
        stop.set()
        await beat
        endpoint.stop()
    return processor.stats


def state(
    agent: Annotated[str, typer.Argument(help="agent id")],
    as_json: Annotated[bool, typer.Option("--json", help="print the raw state as JSON")] = False,
) -> None:
    """Print an agent's current state (the latest record on agent-state)."""
    import asyncio

    settings = settings_or_exit()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    bootstrap = settings.bootstrap_servers
    found = asyncio.run(_read(bootstrap, agent))
    if found is None:
        fail(
            f"no state for agent {agent!r} on agent-state at {bootstrap} — is "
            "`agentstream worker` running, and has this agent emitted events?"
        )
    from schemas.state import encode_state

    if as_json:
        console.print_json(encode_state(found).decode())
        return
    _print_state(found)


async def _read(bootstrap: str, agent: str) -> Any:
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from streams.state_reader import read_state

    try:
        return await read_state(bootstrap, agent)
    except (KafkaConnectionError, OSError) as err:
        fail(f"state: {_unreachable(bootstrap, err)}")
    except LookupError as err:
        fail(f"state: {err} — create the topics with `agentstream up`")
    except (KafkaError, TimeoutError) as err:
        fail(f"state: reading agent-state failed ({err!r}) — check `agentstream status`")


def _print_state(s: Any) -> None:
    from rich.table import Table

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    t = Table(title=f"agent {s.agent_id}", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("name / role / model", f"{s.name or '-'} / {s.role or '-'} / {s.model or '-'}")
    t.add_row("status", s.status.value + (" (stopped)" if s.stopped else ""))
    run = s.run
    run_text = "-"
    if run is not None:
        run_text = f"{run.run_id} ({run.status}) {run.goal or ''}".strip()
    t.add_row("run / task", f"{run_text} / {s.task_id or '-'}")
    t.add_row("events", f"{s.events_total} (last {s.last_event_time or '-'})")
    w = s.world
    t.add_row(
        "world (agent)",
        f"success {rate(w.success_rate)} of last {len(w.outcomes)}, "
        f"{w.failures_in_a_row} failures in a row, {w.actions_ok} ok / {w.actions_failed} "
        f"failed, tokens {w.input_tokens}+{w.output_tokens}, cost ${w.cost_usd:.4f}",
    )
    if run is not None:
        rw = run.world
        t.add_row(
            "world (run)",
            f"success {rate(rw.success_rate)}, {rw.failures_in_a_row} failures in a row, "
            f"cost ${rw.cost_usd:.4f}",
        )
    opened = [
        f"{a.call_id} {a.tool}" + (" STUCK" if a.timed_out else "") for a in s.open_actions.values()
    ]
    t.add_row("open actions", ", ".join(opened) or "-")
    t.add_row(
        "tools",
        ", ".join(
            f"{name} {st.ok} ok/{st.error} err/{st.wrong_result} wrong"
            for name, st in sorted(s.tools.items())
        )
        or "-",
    )
    d = s.last_decision
    t.add_row("last decision", f"{d.chosen} ({d.confidence:.0%})" if d else "-")
    t.add_row("lessons", str(s.lessons))
    t.add_row("counts", ", ".join(f"{k}={v}" for k, v in sorted(s.counts.items())) or "-")
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("state")(state)
