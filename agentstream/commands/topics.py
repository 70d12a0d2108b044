"""``agentstream topics create``: create the AgentStream topics on any Kafka-protocol broker.

`agentstream up` does this for the embedded broker; against an external Kafka (the
docker-compose stack, a cluster) run this once, with the partition count you want.
"""

from __future__ import annotations

from typing import Annotated

import typer

from agentstream.console import console, fail, settings_or_exit

topics_app = typer.Typer(help="Create and inspect the AgentStream topics.", no_args_is_help=True)


@topics_app.command("create")
def create(
    partitions: Annotated[
        int | None, typer.Option(min=1, help="partitions per topic (default: settings)")
    ] = None,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for the broker")] = 60.0,
) -> None:
    """Create missing topics (existing ones are left as they are) and show partition counts."""
    import asyncio

    from aiokafka.errors import KafkaError

    from schemas.topics import TOPICS
    from streams.admin import ensure_topics, wait_for_broker

    settings = settings_or_exit()
    wanted = partitions or settings.partitions
    bootstrap = settings.bootstrap_servers

    async def go() -> dict[str, int]:
        await wait_for_broker(bootstrap, deadline_s=timeout)
        return await ensure_topics(bootstrap, wanted, settings.replication_factor)

    try:
        counts = asyncio.run(go())
    except KafkaError as err:
        fail(f"broker: {err} — is Kafka reachable at {bootstrap}? (AGENTSTREAM_KAFKA_URL)")
    from rich.table import Table

    table = Table("topic", "partitions", "compacted")
    for spec in TOPICS:
        table.add_row(spec.name, str(counts.get(spec.name, "?")), "yes" if spec.compacted else "")
    console.print(table)
    mismatched = [n for n, c in counts.items() if c != wanted]
    if mismatched:
        fail(
            f"topics: {', '.join(mismatched)} already exist with a different partition count "
            f"than {wanted} — keep it, or recreate them"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(topics_app, name="topics")
