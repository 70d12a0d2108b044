"""The Chroma adapter: one API over the embedded PersistentClient and a Chroma server.

``location`` picks the backend exactly as the settings do: ``http(s)://host:port`` is a
Chroma server (HttpClient), anything else is a directory for the embedded PersistentClient.
Code above this module sees records, hits and filters, never Chroma's own types.

Things Chroma does that this adapter exists to contain (measured, chromadb 1.5):
- ``upsert`` *merges* metadata: keys absent from the new record survive from the old one,
  and a ``None`` value deletes a key. Callers therefore write every key on every upsert
  (the episode mapping uses ``""`` for "no value"), so a revision fully replaces the last.
- Metadata values must be scalars (str, int, float, bool); nested values are rejected.
- The default embedding function downloads a model at run time: every collection here is
  opened with an explicit one (:mod:`projections.memory.embedding`).
- ``collection.modify(name=...)`` renames in ~1.5 ms and a handle stays bound to the
  collection's id, which is what ``replace_live_with`` builds on.

Every upsert stamps each record's metadata with ``stored_at`` (unix seconds, taken just
before the Chroma write of its chunk). Readers that mirror the collection
(:mod:`projections.memory.exact_index`) find what changed since a time with one ``get``;
stamping here, in the adapter, means every writer does it.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import numpy as np

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from projections.memory.embedding import SentenceEmbedder

Scalar = str | int | float | bool
T = TypeVar("T")

MEMORY_SCHEMA_VERSION = 1
DEFAULT_COLLECTION = "agentstream-episodes"
WRITE_CHUNK = 1000  # records per Chroma upsert call (below every backend's max batch size)
STORED_AT = "stored_at"  # metadata key: unix seconds of the upsert that wrote the record
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")


class MemoryStoreError(RuntimeError):
    """A one-line, actionable problem with the memory store."""


class NoCollection(MemoryStoreError):
    """The store has no collection under the name it was opened with."""


class CollectionGone(MemoryStoreError):
    """The collection a :class:`PinnedCollection` reads was deleted (e.g. swapped out)."""


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    """What the store holds per id: the text that is embedded and its filterable fields."""

    id: str
    document: str
    metadata: Mapping[str, Scalar]


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """A query result: the record and its cosine distance to the query (0 = same direction)."""

    id: str
    document: str
    metadata: Mapping[str, Scalar]
    distance: float


@dataclass(frozen=True, slots=True)
class Filter:
    """Conjunction of ``field == value`` and ``field >= number`` conditions."""

    equals: Mapping[str, Scalar] = field(default_factory=dict)
    at_least: Mapping[str, float] = field(default_factory=dict)

    def where(self) -> dict[str, Any] | None:
        """The Chroma ``where`` clause (``None`` when there is nothing to filter on)."""
        clauses: list[dict[str, Any]] = [{k: {"$eq": v}} for k, v in self.equals.items()]
        clauses += [{k: {"$gte": v}} for k, v in self.at_least.items()]
        if not clauses:
            return None
        if len(clauses) == 1:
            return clauses[0]
        return {"$and": clauses}


def check_collection_name(name: str) -> str:
    """Chroma's naming rule, checked up front so the error names the fix."""
    if not _NAME.match(name) or ".." in name:
        raise MemoryStoreError(
            f"invalid collection name {name!r} — use 3-512 characters from [a-zA-Z0-9._-], "
            "starting and ending with a letter or digit"
        )
    return name


def check_metadata(metadata: Mapping[str, object]) -> None:
    """Chroma rejects nested values deep inside a batch; reject them here with the key."""
    for key, value in metadata.items():
        if not isinstance(value, str | int | float | bool):
            raise MemoryStoreError(
                f"metadata {key!r} is a {type(value).__name__}; Chroma stores only "
                "str, int, float or bool — flatten it (e.g. join a list into a string)"
            )


def open_client(location: str, create: bool = True) -> ClientAPI:
    """``http(s)://host:port`` -> HttpClient; otherwise a directory -> PersistentClient.

    ``create=False`` refuses a directory that does not exist yet (a reader should not
    leave an empty store behind where it expected one).
    """
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    url = urlparse(location)
    if url.scheme in ("http", "https"):
        if not url.hostname:
            raise MemoryStoreError(
                f"memory location {location!r} has no host — use http://HOST:PORT"
            )
        port = url.port or (443 if url.scheme == "https" else 8000)
        try:
            client = chromadb.HttpClient(
                host=url.hostname, port=port, ssl=url.scheme == "https", settings=chroma_settings
            )
            client.heartbeat()
        except Exception as err:
            raise MemoryStoreError(
                f"no Chroma server answers at {location} ({type(err).__name__}) — start one "
                "(`chroma run --path DIR --port PORT`) or point AGENTSTREAM_CHROMA_URL at a path"
            ) from err
        return client
    if url.scheme and len(url.scheme) > 1:  # e.g. chroma://, file:// — not a Windows drive
        raise MemoryStoreError(
            f"memory location {location!r} must be a directory or http(s)://host:port"
        )
    if not create and not Path(location).is_dir():
        raise MemoryStoreError(
            f"no memory store at {location} — run the memory projection "
            "(`agentstream memory run`) first, or point AGENTSTREAM_CHROMA_URL at the store"
        )
    return chromadb.PersistentClient(path=location, settings=chroma_settings)


class MemoryStore:
    """One Chroma collection of records, embedded with one model.

    The collection records the model that built it (``embedding_model`` in its metadata);
    opening it with a different model is an error, because mixed vectors give nonsense
    distances. A model change is a rebuild into a fresh collection plus
    :meth:`replace_live_with`.
    """

    def __init__(
        self,
        client: ClientAPI,
        embedder: SentenceEmbedder,
        collection: str = DEFAULT_COLLECTION,
        location: str = "",
    ) -> None:
        self.client = client
        self.embedder = embedder
        self.name = check_collection_name(collection)
        self.location = location
        self._collection: Collection | None = None

    @classmethod
    def open(
        cls,
        location: str,
        embedder: SentenceEmbedder,
        collection: str = DEFAULT_COLLECTION,
        create: bool = True,
    ) -> MemoryStore:
        """``create=False``: an embedded store's directory must already exist."""
        return cls(open_client(location, create), embedder, collection, location)

    def with_collection(self, name: str) -> MemoryStore:
        """The same backend and model, another collection (e.g. a rebuild's staging one)."""
        return MemoryStore(self.client, self.embedder, name, self.location)

    # --- collection lifecycle ---------------------------------------------------------------

    def collection_metadata(self) -> dict[str, Scalar]:
        return {
            "embedding_model": self.embedder.model_id,
            "dimension": self.embedder.dimension,
            "memory_schema": MEMORY_SCHEMA_VERSION,
        }

    def ensure(self) -> None:
        """Create the collection if it is missing (idempotent, safe against a racing creator)."""
        from chromadb.errors import ChromaError, NotFoundError

        try:
            col = self._get()
        except NotFoundError:
            try:
                col = self.client.create_collection(
                    self.name,
                    metadata=self.collection_metadata(),
                    configuration={"hnsw": {"space": "cosine"}},
                    embedding_function=self.embedder,
                )
            except ChromaError as err:  # "already exists" if another process won the race
                try:
                    col = self._get()
                except NotFoundError:
                    raise err from None
        self._collection = col

    def exists(self) -> bool:
        return self.name in self.collections()

    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.list_collections())

    def drop(self) -> None:
        """Delete the collection (no error if it does not exist)."""
        from chromadb.errors import NotFoundError

        self._collection = None
        with contextlib.suppress(NotFoundError):
            self.client.delete_collection(self.name)

    def _get(self) -> Collection:
        try:
            col = self.client.get_collection(self.name, embedding_function=self.embedder)
        except ValueError as err:  # Chroma: the collection persisted another embedding function
            if "conflict" not in str(err):
                raise
            raise MemoryStoreError(
                f"collection {self.name!r} was created with another embedding function — "
                "rebuild it into a fresh collection and swap it in (replace_live_with)"
            ) from err
        built_with = (col.metadata or {}).get("embedding_model")
        if built_with is not None and built_with != self.embedder.model_id:
            raise MemoryStoreError(
                f"collection {self.name!r} was built with embedding model {built_with!r} but "
                f"this store embeds with {self.embedder.model_id!r} — rebuild it into a fresh "
                "collection with the new model and swap it in (replace_live_with)"
            )
        return col

    def _with_collection(self, op: Callable[[Collection], T], wait_s: float = 2.0) -> T:
        """Run ``op`` on the collection; if it vanished (a swap), find it by name again.

        A swap leaves the name unbound for a couple of milliseconds, so the lookup polls
        briefly before reporting that the collection does not exist.
        """
        from chromadb.errors import NotFoundError

        if self._collection is None:
            self._collection = self._lookup(wait_s=0)
        try:
            return op(self._collection)
        except NotFoundError:
            self._collection = self._lookup(wait_s)
            return op(self._collection)

    def _lookup(self, wait_s: float) -> Collection:
        from chromadb.errors import NotFoundError

        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._get()
            except NotFoundError:
                if time.monotonic() >= deadline:
                    where = self.location or "the memory store"
                    raise NoCollection(
                        f"{where} has no collection {self.name!r} — run the memory projection "
                        "(`agentstream memory run` creates it) or check "
                        "AGENTSTREAM_MEMORY_COLLECTION"
                    ) from None
                time.sleep(0.01)

    # --- writes -----------------------------------------------------------------------------

    def upsert(self, records: Sequence[MemoryRecord], embeddings: np.ndarray | None = None) -> int:
        """Insert or replace records by id; returns how many were written.

        Embeds the documents in the model's batches unless ``embeddings`` (one row per
        record) are given, e.g. precomputed vectors in a benchmark. Each record's metadata
        gets ``stored_at`` = ``time.time()`` just before its chunk is written (a value the
        caller put there is overwritten): readers mirroring the collection poll by it.
        """
        if not records:
            return 0
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            raise MemoryStoreError("one upsert holds the same id twice — collapse revisions first")
        for r in records:
            check_metadata(r.metadata)
        if embeddings is None:
            embeddings = self.embedder.embed([r.document for r in records])
        if embeddings.shape != (len(records), self.embedder.dimension):
            raise MemoryStoreError(
                f"embeddings have shape {embeddings.shape}, expected "
                f"({len(records)}, {self.embedder.dimension})"
            )
        for start in range(0, len(records), WRITE_CHUNK):
            part = records[start : start + WRITE_CHUNK]
            vectors = embeddings[start : start + WRITE_CHUNK]
            self._with_collection(
                lambda col, part=part, vectors=vectors: col.upsert(
                    ids=[r.id for r in part],
                    embeddings=vectors,
                    documents=[r.document for r in part],
                    metadatas=stamped([r.metadata for r in part], time.time()),
                )
            )
        return len(records)

    # --- reads ------------------------------------------------------------------------------

    def count(self) -> int:
        return self._with_collection(lambda col: col.count())

    def get(self, ids: Sequence[str]) -> dict[str, MemoryRecord]:
        """The stored records among ``ids`` (missing ids are simply absent)."""
        if not ids:
            return {}
        got = self._with_collection(
            lambda col: col.get(ids=list(ids), include=["documents", "metadatas"])
        )
        docs = got["documents"] or []
        metas = got["metadatas"] or []
        return {
            i: MemoryRecord(i, d or "", dict(m or {}))
            for i, d, m in zip(got["ids"], docs, metas, strict=True)
        }

    def query(self, text: str, k: int = 5, where: Filter | None = None) -> list[MemoryHit]:
        """The ``k`` records nearest to ``text`` that pass ``where``, nearest first."""
        vector = self.embedder.embed([text])[0]
        return self.query_vector(vector, k, where)

    def query_vector(
        self, vector: np.ndarray, k: int = 5, where: Filter | None = None
    ) -> list[MemoryHit]:
        if k < 1:
            raise MemoryStoreError(f"k must be at least 1, got {k}")
        clause = where.where() if where else None
        res = self._with_collection(
            lambda col: col.query(
                query_embeddings=[vector],
                n_results=k,
                where=clause,
                include=["documents", "metadatas", "distances"],
            )
        )
        ids = res["ids"][0]
        docs = (res["documents"] or [[]])[0]
        metas = (res["metadatas"] or [[]])[0]
        dists = (res["distances"] or [[]])[0]
        return [
            MemoryHit(i, d or "", dict(m or {}), float(s))
            for i, d, m, s in zip(ids, docs, metas, dists, strict=True)
        ]

    def pin(self, wait_s: float = 2.0) -> PinnedCollection:
        """A reader bound to the collection live *now*: it never follows a swap, so a long
        read (paging through every record) sees one collection or fails with
        :class:`CollectionGone`. Waits up to ``wait_s`` for a name unbound by a swap."""
        return PinnedCollection(self._lookup(wait_s))

    def live_collection_id(self, wait_s: float = 2.0) -> str | None:
        """The id of the collection live under this name, ``None`` if there is none."""
        try:
            return str(self._lookup(wait_s).id)
        except NoCollection:
            return None

    # --- rebuild and swap -------------------------------------------------------------------

    def replace_live_with(self, staging: str, keep_retired: bool = False) -> str | None:
        """Make collection ``staging`` the live one under this store's name.

        Renames live -> ``<name>.retired.<hex>``, staging -> live, then deletes the retired
        one (or keeps it and returns its name). Readers holding the old handle keep reading
        the old data until it is deleted, then look the name up again and find the new
        collection (:meth:`_with_collection`); the name is unbound for ~2 ms in between.
        Stop the live projection while swapping, or records it writes to the old collection
        after the rebuild's last offset are lost with it.
        """
        check_collection_name(staging)
        if staging == self.name:
            raise MemoryStoreError(f"{staging!r} is already the live collection")
        new = self.with_collection(staging)
        if not new.exists():
            raise MemoryStoreError(f"no collection {staging!r} to swap in — build it first")
        new_col = new._get()  # also checks it was built with this store's model
        retired: str | None = None
        if self.exists():
            retired = f"{self.name}.retired.{uuid.uuid4().hex[:8]}"
            self.client.get_collection(self.name, embedding_function=self.embedder).modify(
                name=retired
            )
        new_col.modify(name=self.name)
        self._collection = None
        if retired and not keep_retired:
            self.client.delete_collection(retired)
            return None
        return retired


def stamped(metadatas: Sequence[Mapping[str, Scalar]], at: float) -> list[dict[str, Scalar]]:
    """Copies of ``metadatas`` with ``stored_at`` set to ``at``."""
    return [{**m, STORED_AT: at} for m in metadatas]


@dataclass(frozen=True, slots=True)
class StoredPage:
    """Records read back from one collection: ids, metadata and (when asked for) the vectors
    as float32 rows in the same order (``None`` when not requested)."""

    ids: list[str]
    metadatas: list[dict[str, Scalar]]
    vectors: np.ndarray | None = None


class PinnedCollection:
    """Reads from exactly one Chroma collection (by its id), for mirrors of the store.

    Unlike :class:`MemoryStore`, it never looks the name up again: if the collection is
    deleted (a swap retired it), every call raises :class:`CollectionGone` and the caller
    decides what to do (a mirror reloads from the new live collection).
    """

    def __init__(self, collection: Collection) -> None:
        self._col = collection
        self.id = str(collection.id)
        self.name = collection.name

    def _call(self, op: Callable[[Collection], T]) -> T:
        from chromadb.errors import NotFoundError

        try:
            return op(self._col)
        except NotFoundError:
            raise CollectionGone(
                f"collection {self.name!r} ({self.id}) no longer exists — it was swapped out "
                "or dropped; read the live one again"
            ) from None

    def count(self) -> int:
        return self._call(lambda col: col.count())

    def page(self, offset: int, limit: int, vectors: bool = True) -> StoredPage:
        """Records ``offset .. offset+limit`` in Chroma's storage order."""
        include: list[Any] = ["metadatas", "embeddings"] if vectors else ["metadatas"]
        got = self._call(lambda col: col.get(include=include, limit=limit, offset=offset))
        return _page(got, vectors)

    def changed_since(self, at: float) -> StoredPage:
        """Metadata of every record whose ``stored_at`` is at or after ``at`` (no vectors)."""
        where: Any = {STORED_AT: {"$gte": at}}
        return _page(self._call(lambda col: col.get(where=where, include=["metadatas"])), False)

    def with_vectors(self, ids: Sequence[str]) -> StoredPage:
        """Metadata and vectors of the stored records among ``ids`` (missing ids are absent)."""
        if not ids:
            return StoredPage([], [], None)
        got = self._call(lambda col: col.get(ids=list(ids), include=["metadatas", "embeddings"]))
        return _page(got, True)

    def records(self, ids: Sequence[str]) -> dict[str, MemoryRecord]:
        """Document and metadata of the stored records among ``ids``."""
        if not ids:
            return {}
        got = self._call(lambda col: col.get(ids=list(ids), include=["documents", "metadatas"]))
        docs = got["documents"] or []
        metas = got["metadatas"] or []
        return {
            i: MemoryRecord(i, d or "", dict(m or {}))
            for i, d, m in zip(got["ids"], docs, metas, strict=True)
        }


def _page(got: Mapping[str, Any], vectors: bool) -> StoredPage:
    ids = list(got["ids"])
    metas = [dict(m or {}) for m in (got.get("metadatas") or [])]
    matrix: np.ndarray | None = None
    if vectors:
        raw = got.get("embeddings")
        matrix = (
            np.asarray(raw, dtype=np.float32).reshape(len(ids), -1)
            if raw is not None and len(ids)
            else np.zeros((0, 0), dtype=np.float32)
        )
    return StoredPage(ids, metas, matrix)
