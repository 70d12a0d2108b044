"""`agentstream project` as a real process: it owns the chDB store, feeds the graph, serves
reads to `agentstream query`, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from falkordb import FalkorDB

from projections.analytics.service import SERVICE_FILE
from streams.producer import EventProducer
from streams.simulator import SimulationConfig, generate, publish

EVENTS = 1500


def _env(kafka, falkordb, tmp_path) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTSTREAM_KAFKA_URL": f"kafka://{kafka.bootstrap}",
        "AGENTSTREAM_GRAPH_URL": falkordb.url,
        "AGENTSTREAM_DATA_DIR": str(tmp_path / "data"),
    }


def _query_count(env: dict[str, str], sql: str) -> int | None:
    done = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "query", sql, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        return None
    lines = done.stdout.splitlines()  # JSON Lines: one object per row
    return int(json.loads(lines[0])["n"]) if lines else None


def _poll(fn, want: int, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    got = None
    while time.monotonic() < deadline:
        got = fn()
        if got == want:
            return got
        time.sleep(0.5)
    return got


async def test_project_feeds_analytics_and_graph_and_serves_queries(kafka, falkordb, tmp_path):
    env = _env(kafka, falkordb, tmp_path)
    events = list(generate(SimulationConfig(agents=4, runs=None, seed=7, max_events=EVENTS)))
    producer = EventProducer(kafka.bootstrap, compression="none")
    async with producer:
        await publish(events, producer)

    log_path = tmp_path / "project.log"
    with open(log_path, "w") as log:
        code = _run_project_and_check(env, events, falkordb, log, log_path)
    assert code == 0, log_path.read_text()[-2000:]
    assert "analytics: applied" in log_path.read_text()
    # the owner withdrew its read endpoint record on the way out
    assert not (tmp_path / "data" / "run" / SERVICE_FILE).exists()


def _run_project_and_check(env, events, falkordb, log, log_path) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentstream.cli", "project", "analytics", "graph"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        n = _poll(lambda: _query_count(env, "SELECT count() AS n FROM events"), EVENTS, 120)
        assert n == EVENTS, log_path.read_text()[-2000:]
        graph = FalkorDB(host=falkordb.host, port=falkordb.port).select_graph("agentstream")

        def events_in_graph() -> int:
            res = graph.ro_query("MATCH (e:Event) WHERE e.type IS NOT NULL RETURN count(e)")
            return int(res.result_set[0][0])

        assert _poll(events_in_graph, EVENTS, 60) == EVENTS
        per_agent = _query_count(env, "SELECT uniqExact(agent_id) AS n FROM events")
        assert per_agent == len({e.agentid for e in events})
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    return code


def test_unknown_projection_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "project", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AGENTSTREAM_DATA_DIR": str(tmp_path)},
    )
    assert done.returncode == 1
    assert "unknown projection nope" in done.stderr
