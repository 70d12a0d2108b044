"""A worker that must re-emit a whole log (``agentstream down && up``) does it in few round trips.

After the embedded broker is replaced, the derived topics of the new log start empty and the
worker re-emits every output from offset 0. The chaos suite's ``down-up`` scenario on a
~195k-event log did not converge within 240 s: each worker batch's outputs went out as
dozens of 16 KB record batches (aiokafka's default), and aiokafka sends one request per
broker at a time, each 0.1-0.8 s through the stack's gate (docs/broker-gaps.md). These
tests pin the cause on the real broker: a batch's outputs leave as one record batch per
topic-partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from conftest import HOST, Broker

from agentstream.processes import free_port
from agentstream.settings import Settings, load_settings
from agentstream.stack import Stack
from schemas.codec import decode_event, encode_event
from schemas.envelope import Event
from schemas.topics import EPISODES, EVENTS, STATE, VIOLATIONS
from streams.archive import archive_state
from streams.processor import KafkaProcessor, OutRecord, Publisher, processor_progress
from streams.producer import EventProducer, partition_for_key
from streams.reducer import fold
from streams.simulator import SimulationConfig, generate
from streams.state_reader import fetch_high_watermarks, read_states

pytestmark = pytest.mark.integration


def _outputs(agents: int, per_agent: int, size: int) -> list[OutRecord]:
    """Outputs shaped like a re-fold's: many derived records and a state per agent."""
    out: list[OutRecord] = []
    for a in range(agents):
        key = f"agent-{a}".encode()
        for i in range(per_agent):
            topic = EPISODES if i % 4 else VIOLATIONS
            out.append(OutRecord(topic, key, (f'{{"i":{i},"pad":"' + "x" * size + '"}').encode()))
        out.append(OutRecord(STATE, key, b'{"agent":"' + key + b'"}'))
    return out


async def test_a_batch_of_outputs_goes_out_as_one_record_batch_per_topic_partition(
    kafka: Broker,
) -> None:
    publisher = Publisher(kafka.bootstrap)
    await publisher.start()
    try:
        records = _outputs(agents=8, per_agent=300, size=600)  # ~1.5 MB, ~190 KB per agent
        futures = await publisher.send(records)
        parts = await publisher._partitions_of(EPISODES)
        destinations = {(r.topic, partition_for_key(r.key, parts)) for r in records}
        # one batch (one future) per topic-partition: with 16 KB batches this was ~110
        assert len(futures) == len(destinations)
        for f in futures:
            await f
    finally:
        await publisher.stop()
    # and every record arrived
    got = 0
    for topic in (EPISODES, VIOLATIONS, STATE):
        got += sum((await fetch_high_watermarks(kafka.bootstrap, topic)).values())
    assert got == len(records)


async def test_an_output_larger_than_a_batch_still_goes_out_alone(kafka: Broker) -> None:
    publisher = Publisher(kafka.bootstrap, max_batch_bytes=64 << 10)
    await publisher.start()
    try:
        big = OutRecord(EPISODES, b"agent-0", b"y" * (200 << 10))  # 200 KB > the 64 KB batch
        small = _outputs(agents=1, per_agent=3, size=10)
        futures = await publisher.send([big, *small])
        for f in futures:
            await f
    finally:
        await publisher.stop()
    hw = await fetch_high_watermarks(kafka.bootstrap, EPISODES)
    assert sum(hw.values()) == 1 + sum(1 for r in small if r.topic == EPISODES)


# --- the whole stack: a worker left running across `agentstream down && up` ---------------


class CountingPublisher(Publisher):
    """The worker's own publisher, noting how many record batches each batch's outputs took."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap)
        self.sends: list[tuple[int, int, int]] = []  # (records, record batches, topic-partitions)

    async def send(self, records: Iterable[OutRecord]) -> list[asyncio.Future[Any]]:
        records = list(records)
        futures = await super().send(records)
        destinations = {
            (r.topic, partition_for_key(r.key, await self._partitions_of(r.topic)) if r.key else 0)
            for r in records
        }
        self.sends.append((len(records), len(futures), len(destinations)))
        return futures


def _stack_settings(data_dir: Path) -> Settings:
    return load_settings(
        data_dir=data_dir,
        kafka_url=f"kafka://{HOST}:{free_port(HOST)}",
        graph_url=f"falkordb://{HOST}:{free_port(HOST)}",
        metrics_port_base=0,
        worker_enabled=True,
        worker_engine="aiokafka",
        projections_enabled=False,
        ui_enabled=False,
        otlp_enabled=False,
        archive_flush_s=0.3,
    )


async def _until(pred: Callable[[], Awaitable[bool]], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not await pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


async def _caught_up(bootstrap: str, total: int) -> bool:
    try:
        progress = await processor_progress(bootstrap)
    except Exception:  # the broker is restarting
        return False
    return progress.caught_up and sum(progress.highwater.values()) == total


async def test_a_worker_left_running_across_stack_down_and_up_re_emits_in_few_batches_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each worker batch's re-emitted outputs went out as dozens of 16 KB batches."""
    monkeypatch.setenv("AGENTSTREAM_CONFIG", str(tmp_path / "no-such-config.toml"))
    settings = _stack_settings(tmp_path / "data")
    stack = Stack(settings)
    bootstrap = settings.bootstrap_servers
    first = list(generate(SimulationConfig(agents=6, runs=None, seed=41, max_events=12_000)))
    second = list(generate(SimulationConfig(agents=6, runs=None, seed=42, max_events=1_000)))
    left = KafkaProcessor(bootstrap, session_timeout_s=6)  # the worker nobody restarts
    counting = left.publisher = CountingPublisher(bootstrap)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(stack.up)
        async with EventProducer(bootstrap, linger_ms=5) as producer:
            await producer.send_many(first)
        task = asyncio.create_task(left.run(stop))
        await _until(lambda: _caught_up(bootstrap, len(first)), 120, "the first log processed")
        archive = settings.archive_location

        async def archived() -> bool:
            last = archive_state(archive).last_offsets
            return sum(n + 1 for n in last.values()) == len(first)

        await _until(archived, 60, "the first log archived")

        await asyncio.to_thread(stack.down)  # the left-running worker keeps its positions
        counting.sends.clear()
        await asyncio.to_thread(stack.up)  # a fresh broker, restored from the archive
        async with EventProducer(bootstrap, linger_ms=5) as producer:
            await producer.send_many(second)
        truth = first + second
        expected, _ = fold(truth)

        async def exact() -> bool:
            return await _caught_up(bootstrap, len(truth)) and (
                await read_states(bootstrap) == expected
            )

        await _until(exact, 150, "agent states equal to a clean fold of the new log")
        assert not task.done()
        assert left.stats.log_changes >= 1  # it noticed the new log instead of skipping it
        # it re-emitted what it folds from the new log, one record batch per topic-partition
        reemitted = [s for s in counting.sends if s[0] > 0]
        assert sum(n for n, _, _ in reemitted) > 500
        assert all(batches <= parts for _, batches, parts in reemitted), reemitted
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 30)
        await asyncio.to_thread(stack.down)


# --- the whole stack: `down` while a producer writes ---------------------------------------


async def _log_ids(bootstrap: str) -> set[str]:
    """Every event id in agent-events, read up to the fetch high watermarks."""
    hw = await fetch_high_watermarks(bootstrap, EVENTS)
    todo = {TopicPartition(EVENTS, p): end for p, end in hw.items() if end}
    ids: set[str] = set()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(list(todo))
        await consumer.seek_to_beginning(*todo)
        end = time.monotonic() + 60
        while todo and time.monotonic() < end:
            for tp, msgs in (await consumer.getmany(*todo, timeout_ms=300)).items():
                ids.update(decode_event(m.value).id for m in msgs if m.offset < todo.get(tp, 0))
            for tp in [tp for tp, n in todo.items() if await consumer.position(tp) >= n]:
                del todo[tp]
        assert not todo, f"could not read {EVENTS} to its end: {todo}"
    finally:
        await consumer.stop()
    return ids


async def test_down_while_a_producer_writes_loses_no_acknowledged_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the gate stayed open until after the archiver had stopped, so events
    acknowledged in between were lost with the in-memory broker."""
    monkeypatch.setenv("AGENTSTREAM_CONFIG", str(tmp_path / "no-such-config.toml"))
    settings = _stack_settings(tmp_path / "data").model_copy(update={"worker_enabled": False})
    stack = Stack(settings)
    bootstrap = settings.bootstrap_servers
    events = iter(generate(SimulationConfig(agents=4, runs=None, seed=43, max_events=100_000)))
    acked: set[str] = set()
    stop = asyncio.Event()

    async def produce() -> None:
        """acks=all, 50 at a time, retrying what was not acknowledged (the broker restarts)."""
        producer: AIOKafkaProducer | None = None
        pending: list[Event] = []
        while not stop.is_set():
            pending = pending or [e for _, e in zip(range(50), events, strict=False)]
            try:
                if producer is None:
                    producer = AIOKafkaProducer(
                        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000
                    )
                    await producer.start()
                futures = [
                    await producer.send(EVENTS, encode_event(e), key=e.agentid.encode())
                    for e in pending
                ]
                results = await asyncio.gather(*futures, return_exceptions=True)
            except Exception:  # the gate is closed: start over with a new client
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(producer.stop(), 5)
                producer = None
                await asyncio.sleep(0.2)  # back off before reconnecting (not a sync point)
                continue
            failed = [e for e, r in zip(pending, results, strict=True) if isinstance(r, Exception)]
            acked.update(e.id for e, r in zip(pending, results, strict=True) if e not in failed)
            pending = failed
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    task: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(stack.up)
        task = asyncio.create_task(produce())
        await _until(lambda: _true(len(acked) >= 1_000), 60, "events flowing")
        await asyncio.to_thread(stack.down)  # the producer keeps writing through it
        during = len(acked)
        await asyncio.to_thread(stack.up)
        await _until(lambda: _true(len(acked) >= during + 500), 90, "events flowing again")
        stop.set()
        await asyncio.wait_for(task, 30)
        missing = acked - await _log_ids(bootstrap)
        assert not missing, f"{len(missing)} acknowledged events are not in the restored log"
    finally:
        stop.set()
        if task is not None and not task.done():
            await asyncio.wait_for(task, 30)
        await asyncio.to_thread(stack.down)


async def _true(value: bool) -> bool:
    return value
