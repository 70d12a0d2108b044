"""Who may read, and the headers every response carries.

- Binding to anything but loopback needs a token (``AGENTSTREAM_UI_TOKEN``); without one
  the server refuses to start (:func:`check_binding`). With a token set, every request but
  ``/healthz``, ``/login`` and the static files must carry it: ``Authorization: Bearer
  TOKEN`` or the login cookie that ``POST /login`` sets (HttpOnly, SameSite=Strict).
- Content-Security-Policy: scripts and styles from this origin only, no inline script, no
  eval, no plugins, no framing. Event text is rendered as text by the front end; the CSP
  is the second line should a bug ever let markup through.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from urllib.parse import quote

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

COOKIE = "agentstream_ui_token"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
OPEN_PATHS = ("/healthz", "/login", "/static/")


class UnsafeBinding(RuntimeError):
    """The server would be reachable from other machines without a token."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and names that resolve only to those (``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_binding(host: str, token: str | None) -> None:
    if token is not None and len(token) < 16:
        raise UnsafeBinding(
            "AGENTSTREAM_UI_TOKEN is shorter than 16 characters — use a long random one "
            '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    if not is_loopback(host) and not token:
        raise UnsafeBinding(
            f"refusing to serve the UI on {host}: it is not a loopback address and no token "
            "is set — set AGENTSTREAM_UI_TOKEN (clients send it as a bearer token or log in "
            "once at /login), or bind to 127.0.0.1"
        )


def token_ok(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    if given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip(), token):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie, token)


class SecurityMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: object, token: str | None) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        if self.token and not path.startswith(OPEN_PATHS) and not token_ok(request, self.token):
            if path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
                response: Response = JSONResponse(
                    {"ok": False, "error": "a token is required (Authorization: Bearer …)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            else:  # back to the very page after login, its query (?event=…) included
                where = path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(f"/login?next={quote(where)}", status_code=303)
        else:
            response = await call_next(request)
        for k, v in HEADERS.items():
            response.headers.setdefault(k, v)
        hashed = path.startswith("/static/") and "v=" in request.url.query
        if hashed and response.status_code == 200:
            # asset URLs carry their content hash (pages.static_url): a changed file gets a
            # new URL, so the browser may keep this one for good
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response
