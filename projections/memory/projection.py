"""The memory projection: ``agent-episodes`` -> one Chroma record per episode.

Pure core: :func:`episode_record` maps an episode to the stored record, :func:`latest` keeps
the newest revision per episode, :func:`plan_writes` decides what a batch must write given
what the store already holds. :class:`MemoryProjection` is the thin I/O shell the runner
drives (own consumer group ``agentstream-memory``, so embedding never holds up the other
projections; its lag is the runner's ``stats.lag()`` and the
``agentstream_projection_lag{projection="memory"}`` gauge).

Idempotence: the record id is the episode id, and writes are upserts. Because Chroma merges
metadata on upsert, every record carries every key (``""`` for "none"), so a lesson revision
replaces its predecessor entirely. A record never goes back to an older revision, and a
record already stored with the same revision and content is not embedded again: replaying
the topic into a live collection costs one ``get`` per batch, not the model.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import Counter

from projections.memory.store import MemoryRecord, MemoryStore, Scalar
from projections.runner import ApplyInterrupted, Record, RunnerConfig
from schemas.derived import Episode, decode_episode, encode_derived
from schemas.topics import EPISODES

log = logging.getLogger(__name__)

EPISODES_WRITTEN = Counter(
    "agentstream_memory_episodes", "Episodes handled by the memory projection", ["result"]
)

# ~400 short texts/s on 2 idle cores: 512 records is ~1.3 s of work, so a rebalance flush or a
# shutdown never waits long behind the model.
MEMORY_RUNNER_CONFIG = RunnerConfig(max_batch=512, max_wait_ms=500)
# Episodes embedded and upserted per store call inside one batch, at most: one encode batch
# (DEFAULT_BATCH_SIZE), ~0.3 s on 2 idle cores. A stop is noticed between chunks, so a chunk
# is sized from the measured rate to take about CHUNK_TARGET_S: on a busy machine (measured:
# 18 episodes/s at load average 5 on 2 cores) a chunk of 128 took 7 s, past SIGTERM's budget.
EMBED_CHUNK = 128
MIN_CHUNK = 8
CHUNK_TARGET_S = 1.0

# Every key is written on every upsert (see module docstring); recall reads them back.
METADATA_KEYS = (
    "agent_id",
    "run_id",
    "task_id",
    "tenant",
    "tool",
    "outcome",
    "time",
    "revision",
    "event_ids",
    "situation",
    "action",
    "result",
    "expected",
    "actual",
    "lesson",
    "has_lesson",
    "fingerprint",
)


def episode_document(ep: Episode) -> str:
    """The embedded text: the situation, the lesson if any, then the action.

    The action (tool and arguments) is part of it because the situation the reducer picks
    is the think event just before the action, often a terse decision ("decided use
    lint"); on simulator data adding the action raised top-1 recall from 0.69-0.79 to
    0.96 (docs/memory.md). It goes last: the model reads only the first 256 word pieces.
    """
    parts = [ep.situation.strip()]
    if ep.lesson:
        parts.append(f"Lesson: {ep.lesson.strip()}")
    parts.append(f"Action: {ep.action.strip()}")
    return "\n".join(p for p in parts if p)


def episode_fingerprint(ep: Episode) -> str:
    """Same episode content -> same fingerprint (the canonical JSON encoding, hashed)."""
    return hashlib.blake2b(encode_derived(ep), digest_size=16).hexdigest()


def episode_metadata(ep: Episode) -> dict[str, Scalar]:
    """Flat, complete metadata: every key present, ``""`` standing for "none"."""
    meta: dict[str, Scalar] = {
        "agent_id": ep.agent_id,
        "run_id": ep.run_id or "",
        "task_id": ep.task_id or "",
        "tenant": ep.tenant,
        "tool": ep.tool,
        "outcome": ep.outcome,
        "time": ep.time.timestamp(),
        "revision": ep.revision,
        "event_ids": ",".join(ep.event_ids),
        "situation": ep.situation,
        "action": ep.action,
        "result": ep.result,
        "expected": ep.expected or "",
        "actual": ep.actual or "",
        "lesson": ep.lesson or "",
        "has_lesson": bool(ep.lesson),
        "fingerprint": episode_fingerprint(ep),
    }
    assert tuple(meta) == METADATA_KEYS
    return meta


def episode_record(ep: Episode) -> MemoryRecord:
    return MemoryRecord(ep.episode_id, episode_document(ep), episode_metadata(ep))


def latest(episodes: Iterable[Episode]) -> list[Episode]:
    """One episode per id: the highest revision; for equal revisions the later one wins.

    Order of first appearance is kept, so output is deterministic for a given batch.
    """
    best: dict[str, Episode] = {}
    for ep in episodes:
        held = best.get(ep.episode_id)
        if held is None or ep.revision >= held.revision:
            best[ep.episode_id] = ep
    return list(best.values())


@dataclass(frozen=True, slots=True)
class WritePlan:
    write: list[Episode]
    stale: list[Episode]  # the store already holds a strictly newer revision
    unchanged: list[Episode]  # stored with the same revision and content


def plan_writes(
    episodes: Sequence[Episode], stored: Mapping[str, Mapping[str, Scalar]]
) -> WritePlan:
    """Split a batch by what the store holds (``stored``: id -> metadata of stored records)."""
    write: list[Episode] = []
    stale: list[Episode] = []
    unchanged: list[Episode] = []
    for ep in episodes:
        meta = stored.get(ep.episode_id)
        if meta is None:
            write.append(ep)
            continue
        held_rev = meta.get("revision")
        if isinstance(held_rev, int) and held_rev > ep.revision:
            stale.append(ep)
        elif held_rev == ep.revision and meta.get("fingerprint") == episode_fingerprint(ep):
            unchanged.append(ep)
        else:
            write.append(ep)
    return WritePlan(write, stale, unchanged)


@dataclass
class MemoryStats:
    written: int = 0
    stale: int = 0
    unchanged: int = 0
    batches: int = 0


class MemoryProjection:
    """Feeds ``agent-episodes`` into a :class:`MemoryStore` (one record per episode id)."""

    name = "memory"
    topics: tuple[str, ...] = (EPISODES,)
    decoders = {EPISODES: decode_episode}

    def __init__(self, store: MemoryStore, chunk: int = EMBED_CHUNK) -> None:
        self.store = store
        self.chunk = chunk
        self._rate: float | None = None  # episodes/s through get + embed + upsert, smoothed
        self.stats = MemoryStats()
        self._interrupted = threading.Event()

    def setup(self) -> None:
        self._interrupted.clear()
        self.store.ensure()

    def interrupt(self) -> None:
        """Stop between chunks: the batch in hand raises :class:`ApplyInterrupted` (the
        runner then commits nothing of it; chunks already written are re-applied, as
        upserts, when it is redelivered)."""
        self._interrupted.set()

    def apply(self, records: list[Record]) -> None:
        episodes: list[Episode] = []
        for r in records:
            if not isinstance(r.value, Episode):
                raise TypeError(
                    f"memory projection got {type(r.value).__name__} from "
                    f"{r.topic}[{r.partition}]@{r.offset}; its decoder must yield Episode"
                )
            episodes.append(r.value)
        self.apply_episodes(episodes)

    def _chunk_size(self) -> int:
        """Episodes for about CHUNK_TARGET_S of work at the measured rate (small at first)."""
        if self._rate is None:
            return min(self.chunk, MIN_CHUNK * 2)
        return max(MIN_CHUNK, min(self.chunk, int(self._rate * CHUNK_TARGET_S)))

    def _note_rate(self, written: int, seconds: float) -> None:
        rate = written / max(seconds, 1e-3)
        self._rate = rate if self._rate is None else 0.5 * self._rate + 0.5 * rate

    def apply_episodes(self, episodes: Iterable[Episode]) -> WritePlan:
        """Write a batch of episodes (the replay engine may call this directly)."""
        todo = latest(episodes)
        write: list[Episode] = []
        stale: list[Episode] = []
        unchanged: list[Episode] = []
        start = 0
        while start < len(todo):
            if self._interrupted.is_set():
                raise ApplyInterrupted(f"memory: stopped with {len(todo) - start} episodes left")
            part = todo[start : start + self._chunk_size()]
            start += len(part)
            began = time.monotonic()
            held = self.store.get([ep.episode_id for ep in part])
            plan = plan_writes(part, {i: rec.metadata for i, rec in held.items()})
            self.store.upsert([episode_record(ep) for ep in plan.write])
            if plan.write:
                self._note_rate(len(plan.write), time.monotonic() - began)
            write += plan.write
            stale += plan.stale
            unchanged += plan.unchanged
        self.stats.batches += 1
        self.stats.written += len(write)
        self.stats.stale += len(stale)
        self.stats.unchanged += len(unchanged)
        EPISODES_WRITTEN.labels("written").inc(len(write))
        EPISODES_WRITTEN.labels("stale").inc(len(stale))
        EPISODES_WRITTEN.labels("unchanged").inc(len(unchanged))
        if stale:
            log.info("memory: kept %d newer stored revisions over older replayed ones", len(stale))
        return WritePlan(write, stale, unchanged)
