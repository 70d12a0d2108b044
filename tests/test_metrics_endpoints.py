"""Every long-running process serves /metrics, /healthz and /readyz, and the counters move.

The worker and the projections run as real processes against a real broker, chDB and
FalkorDB; the test scrapes their recorded endpoints the way Prometheus would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agentstream.telemetry import recorded_endpoints
from streams.producer import EventProducer
from streams.simulator import SimulationConfig, generate, publish

EVENTS = 1200


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _wait_for(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_worker_and_projections_serve_metrics_that_move(kafka, falkordb, tmp_path: Path):
    data = tmp_path / "data"
    env = {
        **os.environ,
        "AGENTSTREAM_KAFKA_URL": f"kafka://{kafka.bootstrap}",
        "AGENTSTREAM_GRAPH_URL": falkordb.url,
        "AGENTSTREAM_DATA_DIR": str(data),
        "AGENTSTREAM_METRICS_PORT_BASE": "0",  # free ports, recorded for `status`
    }
    procs = []
    logs = []
    for part, args in (
        ("worker", ["worker", "--engine", "aiokafka"]),
        ("projections", ["project", "analytics", "graph"]),
    ):
        log = open(tmp_path / f"{part}.log", "w")  # noqa: SIM115 - closed in finally
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "agentstream.cli", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        endpoints = _wait_for(
            lambda: (lambda e: e if {"worker", "projections"} <= e.keys() else None)(
                recorded_endpoints(data)
            ),
            60,
            "both parts to record their metrics endpoints",
        )
        for url in endpoints.values():
            status, body = _get(f"{url}/healthz")
            assert status == 200 and body["pid"] > 0
            _wait_for(lambda url=url: _get(f"{url}/readyz")[0] == 200, 30, f"{url} ready")
            assert _get(f"{url}/nope")[0] == 404

        before_worker = _scrape(endpoints["worker"])
        assert (
            _value(before_worker, "agentstream_processor_applied_total", part="worker") or 0
        ) == 0

        events = list(generate(SimulationConfig(agents=3, runs=None, seed=3, max_events=EVENTS)))
        async with EventProducer(kafka.bootstrap, compression="none") as producer:
            await publish(events, producer)

        applied = _wait_for(
            lambda: (
                v
                if (
                    v := _value(
                        _scrape(endpoints["worker"]),
                        "agentstream_processor_applied_total",
                        part="worker",
                    )
                )
                == EVENTS
                else None
            ),
            90,
            "the worker's applied counter to reach every event",
        )
        assert applied == EVENTS

        def projected() -> bool:
            # analytics also reads violations, episodes and states: at least every event,
            # and nothing left behind on agent-events
            samples = _scrape(endpoints["projections"])
            applied = _value(samples, "agentstream_projection_applied_total", part="analytics")
            lag = _value(
                samples, "agentstream_projection_lag", projection="analytics", topic="agent-events"
            )
            return (applied or 0) >= EVENTS and lag == 0

        _wait_for(projected, 90, "the analytics projection to apply every event")
        final = _scrape(endpoints["projections"])
        assert _value(final, "agentstream_ready", part="projections") == 1.0
        assert _value(final, "agentstream_projection_batch_seconds_count", projection="analytics")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=60) for proc in procs]
        for log in logs:
            log.close()
    assert codes == [0, 0], [Path(log.name).read_text()[-1500:] for log in logs]
    # each part withdrew its record on the way out
    assert recorded_endpoints(data) == {}
