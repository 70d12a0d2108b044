"""``agentstream project``: run read-model projections until stopped.

Each projection runs in its own consumer group (``agentstream-<name>``), so a slow one
(memory embeds text) never holds back the others, and each starts as soon as its own store
is open: analytics serves reads while memory still loads its embedding model. On chDB the
analytics projection also serves reads for ``agentstream query`` while it owns the store.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
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


async def _run(settings: Any, names: list[str], report_every: float, stop: Any = None) -> list[Any]:
    """Start every projection as soon as its own store is ready, then run them all.

    Each store opens in its own thread: analytics (chDB, serving reads) is up in about a
    second while memory still imports torch and loads its embedding model, which takes
    10-40 s on a busy machine. ``/readyz`` names what is still loading.
    """
    import asyncio

    from aiokafka.errors import KafkaConnectionError

    from agentstream.telemetry import heartbeat, register_stats, serve_part_metrics

    if stop is None:  # the command: stopped by a signal; a caller may pass its own event
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    endpoint = serve_part_metrics("projections", settings)
    runners: dict[str, Any] = {}  # name -> ProjectionRunner, once its store is open
    register_stats(
        "agentstream_projection",
        {n: (lambda n=n: runners[n].stats if n in runners else None) for n in names},
    )

    def readiness() -> tuple[bool, str]:
        parts = [
            f"{n} lag {runners[n].stats.lag()}" if n in runners else f"{n} loading" for n in names
        ]
        return all(n in runners for n in names), ", ".join(parts)

    tasks = {
        asyncio.create_task(_start(name, settings, runners, stop), name=name): name
        for name in names
    }
    tasks[asyncio.create_task(heartbeat(endpoint, readiness, stop), name="heartbeat")] = ""
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
            for name, r in runners.items():
                s = r.stats
                log.info("%s: applied %d, lag %d", name, s.applied, s.lag())
    except (KafkaConnectionError, OSError) as err:
        stop.set()
        _close(list(runners.values()))
        fail(
            f"project: cannot reach the Kafka broker at {settings.bootstrap_servers} "
            f"({type(err).__name__}) — start it with `agentstream up` or set AGENTSTREAM_KAFKA_URL"
        )
    finally:
        stop.set()
        endpoint.stop()
    _close(list(runners.values()))
    return [runners[n] for n in names if n in runners]


async def _start(name: str, settings: Any, runners: dict[str, Any], stop: Any) -> None:
    """Open ``name``'s store, then run it until ``stop``; a stop while opening just returns."""
    import asyncio

    from agentstream.wiring import BUILDERS, runner_config
    from projections.runner import ProjectionRunner

    started = time.monotonic()
    built = _build_in_thread(name, BUILDERS[name], settings)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({built, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not built.done():
        log.info("%s: stopped while still opening its store", name)
        return  # the opening thread is a daemon: it does not hold the process up
    try:
        projection = built.result()
    except Exception as err:  # a store that cannot be opened: say which and why
        fail(f"{name}: cannot open its store: {err}")
    if stop.is_set():
        _close_one(name, projection)
        return
    log.info("%s: store open in %.1fs; running", name, time.monotonic() - started)
    runner = ProjectionRunner(projection, settings.bootstrap_servers, config=runner_config(name))
    runners[name] = runner
    await runner.run(stop)


def _build_in_thread(name: str, builder: Any, settings: Any) -> Any:
    """``builder(settings)`` in a daemon thread, as a future of this loop.

    Not ``asyncio.to_thread``: the loop's executor threads are joined at exit, so a SIGTERM
    while memory loads its model would wait for the whole load.
    """
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, err: BaseException | None) -> None:
        if future.done():
            return
        if err is not None:
            future.set_exception(err)
        else:
            future.set_result(value)

    def work() -> None:
        try:
            value, err = builder(settings), None
        except Exception as e:  # handed to the loop, which reports it
            value, err = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, value, err)

    threading.Thread(target=work, name=f"open-{name}", daemon=True).start()
    return future


def _close(runners: list[Any]) -> None:
    """Release stores (the analytics owner also withdraws its read endpoint record)."""
    for r in runners:
        _close_one(r.projection.name, r.projection)


def _close_one(name: str, projection: Any) -> None:
    close = getattr(projection, "close", None)
    if close is not None:
        try:
            close()
        except Exception as err:  # closing must not hide the run's own outcome
            log.warning("%s: close failed: %s", name, err)


def register(app: typer.Typer) -> None:
    app.command("project")(project)
