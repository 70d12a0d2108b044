"""Deterministic sample events for the analytics tests and benchmark.

Not the simulator (streams/ owns that): a small, seedable generator whose exact counts per
type and per agent are easy to compute, so tests can assert the store holds exactly them.
Each agent runs runs of: run_started, then cycles of thought -> decision -> action started ->
action completed (some fail), sometimes a lesson, then run_finished (failed when the run's
last action failed).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas import payloads as p
from schemas.envelope import Event, new_event
from schemas.ids import Uuid7Generator

TOOLS = ("search", "fetch_url", "run_python", "sql_query", "send_email", "read_file")
MODELS = ("gpt-4o", "claude-sonnet", "llama-3-70b")


@dataclass
class SampleCounts:
    """What a generator produced, to compare with what the store holds."""

    by_type: Counter[str] = field(default_factory=Counter)
    by_agent: Counter[str] = field(default_factory=Counter)
    failed_actions: int = 0
    runs: int = 0
    failed_runs: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_type.values())


def sample_events(
    n: int,
    agents: int = 8,
    seed: int = 7,
    start: datetime = datetime(2025, 1, 6, 9, 0, tzinfo=UTC),
    step_ms: int = 250,
    tenant: str = "default",
    counts: SampleCounts | None = None,
) -> Iterator[Event]:
    """Exactly ``n`` events over ``agents`` agents, interleaved, one every ``step_ms``."""
    rng = random.Random(seed)
    ids = Uuid7Generator(seed)
    c = counts if counts is not None else SampleCounts()
    names = [f"agent-{i:03d}" for i in range(agents)]
    plans: dict[str, Iterator[tuple[p.Payload, str]]] = {}
    for i in range(n):
        agent = names[i % agents]
        at = start + timedelta(milliseconds=i * step_ms)
        if agent not in plans:
            plans[agent] = _agent_script(agent, rng, c)
        payload, run_id = next(plans[agent])
        event = new_event(
            payload,
            id=ids.new(int(at.timestamp() * 1000)),
            time=at,
            agentid=agent,
            runid=run_id,
            tenant=tenant,
        )
        c.by_type[event.type] += 1
        c.by_agent[agent] += 1
        if isinstance(payload, p.Thought):
            c.input_tokens += payload.input_tokens
            c.output_tokens += payload.output_tokens
        yield event


def _agent_script(
    agent: str, rng: random.Random, c: SampleCounts
) -> Iterator[tuple[p.Payload, str]]:
    run_no = 0
    while True:
        run_no += 1
        run_id = f"{agent}-run-{run_no}"
        c.runs += 1
        yield p.RunStarted(goal=f"task {run_no} of {agent}"), run_id
        last_failed = False
        for step in range(rng.randint(2, 6)):
            tool = rng.choice(TOOLS)
            model = rng.choice(MODELS)
            tokens_in, tokens_out = rng.randint(50, 2000), rng.randint(10, 500)
            yield (
                p.Thought(
                    text=f"step {step}: I should use {tool}",
                    model=model,
                    input_tokens=tokens_in,
                    output_tokens=tokens_out,
                    latency_ms=round(rng.uniform(100, 3000), 3),
                    cost_usd=round((tokens_in * 2.5 + tokens_out * 10) / 1e6, 9),
                ),
                run_id,
            )
            yield p.Decision(chosen=tool, alternatives=["wait"], confidence=0.8), run_id
            call_id = f"{run_id}-call-{step}"
            yield p.ActionStarted(call_id=call_id, tool=tool, expected="ok"), run_id
            failed = rng.random() < 0.15
            last_failed = failed
            if failed:
                c.failed_actions += 1
            yield (
                p.ActionCompleted(
                    call_id=call_id,
                    tool=tool,
                    status="error" if failed else "ok",
                    result="timeout" if failed else "done",
                    error_type="TimeoutError" if failed else None,
                    duration_ms=round(rng.uniform(5, 800 if not failed else 5000), 3),
                ),
                run_id,
            )
            if failed and rng.random() < 0.5:
                yield (
                    p.Lesson(
                        situation=f"{tool} failed",
                        action=tool,
                        outcome="error",
                        insight=f"retry {tool} with a longer timeout",
                    ),
                    run_id,
                )
        if last_failed:
            c.failed_runs += 1
        yield p.RunFinished(status="failed" if last_failed else "succeeded"), run_id
