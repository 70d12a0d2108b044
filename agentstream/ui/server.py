"""Serving the UI: the binding check first, then uvicorn on one socket we bound ourselves
(so port 0 works and the printed URL is the real one)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from agentstream.ui.security import check_binding

if TYPE_CHECKING:
    from agentstream.settings import Settings


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    analytics_direct: bool = False,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Check the binding (raises :class:`~agentstream.ui.security.UnsafeBinding`), bind,
    then serve until SIGINT/SIGTERM."""
    import uvicorn

    from agentstream.ui.app import create_app

    check_binding(host, settings.ui_token)
    app = create_app(settings, analytics_direct=analytics_direct)
    sock = bind(host, port)
    if on_ready is not None:
        on_ready(url_of(sock))
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
