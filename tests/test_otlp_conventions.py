"""The three conventions end to end: real instrumentations and real OTLP exporters send a
weather agent's run (two model calls, one failing tool call) to the receiver on a real
Tansu broker; the events read back from the log must decode, fold into the right agent
state, violation and episode, and the failed tool call's causes must reach the model call
that chose it.

- OpenTelemetry GenAI: ``opentelemetry-instrumentation-openai-v2`` around the real
  ``openai`` client, agent and tool spans as the GenAI conventions spell them; OTLP/gRPC.
- OpenInference: ``openinference-instrumentation-openai`` around the same client, agent and
  tool spans through OpenInference's own ``OITracer``; OTLP/HTTP protobuf.
- OpenLLMetry: attribute names from its package ``opentelemetry-semantic-conventions-ai``;
  OTLP/HTTP protobuf, gzip.

The model is a small OpenAI-compatible server on loopback (no network).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import Broker
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Status, StatusCode
from test_otlp_support import (
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    WEATHER_TOOL,
    FakeOpenAI,
    ReceiverThread,
    check_agent_run,
    outcome,
    read_log,
)

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
QUESTION = "What is the weather in Atlantis?"


@pytest.fixture
def receiver(kafka: Broker) -> Iterator[ReceiverThread]:
    rt = ReceiverThread(kafka.bootstrap).start()
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def provider(exporter: SpanExporter) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({"service.name": "weather-service"}))
    tp.add_span_processor(BatchSpanProcessor(exporter))
    return tp


def flush(tp: TracerProvider) -> None:
    assert tp.force_flush(30_000), "the exporter did not get its spans acknowledged"
    tp.shutdown()


def fail_tool(span: Any) -> str:
    """What the tool does: its service is down."""
    try:
        raise ConnectionError("weather service unreachable")
    except ConnectionError as err:
        span.record_exception(err)
        span.set_status(Status(StatusCode.ERROR, str(err)))
        return f"error: {err}"


def tool_followup(first: Any, result: str) -> list[dict[str, Any]]:
    call = first.choices[0].message.tool_calls[0]
    return [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]


# --- OpenTelemetry GenAI ---------------------------------------------------------------------


def test_genai_openai_v2_over_grpc(
    receiver: ReceiverThread, fake_openai: FakeOpenAI, kafka: Broker, monkeypatch
) -> None:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    # the latest GenAI conventions, message content on the span (instrumentation settings)
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    tp = provider(GrpcSpanExporter(endpoint=receiver.grpc_endpoint, insecure=True))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tp)
    try:
        client = openai.OpenAI(base_url=fake_openai.base_url, api_key="test-key")
        tracer = tp.get_tracer("weather-agent")
        agent_attrs = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "weather-bot",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": MODEL,
            # what the conventions' agent spans carry beyond v1 (agent_started v2)
            "gen_ai.tool.definitions": json.dumps(
                [{"type": "function", **WEATHER_TOOL["function"]}]
            ),
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
        }
        with tracer.start_as_current_span("invoke_agent weather-bot", attributes=agent_attrs):
            messages: list[Any] = [{"role": "user", "content": QUESTION}]
            first = client.chat.completions.create(
                model=MODEL, messages=messages, tools=[WEATHER_TOOL]
            )
            call = first.choices[0].message.tool_calls[0]
            tool_attrs = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": call.function.name,
                "gen_ai.tool.call.id": call.id,
                "gen_ai.tool.call.arguments": call.function.arguments,
            }
            with tracer.start_as_current_span(
                f"execute_tool {call.function.name}", attributes=tool_attrs
            ) as span:
                result = fail_tool(span)
                span.set_attribute("error.type", "ConnectionError")
            client.chat.completions.create(
                model=MODEL, messages=tool_followup(first, result), tools=[WEATHER_TOOL]
            )
    finally:
        instrumentor.uninstrument()
    flush(tp)
    assert len(fake_openai.requests) == 2

    out = outcome(read_log(kafka.bootstrap))
    check_agent_run(out, "weather-bot", MODEL)
    started = next(e for e in out.events if e.type == "agent.act.started.v1")
    # the model call named this call id in its output: that is the link, not timing
    assert started.data.call_id == "call_weather_1"
    defined = next(e for e in out.events if e.type == "agent.lifecycle.agent_started.v2")
    assert defined.data.instructions == "Be brief."
    assert defined.data.tools[0].parameters == WEATHER_TOOL["function"]["parameters"]
    stats = receiver.receiver.stats
    assert stats.spans_mapped == 4 and stats.spans_rejected == 0


# --- OpenInference ---------------------------------------------------------------------------


def test_openinference_openai_over_http_protobuf(
    receiver: ReceiverThread, fake_openai: FakeOpenAI, kafka: Broker
) -> None:
    from openinference.instrumentation import OITracer, TraceConfig
    from openinference.instrumentation.openai import OpenAIInstrumentor

    tp = provider(HttpSpanExporter(endpoint=receiver.http_url))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tp)
    try:
        client = openai.OpenAI(base_url=fake_openai.base_url, api_key="test-key")
        tracer = OITracer(tp.get_tracer("weather-agent"), config=TraceConfig())
        with tracer.start_as_current_span("weather-bot", openinference_span_kind="agent") as run:
            run.set_attribute("agent.name", "weather-bot")
            run.set_input(QUESTION)
            first = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER_TOOL]
            )
            call = first.choices[0].message.tool_calls[0]
            with tracer.start_as_current_span(
                "get_weather", openinference_span_kind="tool"
            ) as span:
                span.set_tool(
                    name=call.function.name,
                    description="Current weather for a city",
                    parameters=WEATHER_TOOL["function"]["parameters"],
                )
                span.set_input(call.function.arguments, mime_type="application/json")
                result = fail_tool(span)
            final = client.chat.completions.create(
                model=MODEL, messages=tool_followup(first, result), tools=[WEATHER_TOOL]
            )
            run.set_output(final.choices[0].message.content)
            run.set_status(Status(StatusCode.OK))
    finally:
        instrumentor.uninstrument()
    flush(tp)

    out = outcome(read_log(kafka.bootstrap))
    check_agent_run(out, "weather-bot", MODEL)
    (run_started,) = [e for e in out.events if e.type == "agent.lifecycle.run_started.v1"]
    assert run_started.data.goal == QUESTION


# --- OpenLLMetry -----------------------------------------------------------------------------


def test_openllmetry_attributes_over_http_gzip(
    receiver: ReceiverThread, fake_openai: FakeOpenAI, kafka: Broker
) -> None:
    from opentelemetry.semconv_ai import SpanAttributes as SA
    from opentelemetry.semconv_ai import TraceloopSpanKindValues as K

    tp = provider(HttpSpanExporter(endpoint=receiver.http_url, compression=Compression.Gzip))
    tracer = tp.get_tracer("traceloop.tracer")
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="test-key")

    def llm_call(messages: list[dict[str, Any]]) -> Any:
        """A model call spelled as OpenLLMetry's instrumentations spell it."""
        with tracer.start_as_current_span("openai.chat") as span:
            span.set_attribute(SA.LLM_REQUEST_TYPE, "chat")
            span.set_attribute(SA.LLM_SYSTEM, "openai")
            span.set_attribute(SA.LLM_REQUEST_MODEL, MODEL)
            fn = WEATHER_TOOL["function"]
            span.set_attribute(f"{SA.LLM_REQUEST_FUNCTIONS}.0.name", fn["name"])
            span.set_attribute(f"{SA.LLM_REQUEST_FUNCTIONS}.0.description", fn["description"])
            span.set_attribute(
                f"{SA.LLM_REQUEST_FUNCTIONS}.0.parameters", json.dumps(fn["parameters"])
            )
            for i, m in enumerate(messages):
                span.set_attribute(f"{SA.LLM_PROMPTS}.{i}.role", m["role"])
                span.set_attribute(f"{SA.LLM_PROMPTS}.{i}.content", str(m.get("content") or ""))
            resp = client.chat.completions.create(
                model=MODEL, messages=messages, tools=[WEATHER_TOOL]
            )
            msg = resp.choices[0].message
            span.set_attribute(SA.LLM_RESPONSE_MODEL, resp.model)
            span.set_attribute(SA.LLM_USAGE_PROMPT_TOKENS, resp.usage.prompt_tokens)
            span.set_attribute(SA.LLM_USAGE_COMPLETION_TOKENS, resp.usage.completion_tokens)
            span.set_attribute(f"{SA.LLM_COMPLETIONS}.0.role", "assistant")
            if msg.content:
                span.set_attribute(f"{SA.LLM_COMPLETIONS}.0.content", msg.content)
            for j, tc in enumerate(msg.tool_calls or ()):
                prefix = f"{SA.LLM_COMPLETIONS}.0.tool_calls.{j}"
                span.set_attribute(f"{prefix}.id", tc.id)
                span.set_attribute(f"{prefix}.name", tc.function.name)
                span.set_attribute(f"{prefix}.arguments", tc.function.arguments)
            return resp

    with tracer.start_as_current_span("weather.workflow") as wf:
        wf.set_attribute(SA.TRACELOOP_SPAN_KIND, K.WORKFLOW.value)
        wf.set_attribute(SA.TRACELOOP_WORKFLOW_NAME, "weather")
        with tracer.start_as_current_span("weather-bot.agent") as agent:
            agent.set_attribute(SA.TRACELOOP_SPAN_KIND, K.AGENT.value)
            agent.set_attribute(SA.TRACELOOP_ENTITY_NAME, "weather-bot")
            agent.set_attribute(SA.TRACELOOP_ENTITY_INPUT, json.dumps({"question": QUESTION}))
            first = llm_call([{"role": "user", "content": QUESTION}])
            call = first.choices[0].message.tool_calls[0]
            with tracer.start_as_current_span("get_weather.tool") as span:
                span.set_attribute(SA.TRACELOOP_SPAN_KIND, K.TOOL.value)
                span.set_attribute(SA.TRACELOOP_ENTITY_NAME, "get_weather")
                span.set_attribute(SA.TRACELOOP_ENTITY_INPUT, call.function.arguments)
                result = fail_tool(span)
            llm_call(tool_followup(first, result))
    flush(tp)

    events = read_log(kafka.bootstrap)
    # the workflow is the outer run, under its workflow name; the agent runs under its own
    workflow = [e for e in events if e.agentid == "weather"]
    assert [e.type for e in workflow] == [
        "agent.lifecycle.run_started.v1",
        "agent.lifecycle.run_finished.v1",
    ]
    out = outcome([e for e in events if e.agentid == "weather-bot"])
    check_agent_run(out, "weather-bot", MODEL)
    thought = next(e for e in out.events if e.type == "agent.think.thought.v1")
    assert thought.data.input_tokens == PROMPT_TOKENS
    assert thought.data.output_tokens == COMPLETION_TOKENS
    assert thought.data.provider == "openai"
