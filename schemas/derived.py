"""Events the processors derive from the raw log: violations and episodes.

They live in schemas/ because processors produce them and projections consume them, and
neither side may import the other. Their ids are derived deterministically from the events
they summarise (uuid5), so a replay re-derives the very same ids and projections upsert.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

import msgspec

DERIVED_NAMESPACE = uuid.UUID("6f1d8a6e-2b7c-5c1e-9a34-0c5b7e2d9f10")


def derived_id(kind: str, *parts: str) -> str:
    """Deterministic id for a derived record: same inputs, same id, on every replay."""
    return str(uuid.uuid5(DERIVED_NAMESPACE, ":".join((kind, *parts))))


def episode_id_for(completion_id: str) -> str:
    """The id of the episode an action's completion closes (the reducer emits it, episodic
    memory stores it under it): what an agent cites in a decision's ``recalled_episodes``."""
    return derived_id("episode", completion_id)


class ViolationCategory(StrEnum):
    TOOL_ERROR = "tool_error"  # the action failed
    WRONG_RESULT = "wrong_result"  # completed, but the actual outcome contradicts the expected one
    MISSING_START = "missing_start"  # completed without ever having started
    TIMEOUT = "timeout"  # open longer than the configured timeout (by event time)
    ABANDONED = "abandoned"  # the run finished with the action still open


class _Derived(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pass


class Violation(_Derived):
    """An expectation violation, published to ``agent-violations`` (key = agent id)."""

    violation_id: str
    category: ViolationCategory
    agent_id: str
    run_id: str | None
    task_id: str | None
    tenant: str
    time: datetime  # event time of the event that revealed it
    detected_by: str  # id of the event that revealed it
    event_ids: tuple[str, ...]  # every event involved, oldest first
    tool: str | None = None
    call_id: str | None = None
    expected: str | None = None
    actual: str | None = None
    detail: str = ""


class Episode(_Derived):
    """situation -> action -> outcome (-> lesson), published to ``agent-episodes``.

    An episode is first emitted when the action's outcome arrives; if a lesson follows,
    the same ``episode_id`` is emitted again with a higher ``revision``. Consumers upsert.
    """

    episode_id: str
    revision: int
    agent_id: str
    run_id: str | None
    task_id: str | None
    tenant: str
    time: datetime  # event time of the outcome
    situation: str  # the thought/decision that led to the action
    action: str  # tool and arguments, as text
    tool: str
    outcome: Literal["success", "failure"]
    result: str
    expected: str | None = None
    actual: str | None = None
    lesson: str | None = None
    event_ids: tuple[str, ...] = ()  # the events it summarises, oldest first


_encoder = msgspec.json.Encoder()
_violation_decoder = msgspec.json.Decoder(Violation)
_episode_decoder = msgspec.json.Decoder(Episode)


def encode_derived(record: Violation | Episode) -> bytes:
    return _encoder.encode(record)


def decode_violation(raw: bytes) -> Violation:
    return _violation_decoder.decode(raw)


def decode_episode(raw: bytes) -> Episode:
    return _episode_decoder.decode(raw)
