"""The OTLP trace receiver: OTLP/HTTP (aiohttp) and OTLP/gRPC (grpcio) into the log.

Why aiohttp for HTTP: it is already installed (faust depends on it), it runs on the same
asyncio loop as ``grpc.aio`` and the producer, and one plain handler needs no ASGI layers;
an export is one request of up to hundreds of spans, so the framework's share is small.

One export, start to end:

1. authenticate (bearer token; required when bound off loopback), bound the body size;
2. decode (:mod:`streams.otlp.decode`) and map (:mod:`streams.otlp.mapping`);
3. drop events this process already had acknowledged (a retried export), refuse at once
   with 429 when the producer's buffer cannot take the batch, or 503 when the log is down;
4. hand the records to :class:`~streams.producer.EventProducer` and ``flush``: answer
   success only when the broker acknowledged every one of them, else 503 + Retry-After.

A batch that failed half-way may have been partly written; the exporter's retry writes
the same event ids again and every consumer deduplicates by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import grpc
import msgspec
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, PayloadEncodingError
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import Counter

from schemas import payloads as p
from schemas.envelope import Event
from schemas.errors import InvalidEvent
from streams.otlp.decode import (
    JSON,
    PROTOBUF,
    BadRequest,
    decode_body,
    encode_response,
    error_body,
    media_type,
)
from streams.otlp.mapping import MappedBatch, TraceMemory, map_request
from streams.producer import EventProducer, ProducerError

log = logging.getLogger(__name__)

SPANS = Counter(
    "agentstream_otlp_spans", "Spans received by the OTLP receiver, by outcome", ["outcome"]
)
REQUESTS = Counter(
    "agentstream_otlp_exports",
    "OTLP export requests, by protocol and answer",
    ["protocol", "code"],
)
EVENTS = Counter("agentstream_otlp_events", "Events from spans, by outcome", ["outcome"])


@dataclass(frozen=True)
class ReceiverConfig:
    host: str = "127.0.0.1"
    http_port: int = 4318
    grpc_port: int = 4317  # 0: no gRPC
    tokens: dict[str, str | None] = field(default_factory=dict)  # token -> tenant (or None)
    max_body_bytes: int = 16 << 20
    export_timeout_s: float = 8.0  # exporters give up after 10 s by default
    retry_after_s: int = 2
    dedup_ids: int = 262_144  # acknowledged event ids remembered (a retry writes nothing)


def parse_tokens(value: str | None) -> dict[str, str | None]:
    """``otlp_token``: ``SECRET`` (any tenant) or ``tenant=SECRET,tenant2=SECRET2``."""
    out: dict[str, str | None] = {}
    for entry in (value or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        tenant, sep, secret = entry.partition("=")
        named = sep and tenant and secret and not secret.startswith("=")
        if named and tenant.replace("-", "").replace("_", "").isalnum():
            out[secret] = tenant
        else:
            out[entry] = None
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(config: ReceiverConfig) -> None:
    """Binding off loopback without a token would let anyone write to the log."""
    if not is_loopback(config.host) and not config.tokens:
        raise ValueError(
            f"otlp_host {config.host!r} is not loopback: set AGENTSTREAM_OTLP_TOKEN so exporters "
            "must send `Authorization: Bearer <token>` (OTEL_EXPORTER_OTLP_HEADERS)"
        )


class Backpressure(Exception):
    """The log cannot take the batch now: answer 429/503 with Retry-After."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class ReceiverStats:
    """Counters since start (also exported as Prometheus counters)."""

    requests: int = 0
    requests_ok: int = 0
    requests_partial: int = 0
    requests_bad: int = 0
    requests_backpressure: int = 0
    spans_received: int = 0
    spans_mapped: int = 0
    spans_skipped: int = 0
    spans_rejected: int = 0
    spans_altered: int = 0  # mapped with U+0000 replaced by U+FFFD in a text
    events_published: int = 0
    events_deduplicated: int = 0


@dataclass(frozen=True, slots=True)
class ExportResult:
    rejected: int
    message: str
    batch: MappedBatch


class OtlpReceiver:
    """Maps exports to events and writes them through ``producer`` (owned by the caller)."""

    def __init__(
        self,
        producer: EventProducer,
        config: ReceiverConfig | None = None,
        memory: TraceMemory | None = None,
    ) -> None:
        self.producer = producer
        self.config = config or ReceiverConfig()
        check_bind(self.config)
        self.memory = memory or TraceMemory()
        self.stats = ReceiverStats()
        self.skipped: dict[str, int] = {}
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._producer_task: asyncio.Task[None] | None = None
        self.producer_error: str | None = "connecting to the log"
        self.http_port: int | None = None
        self.grpc_port: int | None = None

    # --- the core: one export ------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> str | None:
        """The token's tenant (None: any); raises PermissionError when a token is needed."""
        tokens = self.config.tokens
        if not tokens:
            return None
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer":
            for secret, tenant in tokens.items():
                if hmac.compare_digest(given.strip().encode(), secret.encode()):
                    return tenant
        raise PermissionError("missing or wrong bearer token (Authorization: Bearer <token>)")

    async def export(
        self, request: ExportTraceServiceRequest, tenant: str | None = None
    ) -> ExportResult:
        """Map and publish; returns once the broker acknowledged every new event.

        Raises :class:`BadRequest` (400) when every span was rejected, and
        :class:`Backpressure` when the log cannot take the batch.
        """
        batch = map_request(request, self.memory, tenant=tenant)
        st = self.stats
        st.spans_received += batch.spans
        st.spans_skipped += batch.skipped_count
        st.spans_altered += batch.altered
        for reason, n in batch.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        records, too_large = self._records(batch)
        rejected = batch.rejected_count + too_large
        st.spans_mapped += batch.mapped - too_large
        st.spans_rejected += rejected
        SPANS.labels("mapped").inc(batch.mapped - too_large)
        SPANS.labels("skipped").inc(batch.skipped_count)
        SPANS.labels("rejected").inc(rejected)
        message = batch.message()
        if too_large:
            message = "; ".join(
                m
                for m in (message, f"rejected {too_large} spans: an event over the size limit")
                if m
            )
        if rejected and rejected == batch.spans:
            raise BadRequest(400, message)
        acked = self._acked
        fresh = [e for e in records if e.id not in acked]
        st.events_deduplicated += len(records) - len(fresh)
        EVENTS.labels("deduplicated").inc(len(records) - len(fresh))
        if fresh:
            await self._publish(fresh)
            st.events_published += len(fresh)
            EVENTS.labels("published").inc(len(fresh))
            for e in fresh:
                acked[e.id] = None
            while len(acked) > self.config.dedup_ids:
                acked.popitem(last=False)
        return ExportResult(rejected, message, batch)

    def _records(self, batch: MappedBatch) -> tuple[list[Event], int]:
        """The events to publish; a span with an event over the size limit is rejected whole
        (never half a tool call in the log). Only events that might be too large are encoded
        here: ``EventProducer.send`` encodes (and routes, with its per-agent cache) anyway."""
        limit = self.producer.max_event_bytes
        bad_spans: set[int] = set()
        for event, n in zip(batch.events, batch.event_spans, strict=True):
            if _size_bound(event) > limit and len(_encode(event)) > limit:
                bad_spans.add(n)
        if not bad_spans:
            return batch.events, 0
        keep = [
            e for e, n in zip(batch.events, batch.event_spans, strict=True) if n not in bad_spans
        ]
        return keep, len(bad_spans)

    async def _publish(self, records: list[Event]) -> None:
        producer = self.producer
        task = self._producer_task
        if task is not None and (not task.done() or self.producer_error is not None):
            raise Backpressure(503, f"the log is not reachable yet: {self.producer_error}")
        stats = producer.stats
        if len(records) > producer.buffer_events:
            raise BadRequest(
                413,
                f"{len(records)} events from one request can never fit the producer buffer "
                f"({producer.buffer_events} events, AGENTSTREAM_PRODUCER_BUFFER_EVENTS): send "
                "smaller batches (OTEL_BSP_MAX_EXPORT_BATCH_SIZE)",
            )
        if stats.in_flight + len(records) > producer.buffer_events:
            raise Backpressure(
                429,
                f"the log is behind: {stats.in_flight} events waiting for the broker's "
                f"acknowledgement (buffer {producer.buffer_events}); retry later",
            )
        failed_before = stats.failed
        try:
            for event in records:
                try:
                    await producer.send(event)
                except InvalidEvent as err:  # the size checks above make this unreachable
                    raise BadRequest(400, f"an event is over the size limit: {err}") from None
            await asyncio.wait_for(producer.flush(), timeout=self.config.export_timeout_s)
        except TimeoutError:
            raise Backpressure(
                503,
                f"the broker at {producer.bootstrap} did not acknowledge within "
                f"{self.config.export_timeout_s:g}s",
            ) from None
        except ProducerError as err:
            raise Backpressure(503, f"the log refused the batch: {err}") from None
        if producer.stats.failed != failed_before:
            # a batch failed meanwhile; it may have held some of ours: never ack a maybe
            raise Backpressure(503, "the broker failed some batches; retry")

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the servers at once; connect the producer in the background (until then
        exports get 503, and /readyz says why)."""
        self._producer_task = asyncio.create_task(self._connect(), name="otlp-producer")
        app = web.Application(client_max_size=self.config.max_body_bytes + 1)
        app.router.add_post("/v1/traces", self._http_export)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/readyz", self._ready)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.http_port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.http_port = server.sockets[0].getsockname()[1]
        if self.config.grpc_port:
            await self._start_grpc(self.config.grpc_port)

    async def start_grpc_on_free_port(self) -> int:
        """Tests and benches: gRPC on a free port (``grpc_port=0`` in the config means off)."""
        return await self._start_grpc(0)

    async def _start_grpc(self, port: int) -> int:
        limit = self.config.max_body_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 4 << 20),
            ]
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), server)
        bound = server.add_insecure_port(_grpc_address(self.config.host, port))
        if bound == 0:
            raise OSError(f"cannot bind OTLP/gRPC on {self.config.host}:{port}")
        await server.start()
        self._grpc = server
        self.grpc_port = bound
        return bound

    async def _connect(self) -> None:
        while True:
            try:
                await self.producer.start()
            except ProducerError as err:
                self.producer_error = str(err)
                log.warning("otlp: %s; retrying", err)
                await asyncio.sleep(1)
                continue
            self.producer_error = None
            return

    @property
    def ready(self) -> tuple[bool, str]:
        if self._producer_task is None:
            return False, "not started"
        if not self._producer_task.done() or self.producer_error is not None:
            return False, self.producer_error or "connecting to the log"
        return True, f"writing to {self.producer.bootstrap}"

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=2)
            self._grpc = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._producer_task is not None and not self._producer_task.done():
            self._producer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer_task

    # --- HTTP ----------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", **self._health_body()})

    async def _ready(self, request: web.Request) -> web.Response:
        ok, detail = self.ready
        return web.json_response(
            {"ready": ok, "detail": detail, **self._health_body()}, status=200 if ok else 503
        )

    def _health_body(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"stats": asdict(self.stats), "skipped_by_reason": dict(self.skipped)}

    async def _http_export(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        mt = media_type(request.headers.get("Content-Type"))
        answer_mt = mt if mt in (PROTOBUF, JSON) else JSON
        try:
            tenant = self.authenticate(request.headers.get("Authorization"))
            body = await self._read_body(request)
            # aiohttp has already inflated a gzip (or deflate) body while it was read, and
            # _read_body counted the inflated bytes against the limit
            req, answer_mt = decode_body(
                body, request.headers.get("Content-Type"), None, self.config.max_body_bytes
            )
            result = await self.export(req, tenant)
        except PermissionError as err:
            return self._error(401, 16, str(err), answer_mt, "http")
        except BadRequest as err:
            self.stats.requests_bad += 1
            return self._error(err.status, 3, err.message, answer_mt, "http")
        except Backpressure as err:
            self.stats.requests_backpressure += 1
            resp = self._error(err.status, 14, err.message, answer_mt, "http")
            resp.headers["Retry-After"] = str(self.config.retry_after_s)
            return resp
        resp_msg = ExportTraceServiceResponse()
        if result.message:
            resp_msg.partial_success.CopyFrom(
                ExportTracePartialSuccess(
                    rejected_spans=result.rejected, error_message=result.message
                )
            )
            self.stats.requests_partial += 1
        else:
            self.stats.requests_ok += 1
        REQUESTS.labels("http", "200").inc()
        return web.Response(
            body=encode_response(resp_msg, answer_mt), status=200, content_type=answer_mt
        )

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(
                413,
                f"body of {request.content_length} bytes is over the limit of {limit} "
                "bytes (otlp_max_body_bytes)",
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = await request.content.read(1 << 16)
            except (ContentEncodingError, PayloadEncodingError, RequestPayloadError) as err:
                raise BadRequest(400, f"cannot inflate the body: {err}") from None
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise BadRequest(
                    413, f"body is over the limit of {limit} bytes (otlp_max_body_bytes)"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _error(self, status: int, code: int, message: str, mt: str, proto: str) -> web.Response:
        REQUESTS.labels(proto, str(status)).inc()
        if status >= 500 or status == 429:
            log.warning("otlp export answered %s: %s", status, message)
        return web.Response(body=error_body(code, message, mt), status=status, content_type=mt)


_encode = msgspec.json.Encoder().encode
_ENVELOPE_BOUND = 4096  # envelope fields, field names, ids, traceparent: far below this


def _size_bound(event: Event) -> int:
    """An upper bound of the encoded size (UTF-8 is at most 4 bytes a character, JSON escapes
    at most 6), without encoding: most events are far below the limit."""
    d = event.data
    t = type(d)
    n = _ENVELOPE_BOUND + 6 * (len(event.agentid) + len(event.runid or ""))
    if t is _THOUGHT:
        return n + 6 * len(d.text)  # type: ignore[union-attr]
    if t is _COMPLETED:
        return n + 6 * (len(d.result) + len(d.error_type or ""))  # type: ignore[union-attr]
    if t is _STARTED:
        args = d.arguments  # type: ignore[union-attr]
        return n + (len(_encode(args)) if args else 0)
    if t is _RUN_STARTED:
        return n + 6 * len(d.goal)  # type: ignore[union-attr]
    if t is _RUN_FINISHED:
        return n + 6 * len(d.summary)  # type: ignore[union-attr]
    return n + len(_encode(d))  # agent_started and anything rarer: exact


_THOUGHT, _COMPLETED, _STARTED = p.Thought, p.ActionCompleted, p.ActionStarted
_RUN_STARTED, _RUN_FINISHED = p.RunStarted, p.RunFinished


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP/gRPC ``TraceService/Export`` on the same core as HTTP."""

    def __init__(self, receiver: OtlpReceiver) -> None:
        self.r = receiver

    async def Export(  # the generated service's method name
        self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> ExportTraceServiceResponse:
        r = self.r
        r.stats.requests += 1
        meta = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        try:
            tenant = r.authenticate(meta.get("authorization"))
            result = await r.export(request, tenant)
        except PermissionError as err:
            REQUESTS.labels("grpc", "UNAUTHENTICATED").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))
            raise AssertionError("unreachable") from None
        except BadRequest as err:
            r.stats.requests_bad += 1
            REQUESTS.labels("grpc", "INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, err.message)
            raise AssertionError("unreachable") from None
        except Backpressure as err:
            r.stats.requests_backpressure += 1
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if err.status == 429
                else grpc.StatusCode.UNAVAILABLE
            )
            REQUESTS.labels("grpc", code.name).inc()
            await context.abort(code, err.message, _retry_trailer(code, err.message, r))
            raise AssertionError("unreachable") from None
        REQUESTS.labels("grpc", "OK").inc()
        resp = ExportTraceServiceResponse()
        if result.message:
            r.stats.requests_partial += 1
            resp.partial_success.rejected_spans = result.rejected
            resp.partial_success.error_message = result.message
        else:
            r.stats.requests_ok += 1
        return resp


def _retry_trailer(
    code: grpc.StatusCode, message: str, r: OtlpReceiver
) -> tuple[tuple[str, bytes], ...]:
    """``RetryInfo`` in the status details: how OTLP/gRPC says "retry after N seconds"."""
    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=r.config.retry_after_s)
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)
