"""Reads routed through the process that owns the chDB directory.

chDB lets one OS process open a data directory; while the pipeline runs, that process is
the analytics projection's. So that process serves a tiny loopback HTTP endpoint and
records it in ``DATA_DIR/run/analytics-query.json`` (mode 0600, with a random token);
``agentstream query`` and :func:`projections.analytics.connect` use it when the recorded
process is alive and answers, and open the directory themselves otherwise.

Protocol (loopback only, token in ``Authorization: Bearer …``):

- ``GET /health`` -> ``{"ok": true, "pid": …, "database": …}``
- ``POST /query`` with JSON ``{"sql": "...", "params": {...}}`` (or ``"named": NAME``
  instead of ``sql``; ``"format"``: ``arrow`` (default) | ``table`` | ``csv`` | ``json`` |
  ``parquet``; ``"max_rows"`` for ``table``) -> 200 with the result (an Arrow IPC stream,
  the rendered file, or for ``table`` JSON ``{"columns", "rows", "total"}``) and the
  engine's figures in the ``X-AgentStream-Stats`` header (JSON); or 400 with JSON
  ``{"error": "...", "kind": "readonly" | "engine_readonly" | "limit" | "cancelled" |
  "query" | "named" | "request"}``.

Every statement goes through :func:`projections.analytics.readonly.run_readonly` with the
limits this process was given; when the client disconnects, its statement is killed.

The client half (:func:`read_service_file`, :func:`post`) imports only the standard
library, so a CLI can use it without loading pyarrow or the engine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from projections.analytics.reader import ChdbEngine
    from projections.analytics.readonly import QueryLimits, ReadResult
    from projections.analytics.store import AnalyticsStore

log = logging.getLogger(__name__)

SERVICE_FILE = "analytics-query.json"
STATS_HEADER = "X-AgentStream-Stats"
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
    max_execution_s: float = 60.0  # its statements' time limit: how long a client may wait


def pid_alive(pid: int) -> bool:
    """A process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the client half (standard library only) ---------------------------------------------


def read_service_file(run_dir: Path) -> ServiceInfo | None:
    try:
        raw = json.loads((run_dir / SERVICE_FILE).read_text())
        return ServiceInfo(**raw)
    except (OSError, ValueError, TypeError):
        return None


def recorded_service(run_dir: Path, store: str, database: str) -> ServiceInfo | None:
    """The recorded endpoint for this store if its process is alive (no round trip)."""
    info = read_service_file(run_dir)
    if info is None or info.store != store or info.database != database:
        return None
    return info if pid_alive(info.pid) else None


class Abandoned(OSError):
    """The caller's own client went away, so the request was dropped (and its statement
    killed by the endpoint, which sees the connection close)."""


def post(
    info: ServiceInfo,
    path: str,
    body: bytes | None,
    timeout: float,
    method: str = "POST",
    client_gone: Callable[[], bool] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request to the endpoint: (status, headers, body); raises OSError if unreachable.

    Plain HTTP/1.1 over a socket (``Connection: close``): the endpoint is ours and always
    sends ``Content-Length``; ``http.client`` would cost the CLI ~13 ms of imports.
    ``client_gone`` (polled every 0.1 s while waiting): when it returns True the connection
    is closed, which makes the endpoint kill the statement, and this raises
    :class:`Abandoned`.
    """
    import socket

    parts = urlsplit(info.url)
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Authorization: Bearer {info.token}",
        "Connection: close",
    ]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    chunks: list[bytes] = []
    done, dropped = threading.Event(), threading.Event()
    with socket.create_connection(address, timeout=timeout) as sock:
        if client_gone is not None:

            def watch() -> None:
                while not done.wait(0.1):
                    if client_gone():
                        dropped.set()
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                        return

            threading.Thread(target=watch, name="read-client-watch", daemon=True).start()
        try:
            sock.sendall(request)
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        except OSError:
            if not dropped.is_set():
                raise
        finally:
            done.set()
    if dropped.is_set():
        raise Abandoned(f"the request to {info.url} was dropped: its client went away")
    raw = b"".join(chunks)
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        raise OSError(f"incomplete HTTP response from {info.url}")
    lines = raw[:end].decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP response from {info.url}: {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    payload = raw[end + 4 :]
    length = headers.get("content-length")
    if length is not None and len(payload) != int(length):
        raise OSError(f"truncated response from {info.url} ({len(payload)} of {length} bytes)")
    return status, headers, payload


def find_service(run_dir: Path, store: Any, database: str) -> ServiceInfo | None:
    """The recorded endpoint for this store, if its process is alive and answers.

    ``store``: the chDB directory (a path, or a ``Location``).
    """
    path = getattr(store, "path", store)
    info = recorded_service(run_dir, str(path), database)
    if info is None:
        return None
    try:
        status, _, _ = post(info, "/health", None, timeout=2.0, method="GET")
    except OSError:
        return None
    return info if status == 200 else None


# --- the server half ----------------------------------------------------------------------


class _EnginePool:
    """At most POOL_SIZE engines (one statement at a time each)."""

    def __init__(self, store: AnalyticsStore, limits: QueryLimits) -> None:
        self._store = store
        self._limits = limits
        self._free: list[ChdbEngine] = []
        self._guard = threading.Lock()
        self._slots = threading.BoundedSemaphore(POOL_SIZE)

    @contextlib.contextmanager
    def engine(self) -> Any:
        from projections.analytics.reader import ChdbEngine

        with self._slots:
            with self._guard:
                engine = self._free.pop() if self._free else None
            if engine is None:
                engine = ChdbEngine(self._store.location, self._store.database, self._limits)
            try:
                yield engine
            finally:
                with self._guard:
                    self._free.append(engine)

    def close(self) -> None:
        with self._guard:
            while self._free:
                self._free.pop().close()


class QueryService:
    """The loopback read endpoint of the process that owns a chDB directory."""

    def __init__(
        self,
        store: AnalyticsStore,
        run_dir: Path,
        host: str = "127.0.0.1",
        limits: QueryLimits | None = None,
    ) -> None:
        import secrets

        from projections.analytics.readonly import QueryLimits
        from projections.analytics.store import AnalyticsError

        if store.location.backend != "chdb":
            raise AnalyticsError(
                "the query service is for chDB only", "query the ClickHouse server directly"
            )
        self.store = store
        self.run_dir = run_dir
        self.host = host
        self.limits = limits or QueryLimits()
        self.token = secrets.token_urlsafe(24)
        self.path = run_dir / SERVICE_FILE
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._pool = _EnginePool(store, self.limits)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ServiceInfo:
        from http.server import ThreadingHTTPServer

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
            max_execution_s=self.limits.max_execution_s,
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

    def run_query(self, sql: str, params: dict[str, Any], client_gone: Any = None) -> ReadResult:
        """One statement through the guarded path, on a pooled engine, under the model lock."""
        from projections.analytics.readonly import run_readonly

        with self.store.lock.shared(), self._pool.engine() as engine:
            return run_readonly(engine, sql, params, limits=self.limits, client_gone=client_gone)


def _render(result: ReadResult, fmt: str, max_rows: int) -> tuple[str, bytes]:
    """(content type, body) of a result in the requested format."""
    import io

    from projections.analytics import output

    if fmt == "arrow":
        return "application/vnd.apache.arrow.stream", result.ipc
    table = output.plain_table(result.table())
    if fmt == "table":
        return "application/json", json.dumps(output.table_rows(table, max_rows)).encode()
    buf = io.BytesIO()
    output.WRITERS[fmt](table, buf)
    kind = {"csv": "text/csv", "json": "application/x-ndjson"}.get(fmt, "application/octet-stream")
    return kind, buf.getvalue()


def _make_handler(service: QueryService) -> type[BaseHTTPRequestHandler]:
    import secrets
    import select
    import socket
    from http import HTTPStatus
    from http.server import BaseHTTPRequestHandler

    from projections.analytics.output import FORMATS
    from projections.analytics.readonly import QueryError, ReadOnlyError
    from projections.analytics.store import AnalyticsError

    class Handler(BaseHTTPRequestHandler):
        server_version = "agentstream-analytics"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("query service: " + format, *args)

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            if secrets.compare_digest(given, f"Bearer {service.token}"):
                return True
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "bad token", "kind": "request"})
            return False

        def _send(self, status: HTTPStatus, ctype: str, data: bytes, **headers: str) -> None:
            if status != HTTPStatus.OK and self._client_gone():
                self.close_connection = True
                return
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client left; its statement was killed

        def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            self._send(status, "application/json", json.dumps(body).encode())

        def _client_gone(self) -> bool:
            """The client closed its end (the request is fully read: nothing else may come)."""
            # poll, not select: this process holds more than FD_SETSIZE (1024)
            # descriptors once the store has many parts open.
            try:
                poller = select.poll()
                poller.register(self.connection, select.POLLIN | select.POLLHUP | select.POLLERR)
                if not poller.poll(0):
                    return False
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except (OSError, ValueError):
                return True

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
                sql, named = body.get("sql"), body.get("named")
                params = body.get("params") or {}
                fmt = body.get("format") or "arrow"
                max_rows = int(body.get("max_rows") or 100)
                if (sql is None) == (named is None) or not isinstance(params, dict):
                    raise ValueError("expected {'sql': str | 'named': str, 'params': object}")
                if fmt not in FORMATS:
                    raise ValueError(f"format must be one of {', '.join(FORMATS)}")
            except (ValueError, TypeError, AttributeError) as err:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(err), "kind": "request"})
                return
            if named is not None:
                from projections.analytics.queries import NAMED_QUERIES

                query = NAMED_QUERIES.get(str(named))
                if query is None:
                    message = (
                        f"no named query {named!r} — choose one of: {', '.join(NAMED_QUERIES)}"
                    )
                    self._json(HTTPStatus.BAD_REQUEST, {"error": message, "kind": "named"})
                    return
                try:
                    sql, params = query.sql, query.bind(params)
                except KeyError as err:
                    self._json(HTTPStatus.BAD_REQUEST, {"error": err.args[0], "kind": "named"})
                    return
            try:
                result = service.run_query(str(sql), params, client_gone=self._client_gone)
                ctype, data = _render(result, fmt, max_rows)
            except ReadOnlyError as err:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(err), "kind": "readonly"})
                return
            except QueryError as err:
                kind = "engine_readonly" if err.kind == "readonly" else err.kind
                if kind == "cancelled":
                    log.info("analytics: a read was cancelled (its client went away)")
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(err), "kind": kind})
                return
            except AnalyticsError as err:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(err), "kind": "query"})
                return
            self._send(
                HTTPStatus.OK, ctype, data, X_AgentStream_Stats=json.dumps(result.stats.as_dict())
            )

    return Handler


def request(
    info: ServiceInfo,
    body: bytes,
    timeout_s: float,
    client_gone: Callable[[], bool] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """POST /query; a refusal or failure raises the read path's own exception."""
    from projections.analytics.readonly import QueryError, ReadOnlyError
    from projections.analytics.store import AnalyticsError

    try:
        status, headers, data = post(info, "/query", body, timeout_s, client_gone=client_gone)
    except Abandoned as err:
        raise QueryError(str(err), "cancelled") from None
    except OSError as err:
        raise AnalyticsError(
            f"the analytics query endpoint {info.url} (process {info.pid}) did not answer: {err}",
            "retry; if that process has stopped, the store can be opened directly",
        ) from None
    if status == 200:
        return status, headers, data
    try:
        detail = json.loads(data)
    except ValueError:
        detail = {"error": f"HTTP {status}", "kind": "request"}
    kind, message = detail.get("kind"), detail.get("error", f"HTTP {status}")
    if kind == "readonly":
        raise ReadOnlyError(message)
    if kind == "named":
        raise KeyError(message)
    raise QueryError(message, "readonly" if kind == "engine_readonly" else str(kind or "query"))


def __getattr__(name: str) -> Any:
    """``ServiceReader`` lives in ``reader.py`` (it needs pyarrow); kept importable from here."""
    if name == "ServiceReader":
        from projections.analytics.reader import ServiceReader

        return ServiceReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
