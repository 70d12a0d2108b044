"""Serving the UI: the binding check first, then uvicorn on one socket we bound ourselves
(so port 0 works and the printed URL is the real one)."""

from __future__ import annotations

import signal
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
    serving: dict[str, Any] = {}
    _exit_zero_on_sigterm(serving)
    app = create_app(settings, analytics_direct=analytics_direct)
    sock = bind(host, port)
    if on_ready is not None:
        on_ready(url_of(sock))
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    serving["server"] = server
    endpoint = serve_part_metrics("ui", settings)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(endpoint, server, stop), daemon=True)
    beat.start()
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        endpoint.stop()


def _exit_zero_on_sigterm(serving: dict[str, Any]) -> None:
    """SIGTERM is a normal stop (exit 0), at any moment.

    Why: uvicorn re-raises the SIGTERM it handled once it has shut down, under the handler
    that was there before it ran; with the default one the process then dies with -15 after
    a clean shutdown, and a SIGTERM before uvicorn runs kills it outright. Ours: before
    serving, exit 0 (nothing to drain); while serving, ask uvicorn to shut down (also what
    the re-raise does, harmlessly).
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals are the main thread's; an embedding caller handles them

    def on_term(_sig: int, _frame: Any) -> None:
        server = serving.get("server")
        if server is None:
            raise SystemExit(0)
        server.should_exit = True

    signal.signal(signal.SIGTERM, on_term)


def _heartbeat(endpoint: MetricsEndpoint, server: Any, stop: threading.Event) -> None:
    """Ready once uvicorn serves; a beat a second while it runs (``agentstream status``)."""
    while not stop.is_set():
        endpoint.health.set_ready(bool(server.started), "serving" if server.started else "starting")
        stop.wait(1.0)
