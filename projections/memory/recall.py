"""Recall: "have I (or any agent) been in a situation like this, and how did it end?"

``recall(text)`` embeds the situation, asks the store for the nearest episodes that pass
the filters, and returns plain frozen dataclasses an agent can put straight into a prompt
(:func:`format_for_prompt`) or serialise (:meth:`RecalledEpisode.as_dict`).

Without an explicit ``store``, recall answers from the process's
:class:`~projections.memory.exact_index.ExactIndex` (setting ``recall_index``, on by
default): Chroma's filtered search takes ~50-150 ms at 100k episodes, the in-memory index
~1-3 ms. A one-shot caller (the CLI) passes the store itself and queries Chroma directly.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

from projections.memory.store import Filter, MemoryHit, MemoryStore, Scalar

if TYPE_CHECKING:
    from agentstream.settings import Settings
    from projections.memory.exact_index import ExactIndex

Outcome = Literal["success", "failure"]
OUTCOMES: tuple[str, ...] = ("success", "failure")
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class RecalledEpisode:
    """One remembered episode and how far its situation is from the query (cosine, 0..2)."""

    episode_id: str
    distance: float
    situation: str
    action: str
    tool: str
    outcome: str
    result: str
    lesson: str | None
    expected: str | None
    actual: str | None
    agent_id: str
    run_id: str | None
    task_id: str | None
    tenant: str
    time: datetime
    revision: int
    event_ids: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: time as ISO 8601, event ids as a list."""
        d = asdict(self)
        d["time"] = self.time.isoformat()
        d["event_ids"] = list(self.event_ids)
        return d

    def summary(self) -> str:
        """One prompt line: situation, what was done, how it ended, and the lesson."""
        line = f"{self.situation} -> {self.action} -> {self.outcome}"
        if self.result:
            line += f" ({self.result})"
        if self.lesson:
            line += f"; lesson: {self.lesson}"
        return line


def _none_if_empty(value: Scalar | None) -> str | None:
    return None if value in (None, "") else str(value)


def hit_to_episode(hit: MemoryHit) -> RecalledEpisode:
    """Rebuild the episode view from the stored metadata (see projection.METADATA_KEYS)."""
    m = hit.metadata
    ids = str(m.get("event_ids", ""))
    return RecalledEpisode(
        episode_id=hit.id,
        distance=hit.distance,
        situation=str(m.get("situation", "")),
        action=str(m.get("action", "")),
        tool=str(m.get("tool", "")),
        outcome=str(m.get("outcome", "")),
        result=str(m.get("result", "")),
        lesson=_none_if_empty(m.get("lesson")),
        expected=_none_if_empty(m.get("expected")),
        actual=_none_if_empty(m.get("actual")),
        agent_id=str(m.get("agent_id", "")),
        run_id=_none_if_empty(m.get("run_id")),
        task_id=_none_if_empty(m.get("task_id")),
        tenant=str(m.get("tenant", "")),
        time=datetime.fromtimestamp(float(m.get("time", 0.0)), tz=UTC),
        revision=int(m.get("revision", 0)),
        event_ids=tuple(ids.split(",")) if ids else (),
    )


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``"15m"``, ``"2h"``, ``"7d"``, ``"1w"`` before ``now``, or an ISO 8601 time (UTC if
    it has no offset)."""
    now = now or datetime.now(UTC)
    rel = _RELATIVE.match(text)
    if rel:
        return now - timedelta(seconds=float(rel.group(1)) * _UNITS[rel.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither a duration like 15m/2h/7d nor an ISO 8601 time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def recall_filter(
    agent: str | None = None,
    tool: str | None = None,
    outcome: str | None = None,
    since: datetime | timedelta | None = None,
    tenant: str | None = None,
    now: datetime | None = None,
) -> Filter:
    """The store filter for recall's options (validated: a bad value is an error, not a miss)."""
    equals: dict[str, Scalar] = {}
    if agent:
        equals["agent_id"] = agent
    if tool:
        equals["tool"] = tool
    if tenant:
        equals["tenant"] = tenant
    if outcome is not None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        equals["outcome"] = outcome
    at_least: dict[str, float] = {}
    if since is not None:
        if isinstance(since, timedelta):
            since = (now or datetime.now(UTC)) - since
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware (e.g. datetime.now(UTC))")
        at_least["time"] = since.timestamp()
    return Filter(equals, at_least)


class Searcher(Protocol):
    """What recall needs: a :class:`MemoryStore` (Chroma) or an ``ExactIndex`` over one."""

    def query(self, text: str, k: int = 5, where: Filter | None = None) -> list[MemoryHit]: ...


_lock = threading.Lock()
_stores: dict[tuple[str, str, str | None, str], MemoryStore] = {}
_indexes: dict[tuple[str, str, str | None, str], ExactIndex] = {}


def default_store(settings: Settings | None = None, create: bool = False) -> MemoryStore:
    """The store the settings name (``AGENTSTREAM_CHROMA_URL`` etc.), opened once per process.

    ``create=False`` (readers): an embedded store must already exist; the projection
    passes ``create=True``.
    """
    from agentstream.settings import load_settings
    from projections.memory.embedding import load_embedder

    s = settings or load_settings()
    key = (s.memory_location, s.memory_collection, s.embedding_model, s.embedding_device)
    with _lock:
        store = _stores.get(key)
        if store is None:
            embedder = load_embedder(s.embedding_model, s.embedding_device, s.embedding_threads)
            store = _stores[key] = MemoryStore.open(
                s.memory_location, embedder, s.memory_collection, create=create
            )
        return store


def default_searcher(settings: Settings | None = None) -> Searcher:
    """What :func:`recall` asks when no store is given: the settings' store, behind the
    process's exact index unless ``recall_index`` is off (``AGENTSTREAM_RECALL_INDEX=off``).

    The index is created once per process; its thread loads the collection in the
    background (~10 s per 100k episodes, ~1.5 KB of RAM per episode) and queries go to
    Chroma until it is loaded.
    """
    from agentstream.settings import load_settings
    from projections.memory.exact_index import ExactIndex

    s = settings or load_settings()
    store = default_store(s)
    if not s.recall_index:
        return store
    key = (s.memory_location, s.memory_collection, s.embedding_model, s.embedding_device)
    with _lock:
        index = _indexes.get(key)
        if index is None:
            index = _indexes[key] = ExactIndex(store)
        return index


def recall(
    situation_text: str,
    k: int = 5,
    agent: str | None = None,
    tool: str | None = None,
    outcome: Outcome | None = None,
    since: datetime | timedelta | None = None,
    *,
    tenant: str | None = None,
    store: Searcher | None = None,
) -> list[RecalledEpisode]:
    """The ``k`` remembered episodes whose situations are nearest to ``situation_text``.

    Filters narrow the candidates before ranking: ``agent`` (agent id), ``tool``,
    ``outcome`` ("success"/"failure"), ``since`` (a time, or a duration back from now) and
    ``tenant``. Nearest first; fewer than ``k`` when fewer episodes pass the filters.
    ``store``: a :class:`MemoryStore` (asks Chroma) or an ``ExactIndex``; default
    :func:`default_searcher`.
    """
    if not situation_text.strip():
        raise ValueError("recall needs a non-empty situation text")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    where = recall_filter(agent, tool, outcome, since, tenant)
    searcher = store if store is not None else default_searcher()
    return [hit_to_episode(h) for h in searcher.query(situation_text, k, where)]


def format_for_prompt(episodes: list[RecalledEpisode]) -> str:
    """A compact block an agent can prepend to its prompt."""
    if not episodes:
        return "No similar past episodes."
    lines = ["Similar past episodes (nearest first):"]
    lines += [f"{i}. {ep.summary()}" for i, ep in enumerate(episodes, 1)]
    return "\n".join(lines)
