"""The envelope: CloudEvents 1.0 attributes plus AgentStream's agent extensions.

Each event type is its own envelope class in a tagged union on ``type``, so one msgspec
pass both decodes and validates, and ``event.data`` is statically the right payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

import msgspec

from schemas import payloads as p
from schemas.ids import UUID7_PATTERN

# The lengths matter: a regex ``$`` also matches before a final newline, so without them an
# id with a trailing "\n" would pass (and then fail the stores' UUID columns).
EventId = Annotated[str, msgspec.Meta(pattern=UUID7_PATTERN, min_length=36, max_length=36)]
AgentId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
TraceParent = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        min_length=55,
        max_length=55,
    ),
]

MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
"""Earliest event time accepted (inclusive). Every store keeps [MIN_TIME, MAX_TIME) exactly:
ClickHouse DateTime64(6, 'UTC') and the rollups' minute columns (DateTime, 1970..2106-02-07),
Arrow/Parquet timestamp[us], the graph's epoch microseconds and Chroma's epoch seconds."""
MAX_TIME = datetime(2106, 1, 1, tzinfo=UTC)
"""First event time *not* accepted (exclusive): the last accepted is 2105-12-31T23:59:59.999999Z.
The codec checks the range (``out_of_range``); msgspec cannot express it."""
AwareDatetime = Annotated[
    datetime,
    msgspec.Meta(
        tz=True,
        # The JSON Schema can only bound the written year: a zone offset moves the instant up
        # to a day, so 1969 and 2106 pass the pattern and the codec judges the instant.
        extra_json_schema={
            "pattern": r"^(19[6-9][0-9]|20[0-9][0-9]|210[0-6])-",
            "description": "RFC 3339 with a zone; the instant must be in "
            "[1970-01-01T00:00:00Z, 2106-01-01T00:00:00Z)",
        },
    ),
]

SPECVERSION = "1.0"
DATASCHEMA_PREFIX = "urn:agentstream:schema:"


class EventBase(
    msgspec.Struct,
    kw_only=True,
    frozen=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="type",
):
    """Fields every event carries. ``type`` is the union tag, e.g. ``agent.act.completed.v2``."""

    specversion: Literal["1.0"]
    id: EventId
    source: str
    time: AwareDatetime
    agentid: AgentId
    runid: str | None = None
    taskid: str | None = None
    tenant: str = "default"
    causes: tuple[EventId, ...] = ()
    traceparent: TraceParent | None = None
    subject: str | None = None
    dataschema: str | None = None
    datacontenttype: str = "application/json"

    data: ClassVar[p.Payload]  # narrowed by every subclass

    @property
    def type(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]

    @property
    def category(self) -> str:
        """``think``, ``act``, ``learn`` or ``lifecycle``."""
        return self.type.split(".")[1]


# One class per (type, version). The tag string is the wire ``type``.


class ThoughtEvent(EventBase, tag="agent.think.thought.v1"):
    data: p.Thought


class PlanEvent(EventBase, tag="agent.think.plan.v1"):
    data: p.Plan


class DecisionEvent(EventBase, tag="agent.think.decision.v2"):
    data: p.Decision


class ActionStartedEvent(EventBase, tag="agent.act.started.v1"):
    data: p.ActionStarted


class ActionCompletedEvent(EventBase, tag="agent.act.completed.v2"):
    data: p.ActionCompleted


class MessageEvent(EventBase, tag="agent.act.message.v1"):
    data: p.Message


class LessonEvent(EventBase, tag="agent.learn.lesson.v1"):
    data: p.Lesson


class FeedbackEvent(EventBase, tag="agent.learn.feedback.v1"):
    data: p.Feedback


class AgentStartedEvent(EventBase, tag="agent.lifecycle.agent_started.v2"):
    data: p.AgentStarted


class AgentStoppedEvent(EventBase, tag="agent.lifecycle.agent_stopped.v1"):
    data: p.AgentStopped


class RunStartedEvent(EventBase, tag="agent.lifecycle.run_started.v1"):
    data: p.RunStarted


class RunFinishedEvent(EventBase, tag="agent.lifecycle.run_finished.v1"):
    data: p.RunFinished


Event = (
    ThoughtEvent
    | PlanEvent
    | DecisionEvent
    | ActionStartedEvent
    | ActionCompletedEvent
    | MessageEvent
    | LessonEvent
    | FeedbackEvent
    | AgentStartedEvent
    | AgentStoppedEvent
    | RunStartedEvent
    | RunFinishedEvent
)
"""Any current-version event."""

EVENT_CLASSES: tuple[type[EventBase], ...] = Event.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class EventType:
    """A (name, version) pair, e.g. ``agent.act.completed`` version 2."""

    name: str
    version: int

    @property
    def wire(self) -> str:
        return f"{self.name}.v{self.version}"

    @property
    def dataschema(self) -> str:
        return f"{DATASCHEMA_PREFIX}{self.wire}"

    @classmethod
    def parse(cls, wire: str) -> EventType | None:
        name, sep, version = wire.rpartition(".v")
        if not sep or not version.isdigit():
            return None
        return cls(name, int(version))


CURRENT: dict[str, EventType] = {}
"""Base type name -> its current version."""
CLASS_BY_PAYLOAD: dict[type[p.Payload], type[EventBase]] = {}
CLASS_BY_WIRE: dict[str, type[EventBase]] = {}
for _cls in EVENT_CLASSES:
    _et = EventType.parse(_cls.__struct_config__.tag)  # type: ignore[arg-type]
    assert _et is not None, _cls
    CURRENT[_et.name] = _et
    CLASS_BY_WIRE[_et.wire] = _cls
    _data_field = next(f for f in msgspec.structs.fields(_cls) if f.name == "data")
    CLASS_BY_PAYLOAD[_data_field.type] = _cls


def new_event(
    data: p.Payload,
    *,
    id: str,
    time: datetime,
    agentid: str,
    runid: str | None = None,
    taskid: str | None = None,
    tenant: str = "default",
    causes: tuple[str, ...] | list[str] = (),
    traceparent: str | None = None,
    subject: str | None = None,
    source: str | None = None,
) -> Event:
    """Wrap a payload in the envelope of its type. Pure: the caller supplies id and time."""
    cls = CLASS_BY_PAYLOAD[type(data)]
    et = EventType.parse(cls.__struct_config__.tag)  # type: ignore[arg-type]
    assert et is not None
    return cls(  # type: ignore[return-value]
        specversion=SPECVERSION,
        id=id,
        source=source or f"/agents/{agentid}",
        time=time,
        agentid=agentid,
        runid=runid,
        taskid=taskid,
        tenant=tenant,
        causes=tuple(causes),
        traceparent=traceparent,
        subject=subject,
        dataschema=et.dataschema,
        data=data,
    )
