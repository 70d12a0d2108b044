"""``agentstream simulate``: publish the deterministic multi-agent workload to the broker.

The workload itself lives in :mod:`streams.simulator`; this module picks the broker from the
settings, makes sure the events topic exists, shows progress and reports one last line
with the exact number of events produced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import typer

from agentstream.console import console, err_console, fail


def simulate(
    agents: Annotated[int, typer.Option("--agents", min=1, help="number of agents")] = 4,
    runs: Annotated[
        int | None,
        typer.Option(
            "--runs",
            min=0,
            help="number of runs (default: 10; with --events: as many as needed)",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="same seed, same events")] = 0,
    events: Annotated[
        int | None,
        typer.Option("--events", min=0, help="stop after this many events", show_default=False),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", min=0.001, help="pace at this many events/s", show_default=False),
    ] = None,
    start: Annotated[
        str,
        typer.Option("--start", help="simulated start time, ISO 8601 with a zone"),
    ] = "2026-01-01T00:00:00+00:00",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar")] = True,
    verify: Annotated[
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="wait until the archive holds every acknowledged event; exit 1 if the log "
            "lost some (default: on with the embedded, in-memory broker)",
            show_default=False,
        ),
    ] = None,
    verify_timeout: Annotated[
        float, typer.Option("--verify-timeout", min=1, help="seconds to wait for the archive")
    ] = 60.0,
) -> None:
    """Publish a deterministic, realistic multi-agent workload to the agent-events topic."""
    import asyncio

    from pydantic import ValidationError

    from agentstream.settings import load_settings
    from streams.simulator import SimulationConfig

    # aiokafka logs every failed connection attempt; the one-line error below says it all
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    try:
        settings = load_settings()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        fail(f"settings: {where}: {first['msg']} — fix AGENTSTREAM_{where.upper()}")
    try:
        start_at = datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--start {start!r} is not an ISO 8601 time — e.g. 2026-01-01T00:00:00Z")
    if start_at.tzinfo is None:
        fail(f"--start {start!r} has no time zone — add one, e.g. {start}Z")
    if runs is None:
        runs = 10 if events is None else None
    config = SimulationConfig(
        agents=agents, runs=runs, seed=seed, max_events=events, start=start_at
    )
    if verify is None:
        verify = settings.kafka_embedded
    ids: list[str] | None = [] if verify else None
    started_unix = time.time()
    epoch = asyncio.run(_epoch(settings.bootstrap_servers)) if verify else None
    try:
        produced, seconds = asyncio.run(_publish(settings, config, rate, progress, ids))
    except _PublishFailed as err:
        # the acknowledged events may still be lost with the broker: say how many
        lost = _verify(settings, set(err.acknowledged), started_unix, epoch, verify_timeout, True)
        fail(
            f"{err}; {lost:,} of the events it sent and did not see fail (acknowledged or in "
            "flight) are in neither the log nor the archive — check the broker "
            "(`agentstream status`)"
        )
    if ids is not None:
        _verify(settings, set(ids), started_unix, epoch, verify_timeout)
    per_s = produced / seconds if seconds > 0 else 0.0
    console.print(
        f"produced {produced} events ({per_s:,.0f} events/s; agents {agents}, "
        f"runs {'auto' if runs is None else runs}, seed {seed}) "
        f"to topic agent-events at {settings.bootstrap_servers}",
        highlight=False,
        soft_wrap=True,
    )


async def _epoch(bootstrap: str) -> str | None:
    import asyncio

    from aiokafka.errors import KafkaError

    from streams.log_identity import fetch_marker

    try:
        marker = await asyncio.wait_for(fetch_marker(bootstrap), 10)
    except (KafkaError, OSError, TimeoutError):
        return None  # the publish step below reports an unreachable broker
    return marker.epoch if marker else None


def _verify(
    settings: Any,
    ids: set[str],
    since_unix: float,
    epoch: str | None,
    timeout_s: float,
    quiet: bool = False,
) -> int:
    """The embedded broker acknowledges from memory: confirm the events reached the archive.

    Returns how many are lost; ``quiet``: only count (the caller reports).
    """
    import asyncio

    from streams.delivery_check import archiver_pid, wait_archived

    if archiver_pid(settings.archive_location) is None:
        if quiet:
            return 0
        err_console.print(
            f"warning: not verified: no archiver is writing {settings.archive_location}, so "
            "these events are only in the broker's memory — start it (`agentstream up`)",
            highlight=False,
            soft_wrap=True,
        )
        return 0
    with err_console.status(f"waiting until the archive holds all {len(ids):,} events"):
        check = asyncio.run(
            wait_archived(
                settings.bootstrap_servers,
                settings.archive_location,
                ids,
                since_unix=since_unix,
                epoch=epoch,
                timeout_s=timeout_s,
                flush_grace_s=2 * settings.archive_flush_s + 1,
            )
        )
    if quiet:
        return check.lost
    if check.lost:
        sample = ", ".join(sorted(check.missing)[:5])
        fail(
            f"LOST: {check.lost:,} of {check.acknowledged:,} acknowledged events are in neither "
            f"the log nor the archive ({check.detail}); e.g. {sample} — publish them again; "
            f"`agentstream archive --losses` shows what the archiver saw lost"
        )
    if check.missing:
        err_console.print(
            f"warning: {len(check.missing):,} acknowledged events are in the log but not yet in "
            f"the archive at {settings.archive_location} ({check.detail}) — is the archiver "
            "running? (`agentstream status`)",
            highlight=False,
            soft_wrap=True,
        )
        return 0
    console.print(
        f"verified: all {check.acknowledged:,} events are in the archive "
        f"({check.seconds:.1f}s after the last acknowledgement)",
        highlight=False,
    )
    return 0


async def _publish(
    settings: Any, config: Any, rate: float | None, progress: bool, ids: list[str] | None = None
) -> tuple[int, float]:
    import asyncio

    from aiokafka.errors import KafkaError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from schemas.topics import EVENTS, TOPICS
    from streams.admin import ensure_topics
    from streams.producer import EventProducer, ProducerError
    from streams.simulator import generate, publish

    bootstrap = settings.bootstrap_servers
    try:
        spec = next(t for t in TOPICS if t.name == EVENTS)
        await asyncio.wait_for(
            ensure_topics(bootstrap, settings.partitions, settings.replication_factor, [spec]),
            timeout=15,
        )
    except (KafkaError, OSError, TimeoutError) as err:
        fail(
            f"cannot reach the Kafka broker at {bootstrap} ({type(err).__name__}) — start it "
            "with `agentstream up` or set AGENTSTREAM_KAFKA_URL"
        )
    producer = EventProducer.from_settings(settings, delivery_timeout_ms=30_000)
    bar = Progress(
        TextColumn("simulate"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not progress,
    )
    try:
        with bar:
            task = bar.add_task("events", total=config.max_events)
            await producer.start()
            try:
                result = await publish(
                    generate(config) if ids is None else _noting_ids(generate(config), ids),
                    producer,
                    rate=rate,
                    on_progress=lambda n: bar.update(task, completed=n),
                )
            finally:
                await producer.close()
    except ProducerError as err:
        message = (
            f"{err} ({producer.stats.acknowledged} events were acknowledged before the failure)"
        )
        if ids is not None:  # which of the acknowledged ones survived? (--verify)
            failed = {dict(r.headers).get("ce_id", b"").decode() for r in err.undelivered}
            raise _PublishFailed(message, [i for i in ids if i not in failed]) from None
        fail(f"{message} — check the broker (`agentstream status`)")
    return result.events, result.seconds


class _PublishFailed(Exception):
    """Publishing stopped with an error; ``acknowledged`` are the ids the broker took."""

    def __init__(self, message: str, acknowledged: list[str]) -> None:
        super().__init__(message)
        self.acknowledged = acknowledged


def _noting_ids(events: Iterator[Any], ids: list[str]) -> Iterator[Any]:
    """Yield ``events``, noting each id once the producer has accepted it."""
    for event in events:
        yield event
        ids.append(event.id)  # runs when the next event is asked for: this one was sent


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
