"""A run's events as the timeline draws them: lanes, action bars, marks, messages.

The events come from the analytics ``events`` table (one query on the run id, pruned by
its bloom-filter index); the grouping into bars and marks is pure (:func:`shape`), so it is
tested without a store. Events are sent once, lean (no payloads): the inspector asks for one
event's payload when it is selected (:func:`event_detail`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentstream.ui.backends import Backends, NotFound

MAX_EVENTS = 50_000

_EVENTS_SQL = """
SELECT toString(event_id) AS id, type, category, toUnixTimestamp64Micro(time) AS t,
       agent_id AS agent, task_id AS task, tool, call_id, status, summary,
       arrayMap(x -> toString(x), causes) AS causes,
       if(category = 'act', JSONExtractString(payload, 'expected'), '') AS expected,
       if(category = 'act', JSONExtractString(payload, 'actual'), '') AS actual,
       if(type LIKE 'agent.act.message.%', JSONExtractString(payload, 'to_agent'), '') AS to
FROM events
WHERE run_id = {run:String}
ORDER BY time, event_id
LIMIT {limit:UInt32}
"""

_VIOLATIONS_SQL = """
SELECT toString(violation_id) AS id, category, agent_id AS agent,
       toString(detected_by) AS detected_by, arrayMap(x -> toString(x), event_ids) AS events,
       tool, call_id, expected, actual, detail, toUnixTimestamp64Micro(time) AS t
FROM violations FINAL
WHERE {cond}
ORDER BY time, violation_id
LIMIT 10000
"""


_RUN_VIOLATIONS = (
    "run_id = {run:String} AND (tenant, agent_id) IN "
    "(SELECT tenant, agent_id FROM run_agent WHERE run_id = {run:String})"
)
"""A run's violations through the primary key of ``violations`` (tenant, agent_id, …): the
run's agents come from ``run_agent``, which the same views feed from every violation with a
run id (schema.py), so the set is complete. Without it, FINAL merges every violation of
the store to find one run's (4x faster at 200k violations: docs/ui.md)."""


def kind(event_type: str) -> str:
    """``agent.act.completed.v2`` -> ``completed``."""
    base = event_type.rsplit(".v", 1)[0]
    return base.rsplit(".", 1)[-1]


def shape(events: Sequence[dict[str, Any]], violations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Lanes (agents in order of first event), bars (started -> completed by call id),
    marks (every other event), messages (sender lane -> recipient lane)."""
    lanes: list[str] = []
    seen: set[str] = set()
    for e in events:
        e["kind"] = kind(e["type"])
        if e["agent"] not in seen:
            seen.add(e["agent"])
            lanes.append(e["agent"])
    starts: dict[tuple[str, str], dict[str, Any]] = {}
    bars: list[dict[str, Any]] = []
    for e in events:
        if e["kind"] == "started" and e["category"] == "act" and e["call_id"]:
            bar = {
                "call_id": e["call_id"],
                "agent": e["agent"],
                "tool": e["tool"],
                "start": e["t"],
                "end": None,
                "status": "open",
                "started": e["id"],
                "completed": None,
                "expected": e["expected"] or None,
            }
            starts[(e["agent"], e["call_id"])] = bar
            bars.append(bar)
    for e in events:
        if e["kind"] != "completed" or e["category"] != "act":
            continue
        bar = starts.get((e["agent"], e["call_id"] or ""))
        if bar is None:  # a completion whose start is not in the log: a zero-length bar
            bar = {
                "call_id": e["call_id"],
                "agent": e["agent"],
                "tool": e["tool"],
                "start": e["t"],
                "started": None,
                "expected": None,
            }
            bars.append(bar)
        bar["end"] = e["t"]
        bar["completed"] = e["id"]
        mismatch = (
            e["status"] == "ok"
            and bar["expected"] is not None
            and bool(e["actual"])
            and e["actual"] != bar["expected"]
        )
        bar["status"] = "mismatch" if mismatch else (e["status"] or "ok")
        if bar["started"] is None:
            bar["status"] = "orphan"
    messages = [
        {"id": e["id"], "from": e["agent"], "to": e["to"], "t": e["t"]}
        for e in events
        if e["kind"] == "message" and e["to"]
    ]
    flagged: dict[str, list[str]] = {}
    for v in violations:
        flagged.setdefault(v["detected_by"], []).append(v["id"])
    for e in events:
        e.pop("expected", None)
        e.pop("actual", None)
        if not e["to"]:
            e.pop("to")
        if e["id"] in flagged:
            e["violations"] = flagged[e["id"]]
    t0 = events[0]["t"] if events else 0
    t1 = max((e["t"] for e in events), default=0)
    return {
        "lanes": lanes,
        "events": list(events),
        "bars": bars,
        "messages": messages,
        "violations": list(violations),
        "start": t0,
        "end": t1,
    }


def run_timeline(backends: Backends, run_id: str, limit: int = MAX_EVENTS) -> dict[str, Any]:
    with ThreadPoolExecutor(2) as pool:  # two statements at once (the owner has a pool)
        found = pool.submit(backends.query, _EVENTS_SQL, {"run": run_id, "limit": limit + 1})
        flagged = pool.submit(
            backends.query, _VIOLATIONS_SQL.format(cond=_RUN_VIOLATIONS), {"run": run_id}
        )
        events, violations = found.result(), flagged.result()
    if not events:
        raise NotFound(f"no events of run {run_id!r} in analytics")
    truncated = len(events) > limit
    events = events[:limit]
    out = shape(events, violations)
    out["run_id"] = run_id
    out["truncated"] = truncated
    out["limit"] = limit
    return out


_EVENT_SQL = """
SELECT toString(event_id) AS id, type, category, time, agent_id, run_id, task_id, tenant,
       source, arrayMap(x -> toString(x), causes) AS causes, traceparent, summary, payload,
       log_partition, log_offset
FROM events
WHERE event_id = toUUID({id:String})
LIMIT 1
"""


def event_detail(backends: Backends, event_id: str) -> dict[str, Any]:
    """One event: envelope, payload (parsed), and the violations it triggered or is part of."""
    rows = backends.query(_EVENT_SQL, {"id": event_id})
    if not rows:
        raise NotFound(f"no event {event_id!r} in analytics")
    row = rows[0]
    with contextlib.suppress(ValueError):  # else shown as the text it is
        row["payload"] = json.loads(row["payload"])
    row["time"] = row["time"].isoformat()
    row["violations"] = backends.query(
        _VIOLATIONS_SQL.format(
            cond="toString(detected_by) = {id:String} OR has(event_ids, toUUID({id:String}))"
        ),
        {"id": event_id},
    )
    row["effects"] = [
        r["id"]
        for r in backends.query(
            "SELECT toString(event_id) AS id FROM events WHERE run_id = {run:String} "
            "AND has(causes, toUUID({id:String})) ORDER BY time LIMIT 1000",
            {"run": row["run_id"] or "", "id": event_id},
        )
    ]
    return row
