"""The analyst's exam: a seeded team workload through the real pipeline (Tansu -> processor
-> analytics projection on chDB), answered through the named queries, must equal a ground
truth computed here from a raw dump of ``agent-events`` read with an independent client
(confluent-kafka, by the recipe in docs/analytics.md) and parsed as plain JSON.

The workload keeps the traps that made an analyst answer wrongly before (issue 15): team
runs where every member reports ``run_finished`` (one run, several reports), runs whose
members stay silent, members whose report contradicts the owner's later one, and
completions that are ``ok`` but contradict their start's ``expected`` (mismatches).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from projections.analytics.projection import AnalyticsProjection  # noqa: E402
from projections.analytics.queries import NAMED_QUERIES  # noqa: E402
from projections.runner import ProjectionRunner, RunnerConfig, wait_until  # noqa: E402
from schemas import payloads as p  # noqa: E402
from schemas.envelope import Event  # noqa: E402
from schemas.topics import EVENTS  # noqa: E402
from streams.processor import DEFAULT_GROUP, build_app, processor_progress  # noqa: E402
from streams.producer import EventProducer  # noqa: E402
from streams.simulator import SimulationConfig, generate  # noqa: E402
from streams.state_reader import read_states  # noqa: E402

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parent.parent / "docs"
RANK = {"succeeded": 1, "cancelled": 2, "failed": 3}
QUANTILE_LOW_BOUND = 2**-7  # docs/analytics.md, "Quantiles and their error bound"


# --- the workload -----------------------------------------------------------------------------


def workload() -> list[Event]:
    """60 team runs of 8 agents; every 5th run's members stay silent at the end, every 7th
    has a member whose (earlier) report contradicts the owner's final one."""
    events = list(generate(SimulationConfig(agents=8, runs=60, seed=15)))
    out: list[Event] = []
    flipped: set[str] = set()
    for e in events:
        if e.type.startswith("agent.lifecycle.run_finished.") and not e.agentid.startswith(
            "planner-"
        ):
            index = int(e.runid.rsplit("-", 1)[1])  # type: ignore[union-attr]
            if index % 5 == 1:
                continue  # this member never says the run finished
            if index % 7 == 2 and e.runid not in flipped:
                flipped.add(e.runid)  # type: ignore[arg-type]
                other = "succeeded" if e.data.status != "succeeded" else "failed"  # type: ignore[union-attr]
                e = msgspec.structs.replace(e, data=p.RunFinished(status=other))  # type: ignore[arg-type]
        out.append(e)
    assert flipped, "the workload should hold conflicting reports"
    return out


# --- the independent side: raw records, plain JSON ------------------------------------------


def read_to_end_from_docs(bootstrap: str):
    text = (DOCS / "analytics.md").read_text()
    section = text[text.index("## With another Kafka client") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)  # type: ignore[union-attr]
    namespace: dict[str, Any] = {"__name__": "docs_analytics"}
    exec(compile(code, "docs/analytics.md", "exec"), namespace)
    return lambda topic: namespace["read_to_end"](topic, bootstrap=bootstrap, idle_s=5.0)


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def ground_truth(raw: list[dict[str, Any]]) -> dict[str, Any]:
    """Every answer of the exam, from the events as JSON (no code of ours involved)."""
    starts = {
        (e["agentid"], e["data"]["gen_ai.tool.call.id"]): e["data"]
        for e in raw
        if e["type"].startswith("agent.act.started.")
    }
    runs: dict[str, dict[str, Any]] = {}
    per_agent: dict[str, Counter[str]] = defaultdict(Counter)
    per_tool: dict[str, Counter[str]] = defaultdict(Counter)
    durations: dict[str, list[float]] = defaultdict(list)
    own: dict[tuple[str, str], tuple[datetime, int]] = {}  # (agent, run) -> its deciding report
    for e in raw:
        t, data, agent = e["type"], e["data"], e["agentid"]
        run = e.get("runid")
        if run is not None:
            r = runs.setdefault(run, {"cost": 0.0, "finish": None, "agents": set(), "events": 0})
            r["agents"].add(agent)
            r["events"] += 1
            r["cost"] += data.get("cost_usd", 0.0)
        if t.startswith("agent.act.completed."):
            start = starts.get((agent, data["gen_ai.tool.call.id"]))
            error = data["status"] == "error"
            mismatch = (
                data["status"] == "ok"
                and start is not None
                and start.get("expected") is not None
                and data.get("actual") is not None
                and data["actual"] != start["expected"]
            )
            for c in (per_agent[agent], per_tool[data["gen_ai.tool.name"]]):
                c["actions"] += 1
                c["errors"] += error
                c["mismatches"] += mismatch
                c["failed"] += error or mismatch
            durations[data["gen_ai.tool.name"]].append(data.get("duration_ms", 0.0))
        elif t.startswith("agent.lifecycle.run_finished.") and run is not None:
            key = (_t(e["time"]), RANK[data["status"]])
            if runs[run]["finish"] is None or key > runs[run]["finish"]:
                runs[run]["finish"] = key
            if (agent, run) not in own or key > own[(agent, run)]:
                own[(agent, run)] = key
    status_of = {v: k for k, v in RANK.items()}
    for r in runs.values():
        r["status"] = status_of[r["finish"][1]] if r["finish"] else "running"
    agent_status = {
        (agent, run): (status_of[own[(agent, run)][1]] if (agent, run) in own else "running")
        for run, r in runs.items()
        for agent in r["agents"]
    }
    return {
        "runs": runs,
        "per_agent": per_agent,
        "per_tool": per_tool,
        "durations": durations,
        "agent_status": agent_status,
    }


def nearest_rank(values: list[float], level: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(level * len(ordered))) - 1]


# --- the pipeline -----------------------------------------------------------------------------


async def run_pipeline(bootstrap: str, events: list[Event], tmp_path: Path) -> AnalyticsProjection:
    async with EventProducer(bootstrap) as producer:
        for e in events:
            await producer.send(e)
        await producer.flush()

    proc = build_app(bootstrap=bootstrap, data_dir=tmp_path / "worker", engine="aiokafka")
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        deadline = time.monotonic() + 180
        while True:
            progress = await processor_progress(bootstrap, DEFAULT_GROUP)
            if progress.caught_up and sum(progress.highwater.values()) == len(events):
                break
            assert time.monotonic() < deadline, f"processor not caught up: {progress}"
            await asyncio.sleep(0.25)
    finally:
        stop.set()
        await task
    assert proc.stats.applied == len(events) and proc.stats.rejected == 0

    projection = AnalyticsProjection(f"chdb://{tmp_path / 'ch'}")
    runner = ProjectionRunner(
        projection, bootstrap, config=RunnerConfig(max_wait_ms=100, session_timeout_ms=6000)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        assert await wait_until(lambda: runner.caught_up(), 180), runner.stats
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    return projection


def named(projection: AnalyticsProjection, name: str, **params: Any) -> list[dict[str, Any]]:
    q = NAMED_QUERIES[name]
    return projection.store.query_arrow(q.sql, q.bind(params)).to_pylist()


# --- the exam ---------------------------------------------------------------------------------


async def test_the_named_queries_answer_the_exam_like_the_raw_events(kafka, tmp_path):
    events = workload()
    projection = await run_pipeline(kafka.bootstrap, events, tmp_path)
    try:
        read_to_end = read_to_end_from_docs(kafka.bootstrap)
        dump = read_to_end(EVENTS)
        assert len(dump) == len(events)
        truth = ground_truth([json.loads(m.value()) for m in dump])
        runs = truth["runs"]
        assert len(runs) == 60

        # 1. how many runs ended how: one count per run, not per reporting agent
        want = Counter(r["status"] for r in runs.values())
        got = {r["status"]: r["runs"] for r in named(projection, "runs_by_status")}
        assert got == dict(want)
        assert sum(got.values()) == 60
        assert sum(len(r["agents"]) for r in runs.values()) > 2 * 60  # team runs

        # 2. the most expensive run is a whole run, all agents' costs together
        top = named(projection, "cost_per_run", limit=1)[0]
        best = max(runs, key=lambda k: runs[k]["cost"])
        assert top["run_id"] == best
        assert top["cost_usd"] == pytest.approx(runs[best]["cost"], abs=2e-6)
        every = named(projection, "cost_per_run", limit=1000)
        assert len(every) == 60 and len({r["run_id"] for r in every}) == 60
        for r in every:
            assert r["status"] == runs[r["run_id"]]["status"]
            assert sorted(r["agents"]) == sorted(runs[r["run_id"]]["agents"])
        # each agent's share adds up to the run
        shares = named(projection, "run_agent_costs", run_id=best)
        assert sum(s["cost_usd"] for s in shares) == pytest.approx(top["cost_usd"], abs=1e-5)
        assert len(shares) == len(runs[best]["agents"])

        # 3. failed, errors and mismatches per agent: the leaderboard and agent_state
        board = {r["agent_id"]: r for r in named(projection, "agent_leaderboard", limit=100)}
        per_agent = truth["per_agent"]
        assert set(per_agent) <= set(board)
        assert all(board[a]["actions"] == 0 for a in set(board) - set(per_agent))
        for agent, c in per_agent.items():
            row = board[agent]
            got_counts = (row["actions"], row["errors"], row["mismatches"], row["failed"])
            assert got_counts == (c["actions"], c["errors"], c["mismatches"], c["failed"]), agent
            assert row["success_rate"] == round(1 - c["failed"] / c["actions"], 4)
        assert sum(c["mismatches"] for c in per_agent.values()) > 0
        state_rows = projection.store.rows(
            "SELECT agent_id, actions, errors, mismatches, failed FROM agent_state FINAL"
        )
        for agent, *counts in state_rows:
            c = per_agent.get(agent, Counter())
            assert tuple(counts) == (c["actions"], c["errors"], c["mismatches"], c["failed"])

        # ... and per tool
        tools = {r["tool"]: r for r in named(projection, "least_reliable_tools", limit=100)}
        assert set(tools) == set(truth["per_tool"])
        for tool, c in truth["per_tool"].items():
            row = tools[tool]
            got_counts = (row["calls"], row["errors"], row["mismatches"], row["failed"])
            assert got_counts == (c["actions"], c["errors"], c["mismatches"], c["failed"]), tool
            assert row["failure_rate"] == round(c["failed"] / c["actions"], 4)

        # 4. the quantile bound, on the same data
        worst = 0.0
        for row in named(projection, "slowest_tools", limit=100):
            values = truth["durations"][row["tool"]]
            for level, col in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
                exact = nearest_rank(values, level)
                slack = 0.05 / exact  # the query rounds to 0.1 ms
                rel = (exact - row[col]) / exact
                assert -(2**-24) - slack <= rel < QUANTILE_LOW_BOUND + slack, (row["tool"], level)
                worst = max(worst, rel - slack)
        assert worst < QUANTILE_LOW_BOUND

        # 5. each agent's own view of its runs: ClickHouse and the agent's state agree
        states = await read_states(kafka.bootstrap)
        compared = 0
        for s in named(projection, "run_agent_costs", limit=100_000):
            want_status = truth["agent_status"][(s["agent_id"], s["run_id"])]
            assert s["agent_status"] == want_status
            run = states[s["agent_id"]].runs.get(s["run_id"])
            if run is not None:  # the state keeps its latest run_window runs
                assert run.status == want_status
                compared += 1
        assert compared >= 30
        silent = [k for k, v in truth["agent_status"].items() if v == "running"]
        assert silent, "members that never reported must show as running for themselves"
        conflicting = sum(r["conflicting"] for r in named(projection, "runs_by_status"))
        assert conflicting > 0
        print(
            f"exam: runs {dict(want)}, conflicting {conflicting}, reporting agents "
            f"{sum(len(r['agents']) for r in runs.values())}, mismatches "
            f"{sum(c['mismatches'] for c in per_agent.values())}, silent members "
            f"{len(silent)}, states compared {compared}, worst quantile error {worst:.4%}"
        )
    finally:
        projection.close()
