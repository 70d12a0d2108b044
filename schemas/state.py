"""The AgentState contract: what the processors publish on ``agent-state`` (key = agent id).

Processors produce it, projections, the CLI and replay read it, so it lives in schemas/.
It is a plain msgspec Struct: two states compare equal field by field (``==``), which is
how ``replay verify`` checks a new reducer against recorded history, and it round-trips
through JSON exactly (:func:`encode_state` / :func:`decode_state`).

Nested records are frozen (the reducer replaces them), the top-level state and its
containers are mutable so the processor can advance it in place at high event rates.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import msgspec

from schemas.derived import Episode

STATE_SCHEMA_VERSION = 1


class AgentStatus(StrEnum):
    """Lifecycle status; see docs/processing.md for the transition table."""

    IDLE = "idle"  # registered (agent_started) or stopped, not working on a run
    THINKING = "thinking"  # last activity was think (or a run start / a finished action)
    ACTING = "acting"  # at least one tool call is open
    LEARNING = "learning"  # last activity was a lesson or feedback
    FINISHED = "finished"  # the last run succeeded
    FAILED = "failed"  # the last run failed or was cancelled


RunStatus = Literal["running", "succeeded", "failed", "cancelled"]


class _Frozen(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pass


class ToolStats(_Frozen, kw_only=True):
    """Outcomes of one tool for one agent."""

    ok: int = 0
    error: int = 0
    wrong_result: int = 0  # ok, but the actual outcome contradicted the expected one
    duration_ms: float = 0.0  # summed over completions


class Outlook(_Frozen, kw_only=True):
    """The world model, kept once per agent and once per run.

    ``outcomes`` is the rolling window of the last action outcomes, oldest first, one
    character each: ``S`` success, ``F`` failure (tool error or wrong result).
    """

    outcomes: str = ""
    success_rate: float | None = None  # over ``outcomes``; None before the first outcome
    failures_in_a_row: int = 0
    actions_ok: int = 0
    actions_failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    stuck: tuple[str, ...] = ()  # call ids of open actions older than the action timeout


class RunState(_Frozen, kw_only=True):
    run_id: str
    goal: str | None = None  # None when the run was never announced by run_started
    status: RunStatus = "running"
    started_at: datetime
    finished_at: datetime | None = None
    world: Outlook = Outlook()


class OpenAction(_Frozen, kw_only=True):
    """A tool call that started and has not completed yet, with what it was expected to do."""

    call_id: str
    tool: str
    arguments: dict[str, Any] = {}
    expected: str | None = None
    started_event_id: str
    started_at: datetime
    run_id: str | None = None
    task_id: str | None = None
    situation: str = ""  # the thought/decision that led to it (for the episode)
    situation_event_id: str | None = None
    timed_out: bool = False  # a timeout violation was emitted for it


class LastDecision(_Frozen, kw_only=True):
    event_id: str
    time: datetime
    chosen: str
    confidence: float
    rationale: str | None = None


class Context(_Frozen, kw_only=True):
    """A recent think event: a candidate situation for the episodes of its run."""

    event_id: str
    kind: Literal["thought", "plan", "decision"]
    text: str
    run_id: str | None = None


class AgentState(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything the processors know about one agent after folding its events."""

    schema_version: int = STATE_SCHEMA_VERSION
    agent_id: str
    tenant: str = "default"
    name: str | None = None
    role: str | None = None
    model: str | None = None
    status: AgentStatus = AgentStatus.IDLE
    stopped: bool = False

    run_id: str | None = None  # the current run (the runid of the latest event that had one)
    task_id: str | None = None
    run: RunState | None = None  # the current run: the same record as runs[run_id]
    runs: dict[str, RunState] = {}  # open and recently finished runs (one agent may interleave)

    open_actions: dict[str, OpenAction] = {}  # call id -> the open call
    counts: dict[str, int] = {}  # wire event type -> events applied
    events_total: int = 0  # events applied (duplicates excluded)
    tools: dict[str, ToolStats] = {}
    world: Outlook = Outlook()  # agent-wide world model (all runs)

    first_event_time: datetime | None = None  # the earliest event time seen (min)
    last_event_time: datetime | None = None  # the latest event time seen (max, not last)
    last_event_id: str | None = None  # the id of the last event applied, in log order
    last_decision: LastDecision | None = None
    lessons: int = 0
    last_feedback_score: float | None = None

    context: list[Context] = []  # recent think events (all runs), oldest first
    episodes: dict[str, Episode] = {}  # recent episodes by episode_id, for lessons to attach
    seen: dict[str, int] = {}  # dedup window: recent event id -> its sequence number


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AgentState)


def encode_state(state: AgentState) -> bytes:
    """JSON bytes, as published on ``agent-state``."""
    return _encoder.encode(state)


def decode_state(raw: bytes | bytearray | memoryview | str) -> AgentState:
    """Inverse of :func:`encode_state`; raises ``msgspec.ValidationError`` on bad input."""
    return _decoder.decode(raw)
