"""The agent page speaks the agent-state vocabulary of version 2 (``actions``, ``errors``,
``mismatches``, ``failed``): its counts and success rates equal the reducer's state folded
here from the published events. Reading version 1's keys (``ok``, ``error``,
``wrong_result``, ``world.actions_ok``) would show zeros or dashes and fail these checks."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from uistack import UIStack, chromium_or_skip

from streams.reducer import fold

pytestmark = pytest.mark.integration


def _api(stack: UIStack, path: str) -> Any:
    with urllib.request.urlopen(stack.url + path, timeout=60) as r:
        return json.loads(r.read())


def _reduced(stack: UIStack) -> tuple[str, Any]:
    """The agent with the most mismatches (so that ``failed`` differs from ``errors``) and
    its state as the reducer folds it from the published events."""
    states, _ = fold(stack.events)
    agent = max(states, key=lambda a: (sum(t.mismatches for t in states[a].tools.values()), a))
    return agent, states[agent]


def test_agent_api_tools_equal_the_reducers_state(stack: UIStack) -> None:
    agent, state = _reduced(stack)
    a = _api(stack, f"/api/v1/agents/{agent}")
    shown = {t["tool"]: t for t in a["tools"]}
    assert set(shown) == set(state.tools)
    assert sum(st.mismatches for st in state.tools.values()) > 0, "workload without mismatches"
    for name, st in state.tools.items():
        t = shown[name]
        assert (t["calls"], t["errors"], t["mismatches"], t["failed"]) == (
            st.actions,
            st.errors,
            st.mismatches,
            st.failed,
        ), name
        assert t["success_rate"] == round(1 - st.failed / st.actions, 4), name
    w = a["state"]["world"]
    assert (w["actions"], w["errors"], w["mismatches"], w["failed"]) == (
        state.world.actions,
        state.world.errors,
        state.world.mismatches,
        state.world.failed,
    )
    assert w["recent_success_rate"] == state.world.recent_success_rate


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    path = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path)
        try:
            yield b
        finally:
            b.close()


def test_agent_page_shows_each_tools_success_rate(browser: Any, stack: UIStack) -> None:
    agent, state = _reduced(stack)
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        page.goto(stack.url + f"/agents/{agent}")
        page.wait_for_selector("tr[data-tool]")
        for name, st in state.tools.items():
            row = page.locator(f'tr[data-tool="{name}"]')
            rate = round((1 - st.failed / st.actions) * 100)
            assert row.locator('[data-col="success"]').inner_text().strip() == f"{rate}%", name
        w = state.world
        assert page.locator('[data-card="success"]').inner_text().strip() == (
            f"{round(w.recent_success_rate * 100)}%"
        )
        assert page.locator('[data-card="failed"]').inner_text().strip() == (
            f"{w.actions} actions / {w.failed} failed ({w.errors} errors, "
            f"{w.mismatches} mismatches)"
        )
    finally:
        ctx.close()
