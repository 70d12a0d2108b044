"""`agentstream topics create` against a real broker that starts with no topics."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from conftest import start_broker

from schemas.topics import TOPICS
from streams.admin import ensure_topics


def _run(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTSTREAM_KAFKA_URL": f"kafka://{bootstrap}"}
    return subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "topics", "create", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_creates_topics_then_reports_partition_mismatch(tmp_path):
    broker = start_broker(tmp_path, topics=False)
    try:
        done = _run(broker.bootstrap, "--partitions", "3")
        assert done.returncode == 0, done.stderr
        counts = asyncio.run(ensure_topics(broker.bootstrap, 3))
        assert counts == {t.name: 3 for t in TOPICS}
        again = _run(broker.bootstrap, "--partitions", "5")
        assert again.returncode == 1
        assert "different partition count" in again.stderr
    finally:
        broker.process.stop()


def test_unreachable_broker_is_one_clear_line(tmp_path):
    from agentstream.processes import free_port

    done = _run(f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert done.returncode == 1
    assert "broker:" in done.stderr and "AGENTSTREAM_KAFKA_URL" in done.stderr
