"""The stream processor: advances agents from ``agent-events`` (docs/processing.md).

The work lives in plain classes, so it can be tested and benchmarked without faust:

- :class:`StateCore` (no I/O): decodes raw records with :class:`schemas.codec.EventCodec`,
  folds them into per-agent :class:`~schemas.state.AgentState` with
  :func:`streams.reducer.advance`, and says what to publish. Invalid input becomes a
  :class:`~schemas.deadletter.DeadLetter`; nothing raises on bad input.
- :class:`Publisher`: one aiokafka producer; a batch's outputs are written with
  ``create_batch``/``send_batch`` per partition and awaited before the batch is acked, so a
  committed offset always means "its outputs are on the broker".
- :func:`rebuild_partitions` / :func:`fill_gaps`: the recovery path. The state is
  event-sourced, so a partition this worker does not hold exactly is re-folded from
  ``agent-events`` (offset 0 up to the first record it is about to process), and records
  that never reached the worker are read from the log. Derived ids are deterministic, so
  re-emitted outputs are idempotent upserts.

Two engines drive it. :class:`StreamProcessor` is the faust app (one agent on
``agent-events`` batching with ``take_events``, a table with changelog, faust's commits).
:class:`KafkaProcessor` is the same processing on a plain aiokafka consumer group, for
throughput: faust's per-record dispatch caps a worker far below the 30k events/s goal on
this machine (bench/bench_processor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from schemas.admission import admit, processing_error
from schemas.codec import DEFAULT_MAX_EVENT_BYTES, EventCodec
from schemas.deadletter import DEFAULT_MAX_ORIGINAL_BYTES, dead_letter, encode_dead_letter
from schemas.derived import Episode, Violation, encode_derived
from schemas.envelope import Event
from schemas.errors import InvalidEvent
from schemas.state import AgentState, encode_state
from schemas.topics import DLQ, EPISODES, EVENTS, STATE, VIOLATIONS
from streams.log_identity import LogChange, LogReplaced, LogWatch, fetch_marker
from streams.producer import compression_available, partition_for_key
from streams.reducer import (
    DEFAULT_CONFIG,
    Derived,
    ReducerConfig,
    advance,
    copy_state,
    initial_state,
)
from streams.state_reader import fetch_high_watermarks

if TYPE_CHECKING:
    from agentstream.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_GROUP = "agentstream-processor"
TABLE_NAME = "agent_state"
DEFAULT_MAX_BATCH = 5000
DEFAULT_BATCH_WAIT_S = 0.1
STAGE = "processor"  # DeadLetter.stage of records the reducer raised on
JOURNAL_LIMIT = 10_000  # events kept to undo a failed step; beyond, a fresh snapshot is taken


# --- records in and out ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InRecord:
    """One record of ``agent-events`` as read from the log (value bytes, not decoded)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class BatchOutput:
    """What one batch produced: changed states (latest only), derived records, rejects."""

    changed: dict[str, AgentState] = field(default_factory=dict)
    derived: list[Derived] = field(default_factory=list)
    dead: list[OutRecord] = field(default_factory=list)

    def records(self) -> list[OutRecord]:
        """Everything to publish, derived first, then rejects, then the states."""
        out: list[OutRecord] = []
        for d in self.derived:
            topic = VIOLATIONS if isinstance(d, Violation) else EPISODES
            out.append(OutRecord(topic, d.agent_id.encode(), encode_derived(d)))
        out.extend(self.dead)
        for agent, state in self.changed.items():
            out.append(OutRecord(STATE, agent.encode(), encode_state(state)))
        return out


@dataclass(slots=True)
class ProcessorStats:
    """Counters since start (all plain ints, safe to read from tests and the CLI)."""

    batches: int = 0
    records: int = 0  # records handed to the core, including skipped and rejected
    applied: int = 0  # events that changed a state
    duplicates: int = 0  # valid events ignored by the dedup window
    rejected: int = 0  # records sent to the DLQ
    processing_errors: int = 0  # ... of them admitted, but the reducer raised on them
    redelivered_skipped: int = 0  # records below the partition's applied offset
    log_changes: int = 0  # times the log was found replaced (streams/log_identity.py)
    violations: int = 0
    episodes: int = 0
    states_published: int = 0
    rebuilds: int = 0  # partitions rebuilt from agent-events
    rebuilt_records: int = 0
    rebuild_seconds: float = 0.0
    gaps_filled: int = 0  # times records faust never delivered were read from the log
    gap_records: int = 0
    table_checked: int = 0  # faust table values compared with the rebuilt state
    table_mismatched: int = 0  # ... that were missing or differed (and were corrected)
    publish_retries: int = 0
    next_offset: dict[int, int] = field(default_factory=dict)  # partition -> next to apply


# --- the core: no I/O --------------------------------------------------------------------


class StateCore:
    """Per-worker agent states for the partitions it processes, and the batch step.

    ``next_offset[p]`` is the offset of the next record of partition ``p`` to apply: the
    states of ``p``'s agents are exactly the fold of ``agent-events[p][0:next_offset[p]]``.
    A record below it was already applied (redelivery) and is skipped; a record above it
    (or a partition never seen) means the states are not known to be exact there, and the
    caller must rebuild the partition up to that offset first.
    """

    def __init__(
        self,
        config: ReducerConfig = DEFAULT_CONFIG,
        codec: EventCodec | None = None,
        group_id: str = DEFAULT_GROUP,
        max_original_bytes: int = DEFAULT_MAX_ORIGINAL_BYTES,
        stats: ProcessorStats | None = None,
    ) -> None:
        self.config = config
        self.codec = codec or EventCodec()
        self.group_id = group_id
        self.max_original_bytes = max_original_bytes
        self.states: dict[str, AgentState] = {}
        self.agents_of: dict[int, set[str]] = {}
        self.stats = stats or ProcessorStats()
        self.next_offset = self.stats.next_offset
        self.advance = advance  # the reducer step (a test may wrap it to inject a failure)
        # agent -> (its state before the first step since the journal began, the events
        # applied since): enough to undo a step that raised half-way through the state
        self._journal: dict[str, tuple[AgentState | None, list[Event]]] = {}
        self._journaled = 0

    def decode(self, rec: InRecord) -> Event:
        """The event in ``rec``, or :class:`InvalidEvent` (schemas.admission: the shared rule)."""
        outcome = admit(rec.key, rec.value, self.codec.decode)
        if isinstance(outcome, InvalidEvent):
            raise outcome
        return outcome

    def needs_rebuild(self, partition: int, offset: int) -> bool:
        """Whether the states of ``partition`` are not known exact just before ``offset``."""
        nxt = self.next_offset.get(partition)
        return nxt is None or offset > nxt

    def step(self, records: Sequence[InRecord], start: int, out: BatchOutput) -> int | None:
        """Apply ``records[start:]`` until one needs a rebuild; return its index, or None."""
        next_offset = self.next_offset
        stats = self.stats
        apply = self.apply
        for i in range(start, len(records)):
            rec = records[i]
            nxt = next_offset.get(rec.partition)
            if nxt is None or rec.offset > nxt:
                return i
            stats.records += 1
            if rec.offset < nxt:
                stats.redelivered_skipped += 1
                continue
            next_offset[rec.partition] = rec.offset + 1
            apply(rec, out)
        return None

    def apply(self, rec: InRecord, out: BatchOutput) -> None:
        """Fold one record into its agent's state, collecting what it derives into ``out``.

        Invalid input, and an admitted event the reducer raises on, become dead letters;
        nothing here raises on data.
        """
        outcome = admit(rec.key, rec.value, self.codec.decode)
        if isinstance(outcome, InvalidEvent):
            out.dead.append(self._dead(rec, outcome))
            self.stats.rejected += 1
            return
        derived_before = len(out.derived)
        try:
            changed = self._step(rec.partition, outcome, out.derived)
        except Exception as err:  # a record must not stop the worker
            del out.derived[derived_before:]
            self._undo(rec.partition, outcome.agentid, out)
            out.dead.append(
                self._dead(rec, processing_error(STAGE, err), STAGE, type(err).__name__)
            )
            self.stats.rejected += 1
            self.stats.processing_errors += 1
            log.error(
                "the reducer raised on %s[%d]@%d (%r): dead-lettered as processing_error",
                rec.topic,
                rec.partition,
                rec.offset,
                err,
            )
            return
        if changed:
            out.changed[outcome.agentid] = self.states[outcome.agentid]
            self.stats.applied += 1
        else:
            self.stats.duplicates += 1

    def _step(self, partition: int, event: Event, derived: list[Derived]) -> bool:
        """One reducer step on the agent's state, journaled so that a failure can be undone."""
        agent = event.agentid
        state = self.states.get(agent)
        entry = self._journal.get(agent)
        if entry is None:
            if self._journaled >= JOURNAL_LIMIT:
                self.forget_journal()
            entry = self._journal[agent] = (
                copy_state(state) if state is not None else None,
                [],
            )
        if state is None:
            state = self.states[agent] = initial_state(event)
            self.agents_of.setdefault(partition, set()).add(agent)
        changed = self.advance(state, event, self.config, derived)
        entry[1].append(event)
        self._journaled += 1
        return changed

    def _undo(self, partition: int, agent: str, out: BatchOutput | None) -> None:
        """Put back the agent's state as it was before the step that raised.

        The reducer works in place, so a step that raised may have left the state half
        updated: rebuild it from the journal's snapshot and the events applied since.
        """
        before, events = self._journal.get(agent, (None, []))
        if before is None and not events:
            self.states.pop(agent, None)
            self.agents_of.get(partition, set()).discard(agent)
            if out is not None:
                out.changed.pop(agent, None)
            return
        state = copy_state(before) if before is not None else initial_state(events[0])
        scratch: list[Derived] = []
        for event in events:
            self.advance(state, event, self.config, scratch)
        self.states[agent] = state
        if out is not None and agent in out.changed:
            out.changed[agent] = state

    def forget_journal(self) -> None:
        """Start a new undo window (at each batch; the snapshots are taken lazily)."""
        self._journal.clear()
        self._journaled = 0

    def _dead(
        self,
        rec: InRecord,
        err: InvalidEvent,
        stage: str | None = None,
        error_type: str | None = None,
    ) -> OutRecord:
        record = dead_letter(
            err.as_dict(),
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            timestamp_ms=rec.timestamp_ms,
            key=rec.key,
            value=rec.value,
            rejected_by=self.group_id,
            max_original_bytes=self.max_original_bytes,
            stage=stage,
            error_type=error_type,
        )
        return OutRecord(DLQ, rec.key, encode_dead_letter(record))

    # --- rebuilding ----------------------------------------------------------------------

    def reset_partition(self, partition: int) -> None:
        """Forget the states of ``partition``'s agents (before rebuilding them)."""
        for agent in self.agents_of.pop(partition, ()):
            self.states.pop(agent, None)
            self._journal.pop(agent, None)
        self.next_offset.pop(partition, None)

    def replay(self, rec: InRecord, scratch: list[Derived]) -> None:
        """Fold one historical record silently: its outputs are known to be published."""
        outcome = admit(rec.key, rec.value, self.codec.decode)
        if isinstance(outcome, InvalidEvent):
            return  # it went to the DLQ when it was first processed
        try:
            self._step(rec.partition, outcome, scratch)
        except Exception:  # dead-lettered when it was first processed
            self._undo(rec.partition, outcome.agentid, None)
        scratch.clear()

    def agents_in(self, partition: int) -> set[str]:
        return self.agents_of.get(partition, set())


async def read_log(
    bootstrap: str,
    ranges: dict[int, tuple[int, int]],
    handle: Callable[[InRecord], None],
    topic: str = EVENTS,
    idle_timeout_s: float = 30.0,
) -> int:
    """Hand every record of ``topic[p][start:end]`` to ``handle``, in order per partition.

    Reads with a group-less consumer up to offsets known in advance, so Tansu's wrong end
    offsets never matter. Raises ``TimeoutError`` if the log stops delivering before the
    end of a range. Returns the number of records handled.
    """
    todo = {TopicPartition(topic, p): (s, e) for p, (s, e) in ranges.items() if e > s}
    if not todo:
        return 0
    n = 0
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=8 << 20,
    )
    try:
        await consumer.start()
        consumer.assign(list(todo))
        for tp, (start, _) in todo.items():
            consumer.seek(tp, start)
        last_progress = time.monotonic()
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=500, max_records=20000)
            for tp, msgs in batches.items():
                bounds = todo.get(tp)
                if bounds is None or not msgs:
                    continue
                start, end = bounds
                for m in msgs:
                    if m.offset >= end:
                        break
                    if m.offset >= start:
                        handle(InRecord(topic, tp.partition, m.offset, m.key, m.value, m.timestamp))
                        n += 1
                last_progress = time.monotonic()
            for tp in [tp for tp, (_, e) in todo.items() if await consumer.position(tp) >= e]:
                consumer.pause(tp)
                del todo[tp]
            if todo and time.monotonic() - last_progress > idle_timeout_s:
                raise TimeoutError(f"{topic}: reading stalled before reaching {todo}")
    finally:
        await consumer.stop()
    return n


async def rebuild_partitions(
    core: StateCore,
    bootstrap: str,
    upto: dict[int, int],
    out: BatchOutput,
    emit_from: dict[int, int] | None = None,
    topic: str = EVENTS,
) -> int:
    """Forget, then re-fold ``topic[p][0:upto[p]]`` for each partition; return records read.

    Records below ``emit_from[p]`` are folded silently (their outputs were published when
    they were first processed); records from ``emit_from[p]`` on may never have been
    processed by anyone, so what they derive, reject and change goes into ``out`` to be
    published (again: derived ids are deterministic, consumers upsert).
    """
    emit_from = emit_from or {}
    for p in upto:
        core.reset_partition(p)
    scratch: list[Derived] = []

    def handle(rec: InRecord) -> None:
        if rec.offset >= emit_from.get(rec.partition, upto[rec.partition]):
            core.apply(rec, out)
        else:
            core.replay(rec, scratch)

    n = await read_log(bootstrap, {p: (0, end) for p, end in upto.items()}, handle, topic)
    for p, end in upto.items():
        core.next_offset[p] = end
    return n


async def fill_gaps(
    core: StateCore,
    bootstrap: str,
    gaps: dict[int, tuple[int, int]],
    out: BatchOutput,
    topic: str = EVENTS,
) -> int:
    """Apply ``topic[p][start:end]`` (records this worker never got) with their outputs.

    The partition's states are exact up to ``start`` (= ``next_offset[p]``), so reading
    just the missing range is enough; its outputs may never have been published.
    """

    def handle(rec: InRecord) -> None:
        core.apply(rec, out)

    n = await read_log(bootstrap, gaps, handle, topic)
    for p, (_, end) in gaps.items():
        core.next_offset[p] = end
    return n


EPOCH_TAG = "epoch="  # commit metadata: the log epoch the committed offsets belong to


def commit_tag(epoch: str | None) -> str:
    """Commit metadata naming the log the offsets were read from (streams/log_identity.py)."""
    return f"{EPOCH_TAG}{epoch}" if epoch else ""


async def committed_offsets(
    bootstrap: str,
    group_id: str,
    topic: str,
    partitions: Iterable[int],
    epoch: str | None = None,
) -> dict[int, int]:
    """The group's committed offsets for ``partitions`` (absent when nothing is committed).

    With ``epoch``, an offset committed for another log (its metadata names another epoch:
    a worker that had not yet noticed the broker was replaced) is left out as well.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        # Tansu drops the connection when no partitions are named: name them
        offsets = await admin.list_consumer_group_offsets(
            group_id, partitions=[TopicPartition(topic, p) for p in partitions]
        )
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if meta.offset >= 0
        and not (
            epoch
            and (meta.metadata or "").startswith(EPOCH_TAG)
            and meta.metadata != commit_tag(epoch)
        )
    }


# --- publishing --------------------------------------------------------------------------


class Publisher:
    """Writes a batch's outputs with one aiokafka producer and waits until all are acked."""

    def __init__(
        self,
        bootstrap: str,
        *,
        acks: str | int = "all",
        compression: str | None = None,
        max_request_size: int = 4 << 20,
        max_batch_bytes: int = 1 << 20,
    ) -> None:
        self.bootstrap = bootstrap
        if compression in (None, "none") or not compression_available(compression):  # type: ignore[arg-type]
            compression = None
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "acks": acks,
            "compression_type": compression,
            "max_request_size": max_request_size,
            # aiokafka sends one request per broker at a time, holding one batch per
            # partition: with its 16 KB default a re-fold's outputs (tens of thousands of
            # records) took dozens of round trips per worker batch, each 0.1-0.8 s through
            # the embedded stack's gate. One batch per topic-partition per worker batch.
            "max_batch_size": min(max_batch_bytes, max_request_size),
            "linger_ms": 0,
            "enable_idempotence": False,  # outputs are idempotent by id; Tansu lacks it
        }
        self._client: AIOKafkaProducer | None = None
        self._partitions: dict[str, list[int]] = {}

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._client is None:
            raise RuntimeError("Publisher is not started")
        return self._client

    async def start(self) -> None:
        # created here, inside the running loop; stop() closes it even if start fails
        self._client = AIOKafkaProducer(**self._options)
        await self._client.start()
        for topic in (STATE, VIOLATIONS, EPISODES, DLQ):
            await self._partitions_of(topic)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.stop()

    async def _partitions_of(self, topic: str) -> list[int]:
        parts = self._partitions.get(topic)
        if parts is None:
            found = await self._producer.partitions_for(topic)
            if not found:
                raise KafkaError(f"topic {topic} has no partitions on {self.bootstrap}")
            parts = self._partitions[topic] = sorted(found)
        return parts

    async def publish(self, records: Iterable[OutRecord]) -> int:
        """Send every record (order kept per topic-partition), wait for all acks; return
        how many were published."""
        records = list(records)
        await await_acks(await self.send(records))
        return len(records)

    async def send(self, records: Iterable[OutRecord]) -> list[asyncio.Future[Any]]:
        """Hand every record to the producer (order kept per topic-partition); return the
        futures of their acknowledgements without waiting for them."""
        groups: dict[tuple[str, int], list[OutRecord]] = {}
        for r in records:
            parts = self._partitions.get(r.topic) or await self._partitions_of(r.topic)
            p = partition_for_key(r.key, parts) if r.key is not None else parts[0]
            groups.setdefault((r.topic, p), []).append(r)
        futures: list[asyncio.Future[Any]] = []
        for (topic, p), recs in groups.items():
            i = 0
            while i < len(recs):
                batch = self._producer.create_batch()
                j = i
                while j < len(recs) and (
                    batch.append(key=recs[j].key, value=recs[j].value, timestamp=None) is not None
                ):
                    j += 1
                if j == i:
                    raise ValueError(
                        f"an output record for {topic} is larger than the producer's "
                        f"max_request_size ({len(recs[i].value)} bytes)"
                    )
                futures.append(await self._producer.send_batch(batch, topic, partition=p))
                i = j
        return futures


async def await_acks(futures: list[asyncio.Future[Any]]) -> None:
    """Wait for every acknowledgement; raise the first error after all have settled."""
    if futures:
        results = await asyncio.gather(*futures, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r


# --- the faust app -----------------------------------------------------------------------


def _faust_brokers(bootstrap: str) -> list[str]:
    return [f"kafka://{b.strip()}" for b in bootstrap.split(",") if b.strip()]


class _Processor(ABC):
    """What both engines share: the core, the publisher, rebuild/gap handling, a batch."""

    engine = ""

    def __init__(
        self,
        bootstrap: str,
        *,
        group_id: str,
        config: ReducerConfig,
        max_event_bytes: int,
        max_batch: int,
        batch_wait_s: float,
        compression: str | None,
    ) -> None:
        if max_batch < 1 or batch_wait_s <= 0:
            raise ValueError("max_batch must be >= 1 and batch_wait_s > 0")
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.stats = ProcessorStats()
        self.core = StateCore(config, EventCodec(max_event_bytes), group_id, stats=self.stats)
        self.publisher = Publisher(
            bootstrap,
            compression=compression,
            max_request_size=max(4 << 20, 2 * max_event_bytes),
        )
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._gaps: list[tuple[int, int, int]] = []  # (partition, first, end) read ourselves
        # which log this is (streams/log_identity.py); started by run()
        self.log_watch: LogWatch | None = None
        self._check_log_now = False  # set on a rebalance: look at the log's identity at once
        self._reemit: set[int] = set()  # partitions to re-emit from offset 0 (a new log)
        self._log_lock = asyncio.Lock()  # one identity read at a time (one marker consumer)

    async def handle(self, records: Sequence[InRecord]) -> BatchOutput:
        """Process one batch end to end: rebuild if needed, reduce, publish."""
        out = await self.prepare(records)
        await self._publish(out)
        return out

    async def prepare(self, records: Sequence[InRecord]) -> BatchOutput:
        """Rebuild or fill partitions where needed and reduce the batch; publish nothing."""
        core = self.core
        core.forget_journal()
        out = BatchOutput()
        firsts: dict[int, int] = {}
        for r in records:
            firsts.setdefault(r.partition, r.offset)
        await self._check_log(firsts)
        stale = {p: off for p, off in firsts.items() if core.needs_rebuild(p, off)}
        if stale:
            await self._rebuild(stale, out)
        i: int | None = 0
        while i is not None:
            i = core.step(records, i, out)
            if i is not None:  # a gap inside the batch: fill that partition up to it
                r = records[i]
                await self._rebuild({r.partition: r.offset}, out)
        self.stats.batches += 1
        return out

    async def _rebuild(self, upto: dict[int, int], out: BatchOutput) -> None:
        """Make the states of ``upto``'s partitions exact up to (excluding) those offsets.

        A partition this worker already holds has a gap: records ``next_offset..upto`` never
        reached it (faust dropped them, or another worker had the partition meanwhile).
        They are read from the log and applied with their outputs. A partition new to this
        worker is re-folded from offset 0; its outputs are re-emitted from the group's
        committed offset on (below it they are known to be published).
        """
        started = time.monotonic()
        core = self.core
        gaps = {p: (core.next_offset[p], end) for p, end in upto.items() if p in core.next_offset}
        fresh = {p: end for p, end in upto.items() if p not in core.next_offset}
        if gaps:
            log.warning(
                "records that never reached this worker, read from the log instead: %s",
                {p: f"{s}..{e - 1}" for p, (s, e) in gaps.items()},
            )
            await fill_gaps(core, self.bootstrap, gaps, out)
            self.stats.gaps_filled += len(gaps)
            self.stats.gap_records += sum(e - s for s, e in gaps.values())
            self._gaps.extend((p, s, e) for p, (s, e) in gaps.items())
        if fresh:
            epoch = self.log_watch.epoch if self.log_watch else None
            committed = await committed_offsets(self.bootstrap, self.group_id, EVENTS, fresh, epoch)
            emit_from = {p: min(committed.get(p, 0), end) for p, end in fresh.items()}
            for p in self._reemit.intersection(fresh):  # a new log: its derived topics are new
                emit_from[p] = 0
            self._reemit.difference_update(fresh)
            rebuilt = await rebuild_partitions(core, self.bootstrap, fresh, out, emit_from)
            for agent in out.changed:  # states changed earlier in this batch were replaced
                out.changed[agent] = core.states.get(agent, out.changed[agent])
            self._gaps.extend((p, emit_from[p], e) for p, e in fresh.items() if emit_from[p] < e)
            self.stats.rebuilds += len(fresh)
            self.stats.rebuilt_records += rebuilt
            log.info(
                "rebuilt partitions %s from %d records (%d re-emitted) in %.3fs",
                fresh,
                rebuilt,
                sum(e - emit_from[p] for p, e in fresh.items()),
                time.monotonic() - started,
            )
            self._rebuilt(fresh)
        self.stats.rebuild_seconds += time.monotonic() - started

    async def _start_log_watch(self) -> None:
        self.log_watch = LogWatch(self.bootstrap, f"processor:{self.group_id}")
        await self.log_watch.start()

    async def _stop_log_watch(self) -> None:
        if self.log_watch is not None:
            await self.log_watch.stop()

    def _highwaters(self) -> dict[int, int | None]:
        """Fetch high watermarks of agent-events partitions, where the engine knows them."""
        return {}

    async def _check_log(self, firsts: dict[int, int]) -> None:
        """Before a batch: is this still the log the states were folded from?

        Looked at once a second, and at once after a rebalance or when a partition's
        batch does not continue where its state stands. A new log (the embedded broker
        restarted, restored or not) or a high watermark below a position: every state is
        forgotten and re-folded from the new log, and everything is re-emitted, since
        the derived topics of a new log start empty (outputs are idempotent by id).
        """
        nxt = self.core.next_offset
        force = self._check_log_now or any(nxt.get(p) != off for p, off in firsts.items())
        self._check_log_now = False
        await self._same_log(force, firsts)

    async def _same_log(self, force: bool = True, firsts: Iterable[int] = ()) -> bool:
        """False (after forgetting every state) when the log is not the one being read."""
        watch = self.log_watch
        if watch is None:
            return True
        async with self._log_lock:
            change = await watch.check(dict(self.core.next_offset), self._highwaters(), force=force)
        if change is None:
            return True
        self._log_replaced(change)
        await watch.accept()
        # every partition of the new log re-emits from 0 when this worker first meets it
        self._reemit = set(firsts) | set(await fetch_high_watermarks(self.bootstrap, EVENTS))
        return False

    def _log_replaced(self, change: LogChange) -> None:
        core = self.core
        held = sorted(set(core.next_offset) | set(core.agents_of))
        log.warning("%s: forgetting the states of partitions %s, re-folding them", change, held)
        for p in held:
            core.reset_partition(p)
        self.stats.log_changes += 1

    def _rebuilt(self, partitions: Iterable[int]) -> None:  # noqa: B027 (optional hook)
        """Hook: partitions were rebuilt from the log."""

    def _published(self, out: BatchOutput) -> None:  # noqa: B027 (optional hook)
        """Hook: a batch's outputs are on the broker."""

    async def _publish(self, out: BatchOutput) -> None:
        """Publish ``out`` and wait until all of it is acknowledged, retrying as needed."""
        delay = 0.2
        while True:
            try:
                await self.publisher.publish(out.records())
                break
            except (KafkaError, OSError, TimeoutError) as err:
                # not acked, not committed: retry until the broker takes it (backpressure)
                delay = await self._publish_failed(out, err, delay)
                if not await self._same_log():
                    return  # outputs of the old log must not reach a new one
        self._count(out)

    async def _publish_failed(self, out: BatchOutput, err: BaseException, delay: float) -> float:
        """Log, back off, and make ``out`` carry the agents' *current* states for the retry
        (a later batch may already have published newer ones: never go back to older)."""
        self.stats.publish_retries += 1
        log.warning("publishing a batch's outputs failed (%r); retrying", err)
        for agent in out.changed:
            out.changed[agent] = self.core.states.get(agent, out.changed[agent])
        await asyncio.sleep(delay)
        return min(delay * 2, 5.0)

    def _count(self, out: BatchOutput) -> None:
        for d in out.derived:
            if isinstance(d, Episode):
                self.stats.episodes += 1
            else:
                self.stats.violations += 1
        self.stats.states_published += len(out.changed)
        self._published(out)

    @abstractmethod
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set."""


class StreamProcessor(_Processor):
    """The faust worker: one agent on agent-events, a table with changelog, faust commits."""

    engine = "faust"

    def __init__(
        self,
        bootstrap: str,
        data_dir: Path,
        *,
        group_id: str = DEFAULT_GROUP,
        partitions: int = 6,
        replication_factor: int = 1,
        config: ReducerConfig = DEFAULT_CONFIG,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        compression: str | None = None,
        commit_interval_s: float = 1.0,
        session_timeout_s: float = 10.0,
        use_table: bool = True,
    ) -> None:
        import faust
        import mode

        super().__init__(
            bootstrap,
            group_id=group_id,
            config=config,
            max_event_bytes=max_event_bytes,
            max_batch=max_batch,
            batch_wait_s=batch_wait_s,
            compression=compression,
        )
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            group_id,
            broker=_faust_brokers(bootstrap),
            store="memory://",
            datadir=str(data_dir / "faust"),
            topic_partitions=partitions,
            topic_replication_factor=replication_factor,
            table_standby_replicas=0,
            broker_session_timeout=session_timeout_s,
            broker_heartbeat_interval=1,
            broker_commit_interval=commit_interval_s,
            consumer_auto_offset_reset="earliest",
            stream_buffer_maxsize=max(4096, 2 * max_batch),
            agent_supervisor=mode.CrashingSupervisor,
            web_enabled=False,
            key_serializer="raw",
            value_serializer="raw",
        )
        # value bytes in, decoded by EventCodec (not per-event faust Records)
        self.events_topic = self.app.topic(
            EVENTS, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        self.table = (
            self.app.Table(
                TABLE_NAME,
                default=None,
                partitions=partitions,
                use_partitioner=True,  # batches mix partitions: route changelog by key
                key_type=bytes,  # the table's serializers come from these, not from schema
                value_type=bytes,
                schema=faust.Schema(
                    key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
                ),
                help="latest AgentState JSON per agent id (mirror; see docs/processing.md)",
            )
            if use_table
            else None
        )

        async def advance_agents(stream: Any) -> None:
            await self._agent(stream)

        self.app.agent(self.events_topic, name="advance-agents")(advance_agents)

    async def _agent(self, stream: Any) -> None:
        """The one faust agent on agent-events.

        ``take_events`` acks a batch in a ``finally``, even when the body raised or was
        cancelled. Each message gets one extra reference first, dropped only after its
        outputs are published: a batch that did not finish is never acked, so never
        committed, and is redelivered after a restart.
        """
        async for events in stream.take_events(self.max_batch, within=self.batch_wait_s):
            for e in events:
                e.message.incref()
            try:
                await self.handle([_in_record(e.message) for e in events])
            except Exception:
                log.exception("batch of %d events failed; stopping the worker", len(events))
                raise
            if self._gaps:
                await self._release_gaps()
            for e in events:
                e.message.decref()

    async def _release_gaps(self) -> None:
        """Let faust commit past offsets it never delivered and we applied from the log.

        After a rebalance faust can drop fetched records without ever delivering them to
        the agent (docs/processing.md). They are never acked, so faust's committed offset
        would stop at the first of them forever. We apply them ourselves (see
        :meth:`_rebuild`), then declare them a gap: the same bookkeeping faust does itself
        when its fetch position jumps.
        """
        gaps, self._gaps = self._gaps, []
        consumer = getattr(self.app, "consumer", None)
        add_gap = getattr(consumer, "_add_gap", None)  # faust-streaming 0.15: private API
        if add_gap is None:
            log.warning("this faust has no Consumer._add_gap: commits may stall after %s", gaps)
            return
        from faust.types import TP

        for p, start, end in gaps:
            await add_gap(TP(EVENTS, p), start, end - 1)

    def _rebuilt(self, partitions: Iterable[int]) -> None:
        if self.table is not None:
            self._check_table(partitions)

    def _check_table(self, partitions: Iterable[int]) -> None:
        """Compare what faust recovered into the table with the rebuilt truth; correct it."""
        assert self.table is not None
        partitions = sorted(partitions)
        checked = mismatched = 0
        for p in partitions:
            for agent in self.core.agents_in(p):
                truth = encode_state(self.core.states[agent])
                key = agent.encode()
                checked += 1
                if self.table.get(key) != truth:
                    mismatched += 1
                    self.table[key] = truth
        self.stats.table_checked += checked
        self.stats.table_mismatched += mismatched
        if checked:
            log.info(
                "faust table vs rebuilt state for partitions %s: %d agents, %d missing or "
                "stale in the table (corrected)",
                partitions,
                checked,
                mismatched,
            )

    def _published(self, out: BatchOutput) -> None:
        if self.table is not None:
            for agent, state in out.changed.items():
                self.table[agent.encode()] = encode_state(state)

    def _log_replaced(self, change: LogChange) -> None:
        """faust creates its changelog topic and group only when the app starts: on a new
        log it cannot go on. Stop with the reason; a fresh start (the supervisor restarts
        the worker) re-folds every partition from the new log."""
        super()._log_replaced(change)
        raise LogReplaced(change)

    async def _watch_log(self, interval_s: float = 1.0) -> None:
        """Look at the log's identity every second even when no batch arrives.

        faust's consumer can spend a long time re-joining its group on a new broker; the
        batch path would not look at the log until then. Raises ``LogReplaced``.
        """
        while True:
            await asyncio.sleep(interval_s)
            await self._same_log(force=False)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or the app crashes: then raise its reason)."""
        stop = stop or asyncio.Event()
        try:
            await self.publisher.start()
            await self._start_log_watch()
            await self.app.start()
            stopped = asyncio.ensure_future(self.app.wait_until_stopped())
            asked = asyncio.ensure_future(stop.wait())
            watched = asyncio.ensure_future(self._watch_log())
            try:
                await asyncio.wait({stopped, asked, watched}, return_when=asyncio.FIRST_COMPLETED)
                if watched.done() and not watched.cancelled() and watched.exception():
                    raise watched.exception()  # type: ignore[misc]
            finally:
                for f in (stopped, asked, watched):
                    f.cancel()
        finally:
            with contextlib.suppress(Exception):
                await self.app.stop()
            await self._stop_log_watch()
            await self.publisher.stop()
        reason = getattr(self.app, "crash_reason", None)
        if reason is not None:
            raise RuntimeError(f"processor crashed: {reason!r}") from reason


def _in_record(m: Any) -> InRecord:
    """A faust Message (timestamp in seconds) as an InRecord."""
    ts = int(m.timestamp * 1000) if m.timestamp else None
    return InRecord(m.topic, m.partition, m.offset, m.key, m.value, ts)


class _FinishBeforeRevoke(ConsumerRebalanceListener):
    """Before partitions are taken away, finish and commit the batches in flight."""

    def __init__(self, processor: KafkaProcessor) -> None:
        self._processor = processor

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._processor.finish_inflight()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._processor._check_log_now = True  # a rebalance: also what a new broker causes


@dataclass(slots=True)
class _InFlight:
    """A batch whose outputs are sent but not yet known to be acknowledged."""

    out: BatchOutput
    acks: list[asyncio.Future[Any]]
    offsets: dict[TopicPartition, int]


class KafkaProcessor(_Processor):
    """The same processing on a plain aiokafka consumer group (no faust, no table).

    faust dispatches every record through several tasks and queues (~100 µs of CPU per
    record here), which caps a worker far below a raw consumer. This engine reads with
    ``getmany`` in batches. While the broker acknowledges one batch's outputs, the next
    batch is reduced; a batch's offsets are committed only once its outputs are all
    acknowledged. Same outputs, same recovery, same guarantees.
    """

    engine = "aiokafka"

    def __init__(
        self,
        bootstrap: str,
        *,
        group_id: str = DEFAULT_GROUP,
        config: ReducerConfig = DEFAULT_CONFIG,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        compression: str | None = None,
        session_timeout_s: float = 10.0,
        **_ignored: Any,
    ) -> None:
        super().__init__(
            bootstrap,
            group_id=group_id,
            config=config,
            max_event_bytes=max_event_bytes,
            max_batch=max_batch,
            batch_wait_s=batch_wait_s,
            compression=compression,
        )
        self.session_timeout_s = session_timeout_s
        self._lock = asyncio.Lock()
        self._inflight: _InFlight | None = None
        self._consumer: AIOKafkaConsumer | None = None

    def _highwaters(self) -> dict[int, int | None]:
        consumer = self._consumer
        if consumer is None:
            return {}
        return {tp.partition: consumer.highwater(tp) for tp in consumer.assignment()}

    def _log_replaced(self, change: LogChange) -> None:
        # the batch in flight belongs to the old log: its offsets must not be committed
        self._inflight = None
        super()._log_replaced(change)

    async def finish_inflight(self) -> None:
        """Wait for the batch in flight (re-publishing it if it failed), then commit it."""
        async with self._lock:
            await self._finish()

    async def _finish(self) -> None:
        flight, self._inflight = self._inflight, None
        if flight is None:
            return
        delay = 0.2
        acks = flight.acks
        while True:
            try:
                await await_acks(acks)
                break
            except (KafkaError, OSError, TimeoutError) as err:
                delay = await self._publish_failed(flight.out, err, delay)
                if not await self._same_log():
                    return  # the old log's batch: neither re-published nor committed
                acks = await self._send(flight.out)
        self._count(flight.out)
        assert self._consumer is not None
        tag = commit_tag(self.log_watch.epoch if self.log_watch else None)
        offsets: dict[TopicPartition, Any] = dict(flight.offsets)
        if tag:  # which log these positions are in: a fresh worker trusts only its own log's
            offsets = {tp: OffsetAndMetadata(off, tag) for tp, off in offsets.items()}
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as err:
            # the partitions were taken away meanwhile: their next owner redoes the batch
            # (outputs are idempotent), nothing is lost
            log.warning("commit after a rebalance failed (%s)", err)

    async def _send(self, out: BatchOutput) -> list[asyncio.Future[Any]]:
        """Hand ``out`` to the producer; a failure to even send becomes a failed ack."""
        try:
            return await self.publisher.send(out.records())
        except (KafkaError, OSError, TimeoutError) as err:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(err)
            return [failed]

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume, process and commit batch by batch until ``stop`` is set."""
        stop = stop or asyncio.Event()
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.session_timeout_s * 1000),
            heartbeat_interval_ms=1000,
            max_partition_fetch_bytes=8 << 20,
            fetch_max_wait_ms=int(min(self.batch_wait_s, 0.5) * 1000),
            metadata_max_age_ms=5000,  # a restarted broker's re-created partitions, soon
        )
        consumer.subscribe([EVENTS], listener=_FinishBeforeRevoke(self))
        try:
            await self.publisher.start()
            await self._start_log_watch()
            await consumer.start()
            wait_ms = int(self.batch_wait_s * 1000)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=wait_ms, max_records=self.max_batch)
                async with self._lock:
                    if not batches:
                        await self._finish()  # idle: do not leave a batch uncommitted
                        continue
                    records = [
                        InRecord(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp)
                        for tp, msgs in batches.items()
                        for m in msgs
                    ]
                    out = await self.prepare(records)
                    acks = await self._send(out)
                    await self._finish()  # the previous batch, acknowledged meanwhile
                    offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batches.items() if msgs}
                    self._inflight = _InFlight(out, acks, offsets)
                    self._gaps.clear()  # commits are explicit here: nothing to release
            async with self._lock:
                await self._finish()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            await self._stop_log_watch()
            await self.publisher.stop()


Engine = Literal["faust", "aiokafka"]
ENGINES: tuple[str, ...] = ("faust", "aiokafka")


def build_app(
    settings: Settings | None = None,
    *,
    bootstrap: str | None = None,
    data_dir: Path | None = None,
    group_id: str = DEFAULT_GROUP,
    config: ReducerConfig = DEFAULT_CONFIG,
    engine: Engine = "faust",
    **options: Any,
) -> StreamProcessor | KafkaProcessor:
    """The processor for ``settings`` (or an explicit bootstrap and data dir).

    ``engine="faust"`` (default) is the faust app; ``"aiokafka"`` the same processing on a
    plain consumer group, for throughput (docs/processing.md).
    """
    if settings is None and bootstrap is None:
        from agentstream.settings import load_settings

        settings = load_settings()
    if settings is not None:
        options.setdefault("partitions", settings.partitions)
        options.setdefault("replication_factor", settings.replication_factor)
        options.setdefault("max_event_bytes", settings.max_event_bytes)
        options.setdefault("compression", settings.producer_compression)
    bootstrap = bootstrap or (settings.bootstrap_servers if settings else "")
    if engine == "aiokafka":
        for faust_only in ("partitions", "replication_factor", "commit_interval_s", "use_table"):
            options.pop(faust_only, None)
        return KafkaProcessor(bootstrap, group_id=group_id, config=config, **options)
    if engine != "faust":
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return StreamProcessor(
        bootstrap,
        data_dir or (settings.data_dir if settings else Path(".agentstream")) / "processor",
        group_id=group_id,
        config=config,
        **options,
    )


# --- progress ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """Committed offsets of the processor's group vs the fetch high watermarks."""

    committed: dict[int, int]
    highwater: dict[int, int]

    @property
    def lag(self) -> int:
        return sum(max(0, hw - self.committed.get(p, 0)) for p, hw in self.highwater.items())

    @property
    def caught_up(self) -> bool:
        """Every record of agent-events is processed and its outputs are published."""
        return self.lag == 0


async def processor_progress(
    bootstrap: str, group_id: str = DEFAULT_GROUP, topic: str = EVENTS
) -> Progress:
    """Where the processor group stands. Uses fetch high watermarks (Tansu's end offsets lie).

    Offsets committed for another incarnation of the log (a worker that had not noticed a
    broker restart yet) do not count: they are not positions in this log.
    """
    highwater = await fetch_high_watermarks(bootstrap, topic)
    marker = await fetch_marker(bootstrap)
    epoch = marker.epoch if marker else None
    committed = await committed_offsets(bootstrap, group_id, topic, highwater, epoch)
    return Progress(committed, highwater)
