"""Read the latest published state per agent from the compacted ``agent-state`` topic.

Anyone may read it (CLI, web UI, tests). The end of a partition is taken from the *fetch*
high watermark, not ``end_offsets``: Tansu reports end offsets too low (LOCAL_STACK.md).
Nothing is ever compacted on Tansu, so reading a partition means reading all of its
history; latest record per key wins.
"""

from __future__ import annotations

import logging
import time

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.state import AgentState, decode_state
from schemas.topics import STATE
from streams.producer import partition_for_key

log = logging.getLogger(__name__)


def _consumer(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        request_timeout_ms=10000,
        max_partition_fetch_bytes=8 << 20,
    )


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    # topics() fetches metadata for all topics without naming one: on Tansu, naming a
    # missing topic in a metadata request would create it with 4 partitions
    if topic not in await consumer.topics():
        raise LookupError(f"topic {topic} does not exist")
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise LookupError(f"topic {topic} does not exist")
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def _highwaters(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float
) -> dict[TopicPartition, int]:
    """Fetch once from each partition's current position; the response carries the HW."""
    deadline = time.monotonic() + timeout_s
    hw: dict[TopicPartition, int] = {}
    while len(hw) < len(tps):
        await consumer.getmany(*tps, timeout_ms=100, max_records=1)
        for tp in tps:
            value = consumer.highwater(tp)
            if value is not None:
                hw[tp] = value
        if time.monotonic() > deadline:
            missing = [tp for tp in tps if tp not in hw]
            raise TimeoutError(f"no fetch response for {missing} within {timeout_s}s")
    return hw


async def fetch_high_watermarks(
    bootstrap: str, topic: str, timeout_s: float = 15.0
) -> dict[int, int]:
    """Partition -> high watermark (offset of the next record), from fetch responses."""
    consumer = _consumer(bootstrap)
    try:
        await consumer.start()
        tps = await _partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        hw = await _highwaters(consumer, tps, timeout_s)
        return {tp.partition: v for tp, v in hw.items()}
    finally:
        await consumer.stop()


async def _read_latest(
    bootstrap: str,
    topic: str,
    only: set[bytes] | None,
    partitions: list[int] | None,
    timeout_s: float,
) -> tuple[dict[str, AgentState], int]:
    consumer = _consumer(bootstrap)
    states: dict[str, AgentState] = {}
    invalid = 0
    try:
        await consumer.start()
        tps = await _partitions(consumer, topic)
        if partitions is not None:
            tps = [tp for tp in tps if tp.partition in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        hw = await _highwaters(consumer, tps, timeout_s)
        await consumer.seek_to_beginning(*tps)
        todo = {tp: end for tp, end in hw.items() if end > 0}
        deadline = time.monotonic() + timeout_s
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=200, max_records=10000)
            for tp, msgs in batches.items():
                end = todo.get(tp, 0)
                for m in msgs:
                    if m.offset >= end:
                        break
                    if m.key is None or (only is not None and m.key not in only):
                        continue
                    agent = m.key.decode("utf-8", "replace")
                    if m.value is None:
                        states.pop(agent, None)
                        continue
                    try:
                        states[agent] = decode_state(m.value)
                    except msgspec.DecodeError as err:
                        invalid += 1
                        log.warning(
                            "%s[%d]@%d is not an AgentState: %s", topic, tp.partition, m.offset, err
                        )
            for tp in [tp for tp, end in todo.items() if await consumer.position(tp) >= end]:
                del todo[tp]
            if todo and time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to the high watermark within {timeout_s}s")
    finally:
        await consumer.stop()
    return states, invalid


async def read_states(
    bootstrap: str, topic: str = STATE, timeout_s: float = 60.0
) -> dict[str, AgentState]:
    """Latest state of every agent, as of the high watermark when the read started."""
    states, _ = await _read_latest(bootstrap, topic, None, None, timeout_s)
    return states


async def read_state(
    bootstrap: str, agent_id: str, topic: str = STATE, timeout_s: float = 30.0
) -> AgentState | None:
    """Latest state of one agent (reads only the partition its key maps to), or None."""
    key = agent_id.encode()
    consumer = _consumer(bootstrap)
    try:
        await consumer.start()
        parts = [tp.partition for tp in await _partitions(consumer, topic)]
    finally:
        await consumer.stop()
    partition = partition_for_key(key, parts)
    states, _ = await _read_latest(bootstrap, topic, {key}, [partition], timeout_s)
    return states.get(agent_id)
