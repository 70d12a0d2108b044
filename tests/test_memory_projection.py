"""The memory projection: episode -> record mapping, revisions, idempotent replay, and the
end-to-end path: agent events on the broker -> the stream processor -> agent-episodes ->
the memory projection on the runner -> a recall that finds the right episode."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from projections.memory.embedding import SentenceEmbedder, load_embedder
from projections.memory.projection import (
    MEMORY_RUNNER_CONFIG,
    METADATA_KEYS,
    MemoryProjection,
    episode_document,
    episode_fingerprint,
    episode_metadata,
    latest,
    plan_writes,
)
from projections.memory.recall import recall
from projections.memory.store import MemoryStore
from projections.runner import ApplyInterrupted, ProjectionRunner, Record, wait_until
from schemas.derived import Episode, decode_episode, encode_derived
from schemas.envelope import Event
from schemas.ids import Uuid7Generator
from schemas.topics import EPISODES
from streams.emitter import EventFactory
from streams.processor import build_app
from streams.producer import EventProducer

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def episode(**over: object) -> Episode:
    base: dict[str, object] = {
        "episode_id": "ep-1",
        "revision": 0,
        "agent_id": "agent-a",
        "run_id": "run-1",
        "task_id": None,
        "tenant": "acme",
        "time": T0,
        "situation": "the nightly backup job ran out of disk space",
        "action": 'shell {"cmd":"backup.sh"}',
        "tool": "shell",
        "outcome": "failure",
        "result": "No space left on device",
        "expected": "backup written",
        "actual": "backup aborted",
        "lesson": None,
        "event_ids": ("e1", "e2", "e3"),
    }
    base.update(over)
    return Episode(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    return load_embedder()


@pytest.fixture
def store(tmp_path: Path, embedder: SentenceEmbedder) -> Iterator[MemoryStore]:
    s = MemoryStore.open(str(tmp_path / "chroma"), embedder, "episodes-test")
    s.ensure()
    yield s


# --- pure mapping ---------------------------------------------------------------------------


def test_metadata_has_every_key_flat_and_explicit_empties() -> None:
    meta = episode_metadata(episode())
    assert tuple(meta) == METADATA_KEYS
    assert all(isinstance(v, str | int | float | bool) for v in meta.values())
    assert meta["task_id"] == ""  # None is written as "", never left out (upsert merges)
    assert meta["lesson"] == ""
    assert meta["has_lesson"] is False
    assert meta["event_ids"] == "e1,e2,e3"
    assert meta["time"] == T0.timestamp()
    assert meta["revision"] == 0


def test_document_is_situation_lesson_then_action() -> None:
    action = 'Action: shell {"cmd":"backup.sh"}'
    assert episode_document(episode()) == f"the nightly backup job ran out of disk space\n{action}"
    with_lesson = episode(lesson="prune old snapshots before the backup")
    assert episode_document(with_lesson) == (
        "the nightly backup job ran out of disk space\n"
        f"Lesson: prune old snapshots before the backup\n{action}"
    )
    assert episode_document(episode(situation="  ")) == action


def test_latest_keeps_the_highest_revision_and_the_last_of_equals() -> None:
    a0, a1 = episode(revision=0), episode(revision=1, lesson="x")
    a1_again = episode(revision=1, lesson="y")
    b0 = episode(episode_id="ep-2")
    assert latest([a0, b0, a1]) == [a1, b0]
    assert latest([a1, a0]) == [a1]
    assert latest([a1, a1_again]) == [a1_again]


def test_plan_writes_skips_stale_and_unchanged() -> None:
    new, older, same, edited, newer = (
        episode(episode_id="new"),
        episode(episode_id="older", revision=0),
        episode(episode_id="same", revision=1),
        episode(episode_id="edited", revision=1, result="different text"),
        episode(episode_id="newer", revision=2),
    )
    stored = {
        "older": {"revision": 1, "fingerprint": "whatever"},
        "same": {"revision": 1, "fingerprint": episode_fingerprint(same)},
        "edited": {"revision": 1, "fingerprint": episode_fingerprint(episode(revision=1))},
        "newer": {"revision": 1, "fingerprint": "old"},
    }
    plan = plan_writes([new, older, same, edited, newer], stored)
    assert [e.episode_id for e in plan.write] == ["new", "edited", "newer"]
    assert [e.episode_id for e in plan.stale] == ["older"]
    assert [e.episode_id for e in plan.unchanged] == ["same"]


# --- against the embedded store -------------------------------------------------------------


def records(*episodes: Episode) -> list[Record]:
    return [Record(EPISODES, 0, i, ep.agent_id.encode(), ep, 0) for i, ep in enumerate(episodes)]


def test_a_lesson_revision_replaces_the_whole_record(store: MemoryStore) -> None:
    proj = MemoryProjection(store)
    proj.apply(records(episode(revision=0, expected="backup written", run_id="run-1")))
    revised = episode(
        revision=1,
        expected=None,
        run_id=None,
        lesson="prune old snapshots before the backup",
        event_ids=("e1", "e2", "e3", "e4"),
    )
    proj.apply(records(revised))
    got = store.get(["ep-1"])["ep-1"]
    assert store.count() == 1
    assert got.metadata["revision"] == 1
    assert got.metadata["expected"] == ""  # cleared, although Chroma merges metadata
    assert got.metadata["run_id"] == ""
    assert got.metadata["lesson"] == "prune old snapshots before the backup"
    assert got.metadata["event_ids"] == "e1,e2,e3,e4"
    assert "Lesson: prune old snapshots before the backup" in got.document

    # a replay delivers revision 0 again: the stored revision 1 is kept
    plan = proj.apply_episodes([episode(revision=0)])
    assert [e.revision for e in plan.stale] == [0]
    assert store.get(["ep-1"])["ep-1"].metadata["revision"] == 1


def test_replaying_the_same_episodes_twice_gives_the_same_count(store: MemoryStore) -> None:
    eps = [
        episode(episode_id=f"ep-{i}", situation=f"situation number {i}", time=T0 + timedelta(i))
        for i in range(40)
    ]
    proj = MemoryProjection(store, chunk=16)
    proj.apply(records(*eps))
    first = {i: r.metadata for i, r in store.get([e.episode_id for e in eps]).items()}
    assert store.count() == 40
    proj.apply(records(*eps))
    assert store.count() == 40
    assert proj.stats.written == 40
    assert proj.stats.unchanged == 40  # the second pass embedded nothing
    assert {i: r.metadata for i, r in store.get([e.episode_id for e in eps]).items()} == first


def test_an_interrupted_batch_raises_before_the_next_chunk_and_setup_clears_it(
    store: MemoryStore,
) -> None:
    eps = [
        episode(episode_id=f"ep-{i}", situation=f"situation number {i}", time=T0 + timedelta(i))
        for i in range(40)
    ]
    proj = MemoryProjection(store, chunk=16)
    proj.interrupt()
    with pytest.raises(ApplyInterrupted):
        proj.apply(records(*eps))
    assert store.count() == 0 and proj.stats.batches == 0
    proj.setup()  # a new run starts uninterrupted
    proj.apply(records(*eps))
    assert store.count() == 40 and proj.stats.written == 40


def test_a_batch_with_two_revisions_writes_the_newest(store: MemoryStore) -> None:
    proj = MemoryProjection(store)
    proj.apply(records(episode(revision=0), episode(revision=1, lesson="learned")))
    assert store.get(["ep-1"])["ep-1"].metadata["lesson"] == "learned"
    assert proj.stats.written == 1


def test_a_value_that_is_not_an_episode_is_refused(store: MemoryStore) -> None:
    bad = [Record(EPISODES, 3, 17, None, {"not": "an episode"}, 0)]
    with pytest.raises(TypeError, match=r"got dict from agent-episodes\[3\]@17"):
        MemoryProjection(store).apply(bad)


# --- end to end: events -> broker -> episodes -> memory projection -> recall ---------------

SCENARIOS = {
    "disk-full": (
        "The nightly database backup failed because the volume ran out of disk space",
        "shell",
        "Rotate and delete old snapshots before starting the backup",
    ),
    "rate-limit": (
        "The payments API keeps answering HTTP 429 Too Many Requests while syncing invoices",
        "http",
        "Back off exponentially and respect the Retry-After header",
    ),
    "flaky-test": (
        "A unit test for the date parser passes locally but fails in CI around midnight UTC",
        "pytest",
        "Freeze the clock in tests instead of reading the wall time",
    ),
}


def simulated_events() -> list[Event]:
    """One agent per scenario: think, act (fails), learn. Deterministic ids and clock."""
    events: list[Event] = []
    for n, (name, (situation, tool, insight)) in enumerate(SCENARIOS.items()):
        ticks = iter(T0 + timedelta(minutes=n, seconds=s) for s in range(10))
        f = EventFactory(
            f"agent-{name}",
            run_id=f"run-{name}",
            ids=Uuid7Generator(n),
            clock=lambda t=ticks: next(t),
        )
        subject = f"scenario/{name}"
        events.append(f.run_started(f"handle {name}"))
        events.append(f.thought(situation, model="test-model"))
        started = f.action_started(tool, {"step": 1}, expected="it works", subject=subject)
        events.append(started)
        events.append(
            f.action_completed(started, status="error", result=f"{name} error", subject=subject)
        )
        events.append(
            f.lesson(
                situation=situation, action=tool, outcome="failed", insight=insight, subject=subject
            )
        )
    return events


async def read_topic(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30
) -> list[bytes]:
    """Every record value of ``topic`` (all partitions), polling until ``expected`` arrived."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata, so the partitions are known
        parts = consumer.partitions_for_topic(topic) or set()
        assert parts, f"topic {topic} does not exist"
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        await consumer.seek_to_beginning()
        values: list[bytes] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(values) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            values += [r.value for recs in batch.values() for r in recs]
        return values
    finally:
        await consumer.stop()


async def process_events(bootstrap: str, data_dir: Path, n_episodes: int) -> list[Episode]:
    """Run the real stream processor (streams.processor, faust) until it has published
    ``n_episodes`` episode records; return them as read back from ``agent-episodes``."""
    processor = build_app(bootstrap=bootstrap, data_dir=data_dir, use_table=False)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        ok = await wait_until(lambda: processor.stats.episodes >= n_episodes, timeout_s=120)
        assert ok, processor.stats
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    raw = await read_topic(bootstrap, EPISODES, n_episodes)
    return [decode_episode(v) for v in raw]


async def run_until_caught_up(runner: ProjectionRunner, expect_count: int) -> None:
    store = runner.projection.store  # type: ignore[attr-defined]
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        ok = await wait_until(
            lambda: runner.caught_up() and store.count() == expect_count, timeout_s=120
        )
        assert ok, (runner.stats, store.count())
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_events_to_recall_end_to_end_and_replay_is_idempotent(
    kafka, store: MemoryStore, tmp_path: Path
):
    events = simulated_events()
    async with EventProducer(kafka.bootstrap) as producer:
        await producer.send_many(events)
        await producer.flush()
    # one episode per scenario, emitted twice: at the outcome and again with the lesson
    episodes = await process_events(kafka.bootstrap, tmp_path / "processor", 2 * len(SCENARIOS))
    assert len(episodes) == 2 * len(SCENARIOS)
    distinct = {e.episode_id for e in episodes}
    assert len(distinct) == len(SCENARIOS)

    projection = MemoryProjection(store)
    assert projection.name == "memory"
    runner = ProjectionRunner(projection, kafka.bootstrap, config=MEMORY_RUNNER_CONFIG)
    assert runner.group_id == "agentstream-memory"  # its own group: never blocks the others
    await run_until_caught_up(runner, len(SCENARIOS))
    assert runner.stats.lag() == 0
    assert sum(runner.stats.highwater.values()) == len(episodes)

    hits = recall(
        "our invoice sync against the payment provider is being throttled with 429 errors",
        k=3,
        store=store,
    )
    top = hits[0]
    assert top.agent_id == "agent-rate-limit"
    assert top.outcome == "failure"
    assert top.lesson == "Back off exponentially and respect the Retry-After header"
    assert top.revision == 1
    assert top.tool == "http"
    assert len(top.event_ids) == 4
    assert {e.id for e in events}.issuperset(top.event_ids)
    assert recall("disk space", agent="agent-flaky-test", store=store)[0].tool == "pytest"

    # replay the whole topic with a fresh consumer group: same records, nothing re-embedded
    again = MemoryProjection(store)
    replay = ProjectionRunner(again, kafka.bootstrap, "memory-replay", MEMORY_RUNNER_CONFIG)
    await run_until_caught_up(replay, len(SCENARIOS))
    assert store.count() == len(SCENARIOS)
    assert again.stats.written == 0
    assert again.stats.unchanged + again.stats.stale == len(SCENARIOS)


def test_episode_wire_roundtrip_is_what_the_projection_decodes() -> None:
    ep = episode(lesson="x")
    assert MemoryProjection.decoders[EPISODES](encode_derived(ep)) == ep
    assert msgspec.json.decode(encode_derived(ep))["episode_id"] == "ep-1"
