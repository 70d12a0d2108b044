"""Request metrics of the UI server (Prometheus, default registry; served by the part's
``/metrics`` endpoint from :mod:`agentstream.telemetry`). Labelled by route template, so
run and event ids never become label values."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Histogram

REQUEST_SECONDS = Histogram(
    "agentstream_ui_request_seconds",
    "Time to answer one UI request, by route template and status",
    ["route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class RequestMetrics:
    """Pure ASGI middleware: times every HTTP request and observes it once answered."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or (
                "/static" if scope.get("path", "").startswith("/static/") else "other"
            )
            REQUEST_SECONDS.labels(path, str(status[0])).observe(time.perf_counter() - t0)
