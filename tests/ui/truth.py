"""Ground truth computed from the events the stack published (never from the UI)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas import payloads as p
from schemas.envelope import Event


def run_ids(events: Sequence[Event]) -> list[str]:
    return sorted({e.runid for e in events if e.runid})


def actions(events: Sequence[Event]) -> list[Event]:
    return [e for e in events if isinstance(e.data, p.ActionCompleted)]


def errors(events: Sequence[Event]) -> list[Event]:
    return [e for e in actions(events) if e.data.status == "error"]


def bars(events: Sequence[Event]) -> int:
    """Action bars: one per start, plus one per completion without a start in the run."""
    started = {(e.agentid, e.data.call_id) for e in events if isinstance(e.data, p.ActionStarted)}
    orphans = [e for e in actions(events) if (e.agentid, e.data.call_id) not in started]
    return len(started) + len(orphans)


def ancestors(events: Sequence[Event], event_id: str) -> set[str]:
    """Every transitive cause of an event (ids that never arrived included)."""
    causes = {e.id: e.causes for e in events}
    seen: set[str] = set()
    todo = list(causes[event_id])
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        todo.extend(causes.get(c, ()))
    return seen


def failed_completion_run(events: Sequence[Event]) -> tuple[str, Event]:
    """A simulated run with an error completion, and its first such completion."""
    for e in events:
        if e.runid and e.runid != "run-xss" and e in errors(events):
            return e.runid, e
    raise AssertionError("the workload has no failed completion")
