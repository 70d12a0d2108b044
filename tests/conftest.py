"""Shared fixtures: real backends launched as subprocesses on free loopback ports.

A Tansu broker starts in ~30 ms and keeps everything in memory, so each test that needs
the log gets a fresh one: no state leaks between tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentstream.processes import ManagedProcess, falkordb_argv, free_port, tansu_argv
from projections.analytics.projection import AnalyticsProjection
from streams.admin import ensure_topics, wait_for_broker

HOST = "127.0.0.1"
TEST_PARTITIONS = 6


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    port: int
    process: ManagedProcess


def start_broker(log_dir: Path, partitions: int = TEST_PARTITIONS, topics: bool = True) -> Broker:
    port = free_port(HOST)
    proc = ManagedProcess("broker", tansu_argv(HOST, port), log_dir / f"tansu-{port}.log")
    proc.start()
    proc.wait_for_port(HOST, port, deadline_s=10)
    bootstrap = f"{HOST}:{port}"
    asyncio.run(wait_for_broker(bootstrap))
    if topics:
        asyncio.run(ensure_topics(bootstrap, partitions))
    return Broker(bootstrap, port, proc)


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[Broker]:
    """A fresh Tansu broker with the AgentStream topics (6 partitions each)."""
    broker = start_broker(tmp_path)
    try:
        yield broker
    finally:
        broker.process.stop()


@dataclass(frozen=True)
class FalkorServer:
    host: str
    port: int
    data_dir: Path
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"falkordb://{self.host}:{self.port}"


@pytest.fixture
def falkordb(tmp_path: Path) -> Iterator[FalkorServer]:
    """A fresh FalkorDB (redis-server + module) with its own data directory."""
    port = free_port(HOST)
    data = tmp_path / "falkordb"
    data.mkdir()
    proc = ManagedProcess("graph", falkordb_argv(HOST, port, data), tmp_path / "falkordb.log")
    proc.start()
    proc.wait_for_port(HOST, port, deadline_s=15)
    try:
        yield FalkorServer(HOST, port, data, proc)
    finally:
        proc.stop()


# --- an analytics store (chDB) in a temp dir, set up, for the analytics tests ------------
@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"chdb://{tmp_path / 'ch'}"


@pytest.fixture
def projection(url: str) -> Iterator[AnalyticsProjection]:
    p = AnalyticsProjection(url)
    p.setup()
    try:
        yield p
    finally:
        p.close()
