"""Rebuilding read models from the log: fresh target, feed, switch over, continue live.

One pass over history (Kafka or the Parquet archive, :mod:`streams.log_reader`) feeds every
requested model through the code paths live consumption uses: the reducer
(:func:`streams.reducer.advance`) re-derives agent states, violations and episodes from the
events, and each projection's batch writer applies them. Rows from the archive go into
analytics as Arrow as they are (``apply_table``): no JSON round trip for the events table.

The protocol, for each model, with no gap and no double count:

1. Capture the high watermarks of the derived topics (violations, episodes, state) *first*,
   then read ``agent-events`` up to its high watermark captured when reading starts
   (after the archive, the archive's end is continued from Kafka). Everything the
   processor had derived when (1) ran came from events before that second watermark, so the
   rebuild re-derives it; anything derived later is still ahead of the live projection.
2. Build into a fresh target (a new ClickHouse database, graph or Chroma collection):
   readers keep using the live one.
3. Switch: stop the live projection (the caller's :class:`LiveControl`), swap the fresh
   target in atomically (``replace_live_with``), set the live projection's consumer group
   to exactly where the rebuild stopped (events) and to the watermarks of (1) (derived
   topics), start it again. It continues from there; what it sees twice (derived records
   re-derived here and published again by the processor) is absorbed by the projections'
   idempotent writes.

``state`` has no separate store to swap: the latest state per agent lives in the compacted
``agent-state`` topic. Rebuilding it re-folds history and publishes the states that differ
from the latest recorded ones (per agent, a record replaces the previous one).

``--from T`` keeps only events from T on (per partition, from the first record whose log
timestamp is >= T) and what they derive; the reducer still folds all history before T, so
states are exact. ``--to T`` builds a point-in-time model and is only allowed without
switching (``switch=False``): a model that stops at T cannot be live without the events
after T.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.derived import Episode, Violation
from schemas.envelope import Event
from schemas.state import AgentState
from schemas.topics import EPISODES, EVENTS, STATE, VIOLATIONS
from streams.archive import fetch_high_watermarks, plan_resume
from streams.log_reader import (
    ArchiveLogSource,
    KafkaLogSource,
    LogBatch,
    LogRecord,
    LogSource,
    TimeWindow,
)
from streams.reducer import DEFAULT_CONFIG, Derived, ReducerConfig, advance, initial_state

log = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("analytics", "graph", "memory", "state")
Source = Literal["kafka", "archive"]
DERIVED_TOPICS: tuple[str, ...] = (VIOLATIONS, EPISODES, STATE)


class RebuildError(RuntimeError):
    """A rebuild cannot start or cannot finish; the message says why and what to do."""


# --- what a model receives ------------------------------------------------------------------


@dataclass
class Chunk:
    """One slice of history, in log order per agent, ready for the models."""

    rows: pa.Table | None  # the events in the window as flat rows (EVENT_ROW_SCHEMA)
    events: list[tuple[LogRecord, Event]]  # the same events, decoded
    violations: list[Violation]  # derived from events in the window
    episodes: list[Episode]


class Target(Protocol):
    """One read model being rebuilt. Blocking methods: the orchestrator runs them in a thread."""

    model: str
    build_name: str  # the fresh database / graph / collection being built
    group_id: str | None  # the live projection's consumer group (None: no live projection)
    topics: tuple[str, ...]  # the topics that group consumes

    def prepare(self) -> None:
        """Create the fresh, empty build target (dropping a leftover of the same name)."""

    def apply(self, chunk: Chunk) -> None:
        """Write one chunk into the build target."""

    def finish(self, states: dict[str, AgentState]) -> None:
        """Write what only the end of history knows (the agents' final states)."""

    def switch(self) -> None:
        """Make the build target the live one, atomically for readers."""

    def discard(self) -> None:
        """Drop the build target (the rebuild failed or was not switched in)."""

    def close(self) -> None: ...


class LiveControl(Protocol):
    """Stops and restarts the live projections around the switch (tests, demo, stack)."""

    async def pause(self, models: Sequence[str]) -> None: ...

    async def resume(self, models: Sequence[str]) -> None: ...


# --- the targets ----------------------------------------------------------------------------


def build_suffix(now: datetime | None = None) -> str:
    """A name part for fresh targets: ``rebuild_20260101_120000``."""
    return f"rebuild_{(now or datetime.now(UTC)):%Y%m%d_%H%M%S}"


class AnalyticsTarget:
    """ClickHouse: a fresh database, swapped in with EXCHANGE TABLES."""

    model = "analytics"
    topics: tuple[str, ...] = (EVENTS, VIOLATIONS, EPISODES, STATE)

    def __init__(self, url: str, build_name: str, group_id: str = "agentstream-analytics") -> None:
        from projections.analytics.projection import AnalyticsProjection

        self.url, self.build_name, self.group_id = url, build_name, group_id
        self.projection = AnalyticsProjection(url, database=build_name)

    def prepare(self) -> None:
        from projections.analytics.store import AnalyticsStore

        with AnalyticsStore(self.url, self.build_name) as leftover:
            leftover.drop()
        self.projection.setup()

    def apply(self, chunk: Chunk) -> None:
        if chunk.rows is not None and chunk.rows.num_rows:
            self.projection.apply_table(chunk.rows)
        if chunk.violations:
            self.projection.apply_violations(chunk.violations)
        if chunk.episodes:
            self.projection.apply_episodes(chunk.episodes)

    def finish(self, states: dict[str, AgentState]) -> None:
        if states:
            self.projection.apply_states(list(states.values()))
        fixed = self.projection.repair_rollups()  # a no-op unless an insert failed half-way
        if fixed:
            log.warning("rebuild: analytics rollups repaired: %s", fixed)

    def switch(self) -> None:
        from projections.analytics.projection import AnalyticsProjection
        from projections.analytics.store import AnalyticsStore

        live = AnalyticsProjection(self.url)
        live.setup()  # the live model exists and is at the current schema version
        live.close()
        with AnalyticsStore(self.url) as store:
            store.replace_live_with(self.build_name)

    def discard(self) -> None:
        from projections.analytics.store import AnalyticsStore

        self.projection.close()
        with AnalyticsStore(self.url, self.build_name) as store:
            store.drop()

    def close(self) -> None:
        self.projection.close()


class GraphTarget:
    """The causality graph: a fresh graph (FalkorDB key / Neo4j database), swapped in."""

    model = "graph"
    topics: tuple[str, ...] = (EVENTS, VIOLATIONS)

    def __init__(
        self,
        url: str,
        live_graph: str,
        build_name: str,
        *,
        user: str | None = None,
        password: str | None = None,
        group_id: str = "agentstream-graph",
    ) -> None:
        from projections.graph.store import open_store

        self.url, self.live_graph, self.build_name, self.group_id = (
            url,
            live_graph,
            build_name,
            group_id,
        )
        self._auth = {"user": user, "password": password}
        self.store = open_store(url, build_name, **self._auth)

    def prepare(self) -> None:
        self.store.clear()
        self.store.setup()

    def apply(self, chunk: Chunk) -> None:
        from projections.graph.projection import project

        if chunk.events or chunk.violations:
            project(self.store, [e for _, e in chunk.events], chunk.violations)

    def finish(self, states: dict[str, AgentState]) -> None:
        pass

    def switch(self) -> None:
        from projections.graph.store import open_store

        live = open_store(self.url, self.live_graph, **self._auth)
        try:
            live.replace_live_with(self.build_name)
            live.setup()  # indexes belong to the graph that is now live
        finally:
            live.close()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.store.clear()

    def close(self) -> None:
        self.store.close()


class MemoryTarget:
    """Episodic memory: a fresh Chroma collection, renamed into place."""

    model = "memory"
    topics: tuple[str, ...] = (EPISODES,)

    def __init__(
        self, live_store: Any, build_name: str, group_id: str = "agentstream-memory"
    ) -> None:
        from projections.memory.projection import MemoryProjection

        self.live, self.build_name, self.group_id = live_store, build_name, group_id
        self.store = live_store.with_collection(build_name)
        self.projection = MemoryProjection(self.store)

    def prepare(self) -> None:
        self.store.drop()
        self.projection.setup()

    def apply(self, chunk: Chunk) -> None:
        if chunk.episodes:
            self.projection.apply_episodes(chunk.episodes)

    def finish(self, states: dict[str, AgentState]) -> None:
        pass

    def switch(self) -> None:
        self.live.replace_live_with(self.build_name)

    def discard(self) -> None:
        self.store.drop()

    def close(self) -> None:
        pass


class StateTarget:
    """``agent-state``: correct recorded states that the re-folded history contradicts.

    The processor keeps publishing while a rebuild runs, so the rebuild's final states may
    be older than what is recorded by the time it ends; publishing them blindly would move
    agents back in time. Instead: the latest recorded state of each agent is read first;
    when the fold reaches the event that state was recorded after (its ``last_event_id``),
    the two must be equal. An agent whose recorded state differs there, or that has none,
    gets the rebuilt state published, unless the processor has recorded a newer state for
    it meanwhile (then that one, computed from the same log, stands).
    """

    model = "state"
    topics: tuple[str, ...] = ()
    group_id = None

    def __init__(self, bootstrap: str, build_name: str = "agent-state") -> None:
        self.bootstrap, self.build_name = bootstrap, build_name
        self.recorded: dict[str, AgentState] = {}
        self.watch: dict[str, str] = {}  # agent -> the event its recorded state follows
        self.mismatched: set[str] = set()
        self.final: dict[str, AgentState] = {}
        self.differing: list[str] = []
        self.published = 0

    def prepare(self) -> None:
        from streams.state_reader import read_states

        self.recorded = _run_coroutine(read_states(self.bootstrap))
        self.watch = {a: s.last_event_id for a, s in self.recorded.items() if s.last_event_id}

    def observe(self, agent: str, state: AgentState) -> None:
        """Called by the fold right after the event in ``watch`` was applied for ``agent``."""
        if state != self.recorded[agent]:
            self.mismatched.add(agent)

    def apply(self, chunk: Chunk) -> None:
        pass

    def finish(self, states: dict[str, AgentState]) -> None:
        from streams.state_reader import read_states

        self.final = states
        now = _run_coroutine(read_states(self.bootstrap))
        differing = []
        for agent in states:
            before, latest = self.recorded.get(agent), now.get(agent)
            if before is None and latest is None:
                differing.append(agent)  # never recorded
            elif agent in self.mismatched and latest == before:
                differing.append(agent)  # recorded wrong, and nothing newer since
        self.differing = sorted(differing)

    def switch(self) -> None:
        from schemas.state import encode_state
        from streams.processor import OutRecord, Publisher

        async def publish() -> int:
            pub = Publisher(self.bootstrap)
            await pub.start()
            try:
                return await pub.publish(
                    OutRecord(STATE, a.encode(), encode_state(self.final[a]))
                    for a in self.differing
                )
            finally:
                await pub.stop()

        self.published = _run_coroutine(publish()) if self.differing else 0

    def discard(self) -> None:
        pass

    def close(self) -> None:
        pass


def _run_coroutine(coro: Any) -> Any:
    """Run a coroutine from a worker thread (targets are called via ``asyncio.to_thread``)."""
    return asyncio.run(coro)


# --- the orchestrator ---------------------------------------------------------------------


@dataclass
class RebuildOptions:
    bootstrap: str
    source: Source = "kafka"
    archive_root: Path | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    switch: bool = True
    chunk_rows: int = 50_000
    tail: bool = True  # after the archive, continue from Kafka (needed to switch)
    reducer_config: ReducerConfig = DEFAULT_CONFIG
    reducer: Callable[[AgentState, Event, ReducerConfig, list[Derived]], bool] = advance


@dataclass
class Progress:
    """What the progress display needs; ``total`` is known once the sources started."""

    read: int = 0
    total: int | None = None
    applied: int = 0
    phase: str = "reading"


@dataclass
class RebuildResult:
    models: list[str]
    source: str
    switched: bool
    build_names: dict[str, str]
    records_read: int = 0
    events: int = 0  # valid events folded
    events_applied: int = 0  # events inside the window, written to the models
    invalid: int = 0
    violations: int = 0
    episodes: int = 0
    agents: int = 0
    seconds: float = 0.0
    model_seconds: dict[str, float] = field(default_factory=dict)
    read_seconds: float = 0.0  # reading + decoding + folding (shared by all models)
    end_offsets: dict[str, dict[int, int]] = field(default_factory=dict)  # topic -> p -> next
    generations: list[int] = field(default_factory=list)
    states_published: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def capture_high_watermarks(
    bootstrap: str, topics: Sequence[str]
) -> dict[str, dict[int, int]]:
    """topic -> partition -> fetch high watermark (right even where end_offsets is not)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        out: dict[str, dict[int, int]] = {}
        await consumer.topics()  # metadata of every topic, without naming (creating) one
        tps: list[TopicPartition] = []
        for topic in topics:  # all partitions first: assign() narrows the metadata
            parts = sorted(consumer.partitions_for_topic(topic) or ())
            if not parts:
                raise RebuildError(f"topic {topic} does not exist on {bootstrap}")
            tps += [TopicPartition(topic, p) for p in parts]
        for tp, hw in (await fetch_high_watermarks(consumer, tps)).items():
            out.setdefault(tp.topic, {})[tp.partition] = hw
        return out
    finally:
        await consumer.stop()


async def set_group_offsets(
    bootstrap: str,
    group_id: str,
    topics: Sequence[str],
    offsets: dict[str, dict[int, int]],
    deadline_s: float = 60.0,
) -> None:
    """Commit ``offsets`` for ``group_id`` by joining it as its only member.

    A group-less commit from outside is refused by the embedded broker for a group that
    ever had members, so this joins with the group's own subscription, waits until it holds
    every partition (it fails if the live projection still runs: stop it first), commits
    and leaves.
    """
    want = {TopicPartition(t, p) for t, parts in offsets.items() for p in parts}
    if not await _join_alone(bootstrap, group_id, topics, want, deadline_s, offsets):
        raise RebuildError(
            f"consumer group {group_id} still has other members after {deadline_s:.0f}s: "
            "stop the live projection before switching"
        )


async def group_idle(
    bootstrap: str, group_id: str, topics: Sequence[str], deadline_s: float = 20.0
) -> bool:
    """No live consumer holds any of the group's partitions (checked by joining it alone)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        want = {
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        }
    finally:
        await consumer.stop()
    return await _join_alone(bootstrap, group_id, topics, want, deadline_s, None)


async def _join_alone(
    bootstrap: str,
    group_id: str,
    topics: Sequence[str],
    want: set[TopicPartition],
    deadline_s: float,
    offsets: dict[str, dict[int, int]] | None,
) -> bool:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=3000,  # the embedded broker makes a join wait half of it
        heartbeat_interval_ms=500,
    )
    consumer.subscribe(list(topics))
    await consumer.start()
    try:
        end = time.monotonic() + deadline_s
        while not want <= consumer.assignment():
            if time.monotonic() > end:
                return False
            await consumer.getmany(timeout_ms=200)
            if consumer.assignment():
                consumer.pause(*consumer.assignment())
        if offsets is not None:
            await consumer.commit({tp: offsets[tp.topic][tp.partition] for tp in want})
        return True
    finally:
        await consumer.stop()


class _Folder:
    """Folds events into states and splits what they derive by the rebuild window."""

    def __init__(self, options: RebuildOptions, targets: Sequence[Target]) -> None:
        self.config = options.reducer_config
        self.reducer = options.reducer
        self.states: dict[str, AgentState] = {}
        self.window = TimeWindow(options.from_ms, None)  # the `to` bound stops the reader
        # targets that want to see a state right after a given event (StateTarget)
        self.watchers = [t for t in targets if getattr(t, "watch", None) is not None]
        self.watch: dict[str, list[tuple[str, Any]]] = {}

    def fold(self, batch: LogBatch) -> tuple[list[tuple[LogRecord, Event]], list[Derived], int]:
        """(events in the window, their derived records, valid events folded)."""
        pairs = batch.events()
        if not pairs:
            return [], [], 0
        key = (batch.generation, batch.partition)
        i, _ = self.window.cut(key, [r.timestamp_ms for r, _ in pairs])
        if key not in self.window.started:
            i = len(pairs)  # the window has not started in this partition yet
        derived: list[Derived] = []
        scratch: list[Derived] = []
        states, config, reducer, watch = self.states, self.config, self.reducer, self.watch
        for n, (_, event) in enumerate(pairs):
            state = states.get(event.agentid)
            if state is None:
                state = states[event.agentid] = initial_state(event)
            reducer(state, event, config, derived if n >= i else scratch)
            scratch.clear()
            if watch and event.agentid in watch:
                for event_id, target in watch[event.agentid]:
                    if event_id == event.id:
                        target.observe(event.agentid, state)
        return pairs[i:], derived, len(pairs)

    def arm(self) -> None:
        """Collect what the watchers want to see (after their prepare() ran)."""
        for t in self.watchers:
            for agent, event_id in t.watch.items():  # type: ignore[attr-defined]
                self.watch.setdefault(agent, []).append((event_id, t))


async def rebuild(
    targets: Sequence[Target],
    options: RebuildOptions,
    *,
    live: LiveControl | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> RebuildResult:
    """Rebuild ``targets`` from history; see the module docstring for the protocol."""
    if options.to_ms is not None and options.switch:
        raise RebuildError(
            "--to builds a point-in-time model, which cannot continue live: use it with --no-switch"
        )
    if options.source == "archive" and options.archive_root is None:
        raise RebuildError("the archive source needs an archive directory")
    models = [t.model for t in targets]
    result = RebuildResult(models, options.source, False, {t.model: t.build_name for t in targets})
    progress = Progress()
    started = time.perf_counter()
    derived_hw: dict[str, dict[int, int]] = {}
    if options.switch and live is None:
        grouped = [t for t in targets if t.group_id and t.topics]
        idle = await asyncio.gather(
            *(group_idle(options.bootstrap, str(t.group_id), t.topics) for t in grouped)
        )
        for t, ok in zip(grouped, idle, strict=True):
            if not ok:
                raise RebuildError(
                    f"the live {t.model} projection is running (consumer group {t.group_id} has "
                    "members): stop it first; restarted after the rebuild, it continues from "
                    "where the rebuild ended"
                )
    if options.switch:
        derived_hw = await capture_high_watermarks(options.bootstrap, DERIVED_TOPICS)
    for t in targets:
        await _timed(result, t.model, t.prepare)
    folder = _Folder(options, targets)
    folder.arm()
    writer = _Writer(targets, result, progress)
    wants_rows = any(t.model == "analytics" for t in targets)
    try:
        sources = await open_sources(options)
        pending = _Pending()
        for src in sources:
            async for batch in src.batches():
                progress.read = sum(s.read for s in sources)
                progress.total = _total(sources)
                t0 = time.perf_counter()
                events, derived, folded = folder.fold(batch)
                result.events += folded
                result.invalid += len(batch.invalid())
                if events:
                    pending.add(batch, events, derived, wants_rows)
                result.read_seconds += time.perf_counter() - t0
                if pending.rows_count >= options.chunk_rows:
                    await writer.submit(pending.take())
                if on_progress:
                    on_progress(progress)
            if isinstance(src, ArchiveLogSource):
                result.generations = sorted({s.generation for s in src.segments})
        if pending.events:
            await writer.submit(pending.take())
        await writer.drain()
        result.records_read = progress.read = sum(s.read for s in sources)
        result.agents = len(folder.states)
        progress.phase = "finishing"
        if on_progress:
            on_progress(progress)
        for t in targets:
            await _timed(result, t.model, t.finish, folder.states)
        events_end = _end_positions(sources)
        result.end_offsets = {EVENTS: events_end, **derived_hw}
        if options.switch:
            progress.phase = "switching"
            if on_progress:
                on_progress(progress)
            await _switch(targets, options, result, live)
            result.switched = True
    except BaseException:
        with contextlib.suppress(BaseException):
            await writer.drain()
        for t in targets:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(t.discard)
        raise
    finally:
        for t in targets:
            with contextlib.suppress(Exception):
                t.close()
    result.states_published = sum(getattr(t, "published", 0) for t in targets)
    result.seconds = time.perf_counter() - started
    return result


async def open_sources(options: RebuildOptions) -> list[LogSource]:
    """The archive (if asked) followed by Kafka from where the archive ends."""
    to_window = TimeWindow(None, options.to_ms)
    if options.source == "kafka":
        return [KafkaLogSource(options.bootstrap, EVENTS, window=to_window)]
    assert options.archive_root is not None
    archive = ArchiveLogSource(options.archive_root, window=to_window)
    if not options.tail:
        if options.switch:
            raise RebuildError("switching needs the Kafka tail after the archive (tail=True)")
        return [archive]
    tail = await _tail_plan(options)
    if tail is None:
        return [archive]
    generation, start = tail
    return [
        archive,
        KafkaLogSource(
            options.bootstrap, EVENTS, start_offsets=start, window=to_window, generation=generation
        ),
    ]


async def _tail_plan(options: RebuildOptions) -> tuple[int, dict[int, int]] | None:
    """Where Kafka continues the archive: after its newest generation, or from the start of
    a log the archive has not seen yet. None without a switch when the broker is away."""
    assert options.archive_root is not None
    consumer = AIOKafkaConsumer(bootstrap_servers=options.bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        plan = await plan_resume(consumer, options.archive_root, EVENTS)
    except Exception as err:
        if options.switch:
            raise RebuildError(
                f"cannot read the log at {options.bootstrap} to continue the archive ({err})"
            ) from err
        log.warning("rebuild: archive only, the broker is not reachable (%s)", err)
        return None
    finally:
        await consumer.stop()
    return plan.generation, plan.start_offsets


def _total(sources: Sequence[LogSource]) -> int | None:
    totals = [s.total for s in sources]
    return None if any(t is None for t in totals) else sum(t or 0 for t in totals)


def _end_positions(sources: Sequence[LogSource]) -> dict[int, int]:
    """Where agent-events stopped in the live log (the last source is the live one)."""
    last = sources[-1]
    return dict(last.end_positions) if isinstance(last, KafkaLogSource) else {}


class _Pending:
    """Chunks accumulate until they are worth an insert (ClickHouse likes 50k+ rows)."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.events: list[tuple[LogRecord, Event]] = []
        self.derived: list[Derived] = []
        self.rows_count = 0

    def add(
        self,
        batch: LogBatch,
        events: list[tuple[LogRecord, Event]],
        derived: list[Derived],
        wants_rows: bool,
    ) -> None:
        if wants_rows:
            rows = batch.rows()
            if len(events) != len(batch.events()):  # the window starts inside this batch
                rows = rows.slice(rows.num_rows - len(events))
            self.tables.append(rows)
        self.events += events
        self.derived += derived
        self.rows_count += len(events)

    def take(self) -> Chunk:
        rows = pa.concat_tables(self.tables) if self.tables else None
        chunk = Chunk(
            rows,
            self.events,
            [d for d in self.derived if isinstance(d, Violation)],
            [d for d in self.derived if isinstance(d, Episode)],
        )
        self.__init__()  # type: ignore[misc]
        return chunk


class _Writer:
    """Writes chunks in order, one at a time, in a worker thread, while the caller reads and
    folds the next one: the stores' native work overlaps the Python decoding and folding."""

    def __init__(self, targets: Sequence[Target], result: RebuildResult, progress: Progress):
        self.targets, self.result, self.progress = targets, result, progress
        self._inflight: asyncio.Task[None] | None = None

    async def submit(self, chunk: Chunk) -> None:
        await self.drain()
        self._inflight = asyncio.create_task(
            _apply(self.targets, chunk, self.result, self.progress)
        )

    async def drain(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            await task


async def _apply(
    targets: Sequence[Target], chunk: Chunk, result: RebuildResult, progress: Progress
) -> None:
    for t in targets:
        await _timed(result, t.model, t.apply, chunk)
    result.events_applied += len(chunk.events)
    result.violations += len(chunk.violations)
    result.episodes += len(chunk.episodes)
    progress.applied = result.events_applied


async def _timed(result: RebuildResult, model: str, fn: Callable[..., Any], *args: Any) -> None:
    t0 = time.perf_counter()
    await asyncio.to_thread(fn, *args)
    result.model_seconds[model] = result.model_seconds.get(model, 0.0) + time.perf_counter() - t0


async def _switch(
    targets: Sequence[Target],
    options: RebuildOptions,
    result: RebuildResult,
    live: LiveControl | None,
) -> None:
    models = [t.model for t in targets]
    if live is not None:
        await live.pause(models)
    try:
        for t in targets:
            await _timed(result, t.model, t.switch)
        await asyncio.gather(
            *(
                set_group_offsets(
                    options.bootstrap,
                    t.group_id,
                    t.topics,
                    {topic: result.end_offsets[topic] for topic in t.topics},
                )
                for t in targets
                if t.group_id is not None and t.topics
            )
        )
    finally:
        if live is not None:
            await live.resume(models)
