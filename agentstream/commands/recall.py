"""``agentstream recall "text"`` and ``agentstream memory run|status``.

The logic lives in :mod:`projections.memory`; this module reads the settings, turns the
options into a :func:`~projections.memory.recall.recall` call, prints a table or JSON, and
reports every error in one line. torch, sentence-transformers and chromadb are imported
inside the commands so ``agentstream --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from typing import Annotated, Any

import typer

from agentstream.console import console, fail, settings_or_exit

memory_app = typer.Typer(
    name="memory",
    help="The episodic memory projection (agent-episodes -> Chroma).",
    no_args_is_help=True,
)


def _store(settings: Any, create: bool = False) -> Any:
    """The configured store, or a one-line error naming the fix."""
    from projections.memory.embedding import EmbeddingError
    from projections.memory.recall import default_store
    from projections.memory.store import MemoryStoreError

    try:
        return default_store(settings, create=create)
    except (EmbeddingError, MemoryStoreError) as err:
        fail(str(err))


def recall(
    text: Annotated[str, typer.Argument(help="the situation to find similar episodes for")],
    agent: Annotated[str | None, typer.Option("--agent", help="only this agent's episodes")] = None,
    tool: Annotated[str | None, typer.Option("--tool", help="only episodes with this tool")] = None,
    outcome: Annotated[
        str | None, typer.Option("--outcome", help="success or failure", show_default=False)
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="15m, 2h, 7d, 1w back from now, or an ISO 8601 time"),
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="only this tenant")] = None,
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="how many episodes")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Recall the past episodes whose situations are most similar to TEXT.

    Asks Chroma directly: a one-shot command does not load the in-process exact index
    that recall() uses in long-lived processes (loading it costs far more than one query).
    """
    from projections.memory.recall import OUTCOMES, parse_since
    from projections.memory.recall import recall as recall_episodes
    from projections.memory.store import MemoryStoreError

    if outcome is not None and outcome not in OUTCOMES:
        fail(f"--outcome must be success or failure, got {outcome!r}")
    try:
        since_at = parse_since(since) if since else None
    except ValueError as err:
        fail(str(err))
    if not text.strip():
        fail('recall needs a situation text, e.g. agentstream recall "the deploy timed out"')
    settings = settings_or_exit()
    store = _store(settings)
    try:
        episodes = recall_episodes(
            text,
            k=k,
            agent=agent,
            tool=tool,
            outcome=outcome,  # type: ignore[arg-type]
            since=since_at,
            tenant=tenant,
            store=store,
        )
    except MemoryStoreError as err:
        fail(str(err))
    if as_json:
        print(json.dumps([e.as_dict() for e in episodes], indent=2))
        return
    if not episodes:
        console.print("no matching episodes", highlight=False)
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"episodes similar to: {text[:80]}", title_justify="left")
    table.add_column("#", style="dim", no_wrap=True)
    table.add_column("dist", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("tool / agent / time (UTC)", overflow="fold")
    table.add_column("situation and lesson", overflow="fold", ratio=1)
    for i, e in enumerate(episodes, 1):
        colour = "green" if e.outcome == "success" else "red"
        text_cell = escape(e.situation[:300])  # agent text is data, not rich markup
        if e.lesson:
            text_cell += f"\n[green]lesson:[/] {escape(e.lesson[:300])}"
        table.add_row(
            str(i),
            f"{e.distance:.3f}",
            f"[{colour}]{e.outcome}[/]",
            f"{escape(e.tool)}\n{escape(e.agent_id)}\n[dim]{e.time:%Y-%m-%d %H:%M:%S}[/]",
            text_cell,
        )
    console.print(table)


@memory_app.command("run")
def memory_run(
    group: Annotated[
        str, typer.Option("--group", help="consumer group (its own: never blocks the others)")
    ] = "agentstream-memory",
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="episodes per batch, at most")
    ] = 512,
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run the memory projection until stopped: agent-episodes -> Chroma, with lag reports."""
    import asyncio

    settings = settings_or_exit()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    store = _store(settings, create=True)
    runner = asyncio.run(_run_projection(settings, store, group, max_batch))
    p = runner.projection.stats
    console.print(
        f"memory: {p.written} episodes written, {p.unchanged} unchanged, {p.stale} older "
        f"revisions skipped; {runner.stats.rejected} undecodable; lag {runner.stats.lag()}; "
        f"{store.count()} episodes in {store.name}",
        highlight=False,
        soft_wrap=True,
    )


async def _run_projection(settings: Any, store: Any, group: str, max_batch: int) -> Any:
    import asyncio
    from dataclasses import replace

    from aiokafka.errors import KafkaConnectionError, KafkaError

    from projections.memory.projection import MEMORY_RUNNER_CONFIG, MemoryProjection
    from projections.memory.store import MemoryStoreError
    from projections.runner import ProjectionRunner

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config = replace(MEMORY_RUNNER_CONFIG, max_batch=max_batch)
    runner = ProjectionRunner(MemoryProjection(store), settings.bootstrap_servers, group, config)
    log = logging.getLogger("agentstream.memory")
    task = asyncio.create_task(runner.run(stop))
    try:
        reported = (-1, -1)
        while not task.done():
            await asyncio.wait({task}, timeout=10)
            s = runner.stats
            if not task.done() and (s.applied, s.lag()) != reported:
                reported = (s.applied, s.lag())
                log.info("applied %d episodes in %d batches, lag %d", s.applied, s.batches, s.lag())
        task.result()
    except (KafkaConnectionError, OSError) as err:
        fail(
            f"memory: cannot reach the Kafka broker at {settings.bootstrap_servers} "
            f"({type(err).__name__}) — start it with `agentstream up` or set AGENTSTREAM_KAFKA_URL"
        )
    except (KafkaError, MemoryStoreError) as err:
        fail(f"memory: {err}")
    return runner


@memory_app.command("status")
def memory_status(
    group: Annotated[str, typer.Option("--group", help="the projection's consumer group")] = (
        "agentstream-memory"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Where the memory stands: store, model, episode count, and the projection's lag.

    Exits 1 if the store or the broker cannot be read."""
    import asyncio

    from projections.memory.embedding import EmbeddingError
    from projections.memory.recall import default_store
    from projections.memory.store import MemoryStoreError

    settings = settings_or_exit()
    info: dict[str, Any] = {
        "location": settings.memory_location,
        "collection": settings.memory_collection,
    }
    try:
        store = default_store(settings)
        info["embedding_model"] = store.embedder.model_id
        info["episodes"] = store.count() if store.exists() else 0
    except (EmbeddingError, MemoryStoreError) as err:
        info["episodes"] = None
        info["store_error"] = str(err)
    info["group"] = group
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        committed, highwater = asyncio.run(_group_offsets(settings.bootstrap_servers, group))
        info["lag"] = sum(max(0, hw - committed.get(p, 0)) for p, hw in highwater.items())
        info["topic_records"] = sum(highwater.values())
    except Exception as err:  # the store part is still worth printing
        info["lag"] = None
        info["broker_error"] = f"{type(err).__name__}: {err}"[:200]
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            console.print(f"{key:<16} {value}", highlight=False, soft_wrap=True)
    if "store_error" in info or "broker_error" in info:
        raise typer.Exit(1)


async def _group_offsets(bootstrap: str, group: str) -> tuple[dict[int, int], dict[int, int]]:
    """Committed offsets of ``group`` and fetch high watermarks of agent-episodes."""
    import asyncio

    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from schemas.topics import EPISODES
    from streams.state_reader import fetch_high_watermarks

    deadline = time.monotonic() + 15
    highwater = await asyncio.wait_for(fetch_high_watermarks(bootstrap, EPISODES), 15)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        # Tansu drops the connection when no partitions are named (LOCAL_STACK.md)
        offsets = await asyncio.wait_for(
            admin.list_consumer_group_offsets(
                group, partitions=[TopicPartition(EPISODES, p) for p in highwater]
            ),
            max(1.0, deadline - time.monotonic()),
        )
    finally:
        await admin.close()
    committed = {tp.partition: m.offset for tp, m in offsets.items() if m.offset >= 0}
    return committed, highwater


def register(app: typer.Typer) -> None:
    app.command("recall")(recall)
    app.add_typer(memory_app, name="memory")
