"""``agentstream ui``: the read-only web UI (runs, run timeline, step-through, causality,
agents, dead letters) on ``ui_host:ui_port`` (default 127.0.0.1:8700).

Off loopback it needs ``AGENTSTREAM_UI_TOKEN`` and refuses to start without one.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from agentstream.console import console, fail, settings_or_exit


def ui(
    host: Annotated[str | None, typer.Option(help="address to bind (default: ui_host)")] = None,
    port: Annotated[
        int | None, typer.Option(help="port (default: ui_port; 0 picks a free one)")
    ] = None,
    analytics_direct: Annotated[
        bool,
        typer.Option(
            "--analytics-direct",
            help="open the chDB store from this process when no projection serves it "
            "(the analytics projection cannot start while the UI holds it)",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Serve the web UI until stopped (Ctrl-C)."""
    from agentstream.ui.security import UnsafeBinding
    from agentstream.ui.server import serve

    settings = settings_or_exit()
    host = host or settings.ui_host
    port = settings.ui_port if port is None else port
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    def ready(url: str) -> None:
        console.print(
            f"AgentStream UI: {url}/runs  (API: {url}/api/v1/docs)", highlight=False, soft_wrap=True
        )

    try:
        serve(
            settings,
            host,
            port,
            analytics_direct=analytics_direct,
            on_ready=ready,
            log_level=log_level.lower(),
        )
    except UnsafeBinding as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot listen on {host}:{port}: {err.strerror or err} — pick another --port")


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)
