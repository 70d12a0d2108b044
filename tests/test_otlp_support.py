"""Test support for the OTLP receiver (no tests here): the receiver in its own thread, a fake
OpenAI server, reading the log back, and the checks every convention must pass.

Why a thread: OpenTelemetry exporters are blocking clients, so the receiver (an asyncio
server) must not share the test's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from schemas import envelope as ev
from schemas.derived import Episode, Violation
from schemas.state import AgentState
from streams.log_reader import KafkaLogSource, collect_events
from streams.otlp.receiver import OtlpReceiver, ReceiverConfig
from streams.producer import EventProducer
from streams.reducer import fold

_T = TypeVar("_T")


class ReceiverThread:
    """An :class:`OtlpReceiver` with its own producer and event loop, on free ports."""

    def __init__(
        self,
        bootstrap: str,
        config: ReceiverConfig | None = None,
        grpc: bool = True,
        **producer_kwargs: Any,
    ) -> None:
        self.bootstrap = bootstrap
        self.config = config or ReceiverConfig(http_port=0, grpc_port=0)
        self.grpc = grpc
        self.producer_kwargs = {"delivery_timeout_ms": 5000, **producer_kwargs}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.receiver: OtlpReceiver | None = None

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 60) -> _T:
        fut: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def start(self) -> ReceiverThread:
        self.thread.start()

        async def build() -> OtlpReceiver:
            producer = EventProducer(self.bootstrap, **self.producer_kwargs)
            receiver = OtlpReceiver(producer, self.config)
            await receiver.start()
            if self.grpc:
                await receiver.start_grpc_on_free_port()
            deadline = asyncio.get_running_loop().time() + 30
            while not receiver.ready[0]:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"receiver not ready: {receiver.ready[1]}")
                await asyncio.sleep(0.02)
            return receiver

        self.receiver = self.run(build())
        return self

    @property
    def http_url(self) -> str:
        assert self.receiver is not None
        return f"http://127.0.0.1:{self.receiver.http_port}/v1/traces"

    @property
    def grpc_endpoint(self) -> str:
        assert self.receiver is not None
        return f"127.0.0.1:{self.receiver.grpc_port}"

    def stop(self) -> None:
        async def down() -> None:
            if self.receiver is not None:
                await self.receiver.stop()
                # a test that stopped the broker expects the close to report undelivered
                with contextlib.suppress(Exception):
                    await self.receiver.producer.close()

        try:
            self.run(down())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


# --- a small OpenAI-compatible server ------------------------------------------------------

TOOL_CALL_ID = "call_weather_1"
PROMPT_TOKENS, COMPLETION_TOKENS = 41, 9
FINAL_ANSWER = "I could not reach the weather service for Atlantis."


class FakeOpenAI:
    """``POST /v1/chat/completions``: first asks for ``get_weather``; once a tool result is in
    the conversation, answers in text. Records the requests it got."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                answered = any(m.get("role") == "tool" for m in body.get("messages", []))
                if answered:
                    message: dict[str, Any] = {"role": "assistant", "content": FINAL_ANSWER}
                    finish = "stop"
                else:
                    message = {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": TOOL_CALL_ID,
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": json.dumps({"city": "Atlantis"}),
                                },
                            }
                        ],
                    }
                    finish = "tool_calls"
                out = json.dumps(
                    {
                        "id": f"chatcmpl-{len(outer.requests)}",
                        "object": "chat.completion",
                        "created": 1_760_000_000,
                        "model": body.get("model", "gpt-4o-mini"),
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": {
                            "prompt_tokens": PROMPT_TOKENS,
                            "completion_tokens": COMPLETION_TOKENS,
                            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# --- reading back and checking ---------------------------------------------------------------


def read_log(bootstrap: str) -> list[ev.Event]:
    """Every event on agent-events (strictly decoded by the same codec as the processors)."""
    return asyncio.run(collect_events(KafkaLogSource(bootstrap, idle_timeout_s=5)))


@dataclass
class Outcome:
    events: list[ev.Event]
    states: dict[str, AgentState]
    violations: list[Violation]
    episodes: list[Episode]

    @property
    def by_id(self) -> dict[str, ev.Event]:
        return {e.id: e for e in self.events}

    def of_type(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


def outcome(events: list[ev.Event]) -> Outcome:
    """Run the processor's reducer over the events, as the worker would."""
    states, derived = fold(events)
    return Outcome(
        events,
        states,
        [d for d in derived if isinstance(d, Violation)],
        [d for d in derived if isinstance(d, Episode)],
    )


def why(events_by_id: dict[str, ev.Event], start: str) -> list[ev.Event]:
    """Every event reachable from ``start`` through ``causes`` (breadth first)."""
    seen: list[ev.Event] = []
    frontier = [start]
    visited: set[str] = set()
    while frontier:
        nxt = []
        for eid in frontier:
            if eid in visited or eid not in events_by_id:
                continue
            visited.add(eid)
            e = events_by_id[eid]
            seen.append(e)
            nxt.extend(e.causes)
        frontier = nxt
    return seen


def check_agent_run(out: Outcome, agent: str, model: str) -> None:
    """The weather agent's run, whatever convention carried it: two model calls, one failed
    tool call, the run finished; state, violation, episode and the why-chain are right."""
    assert {e.agentid for e in out.events} == {agent}, {e.agentid for e in out.events}
    types = [e.type for e in out.events]
    assert types.count("agent.think.thought.v1") == 2, types
    assert types.count("agent.act.started.v1") == 1, types
    assert types.count("agent.act.completed.v2") == 1, types
    assert types.count("agent.lifecycle.run_started.v1") == 1, types
    assert types.count("agent.lifecycle.run_finished.v1") == 1, types
    (defined,) = [e for e in out.events if e.type == "agent.lifecycle.agent_started.v2"]
    assert defined.data.name == agent
    assert [t.name for t in defined.data.tools] == ["get_weather"], defined.data.tools
    runs = {e.runid for e in out.events}
    assert len(runs) == 1 and None not in runs
    thoughts = sorted(out.of_type(ev.ThoughtEvent), key=lambda e: e.time)
    for t in thoughts:
        assert t.data.model == model
        assert t.data.input_tokens == PROMPT_TOKENS
        assert t.data.output_tokens == COMPLETION_TOKENS
        assert t.data.latency_ms > 0
        assert t.traceparent is not None
    assert FINAL_ANSWER in thoughts[1].data.text

    (started,) = out.of_type(ev.ActionStartedEvent)
    (done,) = out.of_type(ev.ActionCompletedEvent)
    assert started.data.tool == done.data.tool == "get_weather"
    assert started.data.arguments == {"city": "Atlantis"}
    assert done.data.status == "error"
    assert done.data.error_type == "ConnectionError"
    assert done.data.duration_ms > 0
    assert done.data.call_id == started.data.call_id
    assert started.time <= done.time
    # spans: traceparent of each event names its own span in the trace of the run
    trace_ids = {e.traceparent.split("-")[1] for e in out.events if e.traceparent}
    assert len(trace_ids) == 1

    state = out.states[agent]
    assert state.world.actions_failed == 1 and state.world.actions_ok == 0
    assert state.tools["get_weather"].error == 1
    assert state.world.input_tokens == 2 * PROMPT_TOKENS
    assert state.world.output_tokens == 2 * COMPLETION_TOKENS
    assert state.model == model
    assert state.name == agent
    run = state.runs[next(iter(runs))]
    assert run.status == "succeeded"
    assert not state.open_actions

    (violation,) = out.violations
    assert violation.category.value == "tool_error"
    assert violation.tool == "get_weather"
    assert violation.event_ids == (started.id, done.id)
    (episode,) = out.episodes
    assert episode.outcome == "failure" and episode.tool == "get_weather"
    # the situation of the failed action is the model call that chose it
    assert episode.event_ids[0] == thoughts[0].id

    chain = why(out.by_id, done.id)
    assert started in chain and thoughts[0] in chain, [e.type for e in chain]
    assert thoughts[1] not in chain  # the later call did not lead to the failure
