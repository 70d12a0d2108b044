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
    """Per tool: calls, errors, mismatches (ok but not the expected outcome), success rate
    (calls that neither errored nor mismatched), mean duration. Reads both vocabularies of
    ``ToolStats`` (``actions/errors/mismatches`` and version 1's ``ok/error/wrong_result``)."""
    out = []
    for name, st in sorted(state.get("tools", {}).items()):
        if "actions" in st:
            calls, errors, mismatches = st["actions"], st.get("errors", 0), st.get("mismatches", 0)
        else:
            errors, mismatches = st.get("error", 0), st.get("wrong_result", 0)
            calls = st.get("ok", 0) + errors
        good = calls - errors - mismatches
        out.append(
            {
                "tool": name,
                "calls": calls,
                "errors": errors,
                "mismatches": mismatches,
                "success_rate": None if calls == 0 else round(good / calls, 4),
                "mean_ms": None if calls == 0 else round(st.get("duration_ms", 0.0) / calls, 1),
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
