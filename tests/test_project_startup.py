"""`agentstream project` starts each projection as soon as its own store is open, and the
memory projection stops promptly on SIGTERM, even mid-batch, without losing or repeating
anything (real Tansu broker, chDB and Chroma)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from agentstream import wiring
from agentstream.commands import project
from agentstream.settings import Settings, load_settings
from agentstream.stack import consumer_lag
from agentstream.telemetry import recorded_endpoints
from projections.analytics.service import ServiceReader, find_service
from projections.analytics.store import DEFAULT_DATABASE, parse_url
from schemas.derived import Episode, encode_derived
from schemas.topics import EPISODES
from streams.producer import EventProducer
from streams.simulator import SimulationConfig, generate, publish

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def _settings(kafka, tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        kafka_url=f"kafka://{kafka.bootstrap}",
        metrics_port_base=0,
        otlp_enabled=False,
    )


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _events_served(settings: Settings) -> int | None:
    """Events the projections part's read endpoint reports, or None while it does not serve."""
    location = parse_url(settings.analytics_url)
    info = find_service(settings.data_dir / "run", location, DEFAULT_DATABASE)
    if info is None:
        return None
    reader = ServiceReader(info, timeout_s=10)
    try:
        return int(reader.query("SELECT count() AS n FROM events").column("n")[0].as_py())
    except Exception:  # not serving yet
        return None
    finally:
        reader.close()


async def test_analytics_serves_reads_while_memory_is_still_loading(kafka, tmp_path, monkeypatch):
    """Observable order, not timing: memory's store cannot open until the test lets it, and
    analytics has applied and served every event before that, with /readyz naming memory as
    loading; then memory opens and /readyz turns ready."""
    monkeypatch.setenv("AGENTSTREAM_CONFIG", str(tmp_path / "no-such-config.toml"))
    settings = _settings(kafka, tmp_path)
    events = list(generate(SimulationConfig(agents=3, runs=None, seed=5, max_events=300)))
    async with EventProducer(kafka.bootstrap, compression="none") as producer:
        await publish(events, producer)

    gate = threading.Event()
    memory_opened = threading.Event()

    def gated_memory(s: Settings) -> Any:
        gate.wait(300)  # the model load, held back until the test has seen analytics serve
        built = wiring.build_memory(s)
        memory_opened.set()
        return built

    monkeypatch.setitem(wiring.BUILDERS, "memory", gated_memory)
    stop = asyncio.Event()
    task = asyncio.create_task(project._run(settings, ["analytics", "memory"], 1.0, stop))
    try:
        served = None
        deadline = time.monotonic() + 120
        while served != len(events) and time.monotonic() < deadline and not task.done():
            served = await asyncio.to_thread(_events_served, settings)
            await asyncio.sleep(0.2)
        assert served == len(events)
        assert not memory_opened.is_set()
        url = recorded_endpoints(settings.data_dir)["projections"]
        code, body = await asyncio.to_thread(_readyz, url)
        assert code == 503 and not body["ready"], body
        assert "memory loading" in body["detail"] and "analytics lag" in body["detail"], body

        gate.set()

        async def ready() -> bool:
            code, body = await asyncio.to_thread(_readyz, url)
            return code == 200 and "memory lag" in body["detail"]

        deadline = time.monotonic() + 180
        while not await ready():
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.5)
        assert memory_opened.is_set()
    finally:
        gate.set()
        stop.set()
        runners = await asyncio.wait_for(task, 120)
    assert [r.projection.name for r in runners] == ["analytics", "memory"]
    assert runners[0].stats.applied == len(events)


# --- SIGTERM mid-embedding ------------------------------------------------------------------

EPISODES_N = 1200  # unique episodes; 200 of them also get a later revision (a lesson)


def _episodes() -> list[Episode]:
    out: list[Episode] = []
    for i in range(EPISODES_N):
        base = {
            "episode_id": f"ep-{i:05d}",
            "revision": 0,
            "agent_id": f"agent-{i % 7}",
            "run_id": f"run-{i // 10}",
            "task_id": None,
            "tenant": "acme",
            "time": T0 + timedelta(seconds=i),
            "situation": f"step {i}: the nightly job {i % 13} failed on host {i % 17}",
            "action": f'shell {{"cmd": "job-{i % 13}.sh"}}',
            "tool": "shell",
            "outcome": "failure",
            "result": "exit 1",
            "expected": "exit 0",
            "actual": "exit 1",
            "lesson": None,
            "event_ids": (f"e{i}",),
        }
        out.append(Episode(**base))  # type: ignore[arg-type]
        if i % 6 == 0:
            out.append(
                Episode(**{**base, "revision": 1, "lesson": f"check the disk of host {i % 17}"})  # type: ignore[arg-type]
            )
    return out


async def _publish_episodes(bootstrap: str, episodes: list[Episode]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        acks = [
            await producer.send(EPISODES, encode_derived(ep), key=ep.agent_id.encode())
            for ep in episodes
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def _start_memory(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agentstream.cli", "project", "memory", "--report-every", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _memory_lag(bootstrap: str) -> int:
    lags = await consumer_lag(bootstrap, {"agentstream-memory": (EPISODES,)})
    return lags["agentstream-memory"]


@pytest.mark.timeout(900)
async def test_sigterm_mid_embedding_stops_promptly_and_the_next_run_ends_exact(
    kafka, tmp_path, monkeypatch
):
    monkeypatch.setenv("AGENTSTREAM_CONFIG", str(tmp_path / "no-such-config.toml"))
    episodes = _episodes()
    await _publish_episodes(kafka.bootstrap, episodes)
    total = len(episodes)
    env = {
        **os.environ,
        "AGENTSTREAM_KAFKA_URL": f"kafka://{kafka.bootstrap}",
        "AGENTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "AGENTSTREAM_METRICS_PORT_BASE": "0",
        "AGENTSTREAM_OTLP_ENABLED": "false",
        "AGENTSTREAM_CONFIG": str(tmp_path / "no-such-config.toml"),
    }
    log_path = tmp_path / "project.log"

    # first run: stopped once it has committed some batches but not all
    proc = _start_memory(env, log_path)
    try:
        deadline = time.monotonic() + 300
        lag = total
        while lag >= total:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            lag = await _memory_lag(kafka.bootstrap)
            await asyncio.sleep(0.2)
        assert lag > 0, "embedded everything before the stop: raise EPISODES_N"
        proc.send_signal(signal.SIGTERM)
        # a bound, not a benchmark: before, a batch of 512 plus the last flush ran to the end
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert code == 0, text[-3000:]
    assert "memory: stopped mid-batch" in text, text[-3000:]
    left = await _memory_lag(kafka.bootstrap)
    assert left > 0  # what was not applied was not committed

    # second run: catches up from the committed offsets, then stops cleanly
    proc = _start_memory(env, log_path)
    try:
        ok = await _wait_async(lambda: _memory_lag(kafka.bootstrap), 0, 600, proc)
        assert ok, log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log_path.read_text()[-3000:]

    # exact: one record per episode, each at its newest revision with its own content
    from projections.memory.recall import default_store

    store = default_store(load_settings(data_dir=tmp_path / "data"))
    assert store.count() == EPISODES_N
    newest = {ep.episode_id: ep for ep in episodes}  # later revisions come later
    held = store.get(sorted(newest))
    assert set(held) == set(newest)
    for eid, rec in held.items():
        assert rec.metadata["revision"] == newest[eid].revision
        assert rec.metadata["lesson"] == (newest[eid].lesson or "")


async def _wait_async(fn, want: int, timeout_s: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if await fn() == want:
            return True
        await asyncio.sleep(0.5)
    return False
