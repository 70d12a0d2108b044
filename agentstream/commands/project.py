"""``agentstream project``: run read-model projections until stopped.

Each projection runs in its own consumer group (``agentstream-<name>``), so a slow one
(memory embeds text) never holds back the others. On chDB the analytics projection also
serves reads for ``agentstream query`` while it owns the store.
"""

from __future__ import annotations

import logging
import signal
from typing import Annotated, Any

import typer

from agentstream.console import console, fail, settings_or_exit

log = logging.getLogger("agentstream.project")


def project(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="analytics, graph, memory (default: all of them)", show_default=False),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="run every projection")] = False,
    report_every: Annotated[
        float, typer.Option("--report-every", min=1, help="seconds between progress log lines")
    ] = 10.0,
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run projections (agent-events and derived topics -> read models) until stopped."""
    import asyncio

    from agentstream.wiring import PROJECTIONS

    chosen = list(PROJECTIONS) if all_ or not names or names == ["all"] else names
    unknown = [n for n in chosen if n not in PROJECTIONS]
    if unknown:
        known = ", ".join(PROJECTIONS)
        fail(f"project: unknown projection {', '.join(unknown)} — choose from {known}")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    settings = settings_or_exit()
    runners = asyncio.run(_run(settings, chosen, report_every))
    for r in runners:
        s = r.stats
        console.print(
            f"{r.projection.name}: applied {s.applied} records in {s.batches} batches, "
            f"{s.rejected} undecodable, lag {s.lag()}",
            highlight=False,
        )


async def _run(settings: Any, names: list[str], report_every: float) -> list[Any]:
    import asyncio

    from aiokafka.errors import KafkaConnectionError

    from agentstream.wiring import BUILDERS, runner_config
    from projections.runner import ProjectionRunner

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners = []
    for name in names:
        try:
            projection = await asyncio.to_thread(BUILDERS[name], settings)
        except Exception as err:  # a store that cannot be opened: say which and why
            fail(f"{name}: cannot open its store: {err}")
        runners.append(
            ProjectionRunner(projection, settings.bootstrap_servers, config=runner_config(name))
        )
    from agentstream.telemetry import heartbeat, register_stats, serve_part_metrics

    endpoint = serve_part_metrics("projections", settings)
    register_stats(
        "agentstream_projection", {r.projection.name: (lambda r=r: r.stats) for r in runners}
    )

    def readiness() -> tuple[bool, str]:
        lags = ", ".join(f"{r.projection.name} lag {r.stats.lag()}" for r in runners)
        return True, lags

    tasks = {asyncio.create_task(r.run(stop), name=r.projection.name): r for r in runners}
    tasks[asyncio.create_task(heartbeat(endpoint, readiness, stop), name="heartbeat")] = None
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=report_every, return_when=asyncio.FIRST_EXCEPTION
            )
            for t in done:
                if t.exception() is not None:
                    stop.set()
                    t.result()
            for r in runners:
                s = r.stats
                log.info("%s: applied %d, lag %d", r.projection.name, s.applied, s.lag())
    except (KafkaConnectionError, OSError) as err:
        stop.set()
        _close(runners)
        fail(
            f"project: cannot reach the Kafka broker at {settings.bootstrap_servers} "
            f"({type(err).__name__}) — start it with `agentstream up` or set AGENTSTREAM_KAFKA_URL"
        )
    finally:
        stop.set()
        endpoint.stop()
    _close(runners)
    return runners


def _close(runners: list[Any]) -> None:
    """Release stores (the analytics owner also withdraws its read endpoint record)."""
    for r in runners:
        close = getattr(r.projection, "close", None)
        if close is not None:
            try:
                close()
            except Exception as err:  # closing must not hide the run's own outcome
                log.warning("%s: close failed: %s", r.projection.name, err)


def register(app: typer.Typer) -> None:
    app.command("project")(project)
