"""Restore the in-memory log from the Parquet archive: one log again after a broker restart.

The embedded broker (Tansu, memory only) starts empty. ``agentstream up`` calls
:func:`restore_log` right after it created the topics and before any consumer starts:
every archived record of ``agent-events`` (valid events from ``events/`` *and* rejected
records from ``dlq/``) is produced again into its original partition, in its original
order, with its original key, value bytes, record timestamp and headers. When the archive
holds one generation per partition that starts at offset 0 and has no holes (the normal
case), every record gets its original offset back, so the archive, the new log and every consumer's
stored position agree.

When it cannot (an archive with several generations, one not starting at 0, or holes), the
history is still restored completely and in order: generations one after the other, each
partition renumbered from 0. The report says so (``offsets_preserved=False`` per
partition, with the holes); the epoch marker records where new records start, so the
archiver continues without archiving the restored records twice.

Afterwards it checks that each partition's high watermark equals the number of records
restored and that the last record holds the archived bytes, then writes the log's epoch
marker (:mod:`streams.log_identity`). Records are written with ``create_batch`` /
``send_batch`` per partition (aiokafka keeps one request in flight per partition, so
order holds), many batches in flight at once.

Record headers are restored too (archive format version 2); records archived by version 1,
which kept none, come back without headers (the restore log says how many). Not restored:
the derived topics (``agent-state``, ``agent-episodes``, ...): the processor re-derives
them from the restored log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

from schemas.topics import EVENTS, TOPICS, TopicSpec
from streams.archive import (
    ARCHIVE_SCHEMA,
    DLQ_DIR,
    EVENTS_DIR,
    Segment,
    complete_segments,
    fetch_high_watermarks,
    fetch_record,
    headers_per_row,
)
from streams.log_identity import (
    EPOCH_TOPIC,
    EpochMarker,
    ensure_epoch,
    fetch_marker,
    new_marker,
    update_marker,
)
from streams.producer import partition_for_key

log = logging.getLogger(__name__)

_COLUMNS = ["log_offset", "log_timestamp", "log_key", "raw", "log_headers"]
# read with this schema, a version-1 file (no log_headers column) gives null headers
_READ_SCHEMA = pa.schema([ARCHIVE_SCHEMA.field(c) for c in _COLUMNS])

EarlyRecord = tuple[bytes | None, bytes, int, list[tuple[str, bytes]]]
"""(key, value, timestamp ms, headers) of a record a client wrote before the restore."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: records produced so far out of the total to restore."""


class RestoreError(RuntimeError):
    """The restore could not be completed; the message says which partition and why."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets missing inside one archived generation of one partition."""

    generation: int
    partition: int
    first: int
    last: int

    @property
    def records(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class PartitionRestore:
    """What one partition got back."""

    partition: int
    records: int  # produced into the log
    high_watermark: int  # fetched after the restore; equals ``records`` when it worked
    generations: tuple[int, ...]
    offsets_preserved: bool  # every record is at its archived offset
    gaps: tuple[Gap, ...] = ()
    appended: int = 0  # records clients wrote before the restore, put back after it
    no_headers: int = 0  # records archived by format version 1: restored without headers

    @property
    def ok(self) -> bool:
        return self.high_watermark == self.records + self.appended


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """The outcome of :func:`restore_log`; ``ok`` is the one flag to check."""

    topic: str
    archive_dir: str
    records: int
    seconds: float
    partitions: dict[int, PartitionRestore] = field(default_factory=dict)
    epoch: str | None = None
    skipped: str | None = None  # why nothing was restored (e.g. the log was not empty)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.partitions.values())

    @property
    def offsets_preserved(self) -> bool:
        return all(p.offsets_preserved for p in self.partitions.values())

    @property
    def gaps(self) -> list[Gap]:
        return [g for p in self.partitions.values() for g in p.gaps]

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def no_headers(self) -> int:
        """Restored records whose headers the archive did not keep (format version 1)."""
        return sum(p.no_headers for p in self.partitions.values())

    @property
    def appended(self) -> int:
        """Records clients had written into the fresh broker before the restore: they were
        taken out and appended after the restored ones (new offsets)."""
        return sum(p.appended for p in self.partitions.values())

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.skipped:
            return f"restore skipped: {self.skipped}"
        text = (
            f"restored {self.records:,} records into {len(self.partitions)} partitions of "
            f"{self.topic} in {self.seconds:.1f}s ({self.rate:,.0f}/s)"
        )
        if not self.offsets_preserved:
            text += "; offsets renumbered (the archive has several generations or holes)"
        if self.no_headers:
            text += f"; {self.no_headers:,} records archived before version 2 have no headers"
        if self.appended:
            text += (
                f"; {self.appended:,} records clients wrote before the restore were moved "
                "after the restored ones"
            )
        if self.gaps:
            text += (
                f"; the archive misses {sum(g.records for g in self.gaps):,} offsets: "
                + ", ".join(
                    f"g{g.generation} p{g.partition} {g.first}..{g.last}" for g in self.gaps[:10]
                )
            )
        if not self.ok:
            bad = [p for p in self.partitions.values() if not p.ok]
            text += "; HIGH WATERMARK MISMATCH: " + ", ".join(
                f"p{p.partition} {p.high_watermark} != {p.records}" for p in bad
            )
        return text

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            ok=self.ok,
            offsets_preserved=self.offsets_preserved,
            rate=self.rate,
            appended=self.appended,
            no_headers=self.no_headers,
        )
        return d


# --- planning (pure, from the archive's files) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionPlan:
    partition: int
    segments: tuple[Segment, ...]  # in (generation, first offset) order
    records: int
    gaps: tuple[Gap, ...]
    offsets_preserved: bool


def plan_restore(root: Path) -> dict[int, PartitionPlan]:
    """Per partition: which segments, how many records, holes, whether offsets survive."""
    by_partition: dict[int, list[Segment]] = {}
    for seg in complete_segments(root):
        by_partition.setdefault(seg.partition, []).append(seg)
    plans: dict[int, PartitionPlan] = {}
    for p, segs in sorted(by_partition.items()):
        segs.sort(key=lambda s: (s.generation, s.first_offset))
        gaps: list[Gap] = []
        preserved = len({s.generation for s in segs}) == 1 and segs[0].first_offset == 0
        expected: dict[int, int] = {}
        records = 0
        for s in segs:
            nxt = expected.get(s.generation)
            if nxt is not None and s.first_offset > nxt:
                gaps.append(Gap(s.generation, p, nxt, s.first_offset - 1))
                preserved = False
            expected[s.generation] = s.last_offset + 1
            records += s.last_offset - s.first_offset + 1
        plans[p] = PartitionPlan(p, tuple(segs), records, tuple(gaps), preserved)
    return plans


def read_segment(root: Path, seg: Segment) -> pa.Table:
    """The segment's records (events and dlq rows together) in offset order."""
    tables = [
        pq.read_table(root / f.relpath, schema=_READ_SCHEMA)
        for f in seg.files
        if f.kind in (EVENTS_DIR, DLQ_DIR)
    ]
    if not tables:
        return _READ_SCHEMA.empty_table()
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.sort_by("log_offset") if len(tables) > 1 else table


def _rows(
    table: pa.Table,
) -> Iterator[tuple[int, int, bytes | None, bytes, list[tuple[str, bytes | None]] | None]]:
    """(offset, timestamp ms, key, value, headers) per row; headers None: archived by
    version 1 (not known)."""
    offsets = table.column("log_offset").to_pylist()
    stamps = pc.cast(table.column("log_timestamp"), pa.int64()).to_pylist()
    keys = table.column("log_key").to_pylist()
    raws = table.column("raw").to_pylist()
    headers = headers_per_row(table.column("log_headers"), table.num_rows)
    return zip(offsets, stamps, keys, raws, headers, strict=True)


# --- producing --------------------------------------------------------------------------------


class _Counter:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress
        self._last = 0.0
        self.no_headers: dict[int, int] = {}  # partition -> records archived by version 1

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.progress is not None and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            self.progress(self.done, self.total)


async def _restore_partition(
    producer: AIOKafkaProducer,
    root: Path,
    topic: str,
    plan: PartitionPlan,
    counter: _Counter,
    max_in_flight: int,
    extra: list[EarlyRecord] | None = None,
) -> tuple[int, bytes | None, list[str]]:
    """Produce one partition's records in order, then ``extra`` (records clients wrote
    before the restore); return (archived records produced, last value, mismatches)."""
    in_flight: list[tuple[asyncio.Future[Any], int]] = []
    produced = 0
    last_raw: bytes | None = None
    moved: list[str] = []

    async def settle(keep: int) -> None:
        while len(in_flight) > keep:
            fut, n = in_flight.pop(0)
            await fut  # raises the broker's error: the caller turns it into RestoreError
            counter.add(n)

    segments = list(plan.segments)
    reading = (
        asyncio.ensure_future(asyncio.to_thread(read_segment, root, segments[0]))
        if segments
        else None
    )
    for i in range(len(segments)):
        assert reading is not None
        table = await reading
        if i + 1 < len(segments):  # read the next segment while this one is produced
            reading = asyncio.ensure_future(asyncio.to_thread(read_segment, root, segments[i + 1]))
        unknown = table.column("log_headers").null_count  # restored without headers
        counter.no_headers[plan.partition] = counter.no_headers.get(plan.partition, 0) + unknown
        batch = producer.create_batch()
        n = 0
        for offset, ts, key, raw, headers in _rows(table):
            if plan.offsets_preserved and offset != produced and len(moved) < 5:
                moved.append(f"archived offset {offset} would land at {produced}")
            if batch.append(key=key, value=raw, timestamp=ts, headers=headers) is None:
                in_flight.append(
                    (await producer.send_batch(batch, topic, partition=plan.partition), n)
                )
                await settle(max_in_flight)
                batch, n = producer.create_batch(), 0
                if batch.append(key=key, value=raw, timestamp=ts, headers=headers) is None:
                    raise RestoreError(
                        f"partition {plan.partition}: record at archived offset {offset} "
                        f"({len(raw)} bytes) is larger than a produce request allows"
                    )
            n += 1
            produced += 1
            last_raw = raw
        if n:
            in_flight.append((await producer.send_batch(batch, topic, partition=plan.partition), n))
            await settle(max_in_flight)
    if extra:
        batch, n = producer.create_batch(), 0
        for key, value, ts, headers in extra:
            if batch.append(key=key, value=value, timestamp=ts, headers=headers) is None:
                in_flight.append(
                    (await producer.send_batch(batch, topic, partition=plan.partition), n)
                )
                batch, n = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=ts, headers=headers)
            n += 1
            last_raw = value
        in_flight.append((await producer.send_batch(batch, topic, partition=plan.partition), n))
    await settle(0)
    return produced, last_raw, moved


async def recreate_auto_created_topics(
    bootstrap: str,
    partitions: int,
    replication_factor: int = 1,
    specs: Sequence[TopicSpec] = TOPICS,
    deadline_s: float = 20.0,
) -> list[str]:
    """On a fresh broker: delete and re-create empty topics with the wrong partition count.

    Tansu creates any topic a metadata request names, with 4 partitions. A client left
    running across a broker restart (a worker, a producer) reconnects and can do that
    before ``agentstream up`` creates the topics. Only topics that hold no record are
    touched; returns their names. Retries until the counts hold (a client may win again).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    fixed: list[str] = []
    try:
        stop_at = time.monotonic() + deadline_s
        while True:
            described = await admin.describe_topics([s.name for s in specs])
            wrong = [
                t["topic"]
                for t in described
                if t["error_code"] == 0 and len(t["partitions"]) != partitions
            ]
            if not wrong:
                return fixed
            if time.monotonic() > stop_at:
                raise RestoreError(f"topics {wrong} keep the wrong partition count")
            held = await _records_in(bootstrap, wrong)
            nonempty = sorted(t for t in wrong if held.get(t))
            if nonempty:
                raise RestoreError(
                    f"topics {nonempty} have another partition count than {partitions} and "
                    "hold records: not a fresh broker"
                )
            await admin.delete_topics(wrong)
            by_name = {s.name: s for s in specs}
            for name in wrong:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [
                            NewTopic(
                                name,
                                partitions,
                                replication_factor,
                                topic_configs=by_name[name].topic_config(),
                            )
                        ]
                    )
            fixed = sorted(set(fixed) | set(wrong))
    finally:
        await admin.close()


async def _records_in(bootstrap: str, topics: Sequence[str]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        hw = await fetch_high_watermarks(consumer, tps)
        out: dict[str, int] = {}
        for tp, n in hw.items():
            out[tp.topic] = out.get(tp.topic, 0) + n
        return out
    finally:
        await consumer.stop()


async def _read_all(bootstrap: str, topic: str) -> dict[int, list[EarlyRecord]]:
    """Every record of ``topic`` up to its high watermarks, per partition, in order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    out: dict[int, list[EarlyRecord]] = {}
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        hw = await fetch_high_watermarks(consumer, tps)
        todo = {tp for tp in tps if hw[tp] > 0}
        for tp in todo:
            consumer.seek(tp, 0)
        last_progress = time.monotonic()
        while todo:
            if time.monotonic() - last_progress > 3.0:
                # seen: two clients writing a partition's first batch at once make Tansu
                # fail one of them (AlreadyExists) yet count its records in the watermark
                unreadable = {tp.partition: hw[tp] - len(out.get(tp.partition, ())) for tp in todo}
                log.error(
                    "%s: the broker counts records it does not deliver (partition -> "
                    "records): %s; taking what it delivers",
                    topic,
                    unreadable,
                )
                break
            got = await consumer.getmany(*todo, timeout_ms=200)
            for tp, recs in got.items():
                rows = out.setdefault(tp.partition, [])
                before = len(rows)
                rows.extend(
                    (r.key, r.value or b"", r.timestamp, list(r.headers or ()))
                    for r in recs
                    if r.offset < hw[tp] and r.offset >= len(rows)
                )
                if len(rows) > before:
                    last_progress = time.monotonic()
            todo = {tp for tp in todo if len(out.get(tp.partition, ())) < hw[tp]}
        return out
    finally:
        await consumer.stop()


async def take_early_records(
    bootstrap: str, topic: str, partitions: int, replication_factor: int = 1
) -> dict[int, list[EarlyRecord]]:
    """Take out what clients wrote into a fresh broker before it was restored.

    A producer left running across a broker restart reconnects as soon as the new broker
    listens, before ``up`` can restore the log. Its records are read, the topic is deleted
    and created again empty (with ``partitions``), and the records are returned, keyed
    records re-partitioned like the SDK does, to be appended after the restored ones.
    Repeated while clients keep writing in between; a record acknowledged between the last
    read and the delete is lost (milliseconds; the producer's own check sees it).
    """
    taken: dict[int, list[EarlyRecord]] = {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        for _ in range(10):
            for p, rows in sorted((await _read_all(bootstrap, topic)).items()):
                for row in rows:
                    key = row[0]
                    q = partition_for_key(key, list(range(partitions))) if key else p % partitions
                    taken.setdefault(q, []).append(row)
            with contextlib.suppress(UnknownTopicOrPartitionError):
                await admin.delete_topics([topic])
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, partitions, replication_factor)])
            stop_at = time.monotonic() + 10
            while True:
                try:
                    now, held = await _log_is_empty(bootstrap, topic)
                    break
                except RestoreError:
                    if time.monotonic() > stop_at:
                        raise
                    await asyncio.sleep(0.1)
            if held == 0 and len(now) == partitions:
                return taken
        raise RestoreError(
            f"clients keep writing into {topic} while it is being restored: stop the "
            "producers, then `agentstream archive --restore`"
        )
    finally:
        await admin.close()


async def _log_is_empty(bootstrap: str, topic: str) -> tuple[list[int], int]:
    # a short fetch wait: an empty partition answers only when the wait is over
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    try:
        await consumer.topics()  # all topics, without naming one (Tansu would create it)
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        if not partitions:
            raise RestoreError(
                f"topic {topic!r} does not exist on {bootstrap}: create the topics first "
                "(streams.admin.ensure_topics)"
            )
        hw = await fetch_high_watermarks(consumer, [TopicPartition(topic, p) for p in partitions])
        return partitions, sum(hw.values())
    finally:
        await consumer.stop()


async def _verify(
    bootstrap: str, topic: str, expected: dict[int, tuple[int, bytes | None]]
) -> dict[int, tuple[int, bool]]:
    """Per partition: the fetch high watermark, and whether the last record is the archived one."""
    if not expected:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in expected]
        hws = await fetch_high_watermarks(consumer, tps)
        out: dict[int, tuple[int, bool]] = {}
        for tp in tps:
            count, last_raw = expected[tp.partition]
            hw = hws[tp]
            same = True
            if count and hw == count:
                rec = await fetch_record(consumer, tp, count - 1)
                same = rec is not None and (rec.value or b"") == last_raw
            out[tp.partition] = (hw, same)
        return out
    finally:
        await consumer.stop()


async def restore_log_async(
    bootstrap: str,
    archive_dir: Path,
    *,
    topic: str = EVENTS,
    progress: Progress | None = None,
    epoch_topic: str = EPOCH_TOPIC,
    max_batch_bytes: int = 1 << 20,
    max_in_flight: int = 8,
    partitions: int | None = None,
    replication_factor: int = 1,
) -> RestoreReport:
    """The coroutine behind :func:`restore_log` (same arguments)."""
    started = time.monotonic()
    root = Path(archive_dir)
    plans = plan_restore(root) if root.is_dir() else {}
    early: dict[int, list[EarlyRecord]] = {}
    existing, held = await _log_is_empty(bootstrap, topic)
    if held and plans and await fetch_marker(bootstrap, epoch_topic) is None:
        # a fresh broker (it has no identity yet) that clients reached before the restore
        await ensure_epoch(bootstrap, new_marker(restoring=True), topic=epoch_topic)
        count = partitions or max(len(existing), max(plans) + 1)
        early = await take_early_records(bootstrap, topic, count, replication_factor)
        log.warning(
            "%d records clients wrote into the fresh broker before the restore are moved "
            "after the restored ones",
            sum(len(v) for v in early.values()),
        )
    if partitions is not None:
        fixed = await recreate_auto_created_topics(bootstrap, partitions, replication_factor)
        if fixed:
            log.warning("re-created topics a client had auto-created on the new broker: %s", fixed)
    partitions, held = await _log_is_empty(bootstrap, topic)
    if held:
        marker = await ensure_epoch(bootstrap, topic=epoch_topic)
        return RestoreReport(
            topic,
            str(root),
            0,
            time.monotonic() - started,
            epoch=marker.epoch,
            skipped=f"{topic} already holds {held:,} records (not a fresh broker)",
        )
    missing = sorted(set(plans) - set(partitions))
    if missing:
        raise RestoreError(
            f"the archive has partitions {missing} that {topic} lacks (it has {len(partitions)}): "
            "set AGENTSTREAM_PARTITIONS to the archive's count (a client left running across "
            "a broker restart can also have auto-created the topic with 4 partitions: pass "
            "partitions= to re-create it empty)"
        )
    # consumers that meet this log now learn a restore is under way (the archiver waits)
    begun = await ensure_epoch(bootstrap, new_marker(restoring=True), topic=epoch_topic)
    try:
        parts = await _restore_partitions(
            bootstrap, root, topic, plans, progress, max_batch_bytes, max_in_flight, early
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await update_marker(bootstrap, replace(begun, restoring=False), epoch_topic)
        raise
    preserved = all(p.offsets_preserved for p in parts.values())
    done = EpochMarker(
        begun.epoch,
        int(time.time() * 1000),
        True,
        {p: r.records for p, r in parts.items()},
        preserved,
        False,
    )
    await update_marker(bootstrap, done, epoch_topic)
    return RestoreReport(
        topic,
        str(root),
        sum(r.records for r in parts.values()),
        time.monotonic() - started,
        parts,
        begun.epoch,
    )


async def _restore_partitions(
    bootstrap: str,
    root: Path,
    topic: str,
    plans: dict[int, PartitionPlan],
    progress: Progress | None,
    max_batch_bytes: int,
    max_in_flight: int,
    early: dict[int, list[EarlyRecord]] | None = None,
) -> dict[int, PartitionRestore]:
    early = early or {}
    for p in early:  # a partition that only has records clients wrote early
        plans.setdefault(p, PartitionPlan(p, (), 0, (), True))
    counter = _Counter(sum(p.records for p in plans.values()), progress)
    if progress is not None:
        progress(0, counter.total)
    results: dict[int, tuple[int, bytes | None, list[str]]] = {}
    if plans:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=0,
            max_batch_size=max_batch_bytes,
            max_request_size=max(max_batch_bytes, 4 << 20) + (64 << 10),
            enable_idempotence=False,
            request_timeout_ms=30_000,
        )
        await producer.start()
        try:
            done = await asyncio.gather(
                *(
                    _restore_partition(
                        producer, root, topic, plan, counter, max_in_flight, early.get(p)
                    )
                    for p, plan in plans.items()
                )
            )
        except Exception as err:
            raise RestoreError(f"producing into {topic} failed: {err!r}") from err
        finally:
            await producer.stop()
        results = dict(zip(plans, done, strict=True))
        if sum(counter.no_headers.values()):
            log.warning(
                "%d records archived before version 2 have no headers (the archive did not "
                "keep them); restored without",
                sum(counter.no_headers.values()),
            )
    checked = await _verify(
        bootstrap,
        topic,
        {p: (r[0] + len(early.get(p, ())), r[1]) for p, r in results.items()},
    )
    report_parts: dict[int, PartitionRestore] = {}
    for p, plan in plans.items():
        count, _, moved = results[p]
        hw, same_last = checked[p]
        if moved:
            raise RestoreError(
                f"partition {p}: {moved[0]} (the archive has a hole it did not list)"
            )
        if not same_last:
            raise RestoreError(f"partition {p}: the last record in the log is not the archived one")
        report_parts[p] = PartitionRestore(
            p,
            count,
            hw,
            tuple(sorted({s.generation for s in plan.segments})),
            plan.offsets_preserved,
            plan.gaps,
            len(early.get(p, ())),
            counter.no_headers.get(p, 0),
        )
    return report_parts


def restore_log(
    bootstrap: str,
    archive_dir: Path,
    *,
    topic: str = EVENTS,
    progress: Progress | None = None,
    epoch_topic: str = EPOCH_TOPIC,
    max_batch_bytes: int = 1 << 20,
    max_in_flight: int = 8,
    partitions: int | None = None,
    replication_factor: int = 1,
) -> RestoreReport:
    """Refill a fresh broker's ``topic`` from the archive at ``archive_dir``; blocks.

    Call it after the topics exist and before any consumer or producer touches the log.
    - fresh log (every partition of ``topic`` empty): produces every archived record
      (``events/`` and ``dlq/`` rows) into its partition in archived order with its key,
      value bytes, timestamp and headers; verifies each partition's fetch high watermark
      equals the count and the last record's bytes; then writes the log's epoch marker (restored).
    - log not empty: restores nothing (``report.skipped`` says why) and makes sure the log
      has an epoch marker. An empty or missing archive restores nothing and writes a
      fresh marker.
    ``progress(done, total)`` is called as records are acknowledged (for a progress bar).
    ``partitions`` (pass ``settings.partitions``): first delete and re-create any empty
    AgentStream topic a client left running auto-created with Tansu's 4 partitions.
    Raises :class:`RestoreError` (one line naming partition and cause) if the topic is
    missing, has fewer partitions than the archive, or the broker refuses records.
    Safe to call from inside a running event loop (it then runs in a helper thread).
    """

    def make() -> Any:
        return restore_log_async(
            bootstrap,
            archive_dir,
            topic=topic,
            progress=progress,
            epoch_topic=epoch_topic,
            max_batch_bytes=max_batch_bytes,
            max_in_flight=max_in_flight,
            partitions=partitions,
            replication_factor=replication_factor,
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="agentstream-restore")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
