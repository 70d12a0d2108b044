"""``create_app``: the one place the UI's routes, middleware and shared readers meet."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from agentstream.ui import api, api2, pages
from agentstream.ui.backends import Backends, NotFound, Unavailable
from agentstream.ui.deadletters import DeadLetterCache
from agentstream.ui.metrics import RequestMetrics
from agentstream.ui.security import SecurityMiddleware
from agentstream.ui.steps import StepCache
from projections.analytics.reader import QueryError

if TYPE_CHECKING:
    from agentstream.settings import Settings

DESCRIPTION = """Read-only JSON behind every page of the AgentStream UI. Each route calls the
same Python functions as the matching CLI command. Errors: `{"ok": false, "error": "..."}`
with 400, 404 or 503 (a read model is not reachable)."""


def create_app(
    settings: Settings, *, analytics_direct: bool = False, token: str | None = None
) -> FastAPI:
    """The ASGI app. ``token`` (default: the settings' ``ui_token``) guards every route but
    ``/healthz``, ``/login`` and static files when set."""
    import agentstream

    token = token if token is not None else settings.ui_token
    backends = Backends(settings, analytics_direct=analytics_direct)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await api2.shutdown(_app)
        backends.close()

    app = FastAPI(
        lifespan=lifespan,
        title="AgentStream UI API",
        version=getattr(agentstream, "__version__", "0.1.0"),
        description=DESCRIPTION,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.backends = backends
    app.state.steps = StepCache(backends)
    app.state.deadletters = DeadLetterCache(backends)
    app.state.token = token
    app.add_middleware(SecurityMiddleware, token=token)
    app.add_middleware(RequestMetrics)

    @app.exception_handler(NotFound)
    async def _not_found(_r: Request, err: NotFound) -> JSONResponse:
        return JSONResponse({"ok": False, "error": str(err)}, status_code=404)

    @app.exception_handler(Unavailable)
    async def _unavailable(_r: Request, err: Unavailable) -> JSONResponse:
        return JSONResponse({"ok": False, "error": str(err)}, status_code=503)

    @app.exception_handler(ValueError)
    async def _bad(_r: Request, err: ValueError) -> JSONResponse:
        return JSONResponse({"ok": False, "error": str(err)}, status_code=400)

    @app.exception_handler(QueryError)
    async def _query(_r: Request, err: QueryError) -> JSONResponse:
        return JSONResponse({"ok": False, "error": f"analytics: {err}"}, status_code=500)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, object]:
        return {"ok": True, "part": "ui"}

    app.include_router(api.router)
    api2.install(app)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(pages.STATIC)), name="static")
    return app
