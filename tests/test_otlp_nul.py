"""U+0000 in a span's texts: the events carry U+FFFD instead, the span is counted, nothing is
dead-lettered.

The contract refuses U+0000 in any string (``schemas.codec``: the graph store holds C
strings), so an event carrying one would be dead-lettered by every consumer: half of an
agent's run missing from every read model. The receiver keeps the span, replaces each
U+0000 by U+FFFD, and says so in the export's ``partial_success`` (``rejected_spans`` stays
0: nothing was refused) and in its stats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Broker
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from test_otlp_support import ReceiverThread, read_log

from schemas.codec import EventCodec, encode_event
from streams.otlp.mapping import TraceMemory, map_request
from streams.otlp.receiver import ReceiverConfig

T0 = 1_764_000_000_000_000_000
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m1"}
TOOL = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, AnyValue):
        return KeyValue(key=key, value=value)
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(n: int, attrs: dict[str, Any], *, start: int, end: int, **extra: Any) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=n.to_bytes(8, "big"),
        start_time_unix_nano=T0 + start * 1_000_000,
        end_time_unix_nano=T0 + end * 1_000_000,
        attributes=[kv(k, v) for k, v in attrs.items()],
        **extra,
    )


def request(*spans: Span, service: str = "svc") -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", service)]),
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    )


def nul_request() -> ExportTraceServiceRequest:
    """Five spans with a U+0000 somewhere in their texts, one without."""
    kvlist = AnyValue(
        kvlist_value=KeyValueList(
            values=[KeyValue(key="k\x00ey", value=AnyValue(string_value="v\x00"))]
        )
    )
    return request(
        # a literal NUL in an attribute string (the tool's result)
        span(1, {**TOOL, "gen_ai.tool.call.result": "row\x00row"}, start=0, end=1),
        # JSON-escaped NULs in the output messages and in a tool's arguments (key and value);
        # an escaped backslash before "u0000" is text, not a NUL, and stays as it is
        span(
            2,
            {
                **CHAT,
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": "a\x00b \\u0000"}],
                        }
                    ]
                ),
            },
            start=2,
            end=3,
        ),
        span(
            3,
            {**TOOL, "gen_ai.tool.call.arguments": json.dumps({"q\x00": "x\x00"})},
            start=4,
            end=5,
        ),
        # the span name (the tool name when no attribute names it), the status message
        span(
            4,
            {"gen_ai.operation.name": "execute_tool"},
            start=6,
            end=7,
            name="lo\x00ok",
            status=Status(code=Status.STATUS_CODE_ERROR, message="fail\x00ed"),
        ),
        # a key-value list attribute as the tool's arguments
        span(5, {**TOOL, "gen_ai.tool.call.arguments": kvlist}, start=8, end=9),
        span(6, CHAT, start=10, end=11),  # no NUL: not counted
        service="svc",
    )


def test_nul_is_replaced_and_the_spans_counted() -> None:
    batch = map_request(nul_request(), TraceMemory())
    assert batch.rejected_count == 0 and batch.mapped == 6
    assert batch.altered == 5
    assert "by U+FFFD in the texts of 5 spans" in batch.message()
    codec = EventCodec()
    for event in batch.events:  # what every consumer accepts: nothing to dead-letter
        assert codec.decode(encode_event(event)) == event
    by_type: dict[str, list[Any]] = {}
    for event in batch.events:
        by_type.setdefault(event.type, []).append(event.data)
    done = by_type["agent.act.completed.v2"]
    started = by_type["agent.act.started.v1"]
    thoughts = by_type["agent.think.thought.v1"]
    assert done[0].result == "row\ufffdrow"
    assert thoughts[0].text == "a\ufffdb \\u0000"  # the escaped backslash stays text
    assert started[1].arguments == {"q\ufffd": "x\ufffd"}
    assert started[2].tool == "lo\ufffdok" and done[2].result == "fail\ufffded"
    assert started[3].arguments == {"k\ufffdey": "v\ufffd"}


def test_nul_in_the_resource_counts_every_span_of_it() -> None:
    batch = map_request(request(span(1, CHAT, start=0, end=1), service="s\x00vc"), TraceMemory())
    assert batch.altered == 1
    (thought,) = batch.events
    assert thought.agentid == "s\ufffdvc" and thought.source == "/otlp/s\ufffdvc/unknown-scope"
    EventCodec().decode(encode_event(thought))


@pytest.fixture
def receiver(kafka: Broker) -> Iterator[ReceiverThread]:
    rt = ReceiverThread(kafka.bootstrap, ReceiverConfig(http_port=0, grpc_port=0), grpc=False)
    try:
        yield rt.start()
    finally:
        rt.stop()


@pytest.mark.integration
def test_receiver_answers_with_the_count_and_writes_decodable_events(
    receiver: ReceiverThread, kafka: Broker
) -> None:
    r = httpx.post(
        receiver.http_url,
        content=nul_request().SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    resp = ExportTraceServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_spans == 0
    assert "U+0000" in resp.partial_success.error_message
    assert "5 spans" in resp.partial_success.error_message
    assert receiver.receiver is not None
    stats = receiver.receiver.stats
    assert (stats.spans_altered, stats.spans_mapped, stats.events_published) == (5, 6, 10)
    events = read_log(kafka.bootstrap)  # decoded by the processors' codec
    assert len(events) == 10
    assert any(getattr(e.data, "result", None) == "row\ufffdrow" for e in events)


def test_only_texts_that_reach_an_event_count() -> None:
    """A NUL in an attribute the mapping never reads (a prompt, a host name) alters nothing;
    a NUL in one scope's name counts that scope's spans only."""
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

    req = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", "svc"), kv("host.name", "h\x00")]),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name="sc\x00ope"),
                        spans=[span(1, CHAT, start=0, end=1)],
                    ),
                    ScopeSpans(
                        spans=[span(2, {**CHAT, "gen_ai.input.messages": "p\x00"}, start=2, end=3)]
                    ),
                ],
            )
        ]
    )
    batch = map_request(req, TraceMemory())
    assert batch.mapped == 2 and batch.altered == 1
    first, second = batch.events
    assert first.source == "/otlp/svc/sc\ufffdope" and second.source == "/otlp/svc/unknown-scope"
