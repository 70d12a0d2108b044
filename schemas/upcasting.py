"""Upcasters: read events written at an older version as the current version.

An upcaster turns the *payload* of version N into the payload of version N+1. Chains run
until the current version. The historical payload class (if registered) validates the old
payload first, so a bad v1 event is rejected with a v1-shaped reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas import payloads as p

PayloadDict = dict[str, Any]
Upcaster = Callable[[PayloadDict], PayloadDict]


class UpcasterRegistry:
    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}
        self.historical: dict[tuple[str, int], type[p.Payload]] = {}

    def register(
        self, name: str, from_version: int, payload: type[p.Payload] | None = None
    ) -> Callable[[Upcaster], Upcaster]:
        """Decorator: ``fn`` upcasts ``name`` payloads from ``from_version`` to the next."""

        def add(fn: Upcaster) -> Upcaster:
            self._steps[(name, from_version)] = fn
            if payload is not None:
                self.historical[(name, from_version)] = payload
            return fn

        return add

    def step(self, name: str, version: int) -> Upcaster | None:
        return self._steps.get((name, version))


DEFAULT_UPCASTERS = UpcasterRegistry()


@DEFAULT_UPCASTERS.register("agent.act.completed", 1, payload=p.ActionCompletedV1)
def _completed_v1_to_v2(data: PayloadDict) -> PayloadDict:
    """v1 said ``ok: bool``; v2 says ``status: "ok" | "error"``."""
    out = {k: v for k, v in data.items() if k != "ok"}
    out["status"] = "ok" if data["ok"] else "error"
    return out


@DEFAULT_UPCASTERS.register("agent.lifecycle.agent_started", 1, payload=p.AgentStartedV1)
def _agent_started_v1_to_v2(data: PayloadDict) -> PayloadDict:
    """v2 only added optional fields (``gen_ai.system_instructions``,
    ``gen_ai.tool.definitions``): a v1 payload is a valid v2 payload."""
    return dict(data)


@DEFAULT_UPCASTERS.register("agent.think.decision", 1, payload=p.DecisionV1)
def _decision_v1_to_v2(data: PayloadDict) -> PayloadDict:
    """v2 added ``recalled_episodes``; a v1 decision recalled nothing we know of: ``[]``."""
    return {**data, "recalled_episodes": []}
