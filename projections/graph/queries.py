"""why / impact / path over the causality graph, returning plain data.

Edges point from effect to cause (``(effect)-[:CAUSED_BY]->(cause)``), so *why* walks
``CAUSED_BY`` forwards (towards root causes) and *impact* walks it backwards.

Walks go breadth-first, never enumerating paths (a variable-length match would, and causal
graphs are full of diamonds): on FalkorDB in one round trip, inside the server (the
``traversal.js`` UDF); on Neo4j many levels per unrolled statement; see :func:`_walk`.
Distances are exact hop counts (the shortest chain of causes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec

from projections.graph import cypher, traversal
from projections.graph.model import FAILURE_STATUSES, from_epoch_us
from projections.graph.store import GraphStore

DEFAULT_WHY_DEPTH = 50
DEFAULT_IMPACT_DEPTH = 100
DEFAULT_PATH_HOPS = 1000
MAX_DEPTH = 10_000
LEVELS_PER_TRIP = 50  # unrolled BFS levels per statement (Neo4j default, see _walk)
FETCH_CHUNK = 5_000  # ids per event fetch


class NotInGraph(LookupError):
    """The id names no event (and no violation) in the graph."""

    def __init__(self, ident: str) -> None:
        self.ident = ident
        super().__init__(ident)


@dataclass(frozen=True, slots=True)
class EventInfo:
    """One Event node. ``type is None``: a placeholder, referenced but not arrived yet."""

    id: str
    type: str | None
    time_us: int | None
    agent: str | None
    run: str | None
    task: str | None
    status: str | None
    summary: str | None
    tool: str | None
    causes: tuple[str, ...] = ()

    @property
    def placeholder(self) -> bool:
        return self.type is None

    @property
    def failed(self) -> bool:
        return self.status in FAILURE_STATUSES

    @property
    def time(self) -> datetime | None:
        return None if self.time_us is None else from_epoch_us(self.time_us)

    def as_dict(self) -> dict[str, Any]:
        t = self.time
        return {
            "id": self.id,
            "type": self.type,
            "time": t.isoformat() if t else None,
            "time_us": self.time_us,
            "agent": self.agent,
            "run": self.run,
            "task": self.task,
            "status": self.status,
            "summary": self.summary,
            "tool": self.tool,
            "causes": list(self.causes),
            "placeholder": self.placeholder,
        }


@dataclass(frozen=True, slots=True)
class ViolationInfo:
    id: str
    category: str | None
    agent: str | None
    run: str | None
    task: str | None
    time_us: int | None
    detected_by: str | None
    tool: str | None
    expected: str | None
    actual: str | None
    detail: str | None
    events: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "agent": self.agent,
            "run": self.run,
            "task": self.task,
            "time": from_epoch_us(self.time_us).isoformat() if self.time_us is not None else None,
            "time_us": self.time_us,
            "detected_by": self.detected_by,
            "tool": self.tool,
            "expected": self.expected,
            "actual": self.actual,
            "detail": self.detail,
            "events": list(self.events),
        }


def _event(fields: Sequence[Any], causes: Iterable[str] | None) -> EventInfo:
    eid, etype, time_us, agent, run, task, status, summary, tool = fields
    return EventInfo(
        id=eid,
        type=etype,
        time_us=time_us,
        agent=agent,
        run=run,
        task=task,
        status=status,
        summary=summary,
        tool=tool,
        causes=tuple(sorted(causes or ())),
    )


def _violation(row: Sequence[Any]) -> ViolationInfo:
    *fields, events = row
    vid, category, agent, run, task, time_us, detected_by, tool, expected, actual, detail = fields
    return ViolationInfo(
        vid,
        category,
        agent,
        run,
        task,
        time_us,
        detected_by,
        tool,
        expected,
        actual,
        detail,
        tuple(sorted(events or ())),
    )


def _check_depth(depth: int) -> int:
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in 1..{MAX_DEPTH}, got {depth}")
    return depth


def _time_desc(e: EventInfo) -> tuple[int, int, str]:
    # newest first; placeholders (no time) after every real event at the same distance
    return (e.time_us is None, -(e.time_us or 0), e.id)


def _time_asc(e: EventInfo) -> tuple[int, int, str]:
    return (e.time_us is None, e.time_us or 0, e.id)


# --- the walk ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Walked:
    nodes: dict[str, EventInfo]
    distance: dict[str, int]
    links: dict[str, tuple[str, ...]]  # id -> neighbours in the walk's direction


def _walk(
    store: GraphStore,
    starts: Sequence[EventInfo],
    start_links: dict[str, tuple[str, ...]],
    up: bool,
    depth: int,
    levels_per_trip: int | None,
) -> _Walked:
    """Everything within ``depth`` hops of ``starts`` (causes if ``up``, else effects), each
    at its shortest distance, breadth-first, never enumerating paths.

    ``levels_per_trip=None`` picks the backend's fastest walk. FalkorDB: the server-side
    walk (``traversal.WALK``), one round trip whatever the depth. Neo4j: unrolled
    statements of ``LEVELS_PER_TRIP`` levels. An explicit ``levels_per_trip`` runs the
    portable Cypher walks on any backend: ``1`` is one query per level for the distinct
    next ids, then one fetch of every event found; more runs ``cypher.ancestors_bfs``
    (that many levels inside the database per round trip, continuing with ``$seen``).
    All of them return the same result (tests/test_graph_store.py).
    """
    if levels_per_trip is None and store.backend == "falkordb":
        return _walk_in_server(store, starts, start_links, up, depth)
    k = levels_per_trip or LEVELS_PER_TRIP
    if k == 1:
        return _walk_by_level(store, starts, start_links, up, depth)
    statement = cypher.ancestors_bfs if up else cypher.descendants_bfs
    nodes = {s.id: s for s in starts}
    distance = {s.id: 0 for s in starts}
    links = dict(start_links)
    frontier = sorted(distance)
    d = 0
    while frontier and d < depth:
        levels = min(k, depth - d)
        reached: list[str] = []
        rows = store.read(statement(levels), {"frontier": frontier, "seen": sorted(distance)})
        for hops, *fields, neighbours in rows:
            info = _event(fields, neighbours if up else None)
            if info.id in distance:
                continue
            nodes[info.id] = info
            distance[info.id] = d + int(hops)
            links[info.id] = tuple(sorted(neighbours or ()))
            if hops == levels:
                reached.append(info.id)
        frontier = sorted(reached)
        d += levels
    return _Walked(nodes, distance, links)


def _walk_in_server(
    store: GraphStore,
    starts: Sequence[EventInfo],
    start_links: dict[str, tuple[str, ...]],
    up: bool,
    depth: int,
) -> _Walked:
    """The walk of ``traversal.js``: one JSON array of [hops, EVENT_FIELDS..., along]."""
    params = {
        "ids": [s.id for s in starts],
        "depth": depth,
        "direction": "outgoing" if up else "incoming",
    }
    rows = store.read(traversal.WALK, params)
    walked: list[list[Any]] = msgspec.json.decode(rows[0][0]) if rows else []
    nodes = {s.id: s for s in starts}
    distance = {s.id: 0 for s in starts}
    links = dict(start_links)
    for hops, *fields, along in walked:
        if hops == 0:
            continue  # a start: the caller loaded it already
        eid = fields[0]
        # impact() derives each descendant's causes from the walk's links itself
        nodes[eid] = _event(fields, along if up else None)
        distance[eid] = int(hops)
        links[eid] = tuple(sorted(along))
    return _Walked(nodes, distance, links)


def _walk_by_level(
    store: GraphStore,
    starts: Sequence[EventInfo],
    start_links: dict[str, tuple[str, ...]],
    up: bool,
    depth: int,
) -> _Walked:
    distance = {s.id: 0 for s in starts}
    step = cypher.CAUSES_STEP if up else cypher.EFFECTS_STEP
    frontier = sorted(distance)
    d = 0
    while frontier and d < depth:
        d += 1
        found = sorted({n for (n,) in store.read(step, {"ids": frontier})} - distance.keys())
        for n in found:
            distance[n] = d
        frontier = found
    nodes = {s.id: s for s in starts}
    links = dict(start_links)
    reached = sorted(i for i, dist in distance.items() if dist > 0)
    for i in range(0, len(reached), FETCH_CHUNK):
        loaded = _load_events(store, reached[i : i + FETCH_CHUNK], with_effects=not up)
        for eid, (info, effects) in loaded.items():
            nodes[eid] = info
            links[eid] = info.causes if up else effects
    return _Walked(nodes, distance, links)


def _load_events(
    store: GraphStore, ids: Sequence[str], with_effects: bool = False
) -> dict[str, tuple[EventInfo, tuple[str, ...]]]:
    """id -> (info with causes, effects) for the ids that exist (effects only if asked)."""
    out: dict[str, tuple[EventInfo, tuple[str, ...]]] = {}
    if with_effects:
        for *fields, causes, effects in store.read(
            cypher.EVENTS_WITH_EFFECTS_BY_ID, {"ids": list(ids)}
        ):
            out[fields[0]] = (_event(fields, causes), tuple(sorted(effects or ())))
    else:
        for *fields, causes in store.read(cypher.EVENTS_BY_ID, {"ids": list(ids)}):
            out[fields[0]] = (_event(fields, causes), ())
    return out


def _violations_involving(store: GraphStore, ids: Iterable[str]) -> list[ViolationInfo]:
    found = [_violation(r) for r in store.read(cypher.VIOLATIONS_INVOLVING, {"ids": list(ids)})]
    return sorted(found, key=lambda v: (v.time_us or 0, v.id))


def _resolve(
    store: GraphStore, ident: str
) -> tuple[dict[str, tuple[EventInfo, tuple[str, ...]]], list[str], ViolationInfo | None]:
    """An event id -> that event; a violation id -> the events it involves."""
    loaded = _load_events(store, [ident])
    if ident in loaded:
        return loaded, [ident], None
    rows = store.read(cypher.VIOLATION_BY_ID, {"id": ident})
    if not rows:
        raise NotInGraph(ident)
    violation = _violation(rows[0])
    return _load_events(store, violation.events), list(violation.events), violation


# --- why -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhyResult:
    """The causes of an event (or of a violation's events), back to the root causes."""

    asked: str  # the id asked about: an event or a violation
    targets: tuple[str, ...]  # the event(s) the walk started from
    violation: ViolationInfo | None
    depth: int
    nodes: dict[str, EventInfo]  # targets and every ancestor within depth
    distance: dict[str, int]  # hops from the nearest target
    violations: tuple[ViolationInfo, ...] = ()  # violations involving the targets

    def ancestors(self) -> list[EventInfo]:
        """Every cause, nearest first; at equal distance newest first, then by id."""
        found = [n for i, n in self.nodes.items() if self.distance[i] > 0]
        return sorted(found, key=lambda n: (self.distance[n.id], *_time_desc(n)))

    def roots(self) -> list[EventInfo]:
        """Root causes: ancestors with no causes of their own (placeholders included)."""
        return [n for n in self.ancestors() if not n.causes]

    @property
    def truncated(self) -> bool:
        """Some causes lie deeper than ``depth`` (listed as causes, not walked)."""
        return any(c not in self.nodes for n in self.nodes.values() for c in n.causes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "targets": list(self.targets),
            "violation": self.violation.as_dict() if self.violation else None,
            "depth": self.depth,
            "truncated": self.truncated,
            "events": [{**self.nodes[t].as_dict(), "distance": 0} for t in self.targets]
            + [{**n.as_dict(), "distance": self.distance[n.id]} for n in self.ancestors()],
            "roots": [n.id for n in self.roots()],
            "violations": [v.as_dict() for v in self.violations],
        }


def why(
    store: GraphStore,
    ident: str,
    depth: int = DEFAULT_WHY_DEPTH,
    levels_per_trip: int | None = None,
) -> WhyResult:
    """The causal chain backwards from an event (or a violation) to its root causes."""
    _check_depth(depth)
    loaded, target_ids, violation = _resolve(store, ident)
    targets = [loaded[t][0] for t in target_ids if t in loaded]
    walked = _walk(
        store,
        targets,
        {t.id: t.causes for t in targets},
        True,
        depth,
        levels_per_trip,
    )
    nodes = walked.nodes
    return WhyResult(
        asked=ident,
        targets=tuple(t.id for t in targets),
        violation=violation,
        depth=depth,
        nodes=nodes,
        distance=walked.distance,
        violations=tuple(_violations_involving(store, [t.id for t in targets])),
    )


def _with_causes(info: EventInfo, causes: tuple[str, ...]) -> EventInfo:
    return EventInfo(
        info.id,
        info.type,
        info.time_us,
        info.agent,
        info.run,
        info.task,
        info.status,
        info.summary,
        info.tool,
        causes,
    )


# --- impact --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImpactResult:
    """Everything downstream of an event: what it led to, and how much of that failed."""

    event: EventInfo
    depth: int
    nodes: dict[str, EventInfo]  # the event and every descendant within depth
    distance: dict[str, int]
    effects: dict[str, tuple[str, ...]]  # id -> events it directly caused
    violations: tuple[ViolationInfo, ...] = ()  # violations involving any descendant

    def downstream(self) -> list[EventInfo]:
        """Every descendant, nearest first; at equal distance oldest first, then by id."""
        found = [n for i, n in self.nodes.items() if i != self.event.id]
        return sorted(found, key=lambda n: (self.distance[n.id], *_time_asc(n)))

    def failures(self) -> list[EventInfo]:
        return [n for n in self.downstream() if n.failed]

    def by_type(self) -> dict[str, int]:
        return dict(sorted(Counter(n.type or "(placeholder)" for n in self.downstream()).items()))

    @property
    def truncated(self) -> bool:
        """Some effects lie deeper than ``depth``."""
        return any(e not in self.nodes for effs in self.effects.values() for e in effs)

    def as_dict(self) -> dict[str, Any]:
        down = self.downstream()
        return {
            "event": self.event.as_dict(),
            "depth": self.depth,
            "truncated": self.truncated,
            "downstream": len(down),
            "failures": len([n for n in down if n.failed]),
            "violation_count": len(self.violations),
            "by_type": self.by_type(),
            "events": [
                {
                    **n.as_dict(),
                    "distance": self.distance[n.id],
                    "effects": list(self.effects[n.id]),
                }
                for n in down
            ],
            "violations": [v.as_dict() for v in self.violations],
        }


def impact(
    store: GraphStore,
    event_id: str,
    depth: int = DEFAULT_IMPACT_DEPTH,
    levels_per_trip: int | None = None,
) -> ImpactResult:
    """Everything the event led to (transitively), with failure and violation counts."""
    _check_depth(depth)
    loaded = _load_events(store, [event_id], with_effects=True)
    if event_id not in loaded:
        raise NotInGraph(event_id)
    start, start_effects = loaded[event_id]
    walked = _walk(
        store,
        [start],
        {start.id: start_effects},
        False,
        depth,
        levels_per_trip,
    )
    # A descendant's causes are the reached nodes that list it as an effect.
    causes: dict[str, list[str]] = {i: [] for i in walked.nodes}
    for i, effs in walked.links.items():
        for eff in effs:
            if eff in causes:
                causes[eff].append(i)
    nodes = {
        i: n if i == start.id else _with_causes(n, tuple(sorted(causes[i])))
        for i, n in walked.nodes.items()
    }
    down = [i for i in walked.nodes if i != start.id]
    return ImpactResult(
        event=start,
        depth=depth,
        nodes=nodes,
        distance=walked.distance,
        effects=walked.links,
        violations=tuple(_violations_involving(store, down)),
    )


# --- path ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CausalPath:
    """A shortest causal chain between two events, listed from ``source`` to ``target``."""

    source: str
    target: str
    relation: Literal["caused_by", "led_to"]  # source was caused by / led to target
    events: tuple[EventInfo, ...]

    @property
    def hops(self) -> int:
        return len(self.events) - 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "relation": self.relation,
            "hops": self.hops,
            "events": [e.as_dict() for e in self.events],
        }


def _bfs_path(
    store: GraphStore, source: str, target: str, statement: str, max_hops: int
) -> list[str] | None:
    """Shortest path by levels (one round trip each); ties broken by smallest id."""
    parent: dict[str, str] = {source: source}
    frontier = [source]
    for _ in range(max_hops):
        if not frontier:
            return None
        nxt: list[str] = []
        for frm, to in sorted(store.read(statement, {"ids": frontier})):
            if to not in parent:
                parent[to] = frm
                nxt.append(to)
        if target in parent:
            path = [target]
            while path[-1] != source:
                path.append(parent[path[-1]])
            return path[::-1]
        frontier = nxt
    return None


def path(
    store: GraphStore, source: str, target: str, max_hops: int = DEFAULT_PATH_HOPS
) -> CausalPath | None:
    """The shortest causal chain between two events, in whichever direction it runs.

    ``relation == "caused_by"``: ``target`` is among ``source``'s causes; ``"led_to"``:
    ``source`` is among ``target``'s causes. None if neither is an ancestor of the other.
    """
    _check_depth(max_hops)
    loaded = _load_events(store, [source, target])
    for ident in (source, target):
        if ident not in loaded:
            raise NotInGraph(ident)
    if source == target:
        return CausalPath(source, target, "caused_by", (loaded[source][0],))
    relation: Literal["caused_by", "led_to"]
    for relation, statement in (("caused_by", cypher.CAUSES_OF), ("led_to", cypher.EFFECTS_OF)):
        ids = _bfs_path(store, source, target, statement, max_hops)
        if ids is not None:
            infos = _load_events(store, ids)
            return CausalPath(source, target, relation, tuple(infos[i][0] for i in ids))
    return None
