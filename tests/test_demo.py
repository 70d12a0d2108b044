"""End to end: `agentstream demo` runs the simulator into the supervised stack (broker,
graph, archiver, worker, projections, UI), then `agentstream query` returns exactly what was
produced (per type, per agent) and exactly the violations the reducer derives from those
events; the demo explains one failed action with its causal chain (exactly the ancestors
the simulator created), the memory recall and a passing replay verify, and links its run in
the UI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
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
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "AGENTSTREAM_DATA_DIR": str(data_dir),
        "AGENTSTREAM_KAFKA_URL": f"kafka://127.0.0.1:{free_port()}",
        "AGENTSTREAM_GRAPH_URL": f"falkordb://127.0.0.1:{free_port()}",
        "AGENTSTREAM_PRODUCER_COMPRESSION": "gzip",
        "AGENTSTREAM_UI_PORT": str(free_port()),
        "AGENTSTREAM_OTLP_ENABLED": "false",
        "AGENTSTREAM_METRICS_PORT_BASE": "0",
        "AGENTSTREAM_CONFIG": str(data_dir.parent / "no-such-config.toml"),
        "COLUMNS": "250",  # event ids on one line each
    }


def _stack(env: dict[str, str]) -> Stack:
    return Stack(
        load_settings(
            data_dir=Path(env["AGENTSTREAM_DATA_DIR"]),
            kafka_url=env["AGENTSTREAM_KAFKA_URL"],
            graph_url=env["AGENTSTREAM_GRAPH_URL"],
            ui_port=int(env["AGENTSTREAM_UI_PORT"]),
            otlp_enabled=False,
            metrics_port_base=0,
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


def _ancestors(seed: int, n: int, event_id: str) -> set[str]:
    events = {
        e.id: e
        for e in generate(SimulationConfig(agents=AGENTS, runs=None, seed=seed, max_events=n))
    }
    found: set[str] = set()
    todo = list(events[event_id].causes)
    while todo:
        eid = todo.pop()
        if eid not in found:
            found.add(eid)
            todo.extend(events[eid].causes if eid in events else ())
    return found


def _check_explained(out: str, seed: int, n: int, ui_port: str, live: bool) -> str:
    m = re.search(r"one failed action, explained: (\S+) by (\S+) in run (\S+) — event (\S+)", out)
    assert m, out[-3000:]
    _tool, agent, run, event_id = m.groups()
    # why: exactly the causal ancestors the simulator created, each shown once or more
    why = out[out.index("why (the causal chain") : out.index("recall (episodes")]
    shown = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", why))
    assert shown - {event_id} == _ancestors(seed, n, event_id)
    assert f"{len(shown) - 1} causes" in why
    # recall: the situation and what memory holds (it may still be embedding)
    recall = out[out.index("recall (episodes") : out.index("replay verify")]
    assert "situation:" in recall
    held = r"memory holds (all [\d,]+|[\d,]+ of [\d,]+) episodes"
    loading = r"memory has embedded 0 of [\d,]+ episode records of this log so far"
    assert re.search(held, recall) or re.search(loading, recall), recall
    # replay verify of that agent passes
    assert re.search(rf"replay verify \(agent {re.escape(agent)}, from the log\):\s+passed:", out)
    url = f"http://127.0.0.1:{ui_port}/runs/{run}?event={event_id}"  # the failure selected
    if live:
        assert f"open this run in the UI: {url}" in out
    else:
        assert f"this run in the UI (after `agentstream up`): {url}" in out
    return url


@pytest.mark.timeout(1200)  # two demos on a busy machine; every wait has its own deadline
def test_demo_end_to_end_exact_counts_and_rerun(tmp_path):
    env = _env(tmp_path / "data")
    try:
        done = _cli(
            env, "demo", "--events", "3000", "--agents", str(AGENTS), "--seed", "11", "--stop"
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out = done.stdout
        assert "demo done: 3000 events simulated (seed 11) into a fresh data directory" in out
        assert "3000 events (3000 new from this run)" in out
        for title in ("events by type", "agent leaderboard", "violations by category"):
            assert title in out
        assert "agentstream query --list" in out
        _check_explained(out, 11, 3000, env["AGENTSTREAM_UI_PORT"], live=False)

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

        # --stop: the stack the demo started is down again; re-running reuses the data
        # directory (the log comes back from the archive) and leaves the stack running
        assert {p.state for p in _stack(env).status()} <= {"stopped", "disabled"}
        again = _cli(env, "demo", "--events", "500", "--agents", str(AGENTS), "--seed", "12")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "into the existing data directory" in again.stdout
        assert "3500 events (500 new from this run)" in again.stdout
        url = _check_explained(again.stdout, 12, 500, env["AGENTSTREAM_UI_PORT"], live=True)
        assert all(p.ok for p in _stack(env).status(lag=False))
        with urllib.request.urlopen(url, timeout=30) as page:  # the UI serves that run
            assert page.status == 200
        more_types, _, _ = _expected(12, 500)
        total = _query(env, "SELECT count() AS n FROM events")
        assert total == [{"n": 3500}]
        got = _query(env, "SELECT type, count() AS n FROM events GROUP BY type")
        assert {r["type"]: r["n"] for r in got} == dict(by_type + more_types)
    finally:
        _stack(env).down()
