"""Reads routed through the process that owns the chDB directory.

chDB lets one OS process open a data directory; while the pipeline runs, that process is
the analytics projection's. So that process serves a tiny loopback HTTP endpoint and
records it in ``DATA_DIR/run/analytics-query.json`` (mode 0600, with a random token);
``agentstream query`` and :func:`projections.analytics.connect` use it when the recorded
process is alive and answers, and open the directory themselves otherwise.

Protocol (loopback only, token in ``Authorization: Bearer …``):

- ``GET /health`` -> ``{"ok": true, "pid": …, "database": …}``
- ``POST /query`` with JSON ``{"sql": "...", "params": {...}}`` -> 200 and an Arrow IPC
  stream, or 400 with JSON ``{"error": "...", "kind": "readonly" | "query" | "request"}``.

Every statement is checked read-only and runs with ``readonly=1`` on its own client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa

from agentstream.processes import pid_alive
from projections.analytics.reader import AnalyticsReader, DirectReader, QueryError
from projections.analytics.readonly import ReadOnlyError
from projections.analytics.store import AnalyticsError, AnalyticsStore, Location

log = logging.getLogger(__name__)

SERVICE_FILE = "analytics-query.json"
MAX_REQUEST_BYTES = 1 << 20
POOL_SIZE = 4


@dataclass(frozen=True)
class ServiceInfo:
    """What the owner records about its endpoint."""

    url: str
    token: str
    pid: int
    store: str  # the chDB directory
    database: str
    started_at: float


class _ReaderPool:
    """At most POOL_SIZE readers (one client each: a client serialises its calls)."""

    def __init__(self, store: AnalyticsStore) -> None:
        self._store = store
        self._free: queue.LifoQueue[DirectReader] = queue.LifoQueue()
        self._made = 0
        self._guard = threading.Lock()
        self._slots = threading.BoundedSemaphore(POOL_SIZE)

    @contextlib.contextmanager
    def reader(self) -> Any:
        with self._slots:
            try:
                r = self._free.get_nowait()
            except queue.Empty:
                r = DirectReader(self._store.location, self._store.database)
                with self._guard:
                    self._made += 1
            try:
                yield r
            finally:
                self._free.put(r)

    def close(self) -> None:
        while True:
            try:
                self._free.get_nowait().close()
            except queue.Empty:
                return


class QueryService:
    """The loopback read endpoint of the process that owns a chDB directory."""

    def __init__(self, store: AnalyticsStore, run_dir: Path, host: str = "127.0.0.1") -> None:
        if store.location.backend != "chdb":
            raise AnalyticsError(
                "the query service is for chDB only", "query the ClickHouse server directly"
            )
        self.store = store
        self.run_dir = run_dir
        self.host = host
        self.token = secrets.token_urlsafe(24)
        self.path = run_dir / SERVICE_FILE
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._pool = _ReaderPool(store)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ServiceInfo:
        server = ThreadingHTTPServer((self.host, 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="analytics-query", daemon=True
        )
        self._thread.start()
        info = ServiceInfo(
            url=self.url,
            token=self.token,
            pid=os.getpid(),
            store=str(self.store.location.path),
            database=self.store.database,
            started_at=time.time(),
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(info), f)
        os.replace(tmp, self.path)
        log.info("analytics: serving reads on %s (recorded in %s)", self.url, self.path)
        return info

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            recorded = json.loads(self.path.read_text())
            if recorded.get("pid") == os.getpid() and recorded.get("token") == self.token:
                self.path.unlink()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._pool.close()

    def run_query(self, sql: str, params: dict[str, Any]) -> pa.Table:
        with self._pool.reader() as reader:
            return reader.query(sql, params)


def _make_handler(service: QueryService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "agentstream-analytics"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("query service: " + format, *args)

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            if secrets.compare_digest(given, f"Bearer {service.token}"):
                return True
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "bad token", "kind": "request"})
            return False

        def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path != "/health":
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found", "kind": "request"})
                return
            self._json(
                HTTPStatus.OK,
                {"ok": True, "pid": os.getpid(), "database": service.store.database},
            )

        def do_POST(self) -> None:
            if not self._authorized():
                return
            if self.path != "/query":
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found", "kind": "request"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= MAX_REQUEST_BYTES:
                    raise ValueError(f"request body must be 1..{MAX_REQUEST_BYTES} bytes")
                body = json.loads(self.rfile.read(length))
                sql, params = body["sql"], body.get("params") or {}
                if not isinstance(sql, str) or not isinstance(params, dict):
                    raise ValueError("expected {'sql': str, 'params': object}")
            except (ValueError, KeyError, TypeError) as err:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(err), "kind": "request"})
                return
            try:
                table = service.run_query(sql, params)
            except ReadOnlyError as err:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(err), "kind": "readonly"})
                return
            except (QueryError, AnalyticsError, KeyError) as err:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(err), "kind": "query"})
                return
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            data = sink.getvalue().to_pybytes()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/vnd.apache.arrow.stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def read_service_file(run_dir: Path) -> ServiceInfo | None:
    try:
        raw = json.loads((run_dir / SERVICE_FILE).read_text())
        return ServiceInfo(**raw)
    except (OSError, ValueError, TypeError):
        return None


def find_service(run_dir: Path, location: Location, database: str) -> ServiceInfo | None:
    """The recorded endpoint for this store, if its process is alive and answers."""
    info = read_service_file(run_dir)
    if info is None or info.store != str(location.path) or info.database != database:
        return None
    if not pid_alive(info.pid):
        return None
    try:
        _request(info, "GET", "/health", None, timeout=2.0)
    except (OSError, urllib.error.URLError):
        return None
    return info


def _request(
    info: ServiceInfo, method: str, path: str, body: bytes | None, timeout: float
) -> bytes:
    req = urllib.request.Request(
        info.url + path,
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {info.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


class ServiceReader(AnalyticsReader):
    """Queries through the owner's endpoint; same checks and errors as :class:`DirectReader`."""

    def __init__(self, info: ServiceInfo, timeout_s: float = 300.0) -> None:
        self.info = info
        self.timeout_s = timeout_s
        self.via = f"{info.url} (process {info.pid}, which holds {info.store})"

    def _run(self, sql: str, params: dict[str, Any]) -> pa.Table:
        body = json.dumps({"sql": sql, "params": params}, default=str).encode()
        try:
            data = _request(self.info, "POST", "/query", body, self.timeout_s)
        except urllib.error.HTTPError as err:
            try:
                detail = json.loads(err.read())
            except ValueError:
                detail = {"error": f"HTTP {err.code}", "kind": "request"}
            if detail.get("kind") == "readonly":
                raise ReadOnlyError(detail["error"]) from None
            raise QueryError(detail.get("error", f"HTTP {err.code}")) from None
        except (OSError, urllib.error.URLError) as err:
            raise AnalyticsError(
                f"the analytics query endpoint {self.info.url} (process {self.info.pid}) "
                f"did not answer: {err}",
                "retry; if that process has stopped, the store can be opened directly",
            ) from None
        return pa.ipc.open_stream(data).read_all()
