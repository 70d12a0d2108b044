"""Which log is this? One answer shared by every consumer of ``agent-events``.

The embedded broker keeps the log in memory: after a restart it is a *new* log, empty or
restored from the archive, with the same topic names and offsets from 0 again. A consumer
that kept its positions (a worker left running across ``agentstream down && up``) would
otherwise read the new log as if it were the old one: skip records below its position,
or fold records onto state that came from records the new log does not hold.

Two signals, either one means "not the log I was reading":

- the **log epoch**: a tiny topic (:data:`EPOCH_TOPIC`) whose record at offset 0 holds a
  random id, written once per log (by :func:`ensure_epoch`: the restore step of
  ``agentstream up`` and the archiver). The record at offset 0 wins any race, so every
  reader agrees. A different id, or a marker that vanished, is a new log. A log that never
  had a marker (a real Kafka cluster nobody wrote one to) simply has none: no signal.
- **positions above the high watermark**: a partition whose fetch high watermark is below
  the next offset a consumer wants was replaced (logs only grow). Kafka's retention never
  does this, so the check is harmless there.

Consumers call :meth:`LogWatch.check` with their positions and the high watermarks their
fetches reported (cheap: the epoch is re-read at most every ``interval_s``, and at once
when asked with ``force``) and recover when it returns a :class:`LogChange`. Pure
decisions live in :func:`detect_change`; I/O at the edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import Counter

log = logging.getLogger(__name__)

EPOCH_TOPIC = "agent-log-epoch"
"""One partition; offset 0 holds the :class:`EpochMarker` of this incarnation of the log."""

LOG_CHANGES = Counter(
    "agentstream_log_changes_detected",
    "Times a consumer found that the log it reads is not the one it was reading",
    ["consumer", "reason"],
)


@dataclass(frozen=True, slots=True)
class EpochMarker:
    """The identity of one incarnation of the log, and how it was born."""

    epoch: str
    created_ms: int
    restored: bool = False  # filled from the archive by streams.restore
    restored_next: dict[int, int] = field(default_factory=dict)  # partition -> first new offset
    offsets_preserved: bool = True  # restored offsets equal the archived ones
    restoring: bool = False  # a restore is still producing into this log

    def encode(self) -> bytes:
        return json.dumps(
            {
                "epoch": self.epoch,
                "created_ms": self.created_ms,
                "restored": self.restored,
                "restored_next": {str(p): n for p, n in sorted(self.restored_next.items())},
                "offsets_preserved": self.offsets_preserved,
                "restoring": self.restoring,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> EpochMarker | None:
        """The marker in ``raw``; None for anything that is not one (never raises)."""
        try:
            d = json.loads(raw or b"")
            return cls(
                str(d["epoch"]),
                int(d.get("created_ms", 0)),
                bool(d.get("restored", False)),
                {int(p): int(n) for p, n in dict(d.get("restored_next") or {}).items()},
                bool(d.get("offsets_preserved", True)),
                bool(d.get("restoring", False)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def new_marker(
    restored_next: Mapping[int, int] | None = None,
    offsets_preserved: bool = True,
    restoring: bool = False,
) -> EpochMarker:
    return EpochMarker(
        uuid.uuid4().hex,
        int(time.time() * 1000),
        restored_next is not None,
        dict(restored_next or {}),
        offsets_preserved,
        restoring,
    )


@dataclass(frozen=True, slots=True)
class LogChange:
    """Why the log is not the one a consumer was reading."""

    reason: str  # "epoch" or "highwater"
    detail: str
    old_epoch: str | None
    new_epoch: str | None
    behind: dict[Any, tuple[int, int]] = field(default_factory=dict)  # p -> (position, hw)

    def __str__(self) -> str:
        return f"the log was replaced ({self.reason}: {self.detail})"


class LogReplaced(RuntimeError):
    """Raised by readers of a bounded range when the log changed under them mid-read."""

    def __init__(self, change: LogChange) -> None:
        super().__init__(
            f"{change}: the records read so far came from a log that no longer exists — "
            "read again (from the archive: --source archive)"
        )
        self.change = change


def detect_change(
    known: str | None,
    current: str | None,
    positions: Mapping[Any, int],
    highwater: Mapping[Any, int | None],
) -> LogChange | None:
    """Pure decision: is the log still the one with epoch ``known`` read up to ``positions``?

    ``current`` is the epoch the log holds now (None: no marker). A marker appearing where
    there was none is the same log getting its first marker, not a change; a marker that
    changed or vanished is a new log. ``positions`` are next offsets to read; a high
    watermark below one means the partition was replaced.
    """
    if known is not None and current != known:
        what = "no epoch marker any more" if current is None else f"epoch {current}"
        return LogChange("epoch", f"was epoch {known}, now {what}", known, current)
    behind = {
        p: (pos, hw)
        for p, pos in positions.items()
        if (hw := highwater.get(p)) is not None and hw < pos
    }
    if behind:
        shown = ", ".join(
            f"{_where(p)}: position {pos} > high watermark {hw}" for p, (pos, hw) in behind.items()
        )
        return LogChange("highwater", shown, known, current, behind)
    return None


def _where(key: Any) -> str:
    if isinstance(key, TopicPartition):
        return f"{key.topic}[{key.partition}]"
    return f"p{key}"


# --- I/O -----------------------------------------------------------------------------------


async def _topic_exists(consumer: AIOKafkaConsumer, topic: str) -> bool:
    # metadata of every topic, without naming one (Tansu auto-creates named topics)
    return topic in await consumer.topics()


async def read_marker(
    consumer: AIOKafkaConsumer, topic: str = EPOCH_TOPIC, deadline_s: float = 2.0
) -> EpochMarker | None:
    """The log's marker (None: no topic, empty, or not a marker).

    The record at offset 0 names the epoch; later records of the same epoch update how
    it was born (a restore writes "restoring" first and its outcome when done).
    ``consumer`` must be a group-less consumer used only for this (it is re-assigned).
    """
    if not await _topic_exists(consumer, topic):
        return None
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    stop_at = time.monotonic() + deadline_s
    marker: EpochMarker | None = None
    while time.monotonic() < stop_at:
        got = await consumer.getmany(tp, timeout_ms=100, max_records=100)
        recs = got.get(tp, [])
        for rec in recs:
            found = EpochMarker.decode(rec.value)
            if rec.offset == 0:
                if found is None:
                    return None
                marker = found
            elif marker is not None and found is not None and found.epoch == marker.epoch:
                marker = found
        hw = consumer.highwater(tp)
        if hw is not None and hw == 0:
            return None  # the topic exists and is empty
        if hw is not None and marker is not None and (not recs or recs[-1].offset + 1 >= hw):
            return marker
    raise TimeoutError(f"{topic}: no answer fetching the epoch marker in {deadline_s:g}s")


def _group_less(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        request_timeout_ms=5000,
        metadata_max_age_ms=1000,
    )


async def fetch_marker(bootstrap: str, topic: str = EPOCH_TOPIC) -> EpochMarker | None:
    """One-shot read of the current log's marker (debug tools, tests, status)."""
    consumer = _group_less(bootstrap)
    await consumer.start()
    try:
        return await read_marker(consumer, topic)
    finally:
        await consumer.stop()


async def ensure_epoch(
    bootstrap: str,
    marker: EpochMarker | None = None,
    topic: str = EPOCH_TOPIC,
    replication_factor: int = 1,
) -> EpochMarker:
    """Give the log an epoch marker if it has none; return the one at offset 0.

    Creates ``topic`` (1 partition) when missing. When two writers race, both markers are
    written and the one at offset 0 is the log's: every reader takes that one.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, 1, replication_factor)])
    finally:
        await admin.close()
    consumer = _group_less(bootstrap)
    await consumer.start()
    try:
        current = await _read_after_create(consumer, topic)
        if current is not None:
            return current
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, (marker or new_marker()).encode(), partition=0)
        finally:
            await producer.stop()
        written = await _read_after_create(consumer, topic)
        if written is None:
            raise RuntimeError(f"{topic}: the epoch marker just written cannot be read back")
        return written
    finally:
        await consumer.stop()


async def update_marker(bootstrap: str, marker: EpochMarker, topic: str = EPOCH_TOPIC) -> None:
    """Append a later record for ``marker.epoch`` (e.g. a restore's outcome); readers merge
    it over the record at offset 0."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, marker.encode(), partition=0)
    finally:
        await producer.stop()


async def _read_after_create(consumer: AIOKafkaConsumer, topic: str) -> EpochMarker | None:
    """read_marker, waiting for metadata of a topic that was just created."""
    stop_at = time.monotonic() + 10.0
    while True:
        if await _topic_exists(consumer, topic):
            return await read_marker(consumer, topic)
        if time.monotonic() > stop_at:
            raise TimeoutError(f"{topic}: created but not in the broker's metadata after 10s")
        await asyncio.sleep(0.1)


class LogWatch:
    """A consumer's view of the log's identity (see the module docstring).

    ``start()`` takes the baseline (the epoch of the log the consumer starts on);
    ``check()`` says whether the log changed since; ``accept()`` makes the current log the
    baseline once the consumer has recovered. Failures to read the marker (broker away)
    are not a change: they are retried at the next check.
    """

    def __init__(
        self,
        bootstrap: str,
        name: str,
        *,
        topic: str = EPOCH_TOPIC,
        interval_s: float = 1.0,
    ) -> None:
        self.bootstrap, self.name, self.topic = bootstrap, name, topic
        self.interval_s = interval_s
        self.marker: EpochMarker | None = None
        self.changes = 0
        self.confirmed_at = 0.0  # monotonic time the log was last read and found unchanged
        self.failed = False  # the last attempt to read the marker failed (broker away?)
        self._consumer: AIOKafkaConsumer | None = None
        self._checked_at = 0.0
        self._current: EpochMarker | None = None

    @property
    def epoch(self) -> str | None:
        return self.marker.epoch if self.marker else None

    async def start(self) -> EpochMarker | None:
        self._consumer = _group_less(self.bootstrap)
        await self._consumer.start()
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            self.marker = self._current = await read_marker(self._consumer, self.topic)
            self._checked_at = time.monotonic()
        return self.marker

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_consumer(consumer)

    async def current(self) -> EpochMarker | None:
        """The marker the log holds now (raises on broker errors)."""
        if self._consumer is None:
            raise RuntimeError("LogWatch is not started")
        self._current = await asyncio.wait_for(read_marker(self._consumer, self.topic), 3.0)
        self._checked_at = time.monotonic()
        return self._current

    async def check(
        self,
        positions: Mapping[Any, int] | None = None,
        highwater: Mapping[Any, int | None] | None = None,
        *,
        force: bool = False,
    ) -> LogChange | None:
        """A :class:`LogChange` if the log is not the baseline one read up to ``positions``."""
        positions, highwater = positions or {}, highwater or {}
        started = time.monotonic()
        failed = False
        if force or started - self._checked_at >= self.interval_s:
            try:
                current = await self.current()
            except (KafkaError, OSError, TimeoutError) as err:
                log.debug("%s: epoch check failed (%r); retrying later", self.name, err)
                current = self._current
                failed = self.failed = True
                self._checked_at = time.monotonic()
            else:
                self.failed = False
            if self.marker is None and current is not None:
                self.marker = current  # the log got its first marker: same log
        read_ok = self._checked_at >= started
        change = detect_change(
            self.epoch, self._current.epoch if self._current else None, positions, highwater
        )
        if change is None and read_ok and not failed:
            self.confirmed_at = started
        if change is not None:
            self.changes += 1
            LOG_CHANGES.labels(self.name, change.reason).inc()
            log.warning("%s: %s", self.name, change)
        return change

    async def accept(self) -> EpochMarker | None:
        """After recovering: the log as it is now becomes the baseline."""
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await self.current()
        self.marker = self._current
        return self.marker


async def close_consumer(consumer: AIOKafkaConsumer, timeout_s: float = 3.0) -> None:
    """Stop ``consumer`` within ``timeout_s``, even with the broker gone.

    aiokafka 0.14's fetcher, closed while its broker is unreachable, lets the cancellation
    of its own pending fetch escape ``stop()`` as a CancelledError: not ours to propagate
    (a real cancellation of the calling task still is).
    """
    try:
        await asyncio.wait_for(consumer.stop(), timeout_s)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception as err:  # closing must not fail the caller's shutdown
        log.debug("closing a consumer failed: %r", err)


def highwaters_of(consumer: AIOKafkaConsumer, topic: str) -> dict[int, int | None]:
    """The fetch high watermarks a consumer has seen for its assigned ``topic`` partitions."""
    return {
        tp.partition: consumer.highwater(tp) for tp in consumer.assignment() if tp.topic == topic
    }


def as_plain(change: LogChange | None) -> dict[str, Any] | None:
    """A change as JSON-ready data (logs, status files)."""
    if change is None:
        return None
    return {
        "reason": change.reason,
        "detail": change.detail,
        "old_epoch": change.old_epoch,
        "new_epoch": change.new_epoch,
        "behind": {str(p): list(v) for p, v in change.behind.items()},
    }
