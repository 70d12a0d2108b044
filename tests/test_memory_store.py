"""Contract suite for the memory store: one set of tests, run against every Chroma backend.

Backends: the embedded PersistentClient in a tmp directory, and a real ``chroma run``
server (HttpClient) started on a free port for this module and stopped after it. Every
test gets its own collection, so tests never see each other's records.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agentstream.processes import ManagedProcess, free_port
from projections.memory.embedding import SentenceEmbedder, load_embedder
from projections.memory.store import (
    Filter,
    MemoryRecord,
    MemoryStore,
    MemoryStoreError,
    check_collection_name,
    open_client,
)

HOST = "127.0.0.1"


def chroma_binary() -> str:
    """The ``chroma`` script of this interpreter's environment (not whatever PATH finds)."""
    beside = Path(sys.executable).parent / "chroma"
    found = str(beside) if beside.exists() else shutil.which("chroma")
    if not found:
        pytest.fail("the chroma CLI (from the chromadb wheel) is not installed")
    return found


@dataclass(frozen=True)
class ChromaServer:
    url: str
    process: ManagedProcess


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A ``chroma run`` server with its own data directory, on a free loopback port."""
    base = tmp_path_factory.mktemp("chroma-server")
    port = free_port(HOST)
    argv = [chroma_binary(), "run", "--path", str(base / "data"), "--host", HOST]
    proc = ManagedProcess("chroma", [*argv, "--port", str(port)], base / "chroma.log")
    proc.start()
    try:
        proc.wait_for_port(HOST, port, deadline_s=60)
        yield ChromaServer(f"http://{HOST}:{port}", proc)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    """The real offline model, loaded once per session."""
    return load_embedder()


@pytest.fixture(params=["persistent", "http"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "persistent":
        return str(tmp_path / "chroma")
    return request.getfixturevalue("chroma_server").url


@pytest.fixture
def store(location: str, embedder: SentenceEmbedder) -> Iterator[MemoryStore]:
    s = MemoryStore.open(location, embedder, f"test-{uuid.uuid4().hex[:12]}")
    s.ensure()
    try:
        yield s
    finally:
        for name in s.collections():
            if name.startswith(s.name):
                s.with_collection(name).drop()


def meta(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {"agent_id": "a1", "tool": "sql", "outcome": "success", "time": 0.0}
    return {**base, **extra}


def rec(i: str, doc: str, **extra: object) -> MemoryRecord:
    return MemoryRecord(i, doc, meta(**extra))  # type: ignore[arg-type]


# --- lifecycle ------------------------------------------------------------------------------


def test_ensure_is_idempotent_and_records_the_model(store: MemoryStore, embedder) -> None:
    store.ensure()
    store.ensure()
    assert store.count() == 0
    assert store.collections().count(store.name) == 1
    col = store.client.get_collection(store.name, embedding_function=embedder)
    assert col.metadata["embedding_model"] == embedder.model_id
    assert col.metadata["dimension"] == 384


def test_missing_collection_is_a_clear_error(store: MemoryStore) -> None:
    other = store.with_collection(f"{store.name}-absent")
    with pytest.raises(MemoryStoreError, match=r"no collection .*-absent"):
        other.count()
    assert not other.exists()


def test_collection_built_with_another_model_is_refused(store: MemoryStore, embedder) -> None:
    name = f"{store.name}-othermodel"
    store.client.create_collection(
        name, metadata={"embedding_model": "some-other-model"}, embedding_function=embedder
    )
    with pytest.raises(MemoryStoreError, match="built with embedding model 'some-other-model'"):
        store.with_collection(name).count()
    foreign = f"{store.name}-foreign"
    store.client.create_collection(foreign)  # Chroma's default embedding function
    with pytest.raises(MemoryStoreError, match="created with another embedding function"):
        store.with_collection(foreign).count()


# --- writes ---------------------------------------------------------------------------------


def test_upsert_then_get_and_count(store: MemoryStore) -> None:
    n = store.upsert([rec("e1", "disk full on the build server"), rec("e2", "login page 500")])
    assert n == 2
    assert store.count() == 2
    got = store.get(["e1", "e2", "nope"])
    assert set(got) == {"e1", "e2"}
    assert got["e1"].document == "disk full on the build server"
    assert got["e1"].metadata["agent_id"] == "a1"
    assert got["e1"].metadata["time"] == 0.0


def test_upsert_same_id_twice_keeps_one_record(store: MemoryStore) -> None:
    store.upsert([rec("e1", "first text")])
    store.upsert([rec("e1", "first text")])
    assert store.count() == 1


def test_upsert_replaces_written_keys_but_chroma_merges_absent_ones(store: MemoryStore) -> None:
    """Pins the Chroma behaviour the episode mapping works around by writing every key."""
    store.upsert([rec("e1", "v1", lesson="old lesson", extra="only in v1")])
    store.upsert([rec("e1", "v2", lesson="")])
    got = store.get(["e1"])["e1"]
    assert got.document == "v2"
    assert got.metadata["lesson"] == ""  # written explicitly: replaced
    assert got.metadata["extra"] == "only in v1"  # not written: survives the upsert


def test_nested_metadata_is_rejected_with_the_key(store: MemoryStore) -> None:
    with pytest.raises(MemoryStoreError, match="'event_ids' is a list"):
        store.upsert([rec("e1", "x", event_ids=["a", "b"])])
    assert store.count() == 0


def test_duplicate_ids_in_one_upsert_are_rejected(store: MemoryStore) -> None:
    with pytest.raises(MemoryStoreError, match="same id twice"):
        store.upsert([rec("e1", "x"), rec("e1", "y")])


def test_precomputed_embeddings_must_match_the_model(store: MemoryStore) -> None:
    with pytest.raises(MemoryStoreError, match=r"expected \(1, 384\)"):
        store.upsert([rec("e1", "x")], embeddings=np.zeros((1, 3), dtype=np.float32))
    vec = np.zeros((1, 384), dtype=np.float32)
    vec[0, 0] = 1.0
    assert store.upsert([rec("e1", "x")], embeddings=vec) == 1
    hit = store.query_vector(vec[0], k=1)[0]
    assert hit.id == "e1"
    assert hit.distance == pytest.approx(0.0, abs=1e-5)


# --- queries --------------------------------------------------------------------------------


def test_query_ranks_the_semantically_nearest_first(store: MemoryStore) -> None:
    store.upsert(
        [
            rec("db", "the database schema migration hung and timed out"),
            rec("weather", "the user asked what the weather is like in Paris"),
            rec("cat", "a photo of a cat sleeping on a keyboard"),
        ]
    )
    hits = store.query("running the db migration got stuck until it timed out", k=3)
    assert hits[0].id == "db"
    assert hits[0].distance < hits[1].distance <= hits[2].distance
    assert hits[0].metadata["tool"] == "sql"
    assert hits[0].document.startswith("the database schema migration")


def test_query_with_k_above_count_returns_what_exists(store: MemoryStore) -> None:
    store.upsert([rec("e1", "one"), rec("e2", "two")])
    assert {h.id for h in store.query("number", k=10)} == {"e1", "e2"}


def test_filters_equals_at_least_and_both(store: MemoryStore) -> None:
    store.upsert(
        [
            rec("a-old-ok", "deploy the service", agent_id="a", outcome="success", time=100.0),
            rec("a-new-bad", "deploy the service", agent_id="a", outcome="failure", time=200.0),
            rec("b-new-bad", "deploy the service", agent_id="b", outcome="failure", time=300.0),
        ]
    )

    def ids(f: Filter) -> set[str]:
        return {h.id for h in store.query("deploy", k=10, where=f)}

    assert ids(Filter(equals={"agent_id": "a"})) == {"a-old-ok", "a-new-bad"}
    assert ids(Filter(at_least={"time": 200.0})) == {"a-new-bad", "b-new-bad"}
    assert ids(Filter(equals={"agent_id": "a", "outcome": "failure"})) == {"a-new-bad"}
    both = Filter(equals={"outcome": "failure"}, at_least={"time": 250.0})
    assert ids(both) == {"b-new-bad"}
    assert ids(Filter(equals={"agent_id": "nobody"})) == set()


def test_k_must_be_positive(store: MemoryStore) -> None:
    with pytest.raises(MemoryStoreError, match="k must be at least 1"):
        store.query("x", k=0)


# --- rebuild and swap -----------------------------------------------------------------------


def test_replace_live_with_swaps_in_a_rebuilt_collection(store: MemoryStore) -> None:
    store.upsert([rec("old", "stale record from the old build")])
    reader = MemoryStore(store.client, store.embedder, store.name)  # a second, live reader
    assert reader.count() == 1  # binds its handle to the old collection

    staging = store.with_collection(f"{store.name}-rebuild")
    staging.ensure()
    staging.upsert([rec("n1", "rebuilt one"), rec("n2", "rebuilt two")])

    assert store.replace_live_with(staging.name) is None
    assert store.count() == 2
    assert set(store.get(["old", "n1", "n2"])) == {"n1", "n2"}
    assert reader.count() == 2  # its old handle died with the old collection: re-resolved
    names = store.collections()
    assert store.name in names
    assert staging.name not in names
    assert not [n for n in names if ".retired." in n and n.startswith(store.name)]


def test_replace_live_can_keep_the_retired_collection(store: MemoryStore) -> None:
    store.upsert([rec("old", "old build")])
    staging = store.with_collection(f"{store.name}-next")
    staging.ensure()
    staging.upsert([rec("new", "new build")])
    retired = store.replace_live_with(staging.name, keep_retired=True)
    assert retired is not None and retired.startswith(f"{store.name}.retired.")
    assert set(store.get(["old", "new"])) == {"new"}
    assert set(store.with_collection(retired).get(["old", "new"])) == {"old"}


def test_replace_live_when_there_is_no_live_collection_yet(store: MemoryStore) -> None:
    fresh = store.with_collection(f"{store.name}-live")
    staging = store.with_collection(f"{store.name}-first")
    staging.ensure()
    staging.upsert([rec("x", "first build")])
    assert fresh.replace_live_with(staging.name) is None
    assert fresh.count() == 1


def test_replace_live_with_a_missing_collection_is_an_error(store: MemoryStore) -> None:
    with pytest.raises(MemoryStoreError, match="build it first"):
        store.replace_live_with(f"{store.name}-never-built")
    with pytest.raises(MemoryStoreError, match="already the live collection"):
        store.replace_live_with(store.name)


# --- pure parts and bad locations (backend independent) -----------------------------------


def test_filter_where_clause_shapes() -> None:
    assert Filter().where() is None
    assert Filter(equals={"tool": "sql"}).where() == {"tool": {"$eq": "sql"}}
    assert Filter(equals={"tool": "sql"}, at_least={"time": 5.0}).where() == {
        "$and": [{"tool": {"$eq": "sql"}}, {"time": {"$gte": 5.0}}]
    }


@pytest.mark.parametrize("name", ["ab", "-abc", "abc-", "a b c", "a..b", "x" * 513])
def test_bad_collection_names_are_refused_up_front(name: str) -> None:
    with pytest.raises(MemoryStoreError, match="invalid collection name"):
        check_collection_name(name)


def test_unreachable_server_and_unknown_scheme_are_clear_errors() -> None:
    port = free_port(HOST)
    with pytest.raises(MemoryStoreError, match=f"no Chroma server answers at http://{HOST}:{port}"):
        open_client(f"http://{HOST}:{port}")
    with pytest.raises(MemoryStoreError, match="must be a directory or http"):
        open_client("chroma://somewhere")


def test_a_reader_does_not_create_a_missing_embedded_store(tmp_path: Path, embedder) -> None:
    where = tmp_path / "never-built"
    with pytest.raises(MemoryStoreError, match=r"no memory store at .*never-built"):
        MemoryStore.open(str(where), embedder, create=False)
    assert not where.exists()
