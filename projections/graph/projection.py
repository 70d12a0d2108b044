"""The graph projection: batches from ``agent-events`` and ``agent-violations`` into a
``GraphStore``, for ``projections.runner``.

Every write is an UNWIND + MERGE on ids, so a batch applied twice (retry, crash before
the offset commit, replay) leaves the graph as if applied once. ``NEXT`` links are
recomputed per touched chain window from what the graph holds, so batches may arrive
out of order, overlap or repeat and still end with one linked list per agent and run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from projections.graph import cypher
from projections.graph.model import (
    ChainWindow,
    GraphBatch,
    NextChanges,
    build_batch,
    next_changes,
    plan_next,
    seq_params,
)
from projections.graph.store import GraphStore, Statement
from projections.runner import Record
from schemas.codec import DEFAULT_MAX_EVENT_BYTES, EventCodec
from schemas.derived import Violation, decode_violation
from schemas.envelope import Event
from schemas.topics import EVENTS, VIOLATIONS

NEXT_WINDOW_CHUNK = 500  # chains per window read: keeps each statement's parameters small
READ_CHUNK = 5_000  # ids per NEXT_FROM / NEXT_INTO read


def batch_statements(batch: GraphBatch) -> list[Statement]:
    """The node and relationship writes of a batch, in dependency order (nodes first)."""
    plan: list[tuple[str, list[dict[str, Any]]]] = [
        (cypher.UPSERT_EVENTS, batch.events),
        (cypher.LINK_RUNS, batch.in_run),
        (cypher.LINK_TASKS, batch.about),
        (cypher.LINK_TOOLS, batch.used),
        (cypher.LINK_CAUSES, batch.caused_by),
        (cypher.LINK_MESSAGES, batch.messaged),
        (cypher.UPSERT_VIOLATIONS, batch.violations),
        (cypher.LINK_VIOLATIONS, batch.involves),
    ]
    return [(statement, {"rows": rows}) for statement, rows in plan if rows]


def read_windows(store: GraphStore, chains: list[dict[str, Any]]) -> list[ChainWindow]:
    windows: list[ChainWindow] = []
    for i in range(0, len(chains), NEXT_WINDOW_CHUNK):
        params = {"chains": chains[i : i + NEXT_WINDOW_CHUNK], **seq_params()}
        rows = store.read(cypher.CHAIN_WINDOWS, params)
        windows.extend(
            ChainWindow(chain, before, [s for s in inside if s is not None], after)
            for chain, before, inside, after in rows
        )
    return windows


def read_next_around(
    store: GraphStore, links: list[dict[str, str]]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The NEXT successors of every ``a`` and predecessors of every ``b`` in ``links``."""
    sources = sorted({lk["a"] for lk in links if lk["a"]})
    targets = sorted({lk["b"] for lk in links if lk["b"]})
    successors: dict[str, list[str]] = {}
    predecessors: dict[str, list[str]] = {}
    for i in range(0, len(sources), READ_CHUNK):
        for a, b in store.read(cypher.NEXT_FROM, {"ids": sources[i : i + READ_CHUNK]}):
            successors.setdefault(a, []).append(b)
    for i in range(0, len(targets), READ_CHUNK):
        for a, b in store.read(cypher.NEXT_INTO, {"ids": targets[i : i + READ_CHUNK]}):
            predecessors.setdefault(b, []).append(a)
    return successors, predecessors


def next_statements(changes: NextChanges) -> list[Statement]:
    """Unlink what is wrong, then link what is missing (see cypher.UNLINK_NEXT)."""
    plan = [(cypher.UNLINK_NEXT, changes.unlink), (cypher.LINK_NEXT, changes.link)]
    return [(statement, {"pairs": rows}) for statement, rows in plan if rows]


def write_batch(store: GraphStore, batch: GraphBatch) -> None:
    """Apply one batch: nodes and edges, then the NEXT links of every chain it touched."""
    if batch.is_empty():
        return
    store.write(batch_statements(batch))
    if batch.chains:
        links = plan_next(read_windows(store, batch.chains))
        changes = next_changes(links, *read_next_around(store, links))
        store.write(next_statements(changes))


def project(
    store: GraphStore, events: Iterable[Event], violations: Iterable[Violation] = ()
) -> GraphBatch:
    """Map and write in one call (tests, benchmarks, replay tools)."""
    batch = build_batch(events, violations)
    write_batch(store, batch)
    return batch


class GraphProjection:
    """The causality graph as a runner projection."""

    name = "graph"
    topics: tuple[str, ...] = (EVENTS, VIOLATIONS)

    def __init__(self, store: GraphStore, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.store = store
        codec = EventCodec(max_event_bytes)
        self.decoders: Mapping[str, Callable[[bytes], object]] = {
            EVENTS: codec.decode,
            VIOLATIONS: decode_violation,
        }

    def setup(self) -> None:
        self.store.setup()

    def apply(self, records: list[Record]) -> None:
        events = [cast(Event, r.value) for r in records if r.topic == EVENTS]
        violations = [cast(Violation, r.value) for r in records if r.topic == VIOLATIONS]
        project(self.store, events, violations)
