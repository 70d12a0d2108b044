"""The batching consumer every projection runs on.

The loop follows Quix Streams' batching sinks: collect a batch, apply it to the store,
and only then commit the offsets. A crash between apply and commit redelivers the batch,
so ``Projection.apply`` must be idempotent; together that is effectively-once.

Before a rebalance takes partitions away, the buffered batch is flushed and committed,
so the next owner starts exactly where this one stopped.

Records of ``agent-events`` go through the shared admission rule
(:func:`schemas.admission.admit`): what the processor dead-letters (invalid, null key, key
that is not the agent id) is skipped here too, counted (``rejected``) and logged with its
position. The processors own the dead-letter topic for those: every consumer of the topic
meets the same bad record, and only one of them writes it to the DLQ.

A batch whose ``apply`` raises is told apart by the exception
(:func:`schemas.admission.is_infrastructure_error`): a store or broker that is unavailable
is retried with backoff (``retries``, ``last_error``) and never dead-letters anything; any
other error is caused by some record of the batch, so the batch is bisected until the
records that raise alone are found. Those are dead-lettered to ``agent-events-dlq`` with
reason ``processing_error`` (stage ``projection:<name>`` and the exception type), the rest
is applied, and the offsets move past them. No record can stop a projection.

Stopping is prompt even mid-batch: a projection with an ``interrupt()`` method is told when
the runner is stopped, and may then raise :class:`ApplyInterrupted` between pieces of its
batch (memory does, between embedding chunks). That batch is abandoned uncommitted, so its
records are redelivered to the next run; what was already written is re-applied
idempotently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter, Gauge, Histogram

from schemas.admission import admit, is_infrastructure_error, processing_error
from schemas.deadletter import dead_letter, encode_dead_letter
from schemas.errors import InvalidEvent
from schemas.topics import DLQ, EVENTS
from streams.log_identity import LogChange, LogWatch  # the log's identity: a public contract

log = logging.getLogger(__name__)

APPLIED = Counter(
    "agentstream_projection_records_applied", "Records applied to a read model", ["projection"]
)
REJECTED = Counter(
    "agentstream_projection_records_rejected", "Records that failed to decode", ["projection"]
)
RETRIES = Counter(
    "agentstream_projection_apply_retries", "Batches retried after a failed apply", ["projection"]
)
DEAD_LETTERED = Counter(
    "agentstream_projection_records_dead_lettered",
    "Records a projection raised on, sent to the DLQ as processing_error",
    ["projection"],
)
LAG = Gauge(
    "agentstream_projection_lag", "High watermark minus committed offset", ["projection", "topic"]
)
BATCH_SECONDS = Histogram(
    "agentstream_projection_batch_seconds", "Time to apply one batch", ["projection"]
)

Decoder = Callable[[bytes], object]

STOP_FLUSH_S = 10.0  # the last batch on the way out: applied and committed, or left
STOP_CONSUMER_S = 5.0  # closing the consumer (leave group) when the broker may be gone


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded log record with its position."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: object
    timestamp_ms: int


class Projection(Protocol):
    """A read model fed from the log. ``apply`` must be idempotent."""

    name: str
    topics: tuple[str, ...]
    decoders: Mapping[str, Decoder]

    def setup(self) -> None:
        """Create or upgrade the store's schema (called once before consuming)."""

    def apply(self, records: list[Record]) -> None:
        """Durably apply a batch; raise to have the runner retry it."""


@dataclass
class RunnerConfig:
    max_batch: int = 20_000
    max_wait_ms: int = 250
    session_timeout_ms: int = 10_000  # small: Tansu makes each JoinGroup wait half of it
    heartbeat_interval_ms: int = 1_000
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    max_partition_fetch_bytes: int = 4 << 20
    fetch_max_wait_ms: int = 500  # aiokafka's default; Tansu holds each fetch this long:
    # 50 cuts produce->apply latency from ~150 ms to ~15 ms (bench_analytics freshness)


@dataclass
class RunnerStats:
    applied: int = 0
    rejected: int = 0
    batches: int = 0
    retries: int = 0
    last_error: str | None = None
    dead_lettered: int = 0  # records apply raised on (processing_error on the DLQ)
    bisections: int = 0  # batches split to find the records that raise
    log_changes: int = 0  # times the log was found replaced; everything re-applied from 0
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    highwater: dict[TopicPartition, int] = field(default_factory=dict)

    def lag(self) -> int:
        return sum(max(0, hw - self.committed.get(tp, 0)) for tp, hw in self.highwater.items())


class ApplyInterrupted(Exception):
    """Raised by ``apply`` when told to stop mid-batch: the batch stays uncommitted."""


class _FlushOnRevoke(ConsumerRebalanceListener):
    def __init__(self, runner: ProjectionRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._runner.flush()

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._runner.on_assigned(assigned)


class ProjectionRunner:
    """Consumes a projection's topics in its own consumer group and applies batches."""

    def __init__(
        self,
        projection: Projection,
        bootstrap: str,
        group_id: str | None = None,
        config: RunnerConfig | None = None,
    ) -> None:
        self.projection = projection
        self.bootstrap = bootstrap
        self.group_id = group_id or f"agentstream-{projection.name}"
        self.config = config or RunnerConfig()
        self.stats = RunnerStats()
        self.assigned: set[TopicPartition] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._buffer: list[ConsumerRecord] = []
        self._started = asyncio.Event()
        self._stop: asyncio.Event | None = None
        self._dlq: AIOKafkaProducer | None = None
        self.log_watch: LogWatch | None = None  # which log this is (streams/log_identity.py)
        self._next: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self._check_log_now = False
        self._hw_at = 0.0  # when the high watermarks were last noted (monotonic)

    @property
    def stage(self) -> str:
        """The stage name dead letters of this runner carry."""
        return f"projection:{self.projection.name}"

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; flushes and commits what it holds before returning."""
        self._stop = stop
        interrupt = getattr(self.projection, "interrupt", None)
        watcher = asyncio.ensure_future(_call_when_set(stop, interrupt)) if interrupt else None
        await asyncio.to_thread(self.projection.setup)
        cfg = self.config
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            metadata_max_age_ms=5000,  # a restarted broker's re-created partitions, soon
        )
        consumer.subscribe(list(self.projection.topics), listener=_FlushOnRevoke(self))
        self._consumer = consumer
        self.log_watch = LogWatch(self.bootstrap, self.stage)
        await self.log_watch.start()
        await consumer.start()
        self._started.set()
        try:
            while not stop.is_set():
                await self._fill_buffer(stop)
                await self.flush()
        except _Abandoned:
            pass  # stopping while a backend is down: the batch stays uncommitted, redelivered
        finally:
            # bounded: with the broker gone, aiokafka's commit and stop can wait forever,
            # and a stage must still stop on SIGTERM (what is not committed is redelivered)
            with contextlib.suppress(KafkaError, asyncio.CancelledError, _Abandoned, TimeoutError):
                await asyncio.wait_for(self.flush(), STOP_FLUSH_S)
            await _close_consumer(consumer, self.projection.name)
            self._consumer = None
            await self.log_watch.stop()
            if watcher is not None:
                watcher.cancel()
            if self._dlq is not None:
                with contextlib.suppress(KafkaError, OSError):
                    await self._dlq.stop()
                self._dlq = None

    async def _fill_buffer(self, stop: asyncio.Event) -> None:
        assert self._consumer is not None
        cfg = self.config
        deadline = time.monotonic() + cfg.max_wait_ms / 1000
        while len(self._buffer) < cfg.max_batch and not stop.is_set():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            batch = await self._consumer.getmany(
                timeout_ms=remaining_ms, max_records=cfg.max_batch - len(self._buffer)
            )
            for tp, records in batch.items():
                self._buffer.extend(records)
                if records:
                    self._next[tp] = records[-1].offset + 1
            self._note_highwater()
            if await self._log_replaced(idle=not any(batch.values())):
                return

    def _note_highwater(self) -> None:
        assert self._consumer is not None
        self._hw_at = time.monotonic()
        for tp in self._consumer.assignment():
            hw = self._consumer.highwater(tp)  # the fetch high watermark: right even on Tansu
            if hw is not None:
                self.stats.highwater[tp] = hw
        for topic in self.projection.topics:
            LAG.labels(self.projection.name, topic).set(
                sum(
                    max(0, hw - self.stats.committed.get(tp, 0))
                    for tp, hw in self.stats.highwater.items()
                    if tp.topic == topic
                )
            )

    async def _log_replaced(self, idle: bool = False) -> bool:
        """Is the log not the one this runner was reading? Then start over on the new one.

        The embedded broker starts a new log on restart (empty, or restored from the
        archive) and forgets the group's commits. Positions kept from the old log would
        skip records, and lag computed against them would say "caught up" on offsets never
        read. So: drop the buffer, forget positions and commits, and read every assigned
        partition again from its beginning. ``apply`` is idempotent, so re-applying what
        the read model already holds changes nothing. The log's identity is read at
        most once a second while records flow, and at each idle poll: ``caught_up`` only
        counts high watermarks the log was confirmed unchanged after.
        """
        if self.log_watch is None or self._consumer is None:
            return False
        positions = {**self.stats.committed, **self._next}
        force, self._check_log_now = self._check_log_now or idle, False
        change: LogChange | None = await self.log_watch.check(
            positions, self.stats.highwater, force=force
        )
        if change is None:
            return False
        self._buffer.clear()
        self._next.clear()
        self.stats.committed.clear()
        self.stats.highwater.clear()
        self.stats.log_changes += 1
        assigned = list(self._consumer.assignment())
        if assigned:
            await self._consumer.seek_to_beginning(*assigned)
        log.warning(
            "%s: %s; re-reading %d partitions from the start", self.stage, change, len(assigned)
        )
        await self.log_watch.accept()
        return True

    def _decode(self, raw: list[ConsumerRecord]) -> list[Record]:
        out: list[Record] = []
        decoders = self.projection.decoders
        for r in raw:
            decode = decoders[r.topic]
            try:
                if r.topic == EVENTS:  # the admission rule every consumer of the log shares
                    value = admit(r.key, r.value, decode)
                    if isinstance(value, InvalidEvent):
                        raise value
                else:
                    value = decode(r.value)
            except Exception as err:  # any decoder failure is a bad record, not a crash
                self.stats.rejected += 1
                REJECTED.labels(self.projection.name).inc()
                log.warning(
                    "%s: skipping undecodable record %s[%d]@%d: %s",
                    self.projection.name,
                    r.topic,
                    r.partition,
                    r.offset,
                    err,
                )
                continue
            out.append(Record(r.topic, r.partition, r.offset, r.key, value, r.timestamp))
        return out

    async def flush(self) -> None:
        """Apply the buffered batch (retrying until it succeeds), then commit its offsets."""
        if not self._buffer or self._consumer is None:
            return
        raw, self._buffer = self._buffer, []
        records = self._decode(raw)
        started = time.perf_counter()
        failed = await self._apply(records) if records else []
        if failed:
            await self._dead_letter(raw, failed)
            dead = {id(f) for f, _ in failed}
            records = [r for r in records if id(r) not in dead]
        BATCH_SECONDS.labels(self.projection.name).observe(time.perf_counter() - started)
        self.stats.applied += len(records)
        self.stats.batches += 1
        APPLIED.labels(self.projection.name).inc(len(records))
        offsets: dict[TopicPartition, int] = {}
        for r in raw:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as err:
            # Lost the partitions in a rebalance: the new owner re-applies, idempotently.
            log.warning("%s: commit after rebalance failed (%s)", self.projection.name, err)
            return
        self.stats.committed.update(offsets)

    async def _apply(self, records: list[Record]) -> list[tuple[Record, Exception]]:
        """Apply ``records``; return those that raise on their own, with their error.

        Infrastructure errors are retried here with backoff until the backend is back (or
        the runner is stopped). Any other error bisects the batch: ``apply`` is idempotent,
        so applying the halves again is safe, and a batch with k bad records costs about
        ``2 k log2(n)`` extra applies.
        """
        delay = self.config.retry_initial_s
        while True:
            try:
                await asyncio.to_thread(self.projection.apply, records)
                return []
            except ApplyInterrupted as err:
                log.info(
                    "%s: stopped mid-batch (%s); the batch of %d records stays uncommitted",
                    self.projection.name,
                    err,
                    len(records),
                )
                raise _Abandoned from None
            except Exception as err:
                if not is_infrastructure_error(err):
                    return await self._isolate(records, err)
                self.stats.retries += 1
                self.stats.last_error = f"{type(err).__name__}: {err}"
                RETRIES.labels(self.projection.name).inc()
                log.warning(
                    "%s: store or broker unavailable (%s), retrying the batch in %.1fs",
                    self.projection.name,
                    self.stats.last_error,
                    delay,
                )
                await self._backoff(delay)
                delay = min(delay * 2, self.config.retry_max_s)

    async def _isolate(
        self, records: list[Record], err: Exception
    ) -> list[tuple[Record, Exception]]:
        if len(records) == 1:
            # once more on its own, so a passing glitch does not dead-letter a good record
            try:
                await asyncio.to_thread(self.projection.apply, records)
                return []
            except ApplyInterrupted:
                raise _Abandoned from None
            except Exception as again:
                if is_infrastructure_error(again):
                    return await self._apply(records)
                return [(records[0], again)]
        self.stats.bisections += 1
        mid = len(records) // 2
        log.warning(
            "%s: apply raised %s on a batch of %d; bisecting to find the records that raise",
            self.projection.name,
            type(err).__name__,
            len(records),
        )
        return await self._apply(records[:mid]) + await self._apply(records[mid:])

    async def _backoff(self, delay: float) -> None:
        """Sleep ``delay``, or give up on the batch (uncommitted) when the runner stops."""
        stop = self._stop
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            raise _Abandoned

    async def _dead_letter(
        self, raw: list[ConsumerRecord], failed: list[tuple[Record, Exception]]
    ) -> None:
        """Write each failed record to the DLQ (acknowledged) before its offset is committed."""
        by_pos = {(r.topic, r.partition, r.offset): r for r in raw}
        values: list[tuple[bytes | None, bytes]] = []
        for rec, err in failed:
            original = by_pos[(rec.topic, rec.partition, rec.offset)]
            letter = dead_letter(
                processing_error(self.stage, err).as_dict(),
                topic=rec.topic,
                partition=rec.partition,
                offset=rec.offset,
                timestamp_ms=rec.timestamp_ms,
                key=rec.key,
                value=original.value,
                rejected_by=self.group_id,
                stage=self.stage,
                error_type=type(err).__name__,
            )
            values.append((rec.key, encode_dead_letter(letter)))
            log.error(
                "%s: %s[%d]@%d raised %r on its own: dead-lettered as processing_error",
                self.projection.name,
                rec.topic,
                rec.partition,
                rec.offset,
                err,
            )
        delay = self.config.retry_initial_s
        while True:
            try:
                if self._dlq is None:
                    producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
                    await producer.start()
                    self._dlq = producer
                acks = [await self._dlq.send(DLQ, value, key=key) for key, value in values]
                await asyncio.gather(*acks)
                break
            except (KafkaError, OSError, TimeoutError) as err:
                self.stats.last_error = f"dead-lettering: {type(err).__name__}: {err}"
                log.warning("%s: DLQ write failed (%s), retrying", self.projection.name, err)
                if self._dlq is not None:
                    with contextlib.suppress(KafkaError, OSError):
                        await self._dlq.stop()
                    self._dlq = None
                await self._backoff(delay)
                delay = min(delay * 2, self.config.retry_max_s)
        self.stats.dead_lettered += len(values)
        DEAD_LETTERED.labels(self.projection.name).inc(len(values))

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Learn where the group stands, so lag and ``caught_up`` are right after a restart."""
        self.assigned = set(assigned)
        self._check_log_now = True  # a rebalance: also what a restarted broker causes
        assert self._consumer is not None
        for tp in assigned:
            committed = await self._consumer.committed(tp)
            if committed is not None:
                self.stats.committed[tp] = committed

    async def wait_started(self, timeout_s: float = 30.0) -> None:
        await asyncio.wait_for(self._started.wait(), timeout_s)

    def caught_up(self) -> bool:
        """Every assigned partition has been fetched and committed up to its high watermark."""
        if not self.assigned or self._buffer:
            return False
        if self.log_watch is not None and self.log_watch.confirmed_at < self._hw_at:
            return False  # not yet known to be the same log as those watermarks came from
        hw, committed = self.stats.highwater, self.stats.committed
        return all(tp in hw and committed.get(tp, 0) >= hw[tp] for tp in self.assigned)


async def _close_consumer(consumer: AIOKafkaConsumer, name: str) -> None:
    """Stop ``consumer`` within STOP_CONSUMER_S, even with the broker gone.

    aiokafka 0.14's fetcher, closed while its broker is unreachable, lets the cancellation
    of its own pending fetch escape ``stop()`` as a CancelledError; that one is not ours.
    """
    try:
        await asyncio.wait_for(consumer.stop(), STOP_CONSUMER_S)
    except TimeoutError:
        log.warning("%s: the consumer did not close in %.0fs; leaving it", name, STOP_CONSUMER_S)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("%s: the consumer's close was cut short (broker gone)", name)


async def _call_when_set(event: asyncio.Event, fn: Callable[[], object]) -> None:
    """Call ``fn`` once ``event`` is set (the projection's ``interrupt``)."""
    await event.wait()
    fn()


class _Abandoned(Exception):
    """The runner was stopped while a backend was down: leave the batch uncommitted."""


async def run_projection(
    projection: Projection,
    bootstrap: str,
    stop: asyncio.Event,
    group_id: str | None = None,
    config: RunnerConfig | None = None,
) -> RunnerStats:
    """Run one projection until ``stop`` is set; return its stats."""
    runner = ProjectionRunner(projection, bootstrap, group_id, config)
    await runner.run(stop)
    return runner.stats


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05
) -> bool:
    """Poll ``predicate`` until true or the deadline; the test-and-demo way to wait."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval_s)
    return predicate()
