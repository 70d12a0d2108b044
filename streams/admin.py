"""Topic administration. Topics are created explicitly: Tansu auto-creates any topic a
metadata request names, with 4 partitions, which would silently get the count wrong."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from schemas.topics import TOPICS, TopicSpec


async def wait_for_broker(bootstrap: str, deadline_s: float = 15.0) -> None:
    """Until the broker answers a metadata request, or raise with the last error."""
    end = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < end:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.describe_cluster()
            return
        except (KafkaError, OSError) as err:
            last = err
            await asyncio.sleep(0.1)
        finally:
            await admin.close()
    raise KafkaConnectionError(f"broker at {bootstrap} not ready after {deadline_s}s: {last!r}")


async def ensure_topics(
    bootstrap: str,
    partitions: int,
    replication_factor: int = 1,
    specs: Iterable[TopicSpec] = TOPICS,
) -> dict[str, int]:
    """Create missing topics; return name -> partition count as the broker reports it."""
    specs = list(specs)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(s.name, partitions, replication_factor, topic_configs=s.topic_config())
            for s in specs
            if s.name not in existing
        ]
        if new:
            # a concurrent `up` may win the race; the describe below tells the truth
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        described = await admin.describe_topics([s.name for s in specs])
        return {t["topic"]: len(t["partitions"]) for t in described}
    finally:
        await admin.close()
