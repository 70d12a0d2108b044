"""Typed payloads for every event type: the ``data`` of the envelope.

Field names on the wire reuse OpenTelemetry GenAI semantic conventions where one exists
(``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ``gen_ai.tool.name``,
``gen_ai.tool.call.id``, ...) so traces and events line up without a mapping table.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# Ranges: every number must fit the column that stores it, exactly (docs/producing.md,
# "Ranges and other limits"). Tokens are UInt32 in ClickHouse ``events``; per-agent sums
# are UInt64/int64, which 2^31 events at the maximum would still not overflow. Floats are
# bounded so that no sum over any number of events a log can hold (< 2^63) reaches inf.
UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1
MAX_COST_USD = 1e9  # per event
MAX_DURATION_MS = 1e12  # ~31.7 years
MAX_ABS_SCORE = 1e9
MAX_FLOAT = 1e15  # any other non-negative float field

NonNegInt = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0, le=MAX_FLOAT)]
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=UINT32_MAX)]
Milliseconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_DURATION_MS)]
CostUsd = Annotated[float, msgspec.Meta(ge=0, le=MAX_COST_USD)]
Score = Annotated[float, msgspec.Meta(ge=-MAX_ABS_SCORE, le=MAX_ABS_SCORE)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=INT64_MAX)]
Scalar = str | Int64 | float | bool | None


class _Closed(
    msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Closed (unknown fields are rejected), immutable, defaults left off the wire."""


class Payload(_Closed):
    """Base of all payloads."""


# --- think -------------------------------------------------------------------------------


class Thought(Payload):
    """A model call that produced reasoning text."""

    text: str
    model: str = msgspec.field(name="gen_ai.request.model")
    provider: str | None = msgspec.field(default=None, name="gen_ai.provider.name")
    input_tokens: TokenCount = msgspec.field(default=0, name="gen_ai.usage.input_tokens")
    output_tokens: TokenCount = msgspec.field(default=0, name="gen_ai.usage.output_tokens")
    latency_ms: Milliseconds = 0.0
    cost_usd: CostUsd = 0.0


class PlanStep(_Closed):
    id: NonEmptyStr
    description: str
    depends_on: list[str] = []


class Plan(Payload):
    goal: str
    steps: list[PlanStep]


MAX_RECALLED_EPISODES = 32
"""At most this many recalled episodes on one decision (a prompt holds a handful; recall's
``k`` is small): bounded so one decision cannot carry an unbounded list."""
EPISODE_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# An episode id is the lowercase UUID episodic memory gives it (``schemas.derived``,
# ``episode_id_for``); the length matters as for event ids (``$`` matches before "\n").
EpisodeId = Annotated[str, msgspec.Meta(pattern=EPISODE_ID_PATTERN, min_length=36, max_length=36)]
RecalledEpisodes = Annotated[list[EpisodeId], msgspec.Meta(max_length=MAX_RECALLED_EPISODES)]


class Decision(Payload):
    """A choice among alternatives. Version 2 added ``recalled_episodes``: the ids of the
    episodes from episodic memory the agent recalled and used for this choice (empty: it
    recalled none), so analytics can measure how often decisions build on experience."""

    chosen: NonEmptyStr
    alternatives: list[str] = []
    confidence: Probability = 1.0
    rationale: str | None = None
    recalled_episodes: RecalledEpisodes = []


# --- act ---------------------------------------------------------------------------------


class ActionStarted(Payload):
    """A tool call begins; ``expected`` is the outcome the agent predicts (checked later)."""

    call_id: NonEmptyStr = msgspec.field(name="gen_ai.tool.call.id")
    tool: NonEmptyStr = msgspec.field(name="gen_ai.tool.name")
    arguments: dict[str, Any] = {}
    expected: str | None = None


class ActionCompleted(Payload):
    """A tool call ended. Version 2: ``status`` replaced v1's boolean ``ok``."""

    call_id: NonEmptyStr = msgspec.field(name="gen_ai.tool.call.id")
    tool: NonEmptyStr = msgspec.field(name="gen_ai.tool.name")
    status: Literal["ok", "error"]
    result: str = ""
    actual: str | None = None
    error_type: str | None = msgspec.field(default=None, name="error.type")
    duration_ms: Milliseconds = 0.0


class Message(Payload):
    """One agent talking to another."""

    to_agent: NonEmptyStr
    text: str
    conversation_id: str | None = msgspec.field(default=None, name="gen_ai.conversation.id")


# --- learn -------------------------------------------------------------------------------


class Lesson(Payload):
    situation: str
    action: str
    outcome: str
    insight: str


class Feedback(Payload):
    score: Score
    source: Literal["human", "critic", "environment", "test", "self"]
    comment: str | None = None


# --- lifecycle ---------------------------------------------------------------------------


class ToolDefinition(_Closed):
    """A tool the agent can call, as the GenAI conventions describe it
    (``gen_ai.tool.definitions``; OpenInference ``llm.tools``)."""

    name: NonEmptyStr
    type: str = "function"
    description: str | None = None
    parameters: dict[str, Any] | None = None  # the JSON Schema of the arguments


class AgentStarted(Payload):
    """An agent is defined or starts work. Version 2 added ``instructions`` and ``tools``
    (what OpenTelemetry GenAI agent spans carry and v1 could not hold)."""

    name: str
    role: str | None = None
    model: str | None = msgspec.field(default=None, name="gen_ai.request.model")
    instructions: str | None = msgspec.field(default=None, name="gen_ai.system_instructions")
    tools: list[ToolDefinition] = msgspec.field(
        default_factory=list, name="gen_ai.tool.definitions"
    )


class AgentStopped(Payload):
    reason: str = "done"


class RunStarted(Payload):
    goal: str


class RunFinished(Payload):
    status: Literal["succeeded", "failed", "cancelled"]
    summary: str = ""


# AgentStarted as it was before v2; kept so old events can still be read and upcast.
class AgentStartedV1(Payload):
    name: str
    role: str | None = None
    model: str | None = msgspec.field(default=None, name="gen_ai.request.model")


# Decision as it was before v2; kept so old events can still be read and upcast.
class DecisionV1(Payload):
    chosen: NonEmptyStr
    alternatives: list[str] = []
    confidence: Probability = 1.0
    rationale: str | None = None


# ActionCompleted as it was before v2; kept so old events can still be read and upcast.
class ActionCompletedV1(Payload):
    call_id: NonEmptyStr = msgspec.field(name="gen_ai.tool.call.id")
    tool: NonEmptyStr = msgspec.field(name="gen_ai.tool.name")
    ok: bool
    result: str = ""
    actual: str | None = None
    duration_ms: Milliseconds = 0.0
