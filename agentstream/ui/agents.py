"""The agent page: current state (from ``agent-state``, as ``agentstream state`` reads it),
tools with success rates, recent runs and violations (analytics)."""

from __future__ import annotations

from typing import Any

import msgspec

from agentstream.ui.backends import Backends, NotFound, Unavailable
from agentstream.ui.runs import RunFilter, list_runs


async def agent_state(backends: Backends, agent_id: str) -> dict[str, Any]:
    from aiokafka.errors import KafkaError

    from streams.state_reader import read_state

    try:
        state = await read_state(backends.bootstrap, agent_id, timeout_s=15.0)
    except (KafkaError, OSError, LookupError, TimeoutError) as err:
        raise Unavailable(f"cannot read agent-state at {backends.bootstrap}: {err}") from None
    if state is None:
        raise NotFound(f"no state for agent {agent_id!r} on agent-state")
    return msgspec.to_builtins(state)


def tools(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Per tool, in the state's vocabulary (``ToolStats``, schema version 2; older states are
    upcast by ``decode_state`` before they get here): calls (``actions``), errors, mismatches
    (status ok, but not the expected outcome), success rate ``1 - failed / actions`` with
    ``failed = errors + mismatches``, mean duration."""
    out = []
    for name, st in sorted(state.get("tools", {}).items()):
        calls = st["actions"]
        out.append(
            {
                "tool": name,
                "calls": calls,
                "errors": st["errors"],
                "mismatches": st["mismatches"],
                "failed": st["failed"],
                "success_rate": None if calls == 0 else round(1 - st["failed"] / calls, 4),
                "mean_ms": None if calls == 0 else round(st["duration_ms"] / calls, 1),
            }
        )
    return out


def agent_runs(backends: Backends, agent_id: str, limit: int = 20) -> dict[str, Any]:
    return list_runs(backends, RunFilter(agent=agent_id, limit=limit))


def agent_violations(backends: Backends, agent_id: str, limit: int = 50) -> list[dict[str, Any]]:
    return backends.query(
        "SELECT toString(violation_id) AS id, category, run_id, toString(detected_by) AS "
        "detected_by, tool, expected, actual, detail, toUnixTimestamp64Micro(time) AS t "
        "FROM violations FINAL WHERE agent_id = {agent:String} ORDER BY time DESC "
        "LIMIT {limit:UInt32}",
        {"agent": agent_id, "limit": limit},
    )
