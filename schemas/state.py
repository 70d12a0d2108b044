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

STATE_SCHEMA_VERSION = 2
"""2: one vocabulary (``actions``, ``errors``, ``mismatches``, ``failed``) in ``Outlook`` and
``ToolStats``; ``success_rate`` became ``recent_success_rate``. Version 1 states are upcast
on decode (:func:`decode_state`)."""


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
    """Outcomes of one tool for one agent, in the shared vocabulary (docs/processing.md):
    ``failed = errors + mismatches``; the successes are ``actions - failed``."""

    actions: int = 0  # completions
    errors: int = 0  # completed with status "error"
    mismatches: int = 0  # status "ok", but the actual outcome contradicted the expected one
    failed: int = 0  # errors + mismatches
    duration_ms: float = 0.0  # summed over completions

    # the names of version 1, kept readable for existing callers
    @property
    def ok(self) -> int:
        """Completions with status ``ok`` (mismatches included): ``actions - errors``."""
        return self.actions - self.errors

    @property
    def error(self) -> int:
        return self.errors

    @property
    def wrong_result(self) -> int:
        return self.mismatches


class Outlook(_Frozen, kw_only=True):
    """The world model, kept once per agent and once per run.

    ``outcomes`` is the rolling window of the last action outcomes, oldest first, one
    character each: ``S`` success, ``F`` failed (an error or a mismatch). The counters use
    the shared vocabulary: ``failed = errors + mismatches``, successes ``actions - failed``.
    """

    outcomes: str = ""
    recent_success_rate: float | None = None  # over ``outcomes``; None before the first
    failures_in_a_row: int = 0
    actions: int = 0  # completions (all time for the agent, or of the run)
    errors: int = 0  # completed with status "error"
    mismatches: int = 0  # status "ok", actual != expected
    failed: int = 0  # errors + mismatches
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    stuck: tuple[str, ...] = ()  # call ids of open actions older than the action timeout

    # the names of version 1, kept readable for existing callers
    @property
    def success_rate(self) -> float | None:
        return self.recent_success_rate

    @property
    def actions_ok(self) -> int:
        return self.actions - self.failed

    @property
    def actions_failed(self) -> int:
        return self.failed


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
    """Inverse of :func:`encode_state`; a state of an older ``schema_version`` is upcast.

    Raises ``msgspec.ValidationError`` (or ``msgspec.DecodeError``) on bad input.
    """
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError:
        obj = msgspec.json.decode(raw)
        if not isinstance(obj, dict) or obj.get("schema_version", 1) >= STATE_SCHEMA_VERSION:
            raise
        return _decoder.decode(_encoder.encode(upcast_v1(obj)))


def _tool_v1(t: dict[str, Any]) -> dict[str, Any]:
    ok, error, wrong = t.pop("ok", 0), t.pop("error", 0), t.pop("wrong_result", 0)
    t.update(actions=ok + error, errors=error, mismatches=wrong, failed=error + wrong)
    return t


def _outlook_v1(o: dict[str, Any], errors: int | None, mismatches: int | None) -> dict[str, Any]:
    ok, failed = o.pop("actions_ok", 0), o.pop("actions_failed", 0)
    o["recent_success_rate"] = o.pop("success_rate", None)
    o.update(actions=ok + failed, failed=failed)
    if errors is None or mismatches is None:  # a run's split was not kept by version 1
        errors, mismatches = failed, 0
    o.update(errors=errors, mismatches=mismatches)
    return o


def upcast_v1(obj: dict[str, Any]) -> dict[str, Any]:
    """A version 1 state (as a JSON object) in the version 2 shape.

    Exact for the tools and the agent-wide world (its errors and mismatches are the sums
    over the tools, which version 1 kept per tool). Version 1 did not split a *run's*
    failures: a run's ``failed`` is kept and counted as ``errors`` (exact when the agent had
    no mismatches at all); a replay (``agentstream replay``) recomputes it exactly.
    """
    tools = {name: _tool_v1(dict(t)) for name, t in (obj.get("tools") or {}).items()}
    errors = sum(t["errors"] for t in tools.values())
    mismatches = sum(t["mismatches"] for t in tools.values())
    out = dict(obj, schema_version=STATE_SCHEMA_VERSION, tools=tools)
    out["world"] = _outlook_v1(dict(obj.get("world") or {}), errors, mismatches)
    runs = {}
    for run_id, run in (obj.get("runs") or {}).items():
        runs[run_id] = dict(run, world=_outlook_v1(dict(run.get("world") or {}), None, None))
    out["runs"] = runs
    if obj.get("run") is not None:
        current = obj["run"]
        out["run"] = runs.get(current.get("run_id")) or dict(
            current, world=_outlook_v1(dict(current.get("world") or {}), None, None)
        )
    return out
