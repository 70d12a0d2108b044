"""A real stack for the UI tests: broker, FalkorDB, the worker and the analytics + graph
projections as child processes, a simulated workload plus hostile text and bad records,
and the UI server on a free loopback port. Built once per test package (slow: ~30 s)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentstream.processes import ManagedProcess, falkordb_argv, free_port, tansu_argv
from agentstream.settings import Settings, load_settings
from schemas.envelope import Event
from streams.admin import ensure_topics, wait_for_broker
from streams.emitter import EventFactory
from streams.simulator import SimulationConfig, generate

HOST = "127.0.0.1"
XSS = (
    "<script>window.__xss = 'script'</script>",
    "<img src=x onerror=\"window.__xss = 'img'\">",
    "javascript:window.__xss='link'",
)
XSS_TEXT = " ".join(XSS)
BAD_RECORDS: tuple[bytes, ...] = (
    b"<script>window.__xss='dlq'</script> not JSON",
    bytes(range(256)),
    b'{"specversion": "1.0", "id": "not-a-uuid", "type": "agent.think.thought.v1"}',
    b'{"specversion": "1.0", "type": "agent.nonsense.v9", "data": {}}',
)


def simulated() -> list[Event]:
    return list(generate(SimulationConfig(agents=4, runs=6, seed=11)))


def hostile_run() -> list[Event]:
    """One run whose every text field carries markup and a javascript: link."""
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 2, tzinfo=UTC)
    clock = iter(t0 + timedelta(seconds=i) for i in range(100))
    f = EventFactory("xss-agent", run_id="run-xss", source="/test/xss", clock=lambda: next(clock))
    out = [f.run_started(XSS_TEXT)]
    out.append(f.thought(XSS_TEXT, model="gpt-4o", input_tokens=10, output_tokens=5))
    start = f.action_started("<b>tool</b>", {"<i>key</i>": XSS_TEXT}, expected=XSS[2])
    out.append(start)
    out.append(f.action_completed(start, status="error", result=XSS_TEXT, actual=XSS[0]))
    out.append(f.message("planner-1", XSS_TEXT))
    out.append(f.lesson(situation=XSS_TEXT, action=XSS[1], outcome=XSS[2], insight=XSS_TEXT))
    out.append(f.run_finished("failed", XSS_TEXT))
    return out


TENANT = "acme"


def tenant_run() -> list[Event]:
    """A short run of another tenant, on a day of its own (the runs list's tenant and
    time-range filters)."""
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 5, 12, tzinfo=UTC)
    clock = iter(t0 + timedelta(seconds=i) for i in range(10))
    f = EventFactory(
        "acme-agent",
        run_id="acme/run-1",
        tenant=TENANT,
        source="/test/tenant",
        clock=lambda: next(clock),
    )
    started = f.run_started("a run of another tenant")
    thought = f.thought("one look", model="gpt-4o-mini", input_tokens=3, causes=(started.id,))
    return [started, thought, f.run_finished("succeeded", causes=(thought.id,))]


@dataclass
class UIStack:
    root: Path
    settings: Settings
    events: list[Event]
    url: str = ""
    procs: list[ManagedProcess] = field(default_factory=list)
    server: Any = None
    thread: threading.Thread | None = None

    def env(self) -> dict[str, str]:
        from agentstream.stack import settings_env

        return settings_env(self.settings)

    def run_events(self, run_id: str) -> list[Event]:
        return [e for e in self.events if e.runid == run_id]

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            if self.thread is not None:
                self.thread.join(10)
        for p in reversed(self.procs):
            p.stop()


def _start(name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None):
    proc = ManagedProcess(name, list(argv), log)
    proc.start(env=env)
    return proc


async def _publish(bootstrap: str, events: list[Event], bad: Sequence[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    from schemas.topics import EVENTS
    from streams.producer import EventProducer

    producer = EventProducer(bootstrap)
    await producer.start()
    try:
        for e in events:
            await producer.send(e)
        await producer.flush()
    finally:
        await producer.close()
    raw = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await raw.start()
    try:
        for value in bad:
            await raw.send_and_wait(EVENTS, value, key=b"bad-producer")
    finally:
        await raw.stop()


async def _caught_up(bootstrap: str) -> bool:
    from schemas.topics import EPISODES, EVENTS, STATE, VIOLATIONS
    from streams.processor import committed_offsets, processor_progress
    from streams.state_reader import fetch_high_watermarks

    if not (await processor_progress(bootstrap)).caught_up:
        return False
    groups = {
        "agentstream-analytics": (EVENTS, VIOLATIONS, EPISODES, STATE),
        "agentstream-graph": (EVENTS, VIOLATIONS),
    }
    for group, topics in groups.items():
        for topic in topics:
            hw = await fetch_high_watermarks(bootstrap, topic)
            done = await committed_offsets(bootstrap, group, topic, hw)
            if any(end > done.get(p, 0) for p, end in hw.items()):
                return False
    return True


def build(root: Path, timeout_s: float = 180.0) -> UIStack:
    """Everything up, the workload published and projected, the UI serving."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kport, gport = free_port(HOST), free_port(HOST)
    settings = load_settings(
        data_dir=root / "data",
        kafka_url=f"kafka://{HOST}:{kport}",
        graph_url=f"falkordb://{HOST}:{gport}",
        projections=["analytics", "graph"],
        ui_token=None,
        metrics_port_base=0,  # free ports for the parts' metrics, never the defaults
    )
    stack = UIStack(root, settings, simulated() + hostile_run() + tenant_run())
    try:
        broker = _start("broker", tansu_argv(HOST, kport), logs / "tansu.log")
        stack.procs.append(broker)
        broker.wait_for_port(HOST, kport, deadline_s=10)
        (root / "falkordb").mkdir(exist_ok=True)
        graph = _start("graph", falkordb_argv(HOST, gport, root / "falkordb"), logs / "graph.log")
        stack.procs.append(graph)
        graph.wait_for_port(HOST, gport, deadline_s=15)
        bootstrap = settings.bootstrap_servers
        asyncio.run(wait_for_broker(bootstrap))
        asyncio.run(ensure_topics(bootstrap, 6))
        env = stack.env()
        cli = [sys.executable, "-m", "agentstream.cli"]
        stack.procs.append(_start("worker", [*cli, "worker"], logs / "worker.log", env))
        stack.procs.append(
            _start("archiver", [*cli, "archive", "--max-segment-age", "1"], logs / "arch.log", env)
        )
        stack.procs.append(
            _start("project", [*cli, "project", "analytics", "graph"], logs / "project.log", env)
        )
        asyncio.run(_publish(bootstrap, stack.events, BAD_RECORDS))
        deadline = time.monotonic() + timeout_s
        while not asyncio.run(_caught_up(bootstrap)):
            for p in stack.procs:
                if p.proc is not None and p.proc.poll() is not None:
                    raise RuntimeError(f"{p.name} exited: see {p.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pipeline did not catch up in {timeout_s}s; logs in {logs}")
            time.sleep(0.5)
        _serve(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


def _serve(stack: UIStack) -> None:
    import uvicorn

    from agentstream.ui.app import create_app
    from agentstream.ui.server import bind, url_of

    sock = bind(HOST, 0)
    stack.url = url_of(sock)
    config = uvicorn.Config(create_app(stack.settings), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    stack.server = server
    stack.thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    stack.thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("the UI server did not start")
        time.sleep(0.05)


def chromium_or_skip() -> str:
    """Debian's chromium; a skip with one line of reason, a failure under CI=true."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (CI=true requires the browser tests)")
        pytest.skip("no chromium on PATH: apt-get install chromium to run the browser tests")
    return path
