"""Rebuilding read models against the real pipeline: the broker, the stream processor, the
live projections (ClickHouse on chDB, the graph on FalkorDB, memory on Chroma) and the
archiver. A rebuild from Kafka and one from the archive must equal what live consumption
built; a rebuild while producers keep publishing must end with exact counts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Broker, FalkorServer

from agentstream.rebuild import (
    AnalyticsTarget,
    GraphTarget,
    MemoryTarget,
    RebuildError,
    RebuildOptions,
    StateTarget,
    rebuild,
)
from projections.analytics import schema
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.store import AnalyticsStore
from projections.graph.projection import GraphProjection, project
from projections.graph.store import open_store
from projections.memory.embedding import SentenceEmbedder, load_embedder
from projections.memory.projection import MemoryProjection
from projections.memory.store import MemoryStore
from projections.runner import ProjectionRunner, RunnerConfig
from schemas.derived import Episode, Violation
from schemas.envelope import Event
from schemas.state import AgentState, encode_state
from schemas.topics import EVENTS, STATE
from streams.archive import Archiver, archive_state
from streams.processor import OutRecord, Publisher, build_app, processor_progress
from streams.producer import EventProducer
from streams.reducer import fold
from streams.simulator import SimulationConfig, generate
from streams.state_reader import read_states

pytestmark = pytest.mark.integration

FAST = RunnerConfig(max_batch=5000, max_wait_ms=100, session_timeout_ms=6000)
LIVE_GRAPH = "live"
LIVE_COLLECTION = "live-episodes"
ALL = ("analytics", "graph", "memory", "state")


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return load_embedder()


def sim(runs: int, seed: int, agents: int = 6) -> list[Event]:
    return list(generate(SimulationConfig(agents=agents, runs=runs, seed=seed)))


async def publish(bootstrap: str, events: Sequence[Event], rate: float | None = None) -> None:
    async with EventProducer(bootstrap, linger_ms=2) as producer:
        if rate is None:
            await producer.send_many(events)
            return
        t0 = time.monotonic()
        for i in range(0, len(events), 50):
            await producer.send_many(events[i : i + 50])
            await asyncio.sleep(max(0.0, t0 + (i + 50) / rate - time.monotonic()))


class Pipeline:
    """The live side: the processor, the three projections on runners, the archiver."""

    def __init__(
        self, kafka: Broker, falkordb: FalkorServer, tmp: Path, embedder: SentenceEmbedder
    ) -> None:
        self.bootstrap = kafka.bootstrap
        self.ch_url = f"chdb://{tmp / 'clickhouse'}"
        self.graph_url = falkordb.url
        self.chroma = str(tmp / "chroma")
        self.archive = tmp / "archive"
        self.tmp = tmp
        self.embedder = embedder
        self.memory_store = MemoryStore.open(self.chroma, embedder, LIVE_COLLECTION)
        self.runners: dict[str, tuple[ProjectionRunner, asyncio.Event, asyncio.Task[None]]] = {}
        self._tasks: list[tuple[asyncio.Event, asyncio.Task[Any]]] = []
        self.archiver: Archiver | None = None

    def _projection(self, model: str) -> Any:
        if model == "analytics":
            return AnalyticsProjection(self.ch_url)
        if model == "graph":
            return GraphProjection(open_store(self.graph_url, LIVE_GRAPH))
        if model == "memory":
            return MemoryProjection(self.memory_store)
        raise ValueError(model)

    async def start(self) -> None:
        stop = asyncio.Event()
        processor = build_app(
            bootstrap=self.bootstrap, data_dir=self.tmp / "processor", use_table=False
        )
        self._tasks.append((stop, asyncio.create_task(processor.run(stop))))
        stop = asyncio.Event()
        self.archiver = Archiver(self.bootstrap, self.archive, max_segment_age_s=0.3)
        self._tasks.append((stop, asyncio.create_task(self.archiver.run(stop))))
        await self.resume(("analytics", "graph", "memory"))

    async def pause(self, models: Sequence[str]) -> None:
        for model in models:
            if model in self.runners:
                runner, stop, task = self.runners.pop(model)
                stop.set()
                await task
                close = getattr(runner.projection, "close", None)
                if close is not None:  # chDB: one engine path per process, close it
                    close()

    async def resume(self, models: Sequence[str]) -> None:
        for model in models:
            if model in ("analytics", "graph", "memory") and model not in self.runners:
                runner = ProjectionRunner(self._projection(model), self.bootstrap, config=FAST)
                stop = asyncio.Event()
                self.runners[model] = (runner, stop, asyncio.create_task(runner.run(stop)))

    async def settle(self, n_events: int, timeout_s: float = 120) -> None:
        """Until the processor, every projection and the archiver have caught up."""
        deadline = time.monotonic() + timeout_s
        while True:
            progress = await processor_progress(self.bootstrap)
            archived = sum(v + 1 for v in archive_state(self.archive).last_offsets.values())
            if (
                progress.caught_up
                and sum(progress.highwater.values()) >= n_events
                and all(r.caught_up() for r, _, _ in self.runners.values())
                and archived >= n_events
            ):
                # the projections may not have fetched the processor's last outputs yet
                await asyncio.sleep(0)
                if all(r.caught_up() for r, _, _ in self.runners.values()):
                    return
            for _, _, task in self.runners.values():
                if task.done():
                    task.result()
            if time.monotonic() > deadline:
                lags = {m: r.stats.lag() for m, (r, _, _) in self.runners.items()}
                raise AssertionError(f"pipeline did not settle: {progress}, {lags}, {archived}")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        await self.pause(list(self.runners))
        for stop, _ in self._tasks:
            stop.set()
        for _, task in self._tasks:
            await task

    def targets(self, models: Sequence[str], tag: str) -> list[Any]:
        out: list[Any] = []
        for m in models:
            if m == "analytics":
                out.append(AnalyticsTarget(self.ch_url, f"rebuild_{tag}"))
            elif m == "graph":
                out.append(GraphTarget(self.graph_url, LIVE_GRAPH, f"rebuild-{tag}"))
            elif m == "memory":
                out.append(MemoryTarget(self.memory_store, f"rebuild-{tag}"))
            elif m == "state":
                out.append(StateTarget(self.bootstrap))
        return out

    # --- what the models hold ---------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "analytics": analytics_snapshot(self.ch_url),
            "graph": graph_snapshot(self.graph_url, LIVE_GRAPH),
            "memory": memory_snapshot(self.memory_store),
        }


def analytics_snapshot(url: str, database: str = "agentstream") -> dict[str, Any]:
    with AnalyticsStore(url, database, create=False) as s:
        snap = {
            "events": s.rows(
                "SELECT count(), uniqExact(event_id), groupBitXor(cityHash64(event_id)), "
                "groupBitXor(cityHash64(event_id, log_partition, log_offset)) FROM events"
            ),
            "by_agent_type": s.rows(
                "SELECT agent_id, type, count(), sum(input_tokens), sum(output_tokens), "
                "round(sum(cost_usd), 9), round(sum(latency_ms), 3) FROM events "
                "GROUP BY agent_id, type ORDER BY agent_id, type"
            ),
            "violations": s.rows(
                "SELECT agent_id, category, count(), groupBitXor(cityHash64(violation_id)) "
                "FROM violations FINAL GROUP BY agent_id, category ORDER BY 1, 2"
            ),
            "episodes": s.rows(
                "SELECT agent_id, outcome, count(), groupBitXor(cityHash64(episode_id, revision)) "
                "FROM episodes FINAL GROUP BY agent_id, outcome ORDER BY 1, 2"
            ),
            "state": s.rows(
                "SELECT agent_id, events_total, actions, errors, mismatches, failed, input_tokens, "
                "output_tokens, round(cost_usd, 9), status, last_event_id, lessons "
                "FROM agent_state FINAL ORDER BY agent_id"
            ),
        }
        for rollup in schema.ROLLUPS:
            snap[rollup.table] = sorted(s.rows(schema.rollup_counts_sql(rollup, database)))
        return snap


def graph_snapshot(url: str, graph: str) -> tuple[dict[str, int], dict[str, int]]:
    store = open_store(url, graph)
    try:
        counts = store.counts()
        return counts.nodes, counts.relationships
    finally:
        store.close()


def memory_snapshot(store: MemoryStore) -> dict[str, tuple[Any, Any]]:
    col = store.client.get_collection(store.name)
    got = col.get(include=["metadatas"])
    return {
        i: (m["revision"], m["fingerprint"])
        for i, m in zip(got["ids"], got["metadatas"] or [], strict=True)
    }


def expected_from_fold(events: Sequence[Event]) -> dict[str, Any]:
    """What every model must hold, computed independently from the produced events."""
    states, derived = fold(events)
    violations = {d.violation_id for d in derived if isinstance(d, Violation)}
    revisions = {(d.episode_id, d.revision) for d in derived if isinstance(d, Episode)}
    latest: dict[str, int] = {}
    for ep_id, rev in revisions:
        latest[ep_id] = max(rev, latest.get(ep_id, -1))
    return {
        "states": states,
        "n_violations": sum(1 for d in derived if isinstance(d, Violation)),
        "n_episodes": sum(1 for d in derived if isinstance(d, Episode)),
        "violations": violations,
        "episode_revisions": revisions,
        "episodes_latest": latest,
        "by_agent": Counter(e.agentid for e in events),
    }


async def record_state(bootstrap: str, state: AgentState) -> None:
    """Publish a state to agent-state as the processor would."""
    pub = Publisher(bootstrap)
    await pub.start()
    try:
        await pub.publish([OutRecord(STATE, state.agent_id.encode(), encode_state(state))])
    finally:
        await pub.stop()


@pytest.fixture
async def pipeline(kafka: Broker, falkordb: FalkorServer, tmp_path: Path, embedder):
    p = Pipeline(kafka, falkordb, tmp_path, embedder)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def test_rebuild_from_kafka_and_from_archive_equals_live(pipeline: Pipeline):
    events = sim(runs=10, seed=31)
    await publish(pipeline.bootstrap, events)
    await pipeline.settle(len(events))
    live = pipeline.snapshot()
    expected = expected_from_fold(events)
    # the live models are what the log says (so equality below means something)
    assert live["analytics"]["events"][0][:2] == (len(events), len(events))
    assert set(live["memory"]) == set(expected["episodes_latest"])
    assert live["graph"][0]["Event"] >= len({e.id for e in events})

    # a wrong state recorded for one agent: rebuilding "state" must correct it
    victim = events[0].agentid
    await record_state(
        pipeline.bootstrap,
        msgspec.structs.replace(expected["states"][victim], events_total=1, lessons=999),
    )

    progress_seen: list[int] = []
    for source in ("kafka", "archive"):
        tag = f"{source}_{int(time.time())}"
        progress_seen.clear()
        result = await rebuild(
            pipeline.targets(ALL, tag),
            RebuildOptions(pipeline.bootstrap, source, pipeline.archive),  # type: ignore[arg-type]
            live=pipeline,
            on_progress=lambda p: progress_seen.append(p.read),
        )
        assert result.switched and result.events == len(events), result
        assert result.invalid == 0 and result.agents == len(expected["states"])
        assert progress_seen and progress_seen[-1] == result.records_read
        assert (result.violations, result.episodes) == (
            expected["n_violations"],
            expected["n_episodes"],
        )
        # the swapped-in models are the live ones now; nothing is left half-built
        await pipeline.settle(len(events))
        rebuilt = pipeline.snapshot()
        assert rebuilt["analytics"] == live["analytics"], source
        assert rebuilt["graph"] == live["graph"], source
        assert rebuilt["memory"] == live["memory"], source
        with AnalyticsStore(pipeline.ch_url, "agentstream", create=False) as s:
            dbs = {r[0] for r in s.rows("SELECT name FROM system.databases")}
        assert f"rebuild_{tag}" not in dbs
        assert pipeline.memory_store.collections() == [LIVE_COLLECTION]
        # kafka: the wrong state is corrected; archive: the states were right by then
        assert result.states_published == (1 if source == "kafka" else 0)
        assert await read_states(pipeline.bootstrap) == expected["states"]


async def test_rebuild_while_producers_keep_publishing_ends_exact(pipeline: Pipeline):
    first = sim(runs=8, seed=41)
    second = sim(runs=8, seed=42)
    await publish(pipeline.bootstrap, first)
    await pipeline.settle(len(first))

    producing = asyncio.create_task(publish(pipeline.bootstrap, second, rate=100))
    await asyncio.sleep(0.5)  # the rebuild starts while events keep arriving
    result = await rebuild(
        pipeline.targets(ALL, "busy"),
        RebuildOptions(pipeline.bootstrap, "kafka"),
        live=pipeline,
    )
    await producing
    assert result.switched
    # it stopped where the log was when it started reading: the rest came in live
    stopped_at = sum(result.end_offsets[EVENTS].values())
    assert len(first) < stopped_at < len(first) + len(second)
    everything = first + second
    await pipeline.settle(len(everything))
    expected = expected_from_fold(everything)

    with AnalyticsStore(pipeline.ch_url, "agentstream", create=False) as s:
        assert s.rows("SELECT count(), uniqExact(event_id) FROM events") == [
            (len(everything), len(everything))
        ]
        by_agent = dict(s.rows("SELECT agent_id, count() FROM events GROUP BY agent_id"))
        assert by_agent == dict(expected["by_agent"])
        assert {
            r[0] for r in s.rows("SELECT toString(violation_id) FROM violations FINAL")
        } == expected["violations"]
        assert s.scalar("SELECT count() FROM violations FINAL") == len(expected["violations"])
        episodes = s.rows("SELECT toString(episode_id), revision FROM episodes FINAL")
        assert dict(episodes) == expected["episodes_latest"]
        totals = dict(s.rows("SELECT agent_id, events_total FROM agent_state FINAL"))
        assert totals == {a: st.events_total for a, st in expected["states"].items()}
        for rollup in schema.ROLLUPS:
            assert sorted(s.rows(schema.rollup_counts_sql(rollup, "agentstream"))) == sorted(
                s.rows(schema.source_counts_sql(rollup, "agentstream"))
            ), rollup.table
    # the graph equals one projected directly from every event, in one go
    scratch = open_store(pipeline.graph_url, "scratch")
    _, derived = fold(everything)
    project(scratch, everything, [d for d in derived if isinstance(d, Violation)])
    want = scratch.counts()
    scratch.clear()
    scratch.close()
    assert graph_snapshot(pipeline.graph_url, LIVE_GRAPH) == (want.nodes, want.relationships)
    memory = memory_snapshot(pipeline.memory_store)
    assert {i: r for i, (r, _) in memory.items()} == expected["episodes_latest"]
    assert await read_states(pipeline.bootstrap) == expected["states"]


async def test_from_window_and_point_in_time_build_aside(kafka: Broker, tmp_path: Path):
    """--from keeps events from T on (states still fold all history); --to needs --no-switch."""
    events = sim(runs=10, seed=51)
    await publish(kafka.bootstrap, events)
    url = f"chdb://{tmp_path / 'ch'}"
    with pytest.raises(RebuildError, match="--no-switch"):
        await rebuild([], RebuildOptions(kafka.bootstrap, to_ms=1))

    stamps = sorted(int(e.time.timestamp() * 1000) for e in events)
    t_from = stamps[len(stamps) // 3]
    t_to = stamps[2 * len(stamps) // 3]
    target = AnalyticsTarget(url, "aside")
    result = await rebuild(
        [target], RebuildOptions(kafka.bootstrap, from_ms=t_from, to_ms=t_to, switch=False)
    )
    assert not result.switched
    with AnalyticsStore(url, "aside", create=False) as s:
        got = {r[0] for r in s.rows("SELECT toString(event_id) FROM events")}
        ts = [r[0] for r in s.rows("SELECT toUnixTimestamp64Milli(time) FROM events")]
    assert got and len(got) < len(events)
    # partitions hold one agent's events in time order here, so the window is by time
    assert got == {e.id for e in events if t_from <= int(e.time.timestamp() * 1000) < t_to}
    assert min(ts) >= t_from and max(ts) < t_to
    assert result.events_applied == len(got)
    # the reducer folded everything up to --to, so states are those of the full prefix
    prefix = [e for e in events if int(e.time.timestamp() * 1000) < t_to]
    assert result.events == len(prefix)
    with AnalyticsStore(url, "aside", create=False) as s:
        totals = dict(s.rows("SELECT agent_id, events_total FROM agent_state FINAL"))
    assert totals == {a: st.events_total for a, st in fold(prefix)[0].items()}
    with AnalyticsStore(url, "aside", create=False) as s:
        assert "agentstream" not in {r[0] for r in s.rows("SELECT name FROM system.databases")}


class _Idle:
    """A stand-in live projection: it only holds the analytics consumer group."""

    name = "analytics"
    topics = (EVENTS, "agent-violations", "agent-episodes", STATE)
    decoders = {t: bytes for t in topics}

    def setup(self) -> None:
        pass

    def apply(self, records: list) -> None:
        pass


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "replay", "rebuild", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_rebuild_command_from_the_archive(kafka: Broker, tmp_path: Path):
    events = sim(runs=6, seed=61)
    await publish(kafka.bootstrap, events)
    data = tmp_path / "data"
    archiver = Archiver(kafka.bootstrap, data / "archive", max_segment_age_s=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    deadline = time.monotonic() + 60
    while sum(v + 1 for v in archive_state(data / "archive").last_offsets.values()) < len(events):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    stop.set()
    await task
    env = {
        **os.environ,
        "AGENTSTREAM_KAFKA_URL": f"kafka://{kafka.bootstrap}",
        "AGENTSTREAM_DATA_DIR": str(data),
        "AGENTSTREAM_CONFIG": str(tmp_path / "none.toml"),
        "COLUMNS": "160",
    }
    bad = await asyncio.to_thread(cli, env, "analytics", "--to", "2026-01-01T00:10:00Z")
    assert bad.returncode == 1 and "--no-switch" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0

    ok = await asyncio.to_thread(cli, env, "analytics", "state", "--source", "archive")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{len(events)} events folded" in ok.stdout and "switched" in ok.stdout
    assert "records/s" in ok.stderr  # the progress bar with its rate
    with AnalyticsStore(f"chdb://{data / 'clickhouse'}", "agentstream", create=False) as s:
        assert s.scalar("SELECT count() FROM events") == len(events)
    # no state was recorded before: the rebuild published every agent's
    assert await read_states(kafka.bootstrap) == fold(events)[0]

    # a live analytics projection is running: the rebuild refuses before doing anything
    runner = ProjectionRunner(_Idle(), kafka.bootstrap, config=FAST)
    held = asyncio.Event()
    holding = asyncio.create_task(runner.run(held))
    await runner.wait_started()
    assert await wait_until_async(lambda: bool(runner.assigned), 30)
    busy = await asyncio.to_thread(cli, env, "analytics", "--source", "archive")
    held.set()
    await holding
    assert busy.returncode == 1, busy.stdout
    assert "live analytics projection is running" in busy.stderr


async def wait_until_async(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
