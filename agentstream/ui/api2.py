"""``/api/v1`` routes of the live view, dashboards, SQL workspace and memory search.

Same conventions as ``api.py``: each route calls the function the CLI calls, errors are
``{"ok": false, "error": "..."}``. :func:`install` adds the routes and the shared state
(one live hub, one result cache, one memory searcher) to the app.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from agentstream.ui import dashboards, sqlws
from agentstream.ui.api import FastJSON
from agentstream.ui.live import LiveHub, TailFilter
from agentstream.ui.memory import MemorySearch

router = APIRouter(prefix="/api/v1", default_response_class=FastJSON)
HEARTBEAT_S = 10.0


def install(app: FastAPI) -> None:
    """Shared state of the part-2 pages and their routes (called by ``create_app``)."""
    settings = app.state.backends.settings
    app.state.live = LiveHub(settings)
    app.state.results = sqlws.ResultCache()
    app.state.memory = MemorySearch(settings)

    @app.exception_handler(sqlws.SqlRefused)
    async def _refused(_r: Request, err: sqlws.SqlRefused) -> JSONResponse:
        return JSONResponse({"ok": False, "error": err.line, "kind": err.kind}, status_code=400)

    app.include_router(router)
    app.add_middleware(ClientGone)  # added last: outermost, sees the server's own receive


async def shutdown(app: FastAPI) -> None:
    live: LiveHub | None = getattr(app.state, "live", None)
    if live is not None:
        await live.stop()


# --- live view --------------------------------------------------------------------------
@router.get("/live", summary="The live figures now (the stream's first message)")
async def live_snapshot(request: Request) -> FastJSON:
    hub: LiveHub = request.app.state.live
    hub.ensure_started()
    return FastJSON(hub.snapshot())


@router.get(
    "/live/stream",
    summary="Server-sent events: snapshot, stats (1/s), events (the tail), violations, gap",
    response_class=StreamingResponse,
)
async def live_stream(
    request: Request,
    agent: str = "",
    type: str = "",
    run: str = "",
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    hub: LiveHub = request.app.state.live
    last = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    body = hub.stream(TailFilter(agent, type, run), last, HEARTBEAT_S)
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- dashboards -------------------------------------------------------------------------
def _range(
    since: datetime | None, until: datetime | None, tenant: str, bucket: int | None
) -> dashboards.Range:
    since = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
    until = until.replace(tzinfo=UTC) if until and until.tzinfo is None else until
    if since and until and since >= until:
        raise ValueError("the range is empty: 'since' must be before 'until'")
    since = since.astimezone(UTC) if since else None
    until = until.astimezone(UTC) if until else None
    return dashboards.Range(since, until, tenant, bucket or dashboards.auto_bucket(since, until))


@router.get(
    "/dashboards/violations/events",
    summary="Drill-down: the violations of one category in the range (named query "
    "dash_violation_events)",
)
async def violation_events(
    request: Request,
    category: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    tenant: str = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> FastJSON:
    rng = _range(since, until, tenant, None)
    from projections.analytics.queries import NAMED_QUERIES

    q = NAMED_QUERIES["dash_violation_events"]
    given = {k: v for k, v in rng.params("dash_violation_events").items()}
    given.update(category=category, limit=limit)
    b = request.app.state.backends
    rows = await asyncio.to_thread(b.query, q.sql, given)
    params = {k: str(v) for k, v in given.items()}
    return FastJSON({"query": q.name, "params": params, "rows": rows})


@router.get(
    "/dashboards/{which}",
    summary="One dashboard (cost, tools, violations, learning): its named queries' rows "
    "(`agentstream query --named dash_…`); the learning trends' fits are rows of dash_learning",
)
async def dashboard(
    request: Request,
    which: str,
    since: datetime | None = None,
    until: datetime | None = None,
    tenant: str = "",
    bucket: Annotated[int | None, Query(ge=1, le=366 * 86400)] = None,
) -> FastJSON:
    rng = _range(since, until, tenant, bucket)
    b = request.app.state.backends
    return FastJSON(await asyncio.to_thread(dashboards.dashboard, b, which, rng))


# --- SQL workspace ----------------------------------------------------------------------
@router.get("/sql/schema", summary="Tables and columns of the analytics model")
async def sql_schema(request: Request) -> FastJSON:
    return FastJSON(await asyncio.to_thread(sqlws.schema, request.app.state.backends))


@router.get("/sql/named", summary="The named queries (`agentstream query --list`) with SQL")
def sql_named() -> FastJSON:
    return FastJSON(sqlws.named_queries())


def _params(param: list[str] | None) -> dict[str, Any]:
    from agentstream.commands.query import parse_params

    return parse_params(param or [])


class ClientGone:
    """ASGI middleware (outermost) for the SQL routes: puts a ``threading.Event`` in the
    scope that is set when the HTTP client disconnects, so a statement whose page went away
    is killed. Starlette's ``request.is_disconnected()`` never reports it behind a
    ``BaseHTTPMiddleware`` (measured), so this reads the server's own ``receive``: after
    the (empty) GET body, the next message only comes on disconnect or response end."""

    KEY = "agentstream.client_gone"

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/v1/sql"):
            await self.app(scope, receive, send)
            return
        gone = threading.Event()
        scope[self.KEY] = gone
        first = await receive()
        if first.get("more_body"):  # not a bodiless GET: no watching
            pending: list[Any] = [first]

            async def passthrough() -> Any:
                return pending.pop() if pending else await receive()

            await self.app(scope, passthrough, send)
            return
        disconnected = asyncio.Event()

        async def watch() -> None:
            msg = await receive()
            if msg.get("type") == "http.disconnect":
                gone.set()
                disconnected.set()

        watcher = asyncio.create_task(watch())
        delivered = False

        async def wrapped() -> Any:
            nonlocal delivered
            if not delivered:
                delivered = True
                return first
            await disconnected.wait()
            return {"type": "http.disconnect"}

        try:
            await self.app(scope, wrapped, send)
        finally:
            watcher.cancel()


async def _run(request: Request, sql: str, params: dict[str, Any], fresh: bool) -> sqlws.Ran:
    """Run in a thread; when the client goes away the read path kills the statement."""
    gone: threading.Event = request.scope.get(ClientGone.KEY) or threading.Event()
    return await asyncio.to_thread(
        sqlws.run,
        request.app.state.backends,
        request.app.state.results,
        sql,
        params,
        gone.is_set,
        fresh,
    )


_SQL = Annotated[str | None, Query(description="one reading statement")]
_NAMED = Annotated[str | None, Query(description="a named query instead of sql")]
_PARAM = Annotated[list[str] | None, Query(description="NAME=VALUE, as `--param`")]


@router.get(
    "/sql",
    summary="Run read-only SQL or a named query (`agentstream query`): one page of rows, "
    "sortable; the result is kept for paging and downloads",
)
async def sql_run(
    request: Request,
    sql: _SQL = None,
    named: _NAMED = None,
    param: _PARAM = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=sqlws.MAX_PAGE)] = 100,
    sort: str | None = None,
    desc: bool = False,
    fresh: bool = False,
) -> FastJSON:
    statement, params = sqlws.resolve(sql, named, _params(param))
    ran = await _run(request, statement, params, fresh)
    return FastJSON(sqlws.page(ran, offset, limit, sort or None, desc))


@router.get(
    "/sql/download",
    summary="The whole result as CSV or Parquet (the CLI's `--format csv|parquet` writers)",
    response_class=Response,
)
async def sql_download(
    request: Request,
    format: Annotated[str, Query(pattern="^(csv|parquet)$")],
    sql: _SQL = None,
    named: _NAMED = None,
    param: _PARAM = None,
) -> Response:
    statement, params = sqlws.resolve(sql, named, _params(param))
    ran = await _run(request, statement, params, False)
    ctype, data = sqlws.render(ran, format)
    name = f"{named or 'query'}.{format}"
    return Response(
        data, media_type=ctype, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


# --- memory search ----------------------------------------------------------------------
@router.get("/memory/recall", summary="Recall similar episodes (`agentstream recall`)")
async def memory_recall(
    request: Request,
    q: Annotated[str, Query(min_length=1, description="the situation, in words")],
    k: Annotated[int, Query(ge=1, le=100)] = 10,
    agent: str | None = None,
    tool: str | None = None,
    outcome: Annotated[str | None, Query(pattern="^(success|failure)$")] = None,
    since: Annotated[str | None, Query(description="15m, 2h, 7d or an ISO time")] = None,
    tenant: str | None = None,
) -> FastJSON:
    mem: MemorySearch = request.app.state.memory
    found = await asyncio.to_thread(
        mem.search,
        q,
        k,
        agent or None,
        tool or None,
        outcome or None,
        since or None,
        tenant or None,
    )
    return FastJSON(found)
