"""The flat row: one Arrow schema shared by the analytics projection and the Parquet archive.

Common payload fields are lifted into typed columns (model, tool, status, tokens, cost,
latency); the full payload stays as JSON in ``payload`` so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import pyarrow as pa

from schemas import payloads as p
from schemas.envelope import Event

SUMMARY_CHARS = 240

EVENT_ROW_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("agent_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("task_id", pa.string()),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("causes", pa.list_(pa.string()), nullable=False),
        pa.field("traceparent", pa.string()),
        pa.field("model", pa.string()),
        pa.field("tool", pa.string()),
        pa.field("call_id", pa.string()),
        pa.field("status", pa.string()),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("cost_usd", pa.float64(), nullable=False),
        pa.field("latency_ms", pa.float64()),
        pa.field("summary", pa.string(), nullable=False),
        pa.field("payload", pa.string(), nullable=False),
        pa.field("log_partition", pa.int32()),
        pa.field("log_offset", pa.int64()),
    ],
    metadata={"agentstream.row": "event", "agentstream.row.version": "1"},
)

_json = msgspec.json.Encoder()


def _clip(text: str) -> str:
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def summarize(data: p.Payload) -> str:
    """A one-line human summary of a payload (graph nodes, CLI trees, analytics)."""
    match data:
        case p.Thought(text=t):
            return _clip(t)
        case p.Plan(goal=g, steps=s):
            return _clip(f"plan ({len(s)} steps): {g}")
        case p.Decision(chosen=c, confidence=conf):
            return _clip(f"decided {c} ({conf:.0%})")
        case p.ActionStarted(tool=tool, expected=exp):
            return _clip(f"call {tool}" + (f", expecting {exp}" if exp else ""))
        case p.ActionCompleted(tool=tool, status=st, result=r):
            return _clip(f"{tool} {st}: {r}")
        case p.Message(to_agent=to, text=t):
            return _clip(f"to {to}: {t}")
        case p.Lesson(insight=i):
            return _clip(i)
        case p.Feedback(score=s, source=src):
            return _clip(f"{src} score {s:g}")
        case p.AgentStarted(name=n):
            return _clip(f"agent {n} started")
        case p.AgentStopped(reason=r):
            return _clip(f"agent stopped: {r}")
        case p.RunStarted(goal=g):
            return _clip(f"run started: {g}")
        case p.RunFinished(status=st, summary=s):
            return _clip(f"run {st}: {s}" if s else f"run {st}")
    return ""


def event_row(
    event: Event, partition: int | None = None, offset: int | None = None
) -> dict[str, Any]:
    """The flat row of one event, as plain Python values."""
    data = event.data
    model = tool = call_id = status = None
    input_tokens = output_tokens = 0
    cost = 0.0
    latency: float | None = None
    match data:
        case p.Thought():
            model, input_tokens, output_tokens = data.model, data.input_tokens, data.output_tokens
            cost, latency = data.cost_usd, data.latency_ms
        case p.ActionStarted():
            tool, call_id = data.tool, data.call_id
        case p.ActionCompleted():
            tool, call_id, status, latency = data.tool, data.call_id, data.status, data.duration_ms
        case p.RunFinished():
            status = data.status
        case p.AgentStarted():
            model = data.model
    return {
        "event_id": event.id,
        "type": event.type,
        "category": event.category,
        "time": event.time,
        "agent_id": event.agentid,
        "run_id": event.runid,
        "task_id": event.taskid,
        "tenant": event.tenant,
        "source": event.source,
        "causes": list(event.causes),
        "traceparent": event.traceparent,
        "model": model,
        "tool": tool,
        "call_id": call_id,
        "status": status,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": cost,
        "latency_ms": latency,
        "summary": summarize(data),
        "payload": _json.encode(data).decode(),
        "log_partition": partition,
        "log_offset": offset,
    }


def events_to_table(
    events: Sequence[Event],
    partitions: Sequence[int | None] | None = None,
    offsets: Sequence[int | None] | None = None,
) -> pa.Table:
    """Events (optionally with their log positions) as one Arrow table of flat rows."""
    n = len(events)
    parts: Iterable[int | None] = partitions if partitions is not None else [None] * n
    offs: Iterable[int | None] = offsets if offsets is not None else [None] * n
    rows = [event_row(e, pt, of) for e, pt, of in zip(events, parts, offs, strict=True)]
    return pa.Table.from_pylist(rows, schema=EVENT_ROW_SCHEMA)
