"""Prometheus metrics and health endpoints for every long-running AgentStream process.

Why here: the processes (worker, projections, archiver, UI, OTLP receiver) are started by
the CLI, so the shell is where an HTTP endpoint is attached to them. The lower layers only
define their ``prometheus_client`` metrics in the default registry; this module serves that
registry, so nothing below ``agentstream/`` knows about HTTP.

Each part gets one loopback port, ``metrics_port_base + PART_OFFSETS[part]`` (or a free port
when the base is 0), and records it in ``DATA_DIR/run/metrics/<part>.json`` so that
``agentstream status`` can show the URL of whatever is running::

    GET /metrics   Prometheus text format (the default registry)
    GET /healthz   200 while the process runs its loop
    GET /readyz    200 once the part says it is ready (connected, caught up to work), else 503

The server is a stdlib ``ThreadingHTTPServer`` on a daemon thread: a scrape never waits for
the asyncio loop, and a stuck loop still answers ``/healthz`` with how long ago it last
reported progress.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

log = logging.getLogger(__name__)

# One fixed offset per part, so a Prometheus scrape config can name them (deploy/prometheus).
PART_OFFSETS: dict[str, int] = {
    "supervisor": 0,
    "worker": 1,
    "projections": 2,
    "archiver": 3,
    "ui": 4,
    "otlp": 5,
    "gate": 6,
}

UP_SINCE = Gauge("agentstream_process_start_time_seconds", "Unix time this part started", ["part"])
READY = Gauge("agentstream_ready", "1 when the part reports ready, else 0", ["part"])
HEARTBEAT_AGE = Gauge(
    "agentstream_heartbeat_age_seconds", "Seconds since the part last reported progress", ["part"]
)
PART_RESTARTS = Counter(
    "agentstream_part_restarts", "Times the supervisor restarted a part", ["part"]
)


def metrics_dir(data_dir: Path) -> Path:
    return data_dir / "run" / "metrics"


def part_port(part: str, base: int) -> int:
    """The port a part serves its metrics on; 0 means "pick a free one"."""
    if base == 0:
        return 0
    return base + PART_OFFSETS.get(part, 9)


@dataclass
class Health:
    """What the part tells the endpoint: alive and making progress, ready or why not."""

    part: str
    ready: bool = False
    detail: str = "starting"
    last_beat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def set_ready(self, ready: bool, detail: str = "") -> None:
        self.ready = ready
        self.detail = detail or ("ready" if ready else "not ready")
        READY.labels(self.part).set(1 if ready else 0)
        self.beat()

    def as_dict(self) -> dict[str, Any]:
        age = time.monotonic() - self.last_beat
        HEARTBEAT_AGE.labels(self.part).set(age)
        return {
            "part": self.part,
            "pid": os.getpid(),
            "ready": self.ready,
            "detail": self.detail,
            "heartbeat_age_s": round(age, 3),
        }


def _handler(health: Health, extra: Callable[[], dict[str, Any]] | None) -> type:
    class Handler(BaseHTTPRequestHandler):
        server_version = "agentstream-metrics"

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes every few seconds would drown the part's own log

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                health.as_dict()  # refreshes the heartbeat-age gauge
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
                return
            if path in ("/healthz", "/readyz"):
                body = health.as_dict()
                if extra is not None:
                    with contextlib.suppress(Exception):
                        body.update(extra())
                status = 200 if path == "/healthz" or health.ready else 503
                self._send(status, json.dumps(body).encode(), "application/json")
                return
            self._send(
                404,
                b'{"error": "not found: try /metrics, /healthz, /readyz"}\n',
                "application/json",
            )

    return Handler


class MetricsEndpoint:
    """A part's ``/metrics`` + ``/healthz`` + ``/readyz`` server, recorded for ``status``."""

    def __init__(
        self,
        part: str,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.part = part
        self.health = Health(part)
        self._record = metrics_dir(data_dir) / f"{part}.json"
        self._server = ThreadingHTTPServer((host, port), _handler(self.health, extra))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"metrics-{part}", daemon=True
        )
        UP_SINCE.labels(part).set(time.time())
        READY.labels(part).set(0)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> MetricsEndpoint:
        self._thread.start()
        self._record.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"part": self.part, "url": self.url, "pid": os.getpid()}))
        tmp.replace(self._record)
        log.info("%s: metrics and health at %s/metrics", self.part, self.url)
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            current = json.loads(self._record.read_text())
            if current.get("pid") == os.getpid():
                self._record.unlink()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MetricsEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_part_metrics(
    part: str, settings: Any, extra: Callable[[], dict[str, Any]] | None = None
) -> MetricsEndpoint:
    """Start the endpoint for ``part`` on its configured port (free port if that is taken).

    A taken port is not fatal: two workers on one machine are a normal way to scale, so the
    second one logs the clash and serves on a free port instead (recorded for ``status``).
    """
    port = part_port(part, settings.metrics_port_base)
    try:
        endpoint = MetricsEndpoint(part, settings.data_dir, settings.metrics_host, port, extra)
    except OSError as err:
        log.warning("%s: metrics port %s unavailable (%s); using a free port", part, port, err)
        endpoint = MetricsEndpoint(part, settings.data_dir, settings.metrics_host, 0, extra)
    return endpoint.start()


def recorded_endpoints(data_dir: Path) -> dict[str, str]:
    """part -> metrics base URL, for parts whose recorded process is still alive."""
    found: dict[str, str] = {}
    folder = metrics_dir(data_dir)
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            rec = json.loads(path.read_text())
            pid = int(rec["pid"])
            os.kill(pid, 0)
            found[str(rec["part"])] = str(rec["url"])
    return found


class StatsCollector:
    """Exposes parts' own stats objects (plain counters) as Prometheus counters.

    Why: the processors, projections and the archiver already count everything exactly in a
    stats dataclass for their final report; reading it at scrape time adds no work to the hot
    path and cannot drift from what the part prints. One collector per metric prefix, with
    one ``part`` label value per stats object (several projections share a process).
    """

    def __init__(self, prefix: str, stats: dict[str, Callable[[], object]]) -> None:
        self.prefix = prefix
        self._stats = stats

    def describe(self) -> list[Any]:
        return []  # names depend on the stats objects; checked at collect time

    def collect(self) -> Any:
        from dataclasses import fields, is_dataclass

        from prometheus_client.core import CounterMetricFamily

        families: dict[str, Any] = {}
        for part, getter in self._stats.items():
            stats = getter()
            if stats is None or not is_dataclass(stats):
                continue
            for f in fields(stats):
                value = getattr(stats, f.name, None)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                family = families.get(f.name)
                if family is None:
                    family = families[f.name] = CounterMetricFamily(
                        f"{self.prefix}_{f.name}", f.name.replace("_", " "), labels=["part"]
                    )
                family.add_metric([part], float(value))
        yield from families.values()


def register_stats(prefix: str, stats: dict[str, Callable[[], object]]) -> StatsCollector:
    from prometheus_client import REGISTRY

    collector = StatsCollector(prefix, stats)
    REGISTRY.register(collector)  # type: ignore[arg-type]
    return collector


async def heartbeat(
    endpoint: MetricsEndpoint,
    readiness: Callable[[], tuple[bool, str]],
    stop: Any,
    every_s: float = 1.0,
) -> None:
    """Beat while the part's asyncio loop runs; a wedged loop shows as a growing age."""
    import asyncio

    while not stop.is_set():
        try:
            ready, detail = readiness()
        except Exception as err:  # a readiness probe must never take the part down
            ready, detail = False, f"readiness check failed: {err!r}"
        endpoint.health.set_ready(ready, detail)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
