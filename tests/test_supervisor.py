"""The supervisor daemon against real parts: Tansu, FalkorDB, the archiver, the worker and
the projections, plus plain children that crash on demand.

Each test gets its own data directory and free loopback ports. Waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from agentstream.processes import free_port, pid_alive, port_open
from agentstream.settings import Settings, load_settings
from agentstream.stack import (
    PROJECTION_TOPICS,
    Service,
    Stack,
    command_available,
    consumer_lag,
    default_services,
    graph_loading,
)
from agentstream.supervisor import exit_text, last_error_line
from schemas.topics import EVENTS
from streams.producer import EventProducer
from streams.simulator import SimulationConfig, generate, publish

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
PARTITIONS = 3


def wait_until(pred: Callable[[], Any], deadline_s: float = 30.0, every: float = 0.1) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    return pred()


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "data_dir": data_dir,
        "kafka_url": f"kafka://{HOST}:{free_port(HOST)}",
        "graph_url": f"falkordb://{HOST}:{free_port(HOST)}",
        "partitions": PARTITIONS,
        "metrics_port_base": 0,
        "worker_enabled": False,
        "projections_enabled": False,
        "ui_enabled": False,
        "otlp_enabled": False,
        "ui_port": free_port(HOST),
        "otlp_http_port": free_port(HOST),
        "otlp_grpc_port": free_port(HOST),
    }
    return load_settings(**{**base, **overrides})


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("AGENTSTREAM_CONFIG", str(tmp_path / "no-such-config.toml"))
    path = tmp_path / "data"
    yield path
    # whatever a test left: stop it through the recorded state, and check nothing remains
    state = path / "run" / "stack.json"
    if state.exists():
        raw = json.loads(state.read_text())
        pids = [p["pid"] for p in raw["parts"].values() if p.get("pid")]
        pids += [raw["supervisor"]["pid"]] if raw.get("supervisor") else []
        Stack(make_settings(path)).down()
        for pid in pids:
            assert wait_until(lambda p=pid: not pid_alive(p), 30), f"pid {pid} left running"


def part(stack: Stack, name: str) -> Any:
    return next(p for p in stack.status(lag=False) if p.part == name)


def produce(settings: Settings, n: int, seed: int = 3) -> int:
    async def go() -> int:
        producer = EventProducer.from_settings(settings)
        await producer.start()
        try:
            sim = SimulationConfig(agents=4, runs=None, seed=seed, max_events=n)
            return (await publish(generate(sim), producer)).events
        finally:
            await producer.close()

    return asyncio.run(go())


# --------------------------------------------------------------------------------------
# the whole pipeline: restart on kill -9, lag, down in order, the archive flushed, restore
# --------------------------------------------------------------------------------------
def test_pipeline_is_supervised_restarted_stopped_in_order_and_restored(data_dir: Path):
    settings = make_settings(
        data_dir, worker_enabled=True, projections_enabled=True, projections=["analytics"]
    )
    stack = Stack(settings)
    ups = {r.part: r for r in stack.up()}
    assert {p: r.action for p, r in ups.items()} == {
        "broker": "started",
        "gate": "started",
        "graph": "started",
        "archiver": "started",
        "worker": "started",
        "projections": "started",
        "ui": "disabled",
        "otlp": "disabled",
    }
    assert "no archive to restore" in ups["broker"].detail or "restored 0" in ups["broker"].detail

    n = produce(settings, 600)
    wanted = {"worker": {"processor": 0}, "archiver": {"archiver": 0}}
    wanted["projections"] = {"analytics": 0}

    def caught_up() -> bool:
        lags = {p.part: p.lag for p in stack.status()}
        return all(lags.get(name) == lag for name, lag in wanted.items())

    assert wait_until(caught_up, 90), {p.part: p.lag for p in stack.status()}

    # kill -9 a supervised part: it is started again, and status counts it
    worker = part(stack, "worker")
    os.kill(worker.pid, signal.SIGKILL)
    restarted = wait_until(
        lambda: (w := part(stack, "worker")).state == "running" and w.pid != worker.pid and w,
        60,
    )
    assert restarted, part(stack, "worker")
    assert restarted.restarts == 1 and restarted.last_exit == -9
    assert restarted.last_error == "killed by SIGKILL"
    assert part(stack, "broker").restarts == 0

    # down: dependents first, each waited for; the archiver flushed every event it read
    pids = {p.part: p.pid for p in stack.status(lag=False) if p.pid}
    sup_pid = stack.supervisor_status().pid
    down = stack.down()
    assert [(r.part, r.action) for r in down] == [
        ("gate", "stopped"),  # first: no outside producer can add to the log any more
        ("projections", "stopped"),
        ("worker", "stopped"),
        ("archiver", "stopped"),
        ("graph", "stopped"),
        ("broker", "stopped"),
    ]
    # every part stops cleanly on SIGTERM (the gate too, since it is ours)
    assert all(r.detail.startswith("exit 0 after SIGTERM") for r in down), [
        (r.part, r.detail) for r in down
    ]
    assert not any(pid_alive(pid) for pid in [*pids.values(), sup_pid])
    assert not (data_dir / "run" / "stack.json").exists()
    assert not port_open(HOST, settings.kafka_port) and not port_open(HOST, settings.graph_port)
    archived = ds.dataset(settings.archive_location / "events", partitioning="hive")
    assert archived.count_rows() == n

    # up again: the fresh broker gets the archived log back before anything reads it
    again = {r.part: r for r in Stack(make_settings(data_dir, **_ports(settings))).up()}
    assert f"restored {n:,} records" in again["broker"].detail, again["broker"].detail
    log = (data_dir / "logs" / "supervisor.log").read_text().splitlines()
    last_round = log[max(i for i, ln in enumerate(log) if "broker: starting" in ln) :]
    order = [ln.split("agentstream.supervisor ")[1] for ln in last_round if ": running" in ln]
    # the gate (clients' port) opens only after the restore, before any reader starts
    assert [o.split(":")[0] for o in order] == ["broker", "graph", "gate", "archiver"]


def _ports(settings: Settings) -> dict[str, object]:
    return {"kafka_url": settings.kafka_url, "graph_url": settings.graph_url}


# --------------------------------------------------------------------------------------
# crash loops
# --------------------------------------------------------------------------------------
FLAKY = (
    "import os, sys, time\n"
    "if os.path.exists({marker!r}):\n"
    "    print('error: boom: poisoned by the test', file=sys.stderr, flush=True)\n"
    "    print('shutting down', flush=True)\n"
    "    sys.exit(7)\n"
    "time.sleep(600)\n"
)


def flaky_service(marker: Path) -> Service:
    script = FLAKY.format(marker=str(marker))
    return Service(
        name="flaky",
        argv=lambda s: [sys.executable, "-c", script],
        depends_on=("broker",),
        settle_s=0.3,
    )


def test_a_part_that_always_crashes_is_shown_as_a_crash_loop(data_dir: Path, tmp_path: Path):
    marker = tmp_path / "poison"
    settings = make_settings(data_dir)
    stack = Stack(settings, services=[default_services()[0], flaky_service(marker)])
    first = {r.part: r.pid for r in stack.up()}
    marker.touch()
    os.kill(first["flaky"], signal.SIGKILL)

    looping = wait_until(lambda: (f := part(stack, "flaky")).state == "crash-loop" and f, 60)
    assert looping, part(stack, "flaky")
    assert not looping.ok and looping.restarts >= 3
    assert looping.last_exit == 7
    assert looping.last_error == "error: boom: poisoned by the test"  # not the last line
    env = {**os.environ, "AGENTSTREAM_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    env.update(_env(settings))
    shown = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 1
    assert "crash-loop" in shown.stdout and "boom: poisoned by the test" in shown.stdout
    # the broker it depends on is untouched
    assert part(stack, "broker").pid == first["broker"]

    # the cause goes away: the backoff runs out and the part stays up again
    marker.unlink()
    back = wait_until(lambda: (f := part(stack, "flaky")).pid and pid_alive(f.pid) and f, 60)
    assert back and back.restarts > looping.restarts


def _env(settings: Settings) -> dict[str, str]:
    from agentstream.stack import settings_env

    return settings_env(settings)


# --------------------------------------------------------------------------------------
# a killed supervisor: the parts keep running and the next `up` adopts them
# --------------------------------------------------------------------------------------
def test_killed_supervisor_leaves_parts_running_and_up_adopts_them(data_dir: Path):
    settings = make_settings(data_dir)
    stack = Stack(settings, services=default_services()[:1])
    broker = stack.up()[0]
    sup = stack.supervisor_status()
    os.kill(sup.pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(sup.pid))
    shown = stack.supervisor_status()
    assert shown.state == "stopped" and "nothing restarts the parts" in shown.detail
    assert part(stack, "broker").pid == broker.pid and pid_alive(broker.pid)

    again = stack.up()[0]
    assert (again.action, again.pid) == ("already running", broker.pid)  # the log survives
    assert stack.supervisor_status().state == "running"
    os.kill(broker.pid, signal.SIGKILL)  # adopted: watched by pid, restarted when it dies
    back = wait_until(
        lambda: (b := part(stack, "broker")).state == "running" and b.pid != broker.pid and b
    )
    assert back and back.restarts == 1 and back.last_exit is None
    assert "exit code unknown" in back.last_error


# --------------------------------------------------------------------------------------
# the graph: up waits for a loading graph with progress; down compacts it
# --------------------------------------------------------------------------------------
def _graph_writes(settings: Settings, n: int) -> int:
    from projections.graph.projection import project
    from projections.graph.store import open_store

    store = open_store(settings.graph_url, settings.graph_name)
    store.setup()
    events = list(generate(SimulationConfig(agents=3, runs=None, seed=9, max_events=n)))
    for i in range(0, len(events), 50):  # many small writes: a long AOF to replay
        project(store, events[i : i + 50])
    nodes = store.read("MATCH (n) RETURN count(n)")[0][0]
    store.close()
    return int(nodes)


def _graph_nodes(settings: Settings) -> int:
    from projections.graph.store import open_store

    store = open_store(settings.graph_url, settings.graph_name)
    try:
        return int(store.read("MATCH (n) RETURN count(n)")[0][0])
    finally:
        store.close()


def test_up_waits_for_a_loading_graph_with_progress_and_down_compacts_it(data_dir: Path):
    settings = make_settings(data_dir)
    graph_only = [s for s in default_services() if s.name == "graph"]
    stack = Stack(settings, services=graph_only)
    first = stack.up()[0]
    nodes = _graph_writes(settings, 1500)
    # a crash, not a down: nothing compacts the AOF, so the next start replays every write
    sup = stack.supervisor_status()
    os.kill(sup.pid, signal.SIGKILL)
    os.kill(first.pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(first.pid) and not pid_alive(sup.pid))
    # an AOF rewrite the server had forked keeps its listening socket until the child ends:
    # the crash is over once nobody holds the port (else `up` rightly says it is in use)
    assert wait_until(lambda: not port_open(settings.graph_host, settings.graph_port), 60)

    seen: list[dict[str, Any]] = []

    def on_progress(parts: dict[str, dict[str, Any]]) -> None:
        prog = parts.get("graph", {}).get("progress")
        if prog:
            seen.append(prog)

    up = Stack(settings, services=graph_only).up(on_progress=on_progress)[0]
    assert up.action == "started"
    assert seen, "up reported no loading progress"
    assert all(p["text"].startswith("loading its data") and p["total"] == 100.0 for p in seen)
    assert graph_loading(settings) is None
    assert _graph_nodes(settings) == nodes

    down = stack.down()[0]
    assert "AOF rewritten as a snapshot" in down.detail, down.detail
    aof = settings.data_dir / "falkordb" / "appendonlydir"
    assert [f.name.endswith(".base.rdb") for f in aof.glob("*.base.*")] == [True]
    assert sum(f.stat().st_size for f in aof.glob("*.incr.aof")) < 1024  # nothing to replay
    again = Stack(settings, services=graph_only).up()[0]
    assert again.action == "started" and _graph_nodes(settings) == nodes


# --------------------------------------------------------------------------------------
# parts whose command is missing, the UI and OTLP parts when present, lag
# --------------------------------------------------------------------------------------
def test_a_part_whose_command_is_missing_is_skipped_with_a_clear_line(data_dir: Path):
    settings = make_settings(data_dir)
    ghost = Service(
        name="ghost",
        argv=lambda s: [sys.executable, "-m", "agentstream.cli", "ghost"],
        available=command_available("ghost"),
        depends_on=("broker",),
    )
    stack = Stack(settings, services=[default_services()[0], ghost])
    ups = {r.part: r for r in stack.up()}
    assert ups["ghost"].action == "not installed"
    assert "`agentstream ghost` is not part of this install" in ups["ghost"].detail
    shown = part(stack, "ghost")
    assert shown.state == "not installed" and shown.ok and shown.pid is None


def test_ui_and_otlp_parts_are_started_and_up_prints_the_ui_url(data_dir: Path):
    settings = make_settings(data_dir, ui_enabled=True, otlp_enabled=True, otlp_grpc_port=0)
    env = {**os.environ, **_env(settings), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert f"UI: http://{settings.ui_host}:{settings.ui_port}" in done.stdout
    assert port_open(settings.ui_host, settings.ui_port)
    assert port_open(settings.otlp_host, settings.otlp_http_port)
    states = {p.part: p.state for p in Stack(settings).status(lag=False)}
    assert states["ui"] == "running" and states["otlp"] == "running"


def test_consumer_lag_counts_from_the_fetch_high_watermark(data_dir: Path):
    settings = make_settings(data_dir)
    Stack(settings, services=default_services()[:2]).up()  # broker + gate
    n = produce(settings, 250)
    lags = asyncio.run(consumer_lag(settings.bootstrap_servers, {"nobody-yet": (EVENTS,)}))
    assert lags == {"nobody-yet": n}


# --------------------------------------------------------------------------------------
# pure units
# --------------------------------------------------------------------------------------
def test_projection_topics_match_the_projections():
    from projections.analytics.projection import AnalyticsProjection
    from projections.graph.projection import GraphProjection
    from projections.memory.projection import MemoryProjection

    assert {
        "analytics": tuple(AnalyticsProjection.topics),
        "graph": tuple(GraphProjection.topics),
        "memory": tuple(MemoryProjection.topics),
    } == PROJECTION_TOPICS


def test_last_error_line_and_exit_text(tmp_path: Path):
    log = tmp_path / "part.log"
    log.write_text("old ERROR from an earlier run\nstarting\n")
    since = log.stat().st_size
    with open(log, "a") as fh:
        fh.write("working\nValueError: bad thing\nshutting down\n")
    assert last_error_line(log, since) == "ValueError: bad thing"
    assert last_error_line(log, log.stat().st_size) == ""
    assert exit_text(-9) == "killed by SIGKILL"
    assert exit_text(3) == "exited with code 3"
    assert "unknown" in exit_text(None)
