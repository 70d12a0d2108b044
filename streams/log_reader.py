"""Reading history: ranges of a Kafka topic, or the Parquet archive, as the same batches.

Both sources yield :class:`LogBatch` es: consecutive records of one partition, in offset
order, with their position (generation, partition, offset, record timestamp), key and
original value bytes. A batch decodes lazily into events (``events()``), rejections
(``invalid()``) or flat Arrow rows (``rows()``); an archive batch already *is* Arrow, so
``rows()`` there is a zero-copy column selection (the fast path into analytics), and
only consumers that need :class:`Event` objects pay for decoding.

Ranges. A source reads ``[start, end)`` per partition. Kafka's default end is the high
watermark captured when reading starts (so a range is finite while producers keep
publishing); ``end_positions`` afterwards says exactly where each partition stopped, which
is where live consumption continues. Time bounds are in *log time* (the record timestamp),
with Kafka's own meaning: ``from`` starts at the first record of the partition whose
timestamp is >= from, ``to`` stops before the first record whose timestamp is >= to. The
embedded broker answers ``offsets_for_times`` wrongly (offset 0, timestamp -1), so both
sources apply the bounds while reading (:class:`TimeWindow`); both therefore select
exactly the same records.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.admission import admit
from schemas.arrow import EVENT_ROW_SCHEMA, events_to_table
from schemas.codec import EventCodec
from schemas.envelope import Event
from schemas.errors import InvalidEvent, RejectReason
from schemas.topics import EVENTS
from streams.archive import (
    ARCHIVE_SCHEMA,
    DLQ_DIR,
    DLQ_SCHEMA,
    EVENTS_DIR,
    Segment,
    complete_segments,
    fetch_high_watermarks,
)
from streams.log_identity import LogChange, LogReplaced, LogWatch
from streams.producer import partition_for_key

_default_codec = EventCodec()


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record as the log holds it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    generation: int = 0


class LogBatch(ABC):
    """Consecutive records of one partition of one topic (see the module docstring)."""

    def __init__(
        self, topic: str, generation: int, partition: int, codec: EventCodec | None = None
    ) -> None:
        self.topic, self.generation, self.partition = topic, generation, partition
        self.codec = codec or _default_codec

    @property
    @abstractmethod
    def records(self) -> list[LogRecord]:
        """Every record in offset order, valid or not."""

    @property
    def first_offset(self) -> int:
        return self.records[0].offset

    @property
    def last_offset(self) -> int:
        return self.records[-1].offset

    def __len__(self) -> int:
        return len(self.records)

    @cached_property
    def _decoded(
        self,
    ) -> tuple[list[tuple[LogRecord, Event]], list[tuple[LogRecord, InvalidEvent]]]:
        good: list[tuple[LogRecord, Event]] = []
        bad: list[tuple[LogRecord, InvalidEvent]] = []
        for rec in self.records:
            outcome = admit(rec.key, rec.value, self.codec.decode)  # the shared admission rule
            if isinstance(outcome, InvalidEvent):
                bad.append((rec, outcome))
            else:
                good.append((rec, outcome))
        return good, bad

    def events(self) -> list[tuple[LogRecord, Event]]:
        """The valid events with their records, in offset order."""
        return self._decoded[0]

    def invalid(self) -> list[tuple[LogRecord, InvalidEvent]]:
        """The records that are not valid events, with the reason."""
        return self._decoded[1]

    def rows(self) -> pa.Table:
        """The valid events as flat rows (:data:`EVENT_ROW_SCHEMA`, log position filled)."""
        pairs = self.events()
        return events_to_table(
            [e for _, e in pairs], [r.partition for r, _ in pairs], [r.offset for r, _ in pairs]
        )


class RecordBatch(LogBatch):
    """A batch built from records in memory (what a Kafka read yields)."""

    def __init__(
        self,
        topic: str,
        generation: int,
        partition: int,
        records: list[LogRecord],
        codec: EventCodec | None = None,
    ) -> None:
        super().__init__(topic, generation, partition, codec)
        self._records = records

    @property
    def records(self) -> list[LogRecord]:
        return self._records


class ArchiveBatch(LogBatch):
    """A batch read from archive files: Arrow tables of events and rejected records."""

    def __init__(
        self,
        generation: int,
        partition: int,
        events: pa.Table,
        dlq: pa.Table,
        codec: EventCodec | None = None,
    ) -> None:
        super().__init__(EVENTS, generation, partition, codec)
        self.table = events  # ARCHIVE_SCHEMA, sorted by log_offset
        self.dlq = dlq  # DLQ_SCHEMA, sorted by log_offset

    def __len__(self) -> int:
        return self.table.num_rows + self.dlq.num_rows

    @property
    def first_offset(self) -> int:
        return min(_first(self.table), _first(self.dlq))

    @property
    def last_offset(self) -> int:
        return max(_last(self.table), _last(self.dlq))

    @cached_property
    def _event_records(self) -> list[LogRecord]:
        return _records_of(self.table, self.generation, self.partition)

    @cached_property
    def _dlq_records(self) -> list[LogRecord]:
        return _records_of(self.dlq, self.generation, self.partition)

    @cached_property
    def records(self) -> list[LogRecord]:  # type: ignore[override]
        return sorted(self._event_records + self._dlq_records, key=lambda r: r.offset)

    @cached_property
    def _decoded(
        self,
    ) -> tuple[list[tuple[LogRecord, Event]], list[tuple[LogRecord, InvalidEvent]]]:
        decode = self.codec.decode
        good = [(r, decode(r.value)) for r in self._event_records]
        reasons = self.dlq.select(["reason", "detail", "path"]).to_pylist()
        bad = [
            (r, InvalidEvent(RejectReason(x["reason"]), x["detail"], x["path"]))
            for r, x in zip(self._dlq_records, reasons, strict=True)
        ]
        return good, bad

    def rows(self) -> pa.Table:
        """Zero-copy: the archive already stores the flat row."""
        return self.table.select(EVENT_ROW_SCHEMA.names).cast(EVENT_ROW_SCHEMA)


def _first(t: pa.Table) -> int:
    return t.column("log_offset")[0].as_py() if t.num_rows else 1 << 62


def _last(t: pa.Table) -> int:
    return t.column("log_offset")[-1].as_py() if t.num_rows else -1


def _records_of(t: pa.Table, generation: int, partition: int) -> list[LogRecord]:
    offsets = t.column("log_offset").to_pylist()
    stamps = pc.cast(t.column("log_timestamp"), pa.int64()).to_pylist()
    keys = t.column("log_key").to_pylist()
    raws = t.column("raw").to_pylist()
    return [
        LogRecord(EVENTS, partition, o, ts, k, v, generation)
        for o, ts, k, v in zip(offsets, stamps, keys, raws, strict=True)
    ]


# --- the time window ----------------------------------------------------------------------


@dataclass
class TimeWindow:
    """Log-time bounds applied while reading, per (generation, partition), Kafka-style.

    ``from_ms``: skip records until the first whose timestamp is >= from_ms, then take
    everything. ``to_ms``: stop at the first record whose timestamp is >= to_ms.
    """

    from_ms: int | None = None
    to_ms: int | None = None
    started: set[tuple[int, int]] = field(default_factory=set)
    stopped: dict[tuple[int, int], int] = field(default_factory=dict)  # -> offset it stopped at

    def cut(self, key: tuple[int, int], timestamps: Sequence[int] | np.ndarray) -> tuple[int, int]:
        """[i, j) of this run of timestamps (in offset order) that is inside the window."""
        n = len(timestamps)
        if key in self.stopped:
            return 0, 0
        ts = np.asarray(timestamps, dtype=np.int64)
        i = 0
        if self.from_ms is not None and key not in self.started:
            hits = np.flatnonzero(ts >= self.from_ms)
            if hits.size == 0:
                return 0, 0
            i = int(hits[0])
        self.started.add(key)
        j = n
        if self.to_ms is not None:
            hits = np.flatnonzero(ts[i:] >= self.to_ms)
            if hits.size:
                j = i + int(hits[0])
        return i, j

    def stop(self, key: tuple[int, int], offset: int) -> None:
        self.stopped.setdefault(key, offset)

    def is_stopped(self, key: tuple[int, int]) -> bool:
        return key in self.stopped


# --- sources ------------------------------------------------------------------------------


class LogSource(Protocol):
    """Anything that yields :class:`LogBatch` es and then knows where it stopped."""

    total: int | None  # records the range holds (known once reading started), for progress
    read: int  # records consumed so far (including ones outside the time window)
    end_positions: dict[int, int]  # partition -> next offset, of the newest generation

    def batches(self) -> AsyncIterator[LogBatch]: ...


class KafkaLogSource:
    """One topic's ``[start, end)`` per partition, read with a group-less consumer."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = EVENTS,
        *,
        start_offsets: dict[int, int] | None = None,
        end_offsets: dict[int, int] | None = None,
        window: TimeWindow | None = None,
        generation: int = 0,
        only_key: bytes | None = None,
        max_records: int = 20_000,
        idle_timeout_s: float = 30.0,
        codec: EventCodec | None = None,
    ) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.only_key = only_key  # read only the partition this key maps to
        self.start_offsets, self.end_offsets = start_offsets, end_offsets
        self.window = window or TimeWindow()
        self.generation = generation
        self.max_records = max_records
        self.idle_timeout_s = idle_timeout_s
        self.codec = codec
        self.total: int | None = None
        self.read = 0
        self.end_positions: dict[int, int] = {}
        self.start_positions: dict[int, int] = {}

    async def batches(self) -> AsyncIterator[LogBatch]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 << 20,
        )
        await consumer.start()
        # a debug read must not mix two incarnations of the embedded log: the log's
        # identity is checked while reading (streams/log_identity.py)
        self._watch = LogWatch(self.bootstrap, "log-reader")
        await self._watch.start()
        try:
            async for batch in self._read(consumer):
                yield batch
        finally:
            await self._watch.stop()
            await consumer.stop()

    async def _read(self, consumer: AIOKafkaConsumer) -> AsyncIterator[LogBatch]:
        await consumer.topics()  # metadata of every topic, without naming (creating) one
        partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
        if not partitions:
            raise RuntimeError(f"topic {self.topic!r} does not exist on {self.bootstrap}")
        if self.only_key is not None:
            partitions = [partition_for_key(self.only_key, partitions)]
        tps = {p: TopicPartition(self.topic, p) for p in partitions}
        if self.end_offsets is None:
            hw = await fetch_high_watermarks(consumer, list(tps.values()))
            end = {p: hw[tps[p]] for p in partitions}
        else:
            consumer.assign(list(tps.values()))
            end = {p: self.end_offsets.get(p, 0) for p in partitions}
        begin = await consumer.beginning_offsets(list(tps.values()))
        start = {p: max((self.start_offsets or {}).get(p, 0), begin[tps[p]]) for p in partitions}
        self.start_positions = dict(start)
        self.total = sum(max(0, end[p] - start[p]) for p in partitions)
        self.end_positions = {p: max(start[p], end[p]) for p in partitions}
        active = {p for p in partitions if start[p] < end[p]}
        for p in active:
            consumer.seek(tps[p], start[p])
        last_progress = time.monotonic()
        expect = dict(start)  # partition -> next offset this read expects
        while active:
            got = await consumer.getmany(
                *[tps[p] for p in sorted(active)], timeout_ms=500, max_records=self.max_records
            )
            change = await self._watch.check(
                {p: expect[p] for p in active},
                {p: consumer.highwater(tps[p]) for p in active},
                force=not got,
            )
            rewound = sorted(
                tp.partition
                for tp, recs in got.items()
                if recs and recs[0].offset < expect[tp.partition]
            )
            if change is None and rewound:
                change = LogChange("rewind", f"partitions {rewound} started over", None, None)
            if change is not None:
                raise LogReplaced(change)
            for tp, recs in got.items():
                if recs:
                    expect[tp.partition] = recs[-1].offset + 1
            if not got:
                if time.monotonic() - last_progress > self.idle_timeout_s:
                    lagging = {p: (consumer.highwater(tps[p]), end[p]) for p in sorted(active)}
                    raise TimeoutError(
                        f"{self.topic}: no records for {self.idle_timeout_s:.0f}s; "
                        f"partition -> (high watermark, wanted end): {lagging}"
                    )
                continue
            last_progress = time.monotonic()
            for tp, recs in sorted(got.items()):
                p = tp.partition
                if p not in active:
                    continue
                recs = [r for r in recs if r.offset < end[p]]
                batch = self._window(p, recs)
                self.read += len(recs)
                if batch is not None:
                    yield batch
                stopped_at = self.window.stopped.get((self.generation, p))
                if stopped_at is not None:
                    self.end_positions[p] = stopped_at
                    active.discard(p)
                    consumer.pause(tp)
                elif not recs or recs[-1].offset + 1 >= end[p]:
                    active.discard(p)
                    consumer.pause(tp)

    def _window(self, partition: int, recs: list) -> LogBatch | None:
        if not recs:
            return None
        key = (self.generation, partition)
        i, j = self.window.cut(key, [r.timestamp for r in recs])
        if key in self.window.started and j < len(recs):
            self.window.stop(key, recs[j].offset)
        if i >= j:
            return None
        records = [
            LogRecord(
                self.topic,
                partition,
                r.offset,
                r.timestamp,
                r.key,
                r.value or b"",
                self.generation,
            )
            for r in recs[i:j]
        ]
        return RecordBatch(self.topic, self.generation, partition, records, self.codec)


class ArchiveLogSource:
    """The archive's complete segments in (generation, partition, offset) order."""

    def __init__(
        self,
        root: Path,
        *,
        window: TimeWindow | None = None,
        generations: set[int] | None = None,
        partitions: set[int] | None = None,
        batch_rows: int = 100_000,
        filter_expr: object | None = None,
        codec: EventCodec | None = None,
    ) -> None:
        self.root = root
        self.window = window or TimeWindow()
        self.generations, self.partitions = generations, partitions
        self.batch_rows = batch_rows
        self.filter_expr = filter_expr  # a pyarrow.compute expression on ARCHIVE_SCHEMA
        self.codec = codec
        self.segments: list[Segment] = []
        self.total: int | None = None
        self.read = 0
        self.end_positions: dict[int, int] = {}
        self.newest_generation = 0

    def _select(self) -> list[Segment]:
        segs = complete_segments(self.root)
        self.newest_generation = max((s.generation for s in segs), default=0)
        return [
            s
            for s in segs
            if (self.generations is None or s.generation in self.generations)
            and (self.partitions is None or s.partition in self.partitions)
        ]

    async def batches(self) -> AsyncIterator[LogBatch]:
        self.segments = self._select()
        self.total = sum(s.last_offset - s.first_offset + 1 for s in self.segments)
        for s in self.segments:
            if s.generation == self.newest_generation:
                self.end_positions[s.partition] = s.last_offset + 1
        for seg in self.segments:
            key = (seg.generation, seg.partition)
            if self.window.is_stopped(key):
                self.read += seg.last_offset - seg.first_offset + 1
                continue
            events, dlq = await asyncio.to_thread(self._load, seg)
            for batch in self._windowed(seg, events, dlq):
                yield batch
            self.read += seg.last_offset - seg.first_offset + 1
            stopped = self.window.stopped.get(key)
            if stopped is not None and seg.generation == self.newest_generation:
                self.end_positions[seg.partition] = stopped

    def _load(self, seg: Segment) -> tuple[pa.Table, pa.Table]:
        ev = [
            pq.read_table(self.root / f.relpath, schema=ARCHIVE_SCHEMA)
            for f in seg.of_kind(EVENTS_DIR)
        ]
        dl = [pq.read_table(self.root / f.relpath, schema=DLQ_SCHEMA) for f in seg.of_kind(DLQ_DIR)]
        events = pa.concat_tables(ev) if ev else ARCHIVE_SCHEMA.empty_table()
        dlq = pa.concat_tables(dl) if dl else DLQ_SCHEMA.empty_table()
        if len(ev) > 1:
            events = events.sort_by("log_offset")
        if len(dl) > 1:
            dlq = dlq.sort_by("log_offset")
        return events, dlq

    def _windowed(self, seg: Segment, events: pa.Table, dlq: pa.Table) -> list[ArchiveBatch]:
        key = (seg.generation, seg.partition)
        lo, hi = 0, 1 << 62  # the window as an offset range within this segment
        if self.window.from_ms is not None or self.window.to_ms is not None:
            offs = np.concatenate(
                [events.column("log_offset").to_numpy(), dlq.column("log_offset").to_numpy()]
            )
            stamps = np.concatenate(
                [
                    pc.cast(events.column("log_timestamp"), pa.int64()).to_numpy(),
                    pc.cast(dlq.column("log_timestamp"), pa.int64()).to_numpy(),
                ]
            )
            order = np.argsort(offs, kind="stable")
            offs, stamps = offs[order], stamps[order]
            i, j = self.window.cut(key, stamps)
            if key in self.window.started and j < len(offs):
                self.window.stop(key, int(offs[j]))
            if i >= j:
                return []
            lo, hi = int(offs[i]), int(offs[j - 1])
            events = _offset_range(events, lo, hi)
            dlq = _offset_range(dlq, lo, hi)
        if self.filter_expr is not None:
            events = events.filter(self.filter_expr)
        out: list[ArchiveBatch] = []
        n = events.num_rows
        if n == 0 and dlq.num_rows == 0:
            return out
        step = self.batch_rows
        for start in range(0, max(n, 1), step):
            part = events.slice(start, step)
            # dlq rows go with the slice whose offset range covers them (all with the last)
            if start + step >= n:
                dpart = dlq
            else:
                hi_off = part.column("log_offset")[-1].as_py()
                dpart = _offset_range(dlq, -1, hi_off)
                dlq = _offset_range(dlq, hi_off + 1, 1 << 62)
            out.append(ArchiveBatch(seg.generation, seg.partition, part, dpart, self.codec))
        return out


def _offset_range(t: pa.Table, lo: int, hi: int) -> pa.Table:
    if t.num_rows == 0:
        return t
    col = t.column("log_offset")
    mask = pc.and_(pc.greater_equal(col, lo), pc.less_equal(col, hi))
    return t.filter(mask)


async def collect_events(source: LogSource) -> list[Event]:
    """Every valid event a source yields, in its order (tests, small debug reads)."""
    out: list[Event] = []
    async for batch in source.batches():
        out.extend(e for _, e in batch.events())
    return out
