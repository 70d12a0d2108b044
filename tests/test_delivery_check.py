"""The producer side of loss detection: ``agentstream simulate --verify`` on the embedded
broker never exits 0 while events it counted as delivered are in neither the log nor the
archive. Real Tansu broker, real archiver process, real CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Broker

from schemas.topics import EVENTS
from streams.delivery_check import archiver_pid
from streams.restore import restore_log_async
from streams.state_reader import fetch_high_watermarks

pytestmark = pytest.mark.integration


def env_for(kafka: Broker, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTSTREAM_KAFKA_URL": f"kafka://{kafka.bootstrap}",
        "AGENTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "AGENTSTREAM_ARCHIVE_DIR": str(tmp_path / "archive"),
        "AGENTSTREAM_PRODUCER_COMPRESSION": "none",
    }


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def archiver(kafka: Broker, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    asyncio.run(restore_log_async(kafka.bootstrap, tmp_path / "archive"))  # as `up` does
    log = tmp_path / "archiver.log"
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "agentstream.cli", "archive"],
            env=env_for(kafka, tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: b"generation" in log.read_bytes(), 60, "the archiver to start")
        assert archiver_pid(tmp_path / "archive") == child.pid
        yield child
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait(10)


def simulate(kafka: Broker, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentstream.cli", "simulate", "--no-progress", *args],
        env=env_for(kafka, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_simulate_verifies_every_acknowledged_event_is_archived(
    kafka: Broker, tmp_path: Path, archiver: subprocess.Popen[bytes]
):
    proc = simulate(kafka, tmp_path, "--events", "400", "--seed", "3")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "verified: all 400 events are in the archive" in out
    assert out.strip().splitlines()[-1].startswith("produced 400 events (")


def test_simulate_exits_1_naming_acknowledged_events_lost_with_the_broker(
    kafka: Broker, tmp_path: Path, archiver: subprocess.Popen[bytes]
):
    """Old code: exited 0 although the broker that acknowledged the events died before the
    archiver had them (5,988 of 7,716 lost in one trial)."""
    os.kill(archiver.pid, signal.SIGSTOP)  # it reads nothing more: the window stays open
    proc = simulate(kafka, tmp_path, "--events", "500", "--seed", "4")
    try:
        wait_until(
            lambda: (
                sum(asyncio.run(fetch_high_watermarks(kafka.bootstrap, EVENTS)).values()) >= 500
            ),
            60,
            "the events acknowledged",
        )
        assert proc.poll() is None, "it must still be waiting for the archive"
        os.killpg(kafka.process.proc.pid, signal.SIGKILL)  # the in-memory log is gone
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (out, err)
    assert "LOST: 500 of 500 acknowledged events" in err
    assert "produced" not in out


def test_simulate_that_fails_mid_publish_counts_the_acknowledged_events_lost(
    kafka: Broker, tmp_path: Path, archiver: subprocess.Popen[bytes]
):
    """The broker dies while publishing: the error says how many of the events it had
    acknowledged are gone, not only how many were acknowledged."""
    os.kill(archiver.pid, signal.SIGSTOP)  # nothing gets archived: every ack is at risk
    proc = simulate(kafka, tmp_path, "--events", "4000", "--rate", "800", "--seed", "5")
    try:
        wait_until(
            lambda: (
                sum(asyncio.run(fetch_high_watermarks(kafka.bootstrap, EVENTS)).values()) >= 500
            ),
            60,
            "some events acknowledged",
        )
        os.killpg(kafka.process.proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (out, err)
    line = " ".join(err.split())
    import re

    m = re.search(r"\((\d+) events were acknowledged before the failure\); ([\d,]+) of the", line)
    assert m, line
    acked, lost = int(m[1]), int(m[2].replace(",", ""))
    # none reached the archive: every acknowledged one (and any in flight) is lost
    assert acked >= 500 and lost >= acked
