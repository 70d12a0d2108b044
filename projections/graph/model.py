"""Pure mapping from events and violations to the rows the graph store MERGEs.

No I/O here: :func:`build_batch` turns a batch of decoded records into plain dict rows,
one list per node or relationship kind, and :func:`plan_next` decides the ``NEXT`` links
of a chain window the store has read back. Both are deterministic, so a replayed or
re-delivered batch produces the very same rows and the MERGEs change nothing.

``NEXT`` orders one agent's events within one run (the *chain*) by ``(time, id)``. The
order key is :func:`seq_key`, a fixed-width string that sorts like that pair, so the
store can compare it with plain ``<`` in Cypher on both backends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from schemas import payloads as p
from schemas.arrow import summarize
from schemas.derived import Violation
from schemas.envelope import Event

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SEQ_OFFSET_US = 10**18  # moves every datetime-representable instant to a positive number
SEQ_TIME_WIDTH = 19  # digits of (epoch micros + offset): fixed width, so strings sort by time
CHAIN_SEPARATOR = "\x1f"  # ASCII unit separator: cannot clash with a printable agent/run id
FAILURE_STATUSES = ("error", "failed")  # an action that errored, a run that failed

Row = dict[str, Any]


def epoch_us(t: datetime) -> int:
    """Epoch microseconds, exactly (integer arithmetic, no float rounding)."""
    return (t - EPOCH) // timedelta(microseconds=1)


def from_epoch_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def chain_key(agent_id: str, run_id: str | None) -> str:
    """The ``NEXT`` chain an event belongs to: one agent within one run (or outside any run)."""
    return f"{agent_id}{CHAIN_SEPARATOR}{run_id or ''}"


def seq_key(time_us: int, event_id: str) -> str:
    """A string that sorts like ``(time, id)``; the event id is everything after the time.

    ``cypher.CHAIN_WINDOWS`` builds the same string in the store from ``seq_params()``."""
    return f"{time_us + SEQ_OFFSET_US:0{SEQ_TIME_WIDTH}d}{event_id}"


def seq_params() -> dict[str, Any]:
    """The parameters ``cypher.CHAIN_WINDOWS`` needs to build :func:`seq_key` in Cypher."""
    return {
        "seq_offset": SEQ_OFFSET_US,
        "seq_zeros": "0" * SEQ_TIME_WIDTH,
        "seq_width": SEQ_TIME_WIDTH,
    }


def seq_event_id(seq: str) -> str:
    return seq[SEQ_TIME_WIDTH:]


def event_status(data: p.Payload) -> str | None:
    """The outcome an event records, if it records one."""
    match data:
        case p.ActionCompleted(status=status):
            return status
        case p.RunFinished(status=status):
            return status
    return None


def event_tool(data: p.Payload) -> str | None:
    match data:
        case p.ActionStarted(tool=tool) | p.ActionCompleted(tool=tool):
            return tool
    return None


@dataclass
class GraphBatch:
    """Everything one batch writes, as parameter rows for the statements in ``cypher``."""

    events: list[Row] = field(default_factory=list)  # Event nodes + Agent + EMITTED
    in_run: list[Row] = field(default_factory=list)  # {event, run}
    about: list[Row] = field(default_factory=list)  # {event, task}
    used: list[Row] = field(default_factory=list)  # {event, tool}
    caused_by: list[Row] = field(default_factory=list)  # {effect, cause}
    messaged: list[Row] = field(default_factory=list)  # {sender, recipient}
    violations: list[Row] = field(default_factory=list)  # Violation nodes
    involves: list[Row] = field(default_factory=list)  # {violation, event}
    chains: list[Row] = field(default_factory=list)  # {chain, lo, hi}: NEXT windows to re-link

    def is_empty(self) -> bool:
        return not (self.events or self.violations)


def event_row(event: Event) -> Row:
    """The Event node's properties (plus the agent it hangs off).

    Only what a reader or the ``NEXT`` upkeep uses: no ``category`` (the ``type`` says it)
    and no stored ``seq`` (``cypher.CHAIN_WINDOWS`` derives it from ``time`` and ``id``).
    Every stored property is decoded again at each restart of the embedded graph, so a
    redundant one costs restart time (docs/graph.md, "Restart cost")."""
    return {
        "id": event.id,
        "type": event.type,
        "time": epoch_us(event.time),
        "agent": event.agentid,
        "run": event.runid,
        "task": event.taskid,
        "tenant": event.tenant,
        "status": event_status(event.data),
        "summary": summarize(event.data),
        "tool": event_tool(event.data),
        "chain": chain_key(event.agentid, event.runid),
    }


def violation_row(v: Violation) -> Row:
    return {
        "id": v.violation_id,
        "category": str(v.category),
        "agent": v.agent_id,
        "run": v.run_id,
        "task": v.task_id,
        "tenant": v.tenant,
        "time": epoch_us(v.time),
        "detected_by": v.detected_by,
        "tool": v.tool,
        "call_id": v.call_id,
        "expected": v.expected,
        "actual": v.actual,
        "detail": v.detail,
    }


def build_batch(events: Iterable[Event], violations: Iterable[Violation] = ()) -> GraphBatch:
    """Rows for one batch. Duplicates within the batch collapse; order does not matter."""
    by_id: dict[str, Event] = {}
    for e in events:
        by_id[e.id] = e
    batch = GraphBatch()
    lo_hi: dict[str, tuple[str, str]] = {}
    messaged: set[tuple[str, str]] = set()
    for eid in sorted(by_id):  # a stable row order: same batch, same statements
        e = by_id[eid]
        row = event_row(e)
        batch.events.append(row)
        if e.runid:
            batch.in_run.append({"event": eid, "run": e.runid})
        if e.taskid:
            batch.about.append({"event": eid, "task": e.taskid})
        if row["tool"]:
            batch.used.append({"event": eid, "tool": row["tool"]})
        for cause in dict.fromkeys(e.causes):  # de-duplicated, first-seen order
            batch.caused_by.append({"effect": eid, "cause": cause})
        if isinstance(e.data, p.Message):
            messaged.add((e.agentid, e.data.to_agent))
        chain, seq = row["chain"], seq_key(row["time"], eid)
        lo, hi = lo_hi.get(chain, (seq, seq))
        lo_hi[chain] = (min(lo, seq), max(hi, seq))
    batch.messaged = [{"sender": s, "recipient": r} for s, r in sorted(messaged)]
    batch.chains = [{"chain": c, "lo": lo, "hi": hi} for c, (lo, hi) in sorted(lo_hi.items())]
    by_vid: dict[str, Violation] = {v.violation_id: v for v in violations}
    for vid in sorted(by_vid):
        v = by_vid[vid]
        batch.violations.append(violation_row(v))
        for eid in dict.fromkeys(v.event_ids):
            batch.involves.append({"violation": vid, "event": eid})
    return batch


@dataclass(frozen=True, slots=True)
class ChainWindow:
    """What the store holds of one chain around a batch: the events whose order key lies in
    the batch's [lo, hi], the nearest one before and the nearest one after (if any)."""

    chain: str
    before: str | None
    inside: Sequence[str]
    after: str | None


def plan_next(windows: Iterable[ChainWindow]) -> list[Row]:
    """The NEXT links every window must end up with.

    One row ``{a, b}`` per position: ``a``'s only successor must be ``b`` and ``b``'s only
    predecessor must be ``a``. ``a == ""`` marks the chain's head (no predecessor),
    ``b == ""`` its tail (no successor). Links outside the window are left alone: the
    nodes just outside it (``before``, ``after``) are part of it.
    """
    links: list[Row] = []
    for w in windows:
        seqs = sorted(set(w.inside))
        ordered = ([w.before] if w.before else []) + seqs + ([w.after] if w.after else [])
        ids = [seq_event_id(s) for s in ordered]
        if not ids:
            continue
        if w.before is None:
            links.append({"a": "", "b": ids[0]})
        links.extend({"a": a, "b": b} for a, b in pairwise(ids))
        if w.after is None:
            links.append({"a": ids[-1], "b": ""})
    return links


@dataclass(frozen=True, slots=True)
class NextChanges:
    """The NEXT edges to delete and to create, as ``{a, b}`` rows (a -[:NEXT]-> b)."""

    unlink: list[Row]
    link: list[Row]


def next_changes(
    links: Iterable[Row],
    successors: Mapping[str, Iterable[str]],
    predecessors: Mapping[str, Iterable[str]],
) -> NextChanges:
    """Diff the links :func:`plan_next` wants against the NEXT edges the graph holds.

    For a row ``{a, b}`` every other edge out of ``a`` and into ``b`` is wrong; a link
    already there is left alone. A stream arriving in order deletes nothing and creates
    only the new links; a replay of what the graph already holds writes nothing.
    """
    wrong: set[tuple[str, str]] = set()
    missing: list[Row] = []
    for row in links:
        a, b = row["a"], row["b"]
        if a:
            wrong.update((a, x) for x in successors.get(a, ()) if x != b)
        if b:
            wrong.update((x, b) for x in predecessors.get(b, ()) if x != a)
        if a and b and b not in set(successors.get(a, ())):
            missing.append({"a": a, "b": b})
    return NextChanges([{"a": a, "b": b} for a, b in sorted(wrong)], missing)
