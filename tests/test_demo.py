"""End to end: `agentstream demo` runs simulator -> broker -> processors + analytics
projection, then `agentstream query` returns exactly what was produced (per type, per
agent) and exactly the violations the reducer derives from those events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from agentstream.processes import free_port
from agentstream.settings import load_settings
from agentstream.stack import Stack
from schemas.derived import Violation
from streams.reducer import fold
from streams.simulator import SimulationConfig, generate

pytestmark = pytest.mark.integration

AGENTS = 6


def _env(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTSTREAM_DATA_DIR": str(data_dir),
        "AGENTSTREAM_KAFKA_URL": f"kafka://127.0.0.1:{free_port()}",
        "AGENTSTREAM_GRAPH_URL": f"falkordb://127.0.0.1:{free_port()}",
        "AGENTSTREAM_PRODUCER_COMPRESSION": "gzip",
    }


def _stack(env: dict[str, str]) -> Stack:
    return Stack(
        load_settings(
            data_dir=Path(env["AGENTSTREAM_DATA_DIR"]),
            kafka_url=env["AGENTSTREAM_KAFKA_URL"],
            graph_url=env["AGENTSTREAM_GRAPH_URL"],
        )
    )


def _cli(env: dict[str, str], *args: str, timeout: float = 280) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agentstream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _query(env: dict[str, str], sql: str) -> list[dict]:
    done = _cli(env, "query", sql, "--format", "json", timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _expected(seed: int, n: int) -> tuple[Counter, Counter, Counter]:
    events = list(generate(SimulationConfig(agents=AGENTS, runs=None, seed=seed, max_events=n)))
    _, derived = fold(events)
    categories = Counter(
        d.category.value
        for d in {d.violation_id: d for d in derived if isinstance(d, Violation)}.values()
    )
    return Counter(e.type for e in events), Counter(e.agentid for e in events), categories


def test_demo_end_to_end_exact_counts_and_rerun(tmp_path):
    env = _env(tmp_path / "data")
    try:
        done = _cli(env, "demo", "--events", "3000", "--agents", str(AGENTS), "--seed", "11")
        assert done.returncode == 0, done.stderr[-3000:]
        out = done.stdout
        assert "demo done: 3000 events simulated (seed 11) into a fresh data directory" in out
        assert "3000 events (3000 new from this run)" in out
        for title in ("events by type", "agent leaderboard", "violations by category"):
            assert title in out
        assert "agentstream query --list" in out

        by_type, by_agent, categories = _expected(11, 3000)
        got_types = _query(env, "SELECT type, count() AS n FROM events GROUP BY type")
        assert {r["type"]: r["n"] for r in got_types} == dict(by_type)
        got_agents = _query(env, "SELECT agent_id, sum(events) AS n FROM agent_minute GROUP BY 1")
        assert {r["agent_id"]: r["n"] for r in got_agents} == dict(by_agent)
        got_violations = _query(
            env, "SELECT category, count() AS n FROM violations FINAL GROUP BY category"
        )
        assert {r["category"]: r["n"] for r in got_violations} == dict(categories)
        assert sum(categories.values()) > 0

        # the stack the demo started is down again; re-running reuses the data directory
        assert not any(p.ok for p in _stack(env).status())
        again = _cli(env, "demo", "--events", "500", "--agents", str(AGENTS), "--seed", "12")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "into the existing data directory" in again.stdout
        assert "3500 events (500 new from this run)" in again.stdout
        more_types, _, _ = _expected(12, 500)
        total = _query(env, "SELECT count() AS n FROM events")
        assert total == [{"n": 3500}]
        got = _query(env, "SELECT type, count() AS n FROM events GROUP BY type")
        assert {r["type"]: r["n"] for r in got} == dict(by_type + more_types)
    finally:
        _stack(env).down()
