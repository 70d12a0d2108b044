"""The receiver's protocol behaviour on a real broker: OTLP/JSON as the spec encodes it,
partial success, every kind of bad input (4xx with a clear message, and the receiver keeps
serving), tokens, retried exports, and pushback from the log (429/503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Broker
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from test_otlp_support import ReceiverThread, outcome, read_log

from schemas.codec import decode_event, encode_event
from schemas.ids import is_uuid7
from streams.otlp.mapping import TraceMemory, event_id, map_request
from streams.otlp.receiver import ReceiverConfig, check_bind, parse_tokens

pytestmark = pytest.mark.integration

PB = {"Content-Type": "application/x-protobuf"}
T0 = 1_764_000_000_000_000_000  # ns
TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def span(
    n: int,
    attrs: dict[str, Any],
    *,
    start: int = 0,
    end: int = 1,
    parent: int = 0,
    error: bool = False,
    trace: bytes = TRACE,
) -> Span:
    """Span #n; start/end in milliseconds after T0."""
    return Span(
        trace_id=trace,
        span_id=n.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=f"span-{n}",
        start_time_unix_nano=T0 + start * 1_000_000,
        end_time_unix_nano=T0 + end * 1_000_000,
        attributes=[kv(k, v) for k, v in attrs.items()],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )


def request(*spans: Span, schema_url: str = "", service: str = "svc") -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", service)]),
                scope_spans=[ScopeSpans(spans=list(spans), schema_url=schema_url)],
            )
        ]
    )


AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "bot"}
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m1"}
TOOL = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}


def agent_run(trace: bytes = TRACE, tool_error: bool = True) -> ExportTraceServiceRequest:
    return request(
        span(1, AGENT, start=0, end=100, trace=trace),
        span(2, CHAT, start=1, end=20, parent=1, trace=trace),
        span(
            3,
            {**TOOL, "gen_ai.tool.call.id": "c1"},
            start=21,
            end=40,
            parent=1,
            error=tool_error,
            trace=trace,
        ),
        span(4, CHAT, start=41, end=90, parent=1, trace=trace),
    )


@pytest.fixture
def receiver(kafka: Broker) -> Iterator[ReceiverThread]:
    rt = ReceiverThread(kafka.bootstrap, ReceiverConfig(http_port=0, grpc_port=0)).start()
    try:
        yield rt
    finally:
        rt.stop()


def post(rt: ReceiverThread, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(rt.http_url, content=body, headers=headers or PB, timeout=30)


def assert_serving(rt: ReceiverThread) -> None:
    """A good export still goes through."""
    r = post(rt, request(span(99, CHAT, trace=b"\x01" * 16)).SerializeToString())
    assert r.status_code == 200, r.text


# --- pure parts ---------------------------------------------------------------------------------


def test_event_ids_are_uuid7_and_deterministic() -> None:
    a = event_id(TRACE, b"\x00" * 7 + b"\x01", "open", 1_764_000_000_000)
    assert is_uuid7(a)
    assert a == event_id(TRACE, b"\x00" * 7 + b"\x01", "open", 1_764_000_000_000)
    assert a != event_id(TRACE, b"\x00" * 7 + b"\x01", "close", 1_764_000_000_000)
    assert a != event_id(TRACE, b"\x00" * 7 + b"\x02", "open", 1_764_000_000_000)
    b = map_request(agent_run(), TraceMemory())
    c = map_request(agent_run(), TraceMemory())
    assert [encode_event(e) for e in b.events] == [encode_event(e) for e in c.events]
    for e in b.events:  # what consumers accept
        assert decode_event(encode_event(e)) == e


def test_tool_span_links_to_the_model_call_of_an_earlier_batch() -> None:
    memory = TraceMemory()
    first = map_request(request(span(2, CHAT, start=1, end=20, parent=1)), memory)
    second = map_request(request(span(3, TOOL, start=21, end=40, parent=1)), memory)
    (thought,) = first.events
    started, _ = second.events
    assert started.causes == (thought.id,)


def test_values_outside_the_contract_are_clamped_or_rejected() -> None:
    """Whatever a span carries, the events it becomes pass the consumers' codec."""
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    req = request(
        span(1, {**CHAT, "gen_ai.usage.input_tokens": 2**40, "llm.cost.total": "1e300"}),
        span(2, {**TOOL, "gen_ai.tool.call.arguments": json.dumps({"a": deep})}, start=2, end=3),
        span(3, {**TOOL, "gen_ai.tool.call.arguments": '{"n": 123456789012345678901234567890}'},
             start=4, end=5),
        span(4, CHAT, start=0, end=(2**64 - 1 - T0) // 1_000_000),  # year 2554
    )  # fmt: skip
    b = map_request(req, TraceMemory())
    assert b.rejected == {"time out of range (events must be before 2106-01-01)": 1}
    for e in b.events:
        assert decode_event(encode_event(e)) == e
    thought = b.events[0]
    assert thought.data.input_tokens == 2**32 - 1 and thought.data.cost_usd == 1e9
    args = [e.data.arguments for e in b.events if e.type == "agent.act.started.v1"]
    assert all(set(a) == {"input"} and isinstance(a["input"], str) for a in args), args


def test_ids_follow_each_span_when_a_span_id_repeats() -> None:
    """Two spans reusing one span id (a faulty exporter): each event id comes from its own
    span's times, and a later link names the span the memory kept (the last one)."""
    memory = TraceMemory()
    sid = (3).to_bytes(8, "big")
    b = map_request(
        request(span(3, TOOL, start=1, end=10), span(3, TOOL, start=20, end=30)), memory
    )
    done = [e for e in b.events if e.type == "agent.act.completed.v2"]
    ms = T0 // 1_000_000
    assert [e.id for e in done] == [event_id(TRACE, sid, "close", ms + x) for x in (10, 30)]
    (thought,) = map_request(request(span(4, CHAT, start=31, end=40)), memory).events
    assert thought.causes == (done[1].id,)


def test_output_messages_of_any_shape_never_stop_the_batch() -> None:
    msgs = [
        {"role": "assistant", "parts": 5, "content": "plain"},
        {"parts": [{"type": "text", "content": "a"}, "x",
                   {"type": "tool_call", "id": "c9", "name": "f", "arguments": {"q": 1}}]},
    ]  # fmt: skip
    b = map_request(
        request(
            span(1, {**CHAT, "gen_ai.output.messages": json.dumps(msgs)}, start=0, end=1),
            span(2, {**TOOL, "gen_ai.tool.call.id": "c9"}, start=2, end=3),
        ),
        TraceMemory(),
    )
    thought, started, _ = b.events
    assert thought.data.text == "plain\na"
    assert started.causes == (thought.id,)


def test_tokens_and_bind_rules() -> None:
    assert parse_tokens("s3cret") == {"s3cret": None}
    assert parse_tokens("acme=abc,globex=def") == {"abc": "acme", "def": "globex"}
    assert parse_tokens("abc==") == {"abc==": None}  # a base64 token is not a tenant
    with pytest.raises(ValueError, match="AGENTSTREAM_OTLP_TOKEN"):
        check_bind(ReceiverConfig(host="0.0.0.0"))
    check_bind(ReceiverConfig(host="0.0.0.0", tokens={"t": None}))
    check_bind(ReceiverConfig(host="::1"))


# --- OTLP/JSON ----------------------------------------------------------------------------------


def test_json_as_the_spec_encodes_it(receiver: ReceiverThread, kafka: Broker) -> None:
    """Hex ids, lowerCamelCase, int64 as strings, enums as integers, unknown fields."""
    trace_hex = "5b8efff798038103d269b633813fc60c"

    def s(span_hex: str, parent: str, name: str, start_ms: int, end_ms: int, attrs: list) -> dict:
        return {
            "traceId": trace_hex,
            "spanId": span_hex,
            "parentSpanId": parent,
            "name": name,
            "kind": 1,
            "startTimeUnixNano": str(T0 + start_ms * 1_000_000),
            "endTimeUnixNano": str(T0 + end_ms * 1_000_000),
            "attributes": attrs,
            "status": {"code": 2} if name == "execute_tool search" else {},
            "someFutureField": {"ignored": True},
        }

    def a(key: str, value: Any) -> dict:
        if isinstance(value, int):
            return {"key": key, "value": {"intValue": str(value)}}
        return {"key": key, "value": {"stringValue": value}}

    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [a("service.name", "json-app")]},
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            s("eee19b7ec3c1b174", "", "invoke_agent", 0, 100,
                              [a("gen_ai.operation.name", "invoke_agent"),
                               a("gen_ai.agent.name", "json-bot")]),
                            s("eee19b7ec3c1b175", "eee19b7ec3c1b174", "chat m1", 1, 20,
                              [a("gen_ai.operation.name", "chat"),
                               a("gen_ai.request.model", "m1"),
                               a("gen_ai.usage.input_tokens", 12)]),
                            s("eee19b7ec3c1b176", "eee19b7ec3c1b174", "execute_tool search",
                              21, 40, [a("gen_ai.operation.name", "execute_tool"),
                                       a("gen_ai.tool.name", "search"),
                                       a("gen_ai.tool.call.arguments", '{"q": "x"}')]),
                            s("eee19b7ec3c1b177", "eee19b7ec3c1b174", "GET /", 41, 42,
                              [a("http.request.method", "GET")]),
                        ],
                    }
                ],
            }
        ]
    }  # fmt: skip
    r = post(receiver, json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    answer = r.json()
    assert answer["partialSuccess"].get("rejectedSpans", "0") in (0, "0")
    assert "skipped 1 spans" in answer["partialSuccess"]["errorMessage"]

    out = outcome(read_log(kafka.bootstrap))
    assert {e.agentid for e in out.events} == {"json-bot"}
    assert {e.runid for e in out.events} == {trace_hex}
    assert [e.type for e in out.events] == [
        "agent.lifecycle.agent_started.v2",
        "agent.lifecycle.run_started.v1",
        "agent.think.thought.v1",
        "agent.act.started.v1",
        "agent.act.completed.v2",
        "agent.lifecycle.run_finished.v1",
    ]
    thought = out.events[2]
    assert thought.data.input_tokens == 12
    assert thought.traceparent == f"00-{trace_hex}-eee19b7ec3c1b175-00"
    assert out.events[3].data.arguments == {"q": "x"}
    assert [v.category.value for v in out.violations] == ["tool_error"]
    assert receiver.receiver.stats.spans_skipped == 1
    assert receiver.receiver.skipped == {"not a GenAI span (internal)": 1}


# --- partial success and bad input --------------------------------------------------------------


def test_partial_success_counts_rejected_and_skipped(receiver: ReceiverThread) -> None:
    req = request(
        span(1, CHAT, start=0, end=5),
        span(2, CHAT, start=9, end=3),  # ends before it starts
        span(3, {"db.system": "postgresql"}, start=0, end=1),
        span(4, {"gen_ai.operation.name": "embeddings"}, start=0, end=1),
    )
    r = post(receiver, req.SerializeToString())
    assert r.status_code == 200, r.text
    resp = ExportTraceServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_spans == 1
    msg = resp.partial_success.error_message
    assert "span ends before it starts: 1" in msg
    assert "not a GenAI span" in msg and "'embeddings' (no event type)" in msg
    stats = receiver.receiver.stats
    assert (stats.spans_mapped, stats.spans_rejected, stats.spans_skipped) == (1, 1, 2)


def _invalid_utf8_body() -> bytes:
    good = request(span(1, {**CHAT, "gen_ai.agent.name": "AAAA"})).SerializeToString()
    return good.replace(b"AAAA", b"A\xff\xfeA")


BAD_INPUTS = [
    ("truncated protobuf", lambda: agent_run().SerializeToString()[:-7], PB, 400,
     "malformed protobuf"),
    ("wrong content type", lambda: b"hello", {"Content-Type": "text/plain"}, 415,
     "unsupported content type"),
    ("invalid UTF-8 in an attribute", _invalid_utf8_body, PB, 400, "malformed protobuf"),
    ("start after end", lambda: request(span(1, CHAT, start=5, end=1)).SerializeToString(), PB,
     400, "span ends before it starts"),
    ("missing trace id", lambda: request(span(1, CHAT, trace=b"")).SerializeToString(), PB, 400,
     "missing or invalid trace id"),
    ("zero span id", lambda: request(span(0, CHAT)).SerializeToString(), PB, 400,
     "missing or invalid span id"),
    ("malformed JSON", lambda: b'{"resourceSpans": [', {"Content-Type": "application/json"}, 400,
     "malformed JSON"),
    ("JSON id not hex", lambda: json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "zz", "spanId": "eee19b7ec3c1b174"}]}]}]}).encode(),
     {"Content-Type": "application/json"}, 400, "is not a hex id"),
    ("unsupported conventions version",
     lambda: request(span(1, CHAT), schema_url="https://opentelemetry.io/schemas/1.99.0")
     .SerializeToString(), PB, 400, "semantic conventions 1.99"),
    ("not gzip", lambda: b"not gzip at all",
     {**PB, "Content-Encoding": "gzip"}, 400, ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "body", "headers", "status", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_4xx_and_the_receiver_keeps_serving(
    receiver: ReceiverThread, case: str, body: Any, headers: dict, status: int, message: str
) -> None:
    r = post(receiver, body(), headers)
    assert r.status_code == status, (case, r.status_code, r.text)
    assert message in r.text, (case, r.text)
    assert_serving(receiver)


def test_oversize_bodies_get_413(kafka: Broker) -> None:
    rt = ReceiverThread(
        kafka.bootstrap, ReceiverConfig(http_port=0, grpc_port=0, max_body_bytes=64 << 10)
    ).start()
    try:
        big = request(*[span(i, {**CHAT, "pad": "x" * 1000}) for i in range(1, 100)])
        raw = big.SerializeToString()
        assert len(raw) > 64 << 10
        r = post(rt, raw)
        assert r.status_code == 413 and "otlp_max_body_bytes" in r.text, r.text
        bomb = gzip.compress(b"\x00" * (1 << 20))  # 1 KiB that inflates to 1 MiB
        assert len(bomb) < 64 << 10
        r = post(rt, bomb, {**PB, "Content-Encoding": "gzip"})
        assert r.status_code == 413, r.text
        assert_serving(rt)
    finally:
        rt.stop()


def test_token_required_and_tenant_from_token(kafka: Broker) -> None:
    rt = ReceiverThread(
        kafka.bootstrap, ReceiverConfig(http_port=0, grpc_port=0, tokens={"s3cret": "acme"})
    ).start()
    try:
        body = request(span(1, CHAT)).SerializeToString()
        assert post(rt, body).status_code == 401
        wrong = post(rt, body, {**PB, "Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "bearer token" in wrong.text
        ok = post(rt, body, {**PB, "Authorization": "Bearer s3cret"})
        assert ok.status_code == 200, ok.text
    finally:
        rt.stop()
    (event,) = read_log(kafka.bootstrap)
    assert event.tenant == "acme"


# --- retries ------------------------------------------------------------------------------------


def test_reexporting_the_same_batch_changes_nothing(kafka: Broker) -> None:
    body = agent_run().SerializeToString()
    rt = ReceiverThread(kafka.bootstrap).start()
    try:
        assert post(rt, body).status_code == 200
        once = read_log(kafka.bootstrap)
        assert post(rt, body).status_code == 200  # the exporter retried
        assert rt.receiver.stats.events_deduplicated == len(once)
        assert len(read_log(kafka.bootstrap)) == len(once)  # nothing written again
    finally:
        rt.stop()
    # a restarted receiver has forgotten what it wrote: the log gets the same events again,
    # with the same ids, and the reducer's read models do not change
    rt = ReceiverThread(kafka.bootstrap).start()
    try:
        assert post(rt, body).status_code == 200
    finally:
        rt.stop()
    twice = read_log(kafka.bootstrap)
    assert len(twice) == 2 * len(once)
    assert sorted(e.id for e in twice) == sorted(2 * [e.id for e in once])
    a, b = outcome(once), outcome(twice)
    assert a.states == b.states
    assert a.violations == b.violations and a.episodes == b.episodes


# --- pushback from the log -------------------------------------------------------------------


def test_full_buffer_gets_429_with_retry_after(kafka: Broker) -> None:
    import signal
    import threading

    rt = ReceiverThread(kafka.bootstrap, buffer_events=8).start()
    broker = kafka.process.proc
    try:
        # a batch that can never fit the buffer is a 413, not an endless 429
        r = post(rt, request(*[span(i, CHAT) for i in range(1, 10)]).SerializeToString())
        assert r.status_code == 413 and "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" in r.text, r.text
        # the log is behind: the broker is paused, so a first export's events stay in flight
        broker.send_signal(signal.SIGSTOP)
        first: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: first.append(post(rt, agent_run().SerializeToString()))
        )
        waiting.start()
        assert rt.receiver is not None
        deadline = time.monotonic() + 20
        while rt.receiver.producer.stats.in_flight < 7:
            assert time.monotonic() < deadline, rt.receiver.producer.stats
            time.sleep(0.01)
        r = post(rt, agent_run(trace=b"\x02" * 16).SerializeToString())  # 7 more > 8 - 7
        assert r.status_code == 429, r.text
        assert r.headers["Retry-After"] == "2"
        assert "buffer" in r.text
        broker.send_signal(signal.SIGCONT)
        waiting.join(30)
        assert first and first[0].status_code == 200, first
        assert_serving(rt)  # and the next batch that fits goes through
    finally:
        broker.send_signal(signal.SIGCONT)
        rt.stop()


def test_broker_down_gets_503_with_retry_after(kafka: Broker) -> None:
    rt = ReceiverThread(kafka.bootstrap, delivery_timeout_ms=1500).start()
    try:
        assert post(rt, request(span(1, CHAT)).SerializeToString()).status_code == 200
        kafka.process.stop()
        r = post(rt, request(span(2, CHAT)).SerializeToString())
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "2"
        health = httpx.get(rt.http_url.replace("/v1/traces", "/healthz"), timeout=5)
        assert health.status_code == 200
        assert health.json()["stats"]["requests_backpressure"] == 1
    finally:
        rt.stop()


def test_grpc_answers_with_status_codes(receiver: ReceiverThread) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

    async def call() -> None:
        async with grpc.aio.insecure_channel(receiver.grpc_endpoint) as channel:
            stub = TraceServiceStub(channel)
            resp = await stub.Export(request(span(1, CHAT), span(2, {"http.route": "/"})))
            assert resp.partial_success.rejected_spans == 0
            assert "skipped 1" in resp.partial_success.error_message
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Export(request(span(3, CHAT, start=5, end=1)))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "ends before it starts" in (err.value.details() or "")

    asyncio.run(call())


# --- the contract extension -----------------------------------------------------------------


def test_agent_spans_carry_instructions_and_tool_definitions() -> None:
    """What GenAI agent spans carry beyond v1 lands in agent_started v2, typed."""
    defs = [
        {"type": "function", "name": "search", "description": "web search",
         "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
        {"type": "function", "description": "no name: left out"},
    ]  # fmt: skip
    instructions = [{"type": "text", "content": "Answer briefly."}]
    attrs = {
        **AGENT,
        "gen_ai.tool.definitions": json.dumps(defs),
        "gen_ai.system_instructions": json.dumps(instructions),
        "gen_ai.request.model": "m1",
    }
    b = map_request(request(span(1, attrs, start=0, end=10)), TraceMemory())
    agent_started, run_started, _ = b.events
    assert agent_started.type == "agent.lifecycle.agent_started.v2"
    assert run_started.causes == (agent_started.id,)
    data = agent_started.data
    assert (data.name, data.model, data.instructions) == ("bot", "m1", "Answer briefly.")
    assert [(t.name, t.description) for t in data.tools] == [("search", "web search")]
    assert data.tools[0].parameters == defs[0]["parameters"]
    raw = encode_event(agent_started)
    assert b'"gen_ai.tool.definitions"' in raw and b'"gen_ai.system_instructions"' in raw
    assert decode_event(raw) == agent_started


def test_agent_started_v1_is_read_as_v2_and_both_schemas_are_published() -> None:
    import jsonschema

    from schemas.jsonschema import JSON_DIR

    v1 = {
        "specversion": "1.0",
        "type": "agent.lifecycle.agent_started.v1",
        "id": "019ab697-efcf-7d06-b603-7b7e36d28f81",
        "source": "/agents/a",
        "time": "2025-11-24T12:00:00Z",
        "agentid": "a",
        "data": {"name": "a", "role": "coder", "gen_ai.request.model": "m"},
    }
    event = decode_event(json.dumps(v1).encode())
    assert event.type == "agent.lifecycle.agent_started.v2"
    assert (event.data.name, event.data.role, event.data.model) == ("a", "coder", "m")
    assert event.data.tools == [] and event.data.instructions is None
    old = json.loads((JSON_DIR / "agent.lifecycle.agent_started.v1.data.json").read_text())
    jsonschema.validate(v1["data"], old)
    new = json.loads((JSON_DIR / "agent.lifecycle.agent_started.v2.json").read_text())
    jsonschema.validate(json.loads(encode_event(event)), new)
    with pytest.raises(jsonschema.ValidationError):  # v1 payloads cannot carry v2 fields
        jsonschema.validate({**v1["data"], "gen_ai.tool.definitions": []}, old)


def test_a_span_with_an_event_over_the_size_limit_is_rejected_whole(
    receiver: ReceiverThread, kafka: Broker
) -> None:
    huge = {**TOOL, "gen_ai.tool.call.id": "big", "gen_ai.tool.call.result": "x" * (1 << 20)}
    req = request(span(1, CHAT, start=0, end=5), span(2, huge, start=6, end=9))
    r = post(receiver, req.SerializeToString())
    assert r.status_code == 200, r.text
    resp = ExportTraceServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_spans == 1
    assert "over the size limit" in resp.partial_success.error_message
    # neither half of the tool call is in the log: no orphan start
    assert [e.type for e in read_log(kafka.bootstrap)] == ["agent.think.thought.v1"]


def test_graph_why_of_the_failed_tool_call_reaches_the_model_call(kafka: Broker, falkordb) -> None:
    """The graph projection on FalkorDB over what the receiver wrote, twice (a retried export
    after a receiver restart): `why` of the failed completion walks back to the model call
    that chose the tool, and the duplicates change no count."""
    from projections.graph import queries
    from projections.graph.falkordb_store import FalkorDBStore
    from projections.graph.projection import project

    body = agent_run().SerializeToString()
    for _ in range(2):
        rt = ReceiverThread(kafka.bootstrap).start()
        try:
            assert post(rt, body).status_code == 200
        finally:
            rt.stop()
    events = read_log(kafka.bootstrap)
    unique = {e.id: e for e in events}
    assert len(events) == 2 * len(unique)
    store = FalkorDBStore(falkordb.host, falkordb.port, "otlp")
    store.setup()
    project(store, events[: len(events) // 2])
    before = store.counts()
    project(store, events)  # everything again, duplicates included
    assert store.counts() == before
    assert before.nodes["Event"] == len(unique)  # no placeholder: every cause is an event

    failed = next(e for e in unique.values() if e.type == "agent.act.completed.v2")
    first_call = min(
        (e for e in unique.values() if e.type == "agent.think.thought.v1"), key=lambda e: e.time
    )
    result = queries.why(store, failed.id, depth=20)
    ancestors = [n.id for n in result.ancestors()]
    assert first_call.id in ancestors
    assert result.distance[first_call.id] == 2  # completion <- start <- the model call


def test_analytics_count_a_retried_export_once(kafka: Broker, tmp_path) -> None:
    """The analytics projection (chDB) over the log of an export retried after a receiver
    restart: every event counted once, in the raw table and in every rollup."""
    from collections import Counter

    from projections.analytics import schema
    from projections.analytics.projection import AnalyticsProjection
    from projections.runner import Record
    from schemas.topics import EVENTS

    body = agent_run().SerializeToString()
    for _ in range(2):
        rt = ReceiverThread(kafka.bootstrap).start()
        try:
            assert post(rt, body).status_code == 200
        finally:
            rt.stop()
    events = read_log(kafka.bootstrap)
    unique = {e.id: e for e in events}
    assert len(events) == 2 * len(unique)
    projection = AnalyticsProjection(f"chdb://{tmp_path / 'ch'}")
    projection.setup()
    try:
        records = [Record(EVENTS, 0, i, e.agentid.encode(), e, 0) for i, e in enumerate(events)]
        projection.apply(records[: len(unique)])
        projection.apply(records)  # the retry's copies, and the first copies again
        store = projection.store
        by_type = dict(store.rows("SELECT type, count() FROM events GROUP BY type"))
        assert by_type == dict(Counter(e.type for e in unique.values()))
        assert projection.verify_rollups() == {r.table: [] for r in schema.ROLLUPS}
    finally:
        projection.close()
