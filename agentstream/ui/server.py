"""Serving the UI: the binding check first, then uvicorn on one socket we bound ourselves
(so port 0 works and the printed URL is the real one)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentstream.ui.security import check_binding

if TYPE_CHECKING:
    from agentstream.settings import Settings
    from agentstream.telemetry import MetricsEndpoint


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

    from agentstream.telemetry import serve_part_metrics
    from agentstream.ui.app import create_app

    check_binding(host, settings.ui_token)
    app = create_app(settings, analytics_direct=analytics_direct)
    sock = bind(host, port)
    if on_ready is not None:
        on_ready(url_of(sock))
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    endpoint = serve_part_metrics("ui", settings)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(endpoint, server, stop), daemon=True)
    beat.start()
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        endpoint.stop()


def _heartbeat(endpoint: MetricsEndpoint, server: Any, stop: threading.Event) -> None:
    """Ready once uvicorn serves; a beat a second while it runs (``agentstream status``)."""
    while not stop.is_set():
        endpoint.health.set_ready(bool(server.started), "serving" if server.started else "starting")
        stop.wait(1.0)
