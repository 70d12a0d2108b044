"""``agentstream otlp`` as ``agentstream up`` runs it: standalone, healthy, stops cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import Broker
from test_otlp_receiver import CHAT, request, span
from test_otlp_support import read_log

from agentstream.processes import free_port
from schemas.topics import EVENTS
from streams.ack_ledger import read_acked
from streams.archive import ack_ledger_dir
from streams.log_identity import fetch_marker

pytestmark = pytest.mark.integration


def _env(tmp_path: Path, bootstrap: str, http: int, grpc: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "AGENTSTREAM_KAFKA_URL": f"kafka://{bootstrap}",
        "AGENTSTREAM_OTLP_HTTP_PORT": str(http),
        "AGENTSTREAM_OTLP_GRPC_PORT": str(grpc),
        "AGENTSTREAM_METRICS_PORT_BASE": "0",
        **extra,
    }


def test_command_serves_health_exports_and_stops(kafka: Broker, tmp_path: Path) -> None:
    http, grpc = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentstream.cli", "otlp"],
        env=_env(tmp_path, kafka.bootstrap, http, grpc),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "receiver not ready"
            time.sleep(0.1)
        assert httpx.get(f"{base}/healthz", timeout=5).json()["status"] == "alive"
        r = httpx.post(
            f"{base}/v1/traces",
            content=request(span(1, CHAT)).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        r = httpx.post(  # an HTTP span: skipped, and counted
            f"{base}/v1/traces",
            content=request(span(2, {"http.request.method": "GET"})).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        recorded = json.loads((tmp_path / "data" / "run" / "metrics" / "otlp.json").read_text())
        metrics = httpx.get(f"{recorded['url']}/metrics", timeout=5).text
        assert 'agentstream_otlp_spans_total{outcome="mapped"} 1.0' in metrics
        assert 'agentstream_otlp_spans_total{outcome="skipped"} 1.0' in metrics
        assert 'agentstream_otlp_spans_skipped_total{part="otlp"} 1.0' in metrics
        types = [line for line in metrics.splitlines() if line.startswith("# TYPE")]
        assert len(types) == len(set(types)), "a metric family is exported twice"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"OTLP/gRPC on 127.0.0.1:{grpc}" in out
    assert "2 spans: 1 mapped, 1 skipped" in out and "1 events published" in out, out
    assert [e.type for e in read_log(kafka.bootstrap)] == ["agent.think.thought.v1"]
    # the acknowledged event is in the ack ledger of this log: a broker crash would count it
    marker = asyncio.run(fetch_marker(kafka.bootstrap))
    assert marker is not None
    ledger = ack_ledger_dir(tmp_path / "data" / "archive")
    assert sum(read_acked(ledger, marker.epoch, EVENTS).values()) == 1


def test_command_refuses_to_bind_off_loopback_without_a_token(
    kafka: Broker, tmp_path: Path
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "otlp", "--host", "0.0.0.0"],
        env=_env(tmp_path, kafka.bootstrap, free_port(), 0),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "AGENTSTREAM_OTLP_TOKEN" in out.stderr + out.stdout
