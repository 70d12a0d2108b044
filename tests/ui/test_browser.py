"""What a user sees, in Debian's Chromium driven by Playwright, on the shared real stack.

Skipped (one line) without chromium; under CI=true a missing browser fails instead."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import truth
from playwright.sync_api import expect
from uistack import HOST, XSS, UIStack

pytestmark = pytest.mark.integration


@pytest.fixture
def page(browser, stack: UIStack) -> Iterator[object]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # anything the CSP had to block (inline script or style, eval) is a bug of ours
    pg.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    pg.set_default_timeout(30_000)
    yield pg
    ctx.close()
    assert not errors, errors


def test_runs_list_shows_the_simulated_runs_with_their_counts(page, stack: UIStack) -> None:
    page.goto(stack.url + "/runs")
    ids = truth.run_ids(stack.events)
    page.wait_for_selector("table.runs tbody tr")
    rows = page.locator("table.runs tbody tr")
    assert rows.count() == len(ids)
    pager = page.locator(".pager").inner_text()
    assert pager.startswith(f"1\N{EN DASH}{len(ids)} of {len(ids)} runs")
    for run_id in ids:
        row = page.locator(f'tr[data-run="{run_id}"]')
        evs = stack.run_events(run_id)
        assert row.locator('[data-col="events"]').inner_text() == f"{len(evs):,}"
        assert row.locator('[data-col="actions"]').inner_text() == f"{len(truth.actions(evs)):,}"
        assert row.locator('[data-col="errors"]').inner_text() == f"{len(truth.errors(evs)):,}"
    # a filter narrows the list, and the URL keeps it
    page.select_option("select[name=agent]", "xss-agent")
    page.click("button[type=submit]")
    expect(page.locator("table.runs tbody tr")).to_have_count(1)
    assert "agent=xss-agent" in page.url
    page.click('tr[data-run="run-xss"] a.mono')
    page.wait_for_selector("canvas[data-lanes]")
    assert page.url.endswith("/runs/run-xss")


def test_run_timeline_has_a_lane_per_agent_and_every_action_bar(page, stack: UIStack) -> None:
    run_id, failed = truth.failed_completion_run(stack.events)
    evs = stack.run_events(run_id)
    page.goto(stack.url + f"/runs/{run_id}")
    page.wait_for_selector("canvas[data-lanes]")
    lanes = page.locator(".lane-label").all_inner_texts()
    assert sorted(lanes) == sorted({e.agentid for e in evs})
    page.wait_for_selector("canvas[data-bars-painted]")
    assert int(page.get_attribute("canvas", "data-bars-painted")) == truth.bars(evs)
    # clicking the list row of the failed completion opens the inspector on it
    page.click("text=List")
    page.click(f'.vlist .row[data-id="{failed.id}"]')
    inspector = page.wait_for_selector(f'aside.inspector[data-event="{failed.id}"] h2')
    assert "completed" in inspector.inner_text()
    page.wait_for_selector("aside.inspector .tree")
    assert failed.data.result in page.locator("aside.inspector .tree").inner_text()


def test_stepping_to_a_failed_completion_shows_the_state_diff(page, stack: UIStack) -> None:
    run_id, failed = truth.failed_completion_run(stack.events)
    page.goto(stack.url + f"/runs/{run_id}/debug")
    page.wait_for_selector(".step-event")
    page.keyboard.press("ArrowRight")
    page.wait_for_selector('.step-event[data-step="1"]')
    page.keyboard.press("ArrowLeft")
    page.wait_for_selector('.step-event[data-step="0"]')
    for _ in range(50):  # f: the next failure, until the failed completion
        before = page.locator(".pos").get_attribute("data-pos")
        page.keyboard.press("f")
        page.wait_for_selector(f'.pos:not([data-pos="{before}"])')
        pos = page.locator(".pos").get_attribute("data-pos")
        page.wait_for_selector(f'.step-event[data-step="{pos}"][data-failure="true"]')
        if page.locator(".step-event dd a.mono").first.inner_text() == failed.id:
            break
    else:
        raise AssertionError("never reached the failed completion")
    tool, call = failed.data.tool, failed.data.call_id
    errors_row = page.locator(
        f'.changes tr[data-path="tools[{tool}].errors"], .changes tr[data-path="tools[{tool}]"]'
    )
    assert errors_row.count() >= 1
    removed = page.locator(f'.changes tr[data-path="open_actions[{call}]"]')
    assert "removed" in removed.locator("td.after").inner_text()
    assert page.locator(".step-state .tree .changed").count() > 0
    assert page.locator(".failure-flag").is_visible()


def test_causality_graph_holds_exactly_the_simulated_ancestors(page, stack: UIStack) -> None:
    _, failed = truth.failed_completion_run(stack.events)
    page.goto(stack.url + f"/events/{failed.id}?mode=why&depth=1000")
    page.wait_for_selector("#cy[data-nodes]")
    listed = {li.get_attribute("data-id") for li in page.locator(".node-list li").all()}
    assert listed == truth.ancestors(stack.events, failed.id) | {failed.id}
    assert int(page.get_attribute("#cy", "data-nodes")) == len(listed)
    assert page.locator("#cy canvas").count() > 0
    # a click on a listed cause re-centres the page on it
    cause = failed.causes[0]
    page.click(f'.node-list li[data-id="{cause}"] a.mono')
    page.wait_for_selector(f'.node-list li.target[data-id="{cause}"]')
    assert len(page.locator(".node-list li").all()) == len(truth.ancestors(stack.events, cause)) + 1


def _inert(page) -> None:
    assert page.evaluate("window.__xss") is None
    assert page.locator("#app script, #app img, #app iframe").count() == 0
    hrefs = [a.get_attribute("href") for a in page.locator("#app a").all()]
    assert not [h for h in hrefs if h and h.strip().lower().startswith("javascript:")]


def test_hostile_event_text_renders_inert(page, stack: UIStack) -> None:
    page.goto(stack.url + "/runs")
    page.wait_for_selector('tr[data-run="run-xss"]')
    assert XSS[0] in page.locator('tr[data-run="run-xss"] td.goal').inner_text()
    _inert(page)
    xss = stack.run_events("run-xss")
    page.goto(stack.url + "/runs/run-xss?view=list")
    page.wait_for_selector(".vlist .row[data-id]")
    for e in xss:
        page.click(f'.vlist .row[data-id="{e.id}"]')
        page.wait_for_selector(f'aside.inspector[data-event="{e.id}"] .tree')
        _inert(page)
    assert XSS[1] in page.locator("aside.inspector .tree").inner_text()
    page.goto(stack.url + "/runs/run-xss/debug")
    page.wait_for_selector(".step-event")
    for _ in xss:
        page.keyboard.press("ArrowRight")
    page.wait_for_selector(f'.step-event[data-step="{len(xss) - 1}"]')
    _inert(page)
    page.goto(stack.url + "/agents/xss-agent")
    page.wait_for_selector("h2:has-text('Tools')")
    assert "<b>tool</b>" in page.locator("table.grid").first.inner_text()
    _inert(page)
    page.goto(stack.url + "/deadletters")
    page.wait_for_selector("tr[data-reason]")
    for k in [b.get_attribute("data-k") for b in page.locator("button[data-k]").all()]:
        page.click(f'button[data-k="{k}"]')
    shown = "".join(page.locator("pre.bytes").all_inner_texts())
    assert "<script>window.__xss='dlq'</script>" in shown
    _inert(page)


def test_the_token_is_required_when_set(browser, stack: UIStack) -> None:
    import uvicorn

    from agentstream.ui.app import create_app
    from agentstream.ui.server import bind, url_of

    token = "browser-test-token-0123456789"
    sock = bind(HOST, 0)
    url = url_of(sock)
    server = uvicorn.Server(
        uvicorn.Config(create_app(stack.settings, token=token), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    ctx = browser.new_context()
    try:
        pg = ctx.new_page()
        pg.goto(url + "/runs")
        pg.wait_for_selector("form input[name=token]")
        assert "/login" in pg.url
        assert pg.goto(url + "/api/v1/runs").status == 401
        pg.goto(url + "/login?next=/runs")
        pg.fill("input[name=token]", "wrong-token-wrong-token")
        pg.click("button[type=submit]")
        pg.wait_for_selector("p.error")
        pg.fill("input[name=token]", token)
        pg.click("button[type=submit]")
        pg.wait_for_selector("table.runs tbody tr")
        assert pg.url.endswith("/runs")
    finally:
        ctx.close()
        server.should_exit = True
        thread.join(10)
