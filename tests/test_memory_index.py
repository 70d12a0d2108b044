"""The exact filtered index (projections/memory/exact_index.py) against a real Chroma store.

Every test builds a PersistentClient store in a tmp directory with a few hundred records
(seeded random unit vectors, realistic metadata) and checks the index against brute force
numpy over the same records, against Chroma's own answers, and through its freshness
protocol: refresh after writes, revisions, a swapped-in collection, a reconcile for what the
delta cannot see, and the background thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agentstream.settings import Settings
from projections.memory.embedding import SentenceEmbedder, load_embedder
from projections.memory.exact_index import ExactIndex, VectorTable
from projections.memory.recall import default_searcher, recall, recall_filter
from projections.memory.store import (
    STORED_AT,
    Filter,
    MemoryHit,
    MemoryRecord,
    MemoryStore,
    MemoryStoreError,
)

DIM = 384
AGENTS = ("a0", "a1", "a2", "a3", "a4", "a5")
TOOLS = ("shell", "sql", "http", "git")
T0 = 1_767_225_600.0  # 2026-01-01


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return load_embedder()


@dataclass
class Data:
    """What was written, kept beside the store for brute force answers."""

    ids: list[str]
    vectors: np.ndarray  # unit rows
    metas: list[dict[str, object]]

    def put(self, i: str, vector: np.ndarray, meta: dict[str, object]) -> None:
        unit = (vector / np.linalg.norm(vector)).astype(np.float32)
        if i in self.ids:
            row = self.ids.index(i)
            self.vectors[row] = unit
            self.metas[row] = meta
        else:
            self.ids.append(i)
            self.vectors = np.vstack([self.vectors, unit[None, :]])
            self.metas.append(meta)


def make_records(n: int, seed: int, prefix: str = "ep") -> tuple[list[MemoryRecord], np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = []
    for i in range(n):
        meta = {
            "agent_id": AGENTS[int(rng.integers(len(AGENTS)))],
            "tool": TOOLS[int(rng.integers(len(TOOLS)))],
            "outcome": "failure" if rng.random() < 0.3 else "success",
            "tenant": "acme" if rng.random() < 0.2 else "default",
            "time": T0 + i * 60.0,
            "revision": 0,
            "lesson": "",
        }
        records.append(MemoryRecord(f"{prefix}-{i:04d}", f"episode {prefix} {i}", meta))
    return records, vectors


@pytest.fixture
def store(tmp_path: Path, embedder: SentenceEmbedder) -> MemoryStore:
    s = MemoryStore.open(str(tmp_path / "chroma"), embedder, "idx-test")
    s.ensure()
    return s


@pytest.fixture
def data(store: MemoryStore) -> Data:
    records, vectors = make_records(300, seed=5)
    store.upsert(records, embeddings=vectors)
    return Data([r.id for r in records], vectors.copy(), [dict(r.metadata) for r in records])


@pytest.fixture
def index(store: MemoryStore, data: Data) -> Iterator[ExactIndex]:
    idx = ExactIndex(store, start=False, exact_unfiltered=True)
    assert idx.refresh().action == "load"
    yield idx
    idx.close()


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def brute_force(data: Data, query: np.ndarray, k: int, where: Filter) -> list[tuple[str, float]]:
    """The exact answer, written independently of the index: a Python filter, numpy dot."""

    def ok(meta: Mapping[str, object]) -> bool:
        return all(meta.get(key) == v for key, v in where.equals.items()) and all(
            isinstance(meta.get(key), float) and meta[key] >= v  # type: ignore[operator]
            for key, v in where.at_least.items()
        )

    rows = [r for r, m in enumerate(data.metas) if ok(m)]
    q = query / np.linalg.norm(query)
    dist = {data.ids[r]: 1.0 - float(data.vectors[r] @ q) for r in rows}
    return sorted(dist.items(), key=lambda kv: kv[1])[:k]


def pairs(hits: list[MemoryHit]) -> list[tuple[str, float]]:
    return [(h.id, h.distance) for h in hits]


FILTERS = {
    "agent": (Filter(equals={"agent_id": "a2"}), 5),
    "agent+outcome": (recall_filter(agent="a1", outcome="failure"), 5),
    "since": (Filter(at_least={"time": T0 + 200 * 60.0}), 5),
    "tool+since+tenant": (
        Filter(equals={"tool": "sql", "tenant": "default"}, at_least={"time": T0 + 100 * 60.0}),
        5,
    ),
    "no filter": (Filter(), 5),
    "matches nothing": (Filter(equals={"agent_id": "nobody"}), 5),
    "value of another type": (Filter(equals={"outcome": 1}), 5),
    "k above the matches": (Filter(equals={"agent_id": "a3", "outcome": "failure"}), 1000),
    # > 30% of rows pass: every row is scored and the failing ones masked out
    "dense, k above the matches": (Filter(equals={"tenant": "default"}), 1000),
    "every row passes": (Filter(at_least={"time": 0.0}), 5),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_index_answers_equal_brute_force(name: str, index: ExactIndex, data: Data) -> None:
    where, k = FILTERS[name]
    rng = np.random.default_rng(11)
    for _ in range(5):
        q = unit(rng)
        got = pairs(index.query_vector(q, k, where))
        want = brute_force(data, q, k, where)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert np.allclose([d for _, d in got], [d for _, d in want], atol=1e-5)
    if name in ("k above the matches", "dense, k above the matches"):
        assert 0 < len(want) < k
    if name in ("matches nothing", "value of another type"):
        assert want == []
    assert index.stats.index_queries == 5 and index.stats.chroma_queries == 0


def test_hits_carry_document_and_metadata_from_chroma(index: ExactIndex, data: Data) -> None:
    row = 17
    hit = index.query_vector(data.vectors[row], 1, Filter(equals={"tool": data.metas[row]["tool"]}))
    assert hit[0].id == data.ids[row]
    assert hit[0].distance == pytest.approx(0.0, abs=1e-5)
    assert hit[0].document == f"episode ep {row}"
    assert hit[0].metadata["agent_id"] == data.metas[row]["agent_id"]
    assert isinstance(hit[0].metadata[STORED_AT], float)


def test_distances_match_chromas_within_1e4(index: ExactIndex, store: MemoryStore) -> None:
    """All records of one agent, both ways: the same ids, the same cosine distances."""
    rng = np.random.default_rng(3)
    where = Filter(equals={"agent_id": "a4"})
    for _ in range(3):
        q = unit(rng) * 3.0  # not unit length: both sides normalise
        mine = dict(pairs(index.query_vector(q, 300, where)))
        chroma = dict(pairs(store.query_vector(q, 300, where)))
        assert len(mine) > 20 and set(mine) == set(chroma)
        assert max(abs(mine[i] - chroma[i]) for i in mine) < 1e-4


def test_upsert_stamps_stored_at(store: MemoryStore) -> None:
    before = time.time()
    store.upsert([MemoryRecord("s1", "x", {"agent_id": "a0", STORED_AT: 1.0})])
    after = time.time()
    stamp = store.get(["s1"])["s1"].metadata[STORED_AT]
    assert isinstance(stamp, float) and before <= stamp <= after  # the caller's 1.0 replaced


def test_a_record_upserted_after_the_load_appears_after_refresh(
    index: ExactIndex, store: MemoryStore, data: Data
) -> None:
    q = unit(np.random.default_rng(8))
    meta = {**data.metas[0], "agent_id": "late-agent", "time": T0 + 10_000 * 60.0}
    store.upsert([MemoryRecord("late", "written after the load", meta)], embeddings=q[None, :])
    where = Filter(equals={"agent_id": "late-agent"})
    assert index.query_vector(q, 5, where) == []  # served from the table, which is behind
    result = index.refresh()
    assert (result.action, result.applied) == ("delta", 1)
    hits = index.query_vector(q, 5, where)
    assert [h.id for h in hits] == ["late"] and hits[0].document == "written after the load"
    assert index.refresh().applied == 0  # in the overlap window, unchanged: not fetched again
    assert index.stats.rows == 301


def test_a_revision_replaces_the_row(index: ExactIndex, store: MemoryStore, data: Data) -> None:
    target = data.ids[42]
    old_agent = data.metas[42]["agent_id"]
    q = unit(np.random.default_rng(9))
    meta = {**data.metas[42], "agent_id": "a-revised", "revision": 1, "lesson": "new"}
    store.upsert([MemoryRecord(target, "revised text", meta)], embeddings=q[None, :])
    data.put(target, q, meta)
    assert index.refresh().applied == 1
    assert index.stats.rows == 300
    hits = index.query_vector(q, 1, Filter(equals={"agent_id": "a-revised"}))
    assert hits[0].id == target and hits[0].distance == pytest.approx(0.0, abs=1e-5)
    assert hits[0].metadata["revision"] == 1 and hits[0].document == "revised text"
    old = index.query_vector(q, 300, Filter(equals={"agent_id": old_agent}))
    assert target not in {h.id for h in old}
    want = brute_force(data, q, 5, Filter(equals={"agent_id": old_agent}))
    assert [h.id for h in old[:5]] == [i for i, _ in want]
    assert np.allclose([h.distance for h in old[:5]], [d for _, d in want], atol=1e-5)


def test_a_swapped_in_collection_is_reloaded(index: ExactIndex, store: MemoryStore) -> None:
    staging = store.with_collection("idx-test-rebuilt")
    staging.ensure()
    records, vectors = make_records(40, seed=99, prefix="new")
    staging.upsert(records, embeddings=vectors)
    store.replace_live_with(staging.name)
    result = index.refresh()
    assert result.action == "load"
    stats = index.stats
    assert (stats.loads, stats.rows) == (2, 40)
    hits = index.query_vector(
        vectors[7], 3, Filter(equals={"tenant": records[7].metadata["tenant"]})
    )
    assert hits[0].id == "new-0007" and all(h.id.startswith("new-") for h in hits)


def test_a_vanished_collection_sends_queries_to_chroma(
    index: ExactIndex, store: MemoryStore
) -> None:
    q = unit(np.random.default_rng(1))
    where = Filter(equals={"agent_id": "a0"})
    store.drop()
    assert index.refresh().action == "absent"
    assert not index.ready
    with pytest.raises(MemoryStoreError, match="no collection 'idx-test'"):
        index.query_vector(q, 5, where)  # Chroma's answer: a clear error, not stale hits


def test_an_unindexed_key_falls_back_to_chroma(index: ExactIndex, data: Data) -> None:
    rng = np.random.default_rng(4)
    where = Filter(equals={"lesson": ""}, at_least={"revision": 0.0})
    q = unit(rng)
    hits = index.query_vector(q, 5, where)
    assert index.stats.chroma_queries == 1 and index.stats.index_queries == 0
    # every record passes (lesson "", revision 0): Chroma's exact-enough answer on 300 records
    want = brute_force(data, q, 5, Filter())
    assert [h.id for h in hits] == [i for i, _ in want]


def test_queries_before_the_load_are_answered_by_chroma(store: MemoryStore, data: Data) -> None:
    idx = ExactIndex(store, start=False)
    q = unit(np.random.default_rng(6))
    where = Filter(equals={"agent_id": "a5"})
    assert not idx.ready
    before = pairs(idx.query_vector(q, 5, where))
    assert (idx.stats.chroma_queries, idx.stats.index_queries) == (1, 0)
    idx.refresh()
    assert idx.ready
    after = pairs(idx.query_vector(q, 5, where))
    assert idx.stats.index_queries == 1
    assert (
        [i for i, _ in before]
        == [i for i, _ in after]
        == [i for i, _ in brute_force(data, q, 5, where)]
    )


def test_unfiltered_queries_go_to_chroma_unless_asked(store: MemoryStore, data: Data) -> None:
    idx = ExactIndex(store, start=False)  # exact_unfiltered=False: HNSW is fast unfiltered
    idx.refresh()
    idx.query_vector(unit(np.random.default_rng(2)), 5, None)
    idx.query_vector(unit(np.random.default_rng(2)), 5, Filter(equals={"agent_id": "a1"}))
    assert (idx.stats.chroma_queries, idx.stats.index_queries) == (1, 1)


def test_a_candidate_deleted_or_changed_in_chroma_is_skipped(
    index: ExactIndex, store: MemoryStore, data: Data, embedder: SentenceEmbedder
) -> None:
    where = Filter(equals={"agent_id": "a2"})
    q = unit(np.random.default_rng(12))
    first = [i for i, _ in brute_force(data, q, 8, where)]
    col = store.client.get_collection(store.name, embedding_function=embedder)
    col.delete(ids=[first[0]])  # behind the index's back: no refresh yet
    # and one whose agent changed: the table still says a2, Chroma says otherwise
    col.update(ids=[first[1]], metadatas=[{"agent_id": "moved"}])
    hits = index.query_vector(q, 5, where)
    assert [h.id for h in hits] == first[2:7]


def test_reconcile_repairs_what_the_delta_cannot_see(
    index: ExactIndex, store: MemoryStore, data: Data, embedder: SentenceEmbedder
) -> None:
    """A writer that stalled past the overlap (its stored_at is old) and a deletion."""
    col = store.client.get_collection(store.name, embedding_function=embedder)
    q = unit(np.random.default_rng(13))
    stale = {**data.metas[0], "agent_id": "stalled", STORED_AT: 5.0}
    col.upsert(ids=["stalled"], embeddings=[q.tolist()], documents=["late"], metadatas=[stale])
    col.delete(ids=[data.ids[1]])
    assert index.refresh().applied == 0  # stored_at 5.0 is long before the watermark
    assert index.query_vector(q, 5, Filter(equals={"agent_id": "stalled"})) == []
    result = index.reconcile()
    assert (result.action, result.checked, result.applied, result.removed) == (
        "reconcile",
        300,
        1,
        1,
    )
    assert [h.id for h in index.query_vector(q, 5, Filter(equals={"agent_id": "stalled"}))] == [
        "stalled"
    ]
    assert index.stats.rows == 300 and index.stats.reconciles == 1


def test_reconcile_runs_when_due(store: MemoryStore, data: Data) -> None:
    now = [1_000_000.0]
    idx = ExactIndex(store, start=False, reconcile_s=600.0, clock=lambda: now[0])
    assert idx.refresh().action == "load"
    now[0] += 599.0
    assert idx.refresh().action == "delta"
    now[0] += 2.0
    assert idx.refresh().action == "reconcile"
    assert idx.refresh().action == "delta"


def test_background_thread_loads_follows_writes_and_stops(store: MemoryStore, data: Data) -> None:
    idx = ExactIndex(store, refresh_s=0.05)
    try:
        assert idx.wait_ready(60)
        q = unit(np.random.default_rng(21))
        meta = {**data.metas[3], "agent_id": "bg-agent"}
        store.upsert([MemoryRecord("bg", "background", meta)], embeddings=q[None, :])
        where = Filter(equals={"agent_id": "bg-agent"})
        deadline = time.monotonic() + 30
        while not idx.query_vector(q, 1, where) and time.monotonic() < deadline:
            time.sleep(0.02)  # polling for the refresher with a deadline, not timing it
        assert [h.id for h in idx.query_vector(q, 1, where)] == ["bg"]
        assert idx.stats.index_queries >= 1 and idx.stats.chroma_queries == 0
    finally:
        idx.close()
    assert not idx.running


def test_table_growth_and_removal_keep_rows_consistent() -> None:
    rng = np.random.default_rng(0)
    table = VectorTable(capacity=4)
    ids = [f"r{i}" for i in range(50)]
    vecs = rng.standard_normal((50, 8)).astype(np.float32)
    metas = [{"agent_id": f"a{i % 3}", "time": float(i)} for i in range(50)]
    for s in range(0, 50, 7):
        table.upsert(ids[s : s + 7], vecs[s : s + 7], metas[s : s + 7])
    assert table.remove(["r0", "r10", "r49", "missing"]) == 3
    keep = [i for i in range(50) if ids[i] not in ("r0", "r10", "r49")]
    q = rng.standard_normal(8).astype(np.float32)
    q /= np.linalg.norm(q)
    got_ids, dists, matched = table.top(
        q, 100, Filter(equals={"agent_id": "a1"}, at_least={"time": 20.0})
    )
    unitv = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    want = sorted(
        ((ids[i], 1 - float(unitv[i] @ q)) for i in keep if i % 3 == 1 and i >= 20),
        key=lambda kv: kv[1],
    )
    assert got_ids == [i for i, _ in want] and matched == len(want)
    assert np.allclose(dists, [d for _, d in want], atol=1e-6)
    assert len(table) == 47 and table.stamp("r10") is None


# --- recall() through the index --------------------------------------------------------------

TEXTS = {
    "db": "the database schema migration hung waiting for a table lock and timed out",
    "rate": "the partner API answered 429 too many requests during the invoice sync",
    "disk": "the CI runner ran out of disk space while writing build artifacts",
    "lint": "ruff reported unused imports and the style check blocked the merge",
    "env": "the service crashed at startup because DATABASE_URL was not set in staging",
    "flaky": "a payment timeout test fails only sometimes on the build server",
}


def test_recall_through_the_index_equals_recall_through_chroma(
    tmp_path: Path, embedder: SentenceEmbedder
) -> None:
    """Real model embeddings: the index returns Chroma's hits with Chroma's distances, so the
    recall quality floors measured through Chroma (test_recall_quality.py) carry over."""
    store = MemoryStore.open(str(tmp_path / "chroma"), embedder, "idx-recall")
    store.ensure()
    store.upsert(
        [
            MemoryRecord(
                k,
                text,
                {
                    "agent_id": "a0" if i % 2 else "a1",
                    "tool": "x",
                    "outcome": "failure",
                    "time": T0 + i,
                    "tenant": "default",
                },
            )
            for i, (k, text) in enumerate(TEXTS.items())
        ]
    )
    with ExactIndex(store, start=False) as idx:
        idx.refresh()
        for probe, truth in [
            ("migration blocked by a lock on the orders table", "db"),
            ("no space left on device on the build machine", "disk"),
            ("throttled by the vendor's rate limit", "rate"),
        ]:
            via_index = recall(probe, k=6, tenant="default", store=idx)
            via_chroma = recall(probe, k=6, tenant="default", store=store)
            assert via_index[0].episode_id == truth
            assert [e.episode_id for e in via_index] == [e.episode_id for e in via_chroma]
            assert np.allclose(
                [e.distance for e in via_index], [e.distance for e in via_chroma], atol=1e-4
            )
        assert idx.stats.index_queries == 3


def test_default_searcher_follows_the_recall_index_setting(
    tmp_path: Path, embedder: SentenceEmbedder
) -> None:
    location = tmp_path / "chroma"
    MemoryStore.open(str(location), embedder, "agentstream-episodes").ensure()
    off = default_searcher(Settings(chroma_url=str(location), recall_index=False))
    assert isinstance(off, MemoryStore)
    on = default_searcher(Settings(chroma_url=str(location), recall_index=True))
    try:
        assert isinstance(on, ExactIndex) and on.running
        assert default_searcher(Settings(chroma_url=str(location))) is on  # once per process
        assert on.wait_ready(60) and on.stats.rows == 0
    finally:
        on.close()
