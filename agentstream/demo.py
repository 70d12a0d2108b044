"""``agentstream demo``: the whole pipeline on one machine, end to end, then a summary.

Steps (each one is a real part, nothing is mocked):

1. the embedded stack comes up (broker + graph, :class:`agentstream.stack.Stack`);
2. the stream processor runs as a child process (``agentstream worker``), unless the
   stack already supervises one;
3. the analytics projection runs in this process (it owns the chDB directory and serves
   reads to ``agentstream query`` meanwhile), unless another process already owns the
   store and serves it (then the demo only watches the counts arrive);
4. the simulator publishes the workload; the demo waits until the processors and the
   projection have caught up with everything published;
5. the summary comes from the store: events by type, the agent leaderboard, violations by
   category.

Re-running reuses the data directory (the store keeps what earlier runs put there; each
run draws a new seed unless ``--seed`` is given, so its events are new). A stack the demo
started is stopped at the end (the embedded broker's log lives in memory, so the next run
starts on a clean log); ``--keep-running`` leaves it up, and a stack that was already
running is left alone. ``--reset`` stops the stack and deletes the data directory first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentstream.processes import ManagedProcess, last_line
from agentstream.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

DEFAULT_EVENTS = 50_000


class DemoError(RuntimeError):
    """A one-line, actionable reason the demo cannot go on."""


@dataclass(frozen=True)
class DemoConfig:
    events: int = DEFAULT_EVENTS
    agents: int = 12
    seed: int | None = None  # None: a new one per run
    reset: bool = False
    timeout_s: float = 600.0
    keep_running: bool = False  # leave a stack the demo started running afterwards


@dataclass
class Progress:
    """What the display shows; updated in place while the demo runs."""

    phase: str = "starting"
    total: int = 0
    produced: int = 0
    processed: int = 0
    projected: int = 0


@dataclass
class DemoResult:
    data_dir: Path
    data_dir_state: str  # "fresh", "reused" or "reset"
    seed: int
    produced: int
    new_in_store: int
    events_in_store: int
    seconds: dict[str, float] = field(default_factory=dict)
    by_type: pa.Table | None = None
    leaderboard: pa.Table | None = None
    violations: pa.Table | None = None
    projection_owner: str = "this process"
    worker: str = "started by the demo"
    stack: str = "started by the demo, stopped again"


def reset_data_dir(settings: Settings) -> None:
    """Stop the stack, then delete the data directory, but only one agentstream made."""
    from agentstream.stack import Stack

    data_dir = settings.data_dir.expanduser().resolve()
    if not data_dir.exists():
        return
    if data_dir in (Path("/"), Path.home(), Path.cwd()) or not (data_dir / "run").is_dir():
        raise DemoError(
            f"refusing to delete {data_dir}: it does not look like an agentstream data directory "
            "(no run/ inside) — delete it yourself or point AGENTSTREAM_DATA_DIR elsewhere"
        )
    Stack(settings).down()
    shutil.rmtree(data_dir)


def _new_seed() -> int:
    return int(time.time() * 1000) % 1_000_000_007


async def run_demo(
    settings: Settings,
    config: DemoConfig,
    progress: Progress | None = None,
    on_tick: Callable[[Progress], None] | None = None,
) -> DemoResult:
    """Run the demo; raises :class:`DemoError` with the fix when a part cannot work."""
    from agentstream.stack import Stack

    progress = progress or Progress()
    tick = on_tick or (lambda _p: None)
    settings = settings.model_copy(update={"data_dir": settings.data_dir.expanduser().resolve()})
    data_dir = settings.data_dir
    state = "fresh"
    if config.reset and data_dir.exists():
        reset_data_dir(settings)
        state = "reset"
    elif data_dir.exists() and any(data_dir.iterdir()):
        state = "reused"
    seed = config.seed if config.seed is not None else _new_seed()
    timings: dict[str, float] = {}

    progress.phase = "starting the stack"
    tick(progress)
    t0 = time.monotonic()
    from agentstream.processes import StackError

    stack = Stack(settings)
    try:
        ups = await asyncio.to_thread(stack.up)
    except StackError as err:
        raise DemoError(str(err)) from None
    timings["stack up"] = time.monotonic() - t0
    started_here = all(u.action in ("started", "disabled", "external") for u in ups)

    result = DemoResult(data_dir, state, seed, 0, 0, 0, timings)
    try:
        await _run_pipeline(settings, config, seed, result, progress, tick)
    finally:
        # The embedded broker keeps its log in memory only: a stack this demo started is
        # stopped again, so the next run starts from a clean log (the analytics store,
        # the graph and the archive on disk keep their data).
        if started_here and not config.keep_running:
            await asyncio.to_thread(stack.down)
        else:
            result.stack = (
                "left running (--keep-running)" if started_here else "was already running"
            )
    return result


async def _run_pipeline(
    settings: Settings,
    config: DemoConfig,
    seed: int,
    result: DemoResult,
    progress: Progress,
    tick: Callable[[Progress], None],
) -> None:
    timings = result.seconds
    async with _Pipeline(settings, result) as pipe:
        progress.phase = "simulating"
        progress.total = config.events
        tick(progress)
        t1 = time.monotonic()
        result.produced = await _produce(settings, config, seed, progress, tick)
        timings["simulate + publish"] = time.monotonic() - t1

        progress.phase = "processing"
        tick(progress)
        await pipe.wait_caught_up(result.produced, progress, tick, config.timeout_s)
        timings["until caught up"] = time.monotonic() - t1

        progress.phase = "summarising"
        tick(progress)
        await asyncio.to_thread(pipe.summarise, result)


class _Pipeline:
    """The worker child, the in-process projection (or a watcher of someone else's)."""

    def __init__(self, settings: Settings, result: DemoResult) -> None:
        self.settings = settings
        self.result = result
        self.worker: ManagedProcess | None = None
        self.projection: Any = None
        self.runner: Any = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._counter: Any = None  # a reader for counting what the store holds
        self._before = 0
        self._processed_at_start = 0

    async def __aenter__(self) -> _Pipeline:
        try:
            await self._start_projection()
            self._start_worker()
            self._processed_at_start = await self._processed_total()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 60)
        if self._counter is not None:
            self._counter.close()
        if self.projection is not None:
            self.projection.close()
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)

    # --- the analytics projection --------------------------------------------------------
    async def _start_projection(self) -> None:
        from projections.analytics import AnalyticsError, AnalyticsProjection, connect
        from projections.analytics.service import find_service
        from projections.analytics.store import parse_url
        from projections.runner import ProjectionRunner, RunnerConfig

        settings = self.settings
        location = parse_url(settings.analytics_url)
        owner = None
        if location.backend == "chdb":
            owner = find_service(settings.data_dir / "run", location, "agentstream")
        if owner is not None:  # someone else projects and serves: watch through them
            self.result.projection_owner = f"process {owner.pid} (already running)"
        else:
            self.projection = AnalyticsProjection.from_settings(settings)
            try:
                await asyncio.to_thread(self.projection.setup)
            except AnalyticsError as err:
                raise DemoError(str(err)) from None
            self.runner = ProjectionRunner(
                self.projection,
                settings.bootstrap_servers,
                config=RunnerConfig(
                    max_batch=20_000,
                    max_wait_ms=250,
                    session_timeout_ms=6000,
                    fetch_max_wait_ms=100,
                ),
            )
            self._task = asyncio.create_task(self.runner.run(self._stop))
        self._counter = await asyncio.to_thread(connect, settings)
        self._before = await asyncio.to_thread(self.events_in_store)

    def events_in_store(self) -> int:
        table = self._counter.query("SELECT count() AS n FROM events")
        return int(table.column("n")[0].as_py())

    # --- the stream processor ------------------------------------------------------------
    def _start_worker(self) -> None:
        from agentstream.stack import Stack, settings_env

        running = {p.part for p in Stack(self.settings).status() if p.ok}
        if "worker" in running:
            self.result.worker = "the stack's worker"
            return
        log_path = self.settings.data_dir / "logs" / "demo-worker.log"
        self.worker = ManagedProcess(
            "worker", [sys.executable, "-m", "agentstream.cli", "worker"], log_path
        )
        self.worker.start(env=settings_env(self.settings))

    async def _processed_total(self) -> int:
        from streams.processor import processor_progress

        p = await processor_progress(self.settings.bootstrap_servers)
        return sum(p.committed.values())

    # --- waiting -----------------------------------------------------------------------------
    async def wait_caught_up(
        self,
        produced: int,
        progress: Progress,
        tick: Callable[[Progress], None],
        timeout_s: float,
    ) -> None:
        from streams.processor import processor_progress

        deadline = time.monotonic() + timeout_s
        bootstrap = self.settings.bootstrap_servers
        settled = 0
        while True:
            self._check_alive()
            p = await processor_progress(bootstrap)
            progress.processed = min(produced, sum(p.committed.values()) - self._processed_at_start)
            in_store = await asyncio.to_thread(self.events_in_store)
            progress.projected = min(produced, in_store - self._before)
            tick(progress)
            processors_done = p.caught_up and progress.processed >= produced
            if processors_done:
                progress.phase = "projecting"
            if processors_done and self._projection_done(in_store, produced, p.highwater):
                settled += 1  # twice in a row: the runner has fetched the newest outputs
                if settled >= 2:
                    return
            else:
                settled = 0
            if time.monotonic() > deadline:
                lagging = "the stream processor" if not processors_done else "the projection"
                where = (
                    f"see {self.worker.log_path}"
                    if not processors_done and self.worker
                    else "see the log above"
                )
                raise DemoError(
                    f"{lagging} did not catch up within {timeout_s:.0f}s — {where}, or give "
                    "more time with --timeout"
                )
            await asyncio.sleep(0.5)

    def _projection_done(self, in_store: int, produced: int, events_hw: dict[int, int]) -> bool:
        if self.runner is not None:
            if self._task is not None and self._task.done():
                err = self._task.exception()
                raise DemoError(f"the analytics projection stopped: {err!r} — see the log above")
            from aiokafka import TopicPartition

            from schemas.topics import EVENTS

            committed = self.runner.stats.committed
            events_done = all(
                committed.get(TopicPartition(EVENTS, part), 0) >= hw
                for part, hw in events_hw.items()
            )
            return events_done and self.runner.caught_up()
        # someone else's projection: done when every new event is visible
        return in_store - self._before >= produced

    def _check_alive(self) -> None:
        w = self.worker
        if w is not None and w.proc is not None and w.proc.poll() is not None:
            raise DemoError(
                f"the stream processor exited with code {w.proc.returncode} — see "
                f"{w.log_path}: {last_line(w.log_path)}"
            )

    # --- the summary ---------------------------------------------------------------------------
    def summarise(self, result: DemoResult) -> None:
        db = self._counter
        result.events_in_store = self.events_in_store()
        result.new_in_store = result.events_in_store - self._before
        result.by_type = db.query(
            "SELECT type, count() AS events FROM events GROUP BY type ORDER BY events DESC"
        )
        result.leaderboard = db.named("agent_leaderboard", {"limit": 10})
        result.violations = db.named("violations_by_category")


async def _produce(
    settings: Settings,
    config: DemoConfig,
    seed: int,
    progress: Progress,
    tick: Callable[[Progress], None],
) -> int:
    from streams.producer import EventProducer, ProducerError
    from streams.simulator import SimulationConfig, generate, publish

    sim = SimulationConfig(agents=config.agents, runs=None, seed=seed, max_events=config.events)
    producer = EventProducer.from_settings(settings, delivery_timeout_ms=30_000)

    def on_progress(n: int) -> None:
        progress.produced = n
        tick(progress)

    try:
        await producer.start()
        try:
            res = await publish(generate(sim), producer, on_progress=on_progress)
        finally:
            await producer.close()
    except ProducerError as err:
        raise DemoError(f"{err} — check the broker (`agentstream status`)") from None
    return res.events
