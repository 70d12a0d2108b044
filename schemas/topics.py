"""Topic names and their shape: part of the wire contract, shared by every side."""

from __future__ import annotations

from dataclasses import dataclass, field

EVENTS = "agent-events"
STATE = "agent-state"
VIOLATIONS = "agent-violations"
EPISODES = "agent-episodes"
DLQ = "agent-events-dlq"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    compacted: bool = False
    config: dict[str, str] = field(default_factory=dict)

    def topic_config(self) -> dict[str, str]:
        base = {"cleanup.policy": "compact"} if self.compacted else {}
        return {**base, **self.config}


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(EVENTS),
    TopicSpec(STATE, compacted=True),
    TopicSpec(VIOLATIONS),
    TopicSpec(EPISODES),
    TopicSpec(DLQ),
)
