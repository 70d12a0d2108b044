"""The HTML routes: every page is the same small shell; ``static/app.js`` draws the page
named by the URL from ``/api/v1``. Page URLs are stable and shareable (view state lives in
the query string)."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from functools import cache
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from agentstream.ui.security import COOKIE

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescapes .html
router = APIRouter(include_in_schema=False)

PAGES = (  # a run or agent id may hold a "/" (path-typed; the debugger before the run)
    "/runs",
    "/runs/{run_id:path}/debug",
    "/runs/{run_id:path}",
    "/events/{event_id}",
    "/path",
    "/agents/{agent_id:path}",
    "/deadletters",
    "/live",
    "/dashboards",
    "/dashboards/{which}",
    "/sql",
    "/memory",
)


@cache
def _hash(name: str, mtime_ns: int) -> str:
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


def static_url(root: str, name: str) -> str:
    """A static file's URL with a content hash, so a changed file is never served stale
    (the files are served with a year's ``immutable`` cache: security.py)."""
    return f"{root}/static/{name}?v={_hash(name, (STATIC / name).stat().st_mtime_ns)}"


def _render(request: Request, template: str, **context: object) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return templates.TemplateResponse(
        request,
        template,
        {"root": root, "static": lambda n: static_url(root, n), **context},
    )


def _js_component(value: str) -> str:
    """``encodeURIComponent`` as app.js writes it, so a preloaded URL is the one it fetches."""
    return quote(value, safe="!'()*-._~")


def preloads(request: Request) -> list[str]:
    """API answers the page will ask for first, fetched by the browser while it is still
    loading the scripts (``<link rel=preload as=fetch>``): on a run page the timeline (2 MB
    for a 5,000-event run) and the run's summary, and the selected event if there is one.
    The URLs are exactly those app.js builds, so the browser hands it the preloaded answer."""
    root = request.scope.get("root_path", "").rstrip("/")
    run_id = request.path_params.get("run_id")
    if request.scope["route"].path != "/runs/{run_id:path}" or not run_id:
        return []
    run = f"{root}/api/v1/runs/{_js_component(run_id)}"
    out = [f"{run}/timeline", run]
    event = request.query_params.get("event", "")
    try:
        uuid.UUID(event)
    except ValueError:
        return out
    return [*out, f"{root}/api/v1/events/{_js_component(event)}"]


def shell(request: Request) -> HTMLResponse:
    return _render(request, "index.html", preloads=preloads(request))


for _page in PAGES:
    router.add_api_route(_page, shell, methods=["GET"], response_class=HTMLResponse)


@router.get("/")
def home(request: Request) -> Response:
    return RedirectResponse(request.scope.get("root_path", "") + "/live", status_code=307)


def _safe_next(value: str) -> str:
    return value if value.startswith("/") and not value.startswith("//") else "/runs"


@router.get("/login")
def login_form(request: Request, next: str = "/runs") -> HTMLResponse:
    return _render(request, "login.html", next=_safe_next(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    token: str | None = request.app.state.token
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (form.get("token") or [""])[0]
    nxt = _safe_next((form.get("next") or ["/runs"])[0])
    if not token:
        return RedirectResponse(nxt, status_code=303)
    if not given or not hmac.compare_digest(given, token):
        resp = _render(request, "login.html", next=nxt, error="That token is not right.")
        resp.status_code = 401
        return resp
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(
        COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return resp
