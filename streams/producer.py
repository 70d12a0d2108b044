"""The producer SDK: publish AgentStream events to Kafka, fast, bounded, never silently.

Wire format (see docs/producing.md): topic ``agent-events``; key = the agent id (UTF-8), so
one agent's events land on one partition, in order; value = the event as CloudEvents JSON
(structured mode, :func:`schemas.codec.encode_event`); headers ``ce_type``, ``ce_id`` and
``content-type``; record timestamp = the event's ``time`` in epoch milliseconds.

Why not one ``AIOKafkaProducer.send()`` per event: that path costs ~12 µs of Python per
record (70-85k/s on Tansu). :class:`EventProducer` keeps one lane per partition: ``send``
encodes the event and appends it straight into the lane's open batch (aiokafka's
``create_batch`` builder, which copies the bytes), and the lane's pump hands full or
lingered batches to ``send_batch`` in order; while one batch is in flight the next one
fills. The partition of a key is computed exactly like aiokafka's default partitioner
(murmur2 of the key bytes), so per-agent ordering is the same as on the plain path.

Guarantees:

- at most ``buffer_events`` events are accepted but not yet acknowledged; ``send`` waits
  for room (backpressure);
- every accepted event is either acknowledged by the broker or reported in a
  :class:`ProducerError` (raised by the next ``send``/``flush``/``close``) that carries the
  undelivered records; nothing is dropped without an error;
- a broker that does not answer makes ``start``/``send``/``flush`` raise
  :class:`ProducerError` after ``delivery_timeout_ms``, naming the broker address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from schemas.codec import DEFAULT_MAX_EVENT_BYTES
from schemas.envelope import EVENT_CLASSES, Event
from schemas.errors import InvalidEvent, RejectReason
from schemas.topics import EVENTS

if TYPE_CHECKING:
    from agentstream.settings import Settings

log = logging.getLogger(__name__)

CONTENT_TYPE = b"application/cloudevents+json; charset=utf-8"
"""Value of the ``content-type`` header: CloudEvents structured mode, JSON."""

Acks = Literal["all", "1", "0", 1, 0, -1]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"] | None
Headers = tuple[tuple[str, bytes], ...]

_T = TypeVar("_T")


class ProducerError(RuntimeError):
    """Events could not be delivered (or accepted); says which broker and carries the records.

    ``undelivered`` holds the records that were accepted earlier and are now known not to
    be acknowledged: the caller may retry them with :meth:`EventProducer.send_raw`.
    """

    def __init__(
        self, message: str, *, bootstrap: str, undelivered: Sequence[OutgoingRecord] = ()
    ) -> None:
        super().__init__(message)
        self.bootstrap = bootstrap
        self.undelivered = list(undelivered)


class OutgoingRecord(NamedTuple):
    """One Kafka record as the SDK writes it (and hands back in ProducerError.undelivered)."""

    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int | None


@dataclass(slots=True)
class ProducerStats:
    """Counters since start: accepted = acknowledged + failed + in flight."""

    accepted: int = 0
    acknowledged: int = 0
    failed: int = 0

    @property
    def in_flight(self) -> int:
        return self.accepted - self.acknowledged - self.failed


class _Batch(NamedTuple):
    """A closed batch waiting to ship, and how many records it holds."""

    builder: BatchBuilder
    count: int


@dataclass(slots=True)
class _Lane:
    """One partition: the open batch ``send`` appends to, full batches waiting to ship,
    and the pump task that ships them in order."""

    partition: int
    builder: BatchBuilder | None = None
    open_count: int = 0  # records in ``builder``
    full: deque[_Batch] = field(default_factory=deque)
    accepted: int = 0  # records ever appended
    completed: int = 0  # records ever acknowledged or failed
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def records_of(builder: BatchBuilder) -> list[OutgoingRecord]:
    """Read the records back out of a batch (only needed when it failed)."""
    out: list[OutgoingRecord] = []
    records = MemoryRecords(bytes(builder._build()))
    while (batch := records.next_batch()) is not None:
        for r in batch:
            out.append(OutgoingRecord(r.key, r.value, tuple(r.headers), r.timestamp))
    return out


_CE_TYPE: dict[type, tuple[str, bytes]] = {
    cls: ("ce_type", str(cls.__struct_config__.tag).encode()) for cls in EVENT_CLASSES
}
_CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_encode = msgspec.json.Encoder().encode  # what schemas.codec.encode_event does, one call less


def headers_for(event: Event) -> Headers:
    """The headers every event carries (routing without parsing the value)."""
    # the type header comes from a per-class table: ``event.type`` costs ~3 µs per call
    return (_CE_TYPE[type(event)], ("ce_id", event.id.encode()), _CONTENT_TYPE_HEADER)


def event_record(event: Event, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> OutgoingRecord:
    """Encode ``event`` as the record the SDK writes; refuses values consumers would reject."""
    value = _encode(event)
    if len(value) > max_event_bytes:
        raise _too_large(event, len(value), max_event_bytes)
    return OutgoingRecord(
        event.agentid.encode(), value, headers_for(event), (event.time - _EPOCH) // _MS
    )


def _too_large(event: Event, size: int, limit: int) -> InvalidEvent:
    return InvalidEvent(
        RejectReason.TOO_LARGE, f"event {event.id} is {size} bytes, limit is {limit}"
    )


def partition_for_key(key: bytes, partitions: Sequence[int]) -> int:
    """aiokafka's DefaultPartitioner for a non-null key (murmur2, like the Java client)."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


def compression_available(compression: Compression) -> bool:
    """lz4, snappy and zstd need cramjam in aiokafka 0.14; gzip and none always work."""
    if compression in (None, "none", "gzip"):
        return True
    from aiokafka.codec import has_lz4

    return has_lz4()  # the three share one backend (cramjam)


def _acks(acks: Acks) -> int | str:
    return {"all": "all", "1": 1, "0": 0, -1: "all", 1: 1, 0: 0}[acks]


class EventProducer:
    """Async producer of AgentStream events. Use ``async with EventProducer(...) as p``."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = EVENTS,
        acks: Acks = "all",
        compression: Compression = "none",
        linger_ms: int = 5,
        max_batch_bytes: int = 1 << 20,
        enable_idempotence: bool = False,
        buffer_events: int = 100_000,
        delivery_timeout_ms: int = 30_000,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        client_id: str | None = None,
        on_acked: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """``on_acked(topic, partition, end)`` runs for every acknowledged batch before
        anyone waiting on it (``flush``) resumes: the stack's ingest parts record it in
        the ack ledger (:mod:`streams.ack_ledger`)."""
        if buffer_events < 1:
            raise ValueError("buffer_events must be >= 1")
        if not compression_available(compression):
            raise ValueError(
                f"compression {compression!r} needs the cramjam package, which is not installed: "
                "pip install cramjam, or use compression='gzip' or 'none'"
            )
        self.bootstrap = bootstrap
        self.topic = topic
        self.acks = acks
        self.compression = None if compression in (None, "none") else compression
        self.linger_ms = linger_ms
        self.max_batch_bytes = max_batch_bytes
        self.enable_idempotence = enable_idempotence
        self.buffer_events = buffer_events
        self.delivery_timeout_ms = delivery_timeout_ms
        self.max_event_bytes = max_event_bytes
        self.client_id = client_id
        self.on_acked = on_acked
        self.stats = ProducerStats()
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[int] = []
        self._route_of: dict[str, tuple[bytes, _Lane]] = {}  # agent id -> (key, lane)
        self._outstanding = 0  # accepted, not yet acknowledged or failed
        self._lanes: dict[int, _Lane] = {}
        self._round_robin = 0
        self._pending: dict[asyncio.Future[Any], tuple[_Lane, _Batch]] = {}
        self._flushing = 0  # flush() calls in progress: lanes skip lingering
        self._undelivered: list[OutgoingRecord] = []
        self._failure: BaseException | None = None
        self._progress = asyncio.Event()  # set whenever a batch completes
        self._closing = False

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EventProducer:
        """The producer the settings describe (idempotence follows Settings.idempotence)."""
        compression: Compression = settings.producer_compression
        if not compression_available(compression):
            log.warning(
                "producer compression %r needs the cramjam package (not installed): sending "
                "uncompressed; pip install cramjam or set AGENTSTREAM_PRODUCER_COMPRESSION",
                compression,
            )
            compression = "none"
        kwargs: dict[str, Any] = {
            "acks": settings.producer_acks,
            "compression": compression,
            "linger_ms": settings.producer_linger_ms,
            "max_batch_bytes": settings.producer_max_batch_bytes,
            "enable_idempotence": settings.idempotence,
            "buffer_events": settings.producer_buffer_events,
            "max_event_bytes": settings.max_event_bytes,
        }
        kwargs.update(overrides)
        return cls(settings.bootstrap_servers, **kwargs)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (retrying until ``delivery_timeout_ms``) and learn the partition count.

        The topic must exist: on Tansu a metadata request for a missing topic creates it
        with 4 partitions (``agentstream up`` and ``streams.admin.ensure_topics`` create it).
        """
        if self._producer is not None:
            return  # already started
        if self._closing:
            raise ProducerError(
                "this producer was closed; create a new one", bootstrap=self.bootstrap
            )
        deadline = time.monotonic() + self.delivery_timeout_ms / 1000
        last: BaseException | None = None
        while True:
            producer = self._new_client()
            try:
                await asyncio.wait_for(
                    producer.start(), timeout=max(0.1, deadline - time.monotonic())
                )
                partitions = await asyncio.wait_for(
                    producer.partitions_for(self.topic),
                    timeout=max(0.1, deadline - time.monotonic()),
                )
                break
            except (KafkaError, OSError, TimeoutError) as err:
                last = err
                with contextlib.suppress(Exception):
                    await producer.stop()
                if time.monotonic() >= deadline:
                    raise ProducerError(
                        f"cannot reach the Kafka broker at {self.bootstrap} after "
                        f"{self.delivery_timeout_ms / 1000:g}s ({_describe(last)}); start it "
                        "(`agentstream up`) or set AGENTSTREAM_KAFKA_URL",
                        bootstrap=self.bootstrap,
                    ) from None
                await asyncio.sleep(0.2)
        self._producer = producer
        self._partitions = sorted(partitions)
        self._lanes = {p: _Lane(p) for p in self._partitions}
        for lane in self._lanes.values():
            name = f"producer-lane-{lane.partition}"
            lane.task = asyncio.create_task(self._pump(lane), name=name)

    def _new_client(self) -> AIOKafkaProducer:
        timeout = self.delivery_timeout_ms
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks=_acks(self.acks),
            compression_type=self.compression,
            linger_ms=0,  # lanes do the lingering
            max_batch_size=self.max_batch_bytes,
            max_request_size=max(self.max_batch_bytes, self.max_event_bytes) + 64 * 1024,
            enable_idempotence=self.enable_idempotence,
            request_timeout_ms=timeout,
            retry_backoff_ms=100,
        )

    async def flush(self) -> None:
        """Wait until every event accepted before this call is acknowledged.

        Raises :class:`ProducerError` if any of them failed, or if they are not all
        acknowledged within ``delivery_timeout_ms``. Events accepted concurrently, after
        the call, are not waited for (a partition's batches complete in order, so per-lane
        counters are enough).
        """
        self._require_started()
        targets = [(lane, lane.accepted) for lane in self._lanes.values()]
        deadline = time.monotonic() + self.delivery_timeout_ms / 1000
        self._flushing += 1
        try:
            for lane in self._lanes.values():
                if lane.open_count:
                    lane.wake.set()
            while (missing := sum(max(0, t - lane.completed) for lane, t in targets)) > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), timeout=remaining)
        finally:
            self._flushing -= 1
        self._raise_failures()
        if missing > 0:
            raise ProducerError(
                f"{missing} events not acknowledged by the Kafka broker at {self.bootstrap} "
                f"within {self.delivery_timeout_ms / 1000:g}s; they may or may not have been "
                "written (is the broker up?)",
                bootstrap=self.bootstrap,
            )

    async def close(self) -> None:
        """Deliver everything accepted, then disconnect.

        Afterwards ``stats.accepted == stats.acknowledged + stats.failed``: whatever could
        not be confirmed is counted failed and raised in one :class:`ProducerError`
        (``undelivered`` holds the records; some may have reached the broker anyway).
        """
        if self._producer is None:
            return
        error: ProducerError | None = None
        try:
            await self.flush()
        except ProducerError as err:
            error = err
        self._closing = True
        closed = ProducerError(
            f"producer closed before the Kafka broker at {self.bootstrap} acknowledged",
            bootstrap=self.bootstrap,
        )
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
        for lane in self._lanes.values():
            if lane.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
            while lane.full:
                self._delivered(lane, lane.full.popleft(), closed)
            if lane.builder is not None and lane.open_count:
                self._delivered(lane, _Batch(lane.builder, lane.open_count), closed)
            lane.builder, lane.open_count = None, 0
        producer, self._producer = self._producer, None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), timeout=self.delivery_timeout_ms / 1000)
        for fut, (lane, batch) in list(self._pending.items()):
            if not fut.done():
                del self._pending[fut]
                self._delivered(lane, batch, closed)
        if self._undelivered:
            undelivered, self._undelivered = self._undelivered, []
            raise ProducerError(
                f"{len(undelivered)} events were not delivered to the Kafka broker at "
                f"{self.bootstrap} ({_describe(self._failure)}); some may have been written "
                "anyway; they are in ProducerError.undelivered",
                bootstrap=self.bootstrap,
                undelivered=[*(error.undelivered if error else ()), *undelivered],
            )
        if error is not None:
            raise error

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- sending -----------------------------------------------------------------------

    async def send(self, event: Event) -> None:
        """Accept one event for delivery (waits while the buffer is full).

        Raises :class:`~schemas.errors.InvalidEvent` (``too_large``) for an event over
        ``max_event_bytes``, and :class:`ProducerError` when earlier events failed or the
        buffer stays full for ``delivery_timeout_ms``; in both cases ``event`` is not accepted.
        """
        # the hot path (~3 µs + encoding): encode, then append straight into the partition's
        # open batch (the bytes are copied there; no per-event object outlives this call)
        if self._undelivered or self._closing or self._producer is None:
            self._check_open()
        if self._outstanding >= self.buffer_events:
            await self._wait_for_space()
        value = _encode(event)
        if len(value) > self.max_event_bytes:
            raise _too_large(event, len(value), self.max_event_bytes)
        route = self._route_of.get(event.agentid) or self._route_for(event.agentid)
        key, lane = route
        headers = [_CE_TYPE[type(event)], ("ce_id", event.id.encode()), _CONTENT_TYPE_HEADER]
        self._append(lane, key, value, headers, (event.time - _EPOCH) // _MS)

    async def send_many(self, events: Iterable[Event]) -> int:
        """Accept several events, in order; returns how many."""
        n = 0
        for event in events:
            await self.send(event)
            n += 1
        return n

    async def send_raw(
        self,
        key: bytes | str | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Accept bytes that are not validated (tests, dead-letter re-publishing).

        A ``None`` key spreads records round-robin over the partitions.
        """
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(value, bytes) or not (key is None or isinstance(key, bytes)):
            raise TypeError("send_raw needs bytes for value and bytes, str or None for key")
        hdrs = [(str(k), bytes(v)) for k, v in headers or ()]
        if self._undelivered or self._closing or self._producer is None:
            self._check_open()
        if self._outstanding >= self.buffer_events:
            await self._wait_for_space()
        if key is None:
            self._round_robin += 1
            lane = self._lanes[self._partitions[self._round_robin % len(self._partitions)]]
        else:
            lane = self._lane_for(key)
        self._append(lane, key, value, hdrs, timestamp_ms)

    def _append(
        self,
        lane: _Lane,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int | None,
    ) -> None:
        """Append one encoded record to its partition's open batch and wake the lane."""
        builder = lane.builder
        if builder is None:
            builder = lane.builder = self._new_batch()
        if builder.append(timestamp=timestamp_ms, key=key, value=value, headers=headers) is None:
            builder = self._next_batch(lane)
            builder.append(timestamp=timestamp_ms, key=key, value=value, headers=headers)
        lane.open_count += 1
        lane.accepted += 1
        self._outstanding += 1
        self.stats.accepted += 1
        if not lane.wake.is_set():
            lane.wake.set()

    def _next_batch(self, lane: _Lane) -> BatchBuilder:
        """The open batch is full: queue it for shipping and open the next one (the first
        record of a batch always fits, whatever its size)."""
        assert lane.builder is not None
        lane.full.append(_Batch(lane.builder, lane.open_count))
        lane.builder = self._new_batch()
        lane.open_count = 0
        return lane.builder

    def _new_batch(self) -> BatchBuilder:
        assert self._producer is not None
        return self._producer.create_batch()

    def _check_open(self) -> None:
        self._require_started()
        self._raise_failures()

    def _lane_for(self, key: bytes) -> _Lane:
        return self._lanes[partition_for_key(key, self._partitions)]

    def _route_for(self, agent_id: str) -> tuple[bytes, _Lane]:
        key = agent_id.encode()
        route = (key, self._lane_for(key))
        if len(self._route_of) < 1_000_000:  # agent ids are few; bound it anyway
            self._route_of[agent_id] = route
        return route

    async def _wait_for_space(self) -> None:
        deadline = time.monotonic() + self.delivery_timeout_ms / 1000
        while self._outstanding >= self.buffer_events:
            self._raise_failures()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProducerError(
                    f"producer buffer full ({self.buffer_events} events unacknowledged) for "
                    f"{self.delivery_timeout_ms / 1000:g}s: the Kafka broker at {self.bootstrap} "
                    "is not acknowledging; this event was not accepted",
                    bootstrap=self.bootstrap,
                )
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), timeout=remaining)
        self._raise_failures()

    def _require_started(self) -> None:
        if self._producer is None or self._closing:
            raise ProducerError(
                "producer is not started (call `await producer.start()` or use `async with`)",
                bootstrap=self.bootstrap,
            )

    # --- the lanes ---------------------------------------------------------------------

    async def _pump(self, lane: _Lane) -> None:
        """Ship one partition's batches in order. While one is in flight the next fills."""
        linger = self.linger_ms / 1000
        producer = self._producer
        assert producer is not None
        while True:
            await lane.wake.wait()
            if linger and not lane.full and not self._flushing:
                await asyncio.sleep(linger)
            lane.wake.clear()
            if lane.builder is not None and lane.open_count:
                lane.full.append(_Batch(lane.builder, lane.open_count))
                lane.builder, lane.open_count = None, 0
            while lane.full:
                batch = lane.full[0]
                try:
                    fut = await producer.send_batch(
                        batch.builder, self.topic, partition=lane.partition
                    )
                except asyncio.CancelledError:
                    raise  # close() counts what is still in lane.full
                except Exception as err:  # any failure is reported, never lost
                    lane.full.popleft()
                    self._delivered(lane, batch, err)
                    continue
                lane.full.popleft()
                self._pending[fut] = (lane, batch)
                fut.add_done_callback(self._on_batch_done)

    def _on_batch_done(self, fut: asyncio.Future[Any]) -> None:
        entry = self._pending.pop(fut, None)
        if entry is None:  # already counted failed by close()
            return
        cancelled = fut.cancelled()
        err = asyncio.CancelledError("delivery cancelled") if cancelled else fut.exception()
        if err is None and self.on_acked is not None:
            lane, batch = entry
            try:
                self.on_acked(self.topic, lane.partition, fut.result().offset + batch.count)
            except Exception as hook_err:  # a ledger problem must not lose the delivery
                log.error("producer: on_acked failed: %r", hook_err)
        self._delivered(*entry, err)

    def _delivered(self, lane: _Lane, batch: _Batch, err: BaseException | None) -> None:
        lane.completed += batch.count
        self._outstanding -= batch.count
        if err is None:
            self.stats.acknowledged += batch.count
        else:
            self.stats.failed += batch.count
            self._undelivered.extend(records_of(batch.builder))
            self._failure = err
        self._progress.set()

    def _raise_failures(self) -> None:
        if not self._undelivered:
            return
        undelivered, self._undelivered = self._undelivered, []
        cause = self._failure
        raise ProducerError(
            f"{len(undelivered)} events were not delivered to the Kafka broker at "
            f"{self.bootstrap} ({_describe(cause)}); they are in ProducerError.undelivered",
            bootstrap=self.bootstrap,
            undelivered=undelivered,
        )


def _describe(err: BaseException | None) -> str:
    if err is None:
        return "no answer"
    name, text = type(err).__name__, str(err).strip()
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


class SyncEventProducer:
    """Blocking facade over :class:`EventProducer` for agent code that is not async.

    It runs an event loop in a daemon thread; every method blocks until the async one
    returns, so backpressure and errors reach the caller the same way.
    """

    def __init__(self, bootstrap: str, **kwargs: Any) -> None:
        self._args = (bootstrap, kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._producer: EventProducer | None = None
        self._factory: Callable[[], EventProducer] = lambda: EventProducer(bootstrap, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SyncEventProducer:
        sync = cls(settings.bootstrap_servers)
        sync._factory = lambda: EventProducer.from_settings(settings, **overrides)
        return sync

    @property
    def stats(self) -> ProducerStats:
        return self._async.stats

    @property
    def bootstrap(self) -> str:
        return self._args[0]

    @property
    def _async(self) -> EventProducer:
        if self._producer is None:
            raise ProducerError("producer is not started (call start())", bootstrap=self.bootstrap)
        return self._producer

    def _run(self, coro: Coroutine[Any, Any, _T] | Awaitable[_T]) -> _T:
        assert self._loop is not None
        fut: ThreadFuture[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return fut.result()

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="agentstream-producer", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

        async def build_and_start() -> EventProducer:
            producer = self._factory()
            await producer.start()
            return producer

        try:
            self._producer = self._run(build_and_start())
        except BaseException:
            self._stop_loop()
            raise

    def send(self, event: Event) -> None:
        self._run(self._async.send(event))

    def send_many(self, events: Iterable[Event]) -> int:
        return self._run(self._async.send_many(list(events)))

    def send_raw(
        self,
        key: bytes | str | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        self._run(self._async.send_raw(key, value, headers, timestamp_ms))

    def flush(self) -> None:
        self._run(self._async.flush())

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            if self._producer is not None:
                self._run(self._producer.close())
        finally:
            self._producer = None
            self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> SyncEventProducer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
