"""``/api/v1``: the JSON every page is drawn from (documented at ``/api/v1/openapi.json``).

Each route calls the same functions as the matching CLI command (named in its summary) and
returns their JSON. Errors are ``{"ok": false, "error": "..."}`` with 400 (bad input), 404
(no such id) or 503 (a read model is not reachable; the message says how to fix it).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from agentstream.ui import agents as agents_data
from agentstream.ui import causality, runs, steps, timeline
from agentstream.ui.backends import Backends, NotFound, Unavailable


class FastJSON(JSONResponse):
    """JSON encoded by msgspec: FastAPI's encoder costs tens of ms on a 5,000-event run."""

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


router = APIRouter(prefix="/api/v1", default_response_class=FastJSON)

Source = Annotated[str, Query(pattern="^(kafka|archive)$", description="read the log or archive")]


def _backends(request: Request) -> Backends:
    return request.app.state.backends


def _event_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an event id (a UUID)") from None


@router.get("/runs", summary="Runs, filtered, sorted and paged (the analytics `runs` table)")
def list_runs(
    request: Request,
    agent: str | None = None,
    status: str | None = None,
    tenant: str | None = None,
    goal: Annotated[str | None, Query(description="text the goal contains")] = None,
    since: Annotated[datetime | None, Query(description="started at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="started before (ISO 8601)")] = None,
    sort: Annotated[str, Query(description=", ".join(runs.SORTS))] = "started",
    desc: bool = True,
    limit: Annotated[int, Query(ge=1, le=runs.MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> FastJSON:
    flt = runs.RunFilter(
        agent or None,
        status or None,
        tenant or None,
        goal or None,
        since,
        until,
        sort,
        desc,
        limit,
        offset,
    )
    return FastJSON(runs.list_runs(_backends(request), flt))


@router.get("/runs/facets", summary="Statuses, tenants and agents for the filter pickers")
def run_facets(request: Request) -> FastJSON:
    return FastJSON(runs.facets(_backends(request)))


@router.get(
    "/runs/{run_id:path}/timeline",
    summary="A run's events as lanes, action bars, marks and messages (lean; no payloads)",
)
def run_timeline(
    request: Request,
    run_id: str,
    limit: Annotated[int, Query(ge=1, le=timeline.MAX_EVENTS)] = timeline.MAX_EVENTS,
) -> FastJSON:
    return FastJSON(timeline.run_timeline(_backends(request), run_id, limit))


@router.get(
    "/runs/{run_id:path}/steps",
    summary="Step-through index of a run (`replay debug`): one line per step, failures",
)
async def run_steps(
    request: Request, run_id: str, source: Source = "kafka", refresh: bool = False
) -> FastJSON:
    built = await request.app.state.steps.get(run_id, source, refresh)
    return FastJSON(steps.summary(built))


@router.get(
    "/runs/{run_id:path}/steps/{index}",
    summary="One step (`replay debug --json`): the event, the state after it, the changes",
)
async def run_step(request: Request, run_id: str, index: int, source: Source = "kafka") -> FastJSON:
    built = await request.app.state.steps.get(run_id, source)
    return FastJSON(steps.step(built, index))


# Run and agent ids are free text: `{…:path}` lets one hold a "/" (sent as %2F, which the
# server decodes before routing). The run's own row comes after its sub-routes, which its
# pattern would otherwise swallow.
@router.get("/runs/{run_id:path}", summary="One run's row of the runs table")
def get_run(request: Request, run_id: str) -> FastJSON:
    return FastJSON(runs.get_run(_backends(request), run_id))


@router.get("/events/{event_id}", summary="One event: envelope, payload, violations, effects")
def get_event(request: Request, event_id: str) -> FastJSON:
    return FastJSON(timeline.event_detail(_backends(request), _event_id(event_id)))


@router.get("/events/{event_id}/why", summary="Causes back to the roots (`agentstream why`)")
def why(
    request: Request, event_id: str, depth: Annotated[int, Query(ge=1, le=10_000)] = 50
) -> FastJSON:
    return FastJSON(causality.why(_backends(request), _event_id(event_id), depth))


@router.get("/events/{event_id}/impact", summary="Everything downstream (`agentstream impact`)")
def impact(
    request: Request, event_id: str, depth: Annotated[int, Query(ge=1, le=10_000)] = 100
) -> FastJSON:
    return FastJSON(causality.impact(_backends(request), _event_id(event_id), depth))


@router.get("/path", summary="Shortest causal chain between two events (`agentstream path`)")
def path(
    request: Request,
    source: str,
    target: str,
    max_hops: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> FastJSON:
    found = causality.path(_backends(request), _event_id(source), _event_id(target), max_hops)
    if found is None:
        raise NotFound(f"no causal path between {source} and {target} within {max_hops} hops")
    return FastJSON(found)


@router.get(
    "/agents/{agent_id:path}",
    summary="An agent: state (`agentstream state`), tools, recent runs, violations",
)
async def agent(request: Request, agent_id: str) -> FastJSON:
    import asyncio

    b = _backends(request)
    out: dict[str, Any] = {"agent_id": agent_id, "errors": {}}
    try:
        state = await agents_data.agent_state(b, agent_id)
        out["state"] = state
        out["tools"] = agents_data.tools(state)
    except (NotFound, Unavailable) as err:
        out["state"], out["tools"] = None, []
        out["errors"]["state"] = str(err)
    for part, fn in (
        ("runs", agents_data.agent_runs),
        ("violations", agents_data.agent_violations),
    ):
        try:
            out[part] = await asyncio.to_thread(fn, b, agent_id)
        except Unavailable as err:
            out[part] = None
            out["errors"][part] = str(err)
    if out["state"] is None and not (out.get("runs") or {}).get("runs"):
        raise NotFound(f"no agent {agent_id!r}: " + "; ".join(out["errors"].values()))
    return FastJSON(out)


@router.get("/deadletters", summary="Records of agent-events-dlq, newest first")
async def deadletters(
    request: Request,
    reason: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> FastJSON:
    return FastJSON(await request.app.state.deadletters.page(reason or None, limit, offset))
