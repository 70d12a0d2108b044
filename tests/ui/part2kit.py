"""Helpers of the part-2 UI tests (live view, dashboards, SQL workspace, memory search):
HTTP, the real CLI on the shared stack, publishing fresh events, and the browser."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from uistack import UIStack

from schemas.envelope import Event


def get(stack: UIStack, path: str, status: int = 200) -> Any:
    try:
        with urllib.request.urlopen(stack.url + path, timeout=120) as r:
            assert r.status == status, path
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        assert err.code == status, (path, err.code, body[:300])
        return json.loads(body or b"null")


def get_bytes(stack: UIStack, path: str) -> bytes:
    with urllib.request.urlopen(stack.url + path, timeout=120) as r:
        assert r.status == 200, path
        return r.read()


def qs(**params: Any) -> str:
    pairs: list[tuple[str, str]] = []
    for k, v in params.items():
        for item in v if isinstance(v, list) else [v]:
            pairs.append((k, str(item)))
    return urllib.parse.urlencode(pairs)


def cli(stack: UIStack, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``agentstream ARGS`` as a user runs it, on the stack's settings."""
    return subprocess.run(
        [sys.executable, "-m", "agentstream.cli", *args],
        env=stack.env(),
        capture_output=True,
        timeout=180,
    )


def fresh_events(run_id: str, agent: str = "live-agent", n_actions: int = 3) -> list[Event]:
    """A small run stamped with the wall clock (so it is 'now' for the live view)."""
    from streams.emitter import EventFactory

    f = EventFactory(agent, run_id=run_id, source="/test/live", clock=lambda: datetime.now(UTC))
    out = [f.run_started(f"live test {run_id}")]
    for i in range(n_actions):
        out.append(f.thought(f"step {i}", model="gpt-4o", input_tokens=5, output_tokens=2))
        start = f.action_started("search", {"q": str(i)}, expected="results")
        out.append(start)
        out.append(f.action_completed(start, status="ok", result="found", actual="results"))
    out.append(f.run_finished("succeeded", "done"))
    return out


def publish(stack: UIStack, events: list[Event]) -> None:
    from streams.producer import EventProducer

    async def go() -> None:
        producer = EventProducer(stack.settings.bootstrap_servers)
        await producer.start()
        try:
            for e in events:
                await producer.send(e)
            await producer.flush()
        finally:
            await producer.close()

    # in a thread of its own: Playwright's sync API keeps an event loop in the test's thread
    failed: list[BaseException] = []
    t = threading.Thread(target=lambda: _run_or_keep(go, failed))
    t.start()
    t.join(60)
    if failed:
        raise failed[0]


def _run_or_keep(go: Any, failed: list[BaseException]) -> None:
    try:
        asyncio.run(go())
    except BaseException as err:
        failed.append(err)


@pytest.fixture
def page(browser: Any, stack: UIStack) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    pg.set_default_timeout(30_000)
    yield pg
    ctx.close()
    assert not errors, errors


async def _memory_caught_up(bootstrap: str) -> bool:
    from schemas.topics import EPISODES
    from streams.processor import committed_offsets
    from streams.state_reader import fetch_high_watermarks

    hw = await fetch_high_watermarks(bootstrap, EPISODES)
    done = await committed_offsets(bootstrap, "agentstream-memory", EPISODES, hw)
    return all(done.get(p, 0) >= end for p, end in hw.items())


def start_memory(stack: UIStack, timeout_s: float = 180.0) -> Any:
    """``agentstream project memory`` next to the stack, caught up with agent-episodes."""
    import time

    from uistack import _start

    proc = _start(
        "memory",
        [sys.executable, "-m", "agentstream.cli", "project", "memory"],
        stack.root / "logs" / "memory.log",
        stack.env(),
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not asyncio.run(_memory_caught_up(stack.settings.bootstrap_servers)):
            if proc.proc is not None and proc.proc.poll() is not None:
                raise RuntimeError(f"the memory projection exited: see {proc.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError("the memory projection did not catch up")
            time.sleep(0.5)
    except BaseException:
        proc.stop()
        raise
    return proc
