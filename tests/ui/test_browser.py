"""What a user sees, in Debian's Chromium driven by Playwright, on the shared real stack.

Skipped (one line) without chromium; under CI=true a missing browser fails instead."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import truth
from playwright.sync_api import expect
from uistack import TENANT, XSS, UIStack

from schemas import payloads as p

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
    # zoom in (wheel at the pointer, then the + button) shows fewer bars; *fit* all again
    every = f'canvas[data-bars-painted="{truth.bars(evs)}"]'
    box = page.locator("canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
    for _ in range(5):
        page.mouse.wheel(0, -240)
    for _ in range(3):
        page.click("button:has-text('+')")
    page.wait_for_selector(f"canvas:not({every[6:]})")
    page.click("button:has-text('fit')")
    page.wait_for_selector(every)
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


def api(stack: UIStack, path: str) -> dict:
    with urllib.request.urlopen(stack.url + "/api/v1" + path, timeout=60) as r:
        return json.loads(r.read())


def _column(page, col: str) -> list[int]:
    cells = page.locator(f'table.runs tbody td[data-col="{col}"]').all_inner_texts()
    return [int(c.replace(",", "")) for c in cells]


def test_runs_list_filters_sorts_and_pages(page, stack: UIStack) -> None:
    ids = truth.run_ids(stack.events)
    # tenant
    page.goto(stack.url + "/runs")
    page.wait_for_selector(f'select[name=tenant] option[value="{TENANT}"]', state="attached")
    page.select_option("select[name=tenant]", TENANT)
    page.click("button[type=submit]")
    expect(page.locator("table.runs tbody tr")).to_have_count(1)
    assert page.locator("table.runs tbody tr").get_attribute("data-run") == "acme/run-1"
    assert f"tenant={TENANT}" in page.url
    # its id holds a "/": the link, the run page and its step-through still work
    page.click('tr[data-run="acme/run-1"] a.mono')
    page.wait_for_selector('canvas[data-bars-painted="0"]')
    assert page.url.endswith("/runs/acme%2Frun-1")
    assert page.locator(".lane-label").all_inner_texts() == ["acme-agent"]
    page.goto(stack.url + "/runs/acme%2Frun-1/debug?step=2")
    page.wait_for_selector('.step-event[data-step="2"]')
    page.goto(stack.url + "/agents/acme-agent")
    page.wait_for_selector('h2:has-text("Recent runs") + div a.mono:has-text("acme/run-1")')
    # start time range (UTC): the runs whose first event is on 2026-01-05
    started = {r: min(e.time for e in stack.run_events(r)) for r in ids}
    day = (datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 1, 6, tzinfo=UTC))
    want = sorted(r for r, t in started.items() if day[0] <= t < day[1])
    assert want, "the workload has a run on that day"
    page.goto(stack.url + "/runs")
    page.wait_for_selector("table.runs tbody tr")
    page.fill("input[name=since]", "2026-01-05T00:00")
    page.fill("input[name=until]", "2026-01-06T00:00")
    page.click("button[type=submit]")
    expect(page.locator("table.runs tbody tr")).to_have_count(len(want))
    got = page.locator("table.runs tbody tr").evaluate_all("rs => rs.map(r => r.dataset.run)")
    assert sorted(got) == want
    assert "since=2026-01-05T00%3A00" in page.url
    # text in the goal, any case
    page.goto(stack.url + "/runs")
    page.wait_for_selector("table.runs tbody tr")
    page.fill("input[name=goal]", "WINDOW.__XSS")
    page.click("button[type=submit]")
    expect(page.locator("table.runs tbody tr")).to_have_count(1)
    assert page.locator("table.runs tbody tr").get_attribute("data-run") == "run-xss"
    # sorting by a column, both ways
    page.goto(stack.url + "/runs")
    page.wait_for_selector("table.runs tbody tr")
    page.click("th:has-text('Events')")
    page.wait_for_selector("th.sorted:has-text('Events ↓')")
    assert "sort=events" in page.url
    events = sorted(len(stack.run_events(r)) for r in ids)
    assert _column(page, "events") == events[::-1]
    page.click("th:has-text('Events')")
    page.wait_for_selector("th.sorted:has-text('Events ↑')")
    assert _column(page, "events") == events
    # paging: 3 a page, each page the next slice of the same order
    page.goto(stack.url + "/runs?limit=3&sort=events&desc=false")
    seen: list[str] = []
    for offset in range(0, len(ids), 3):
        last = min(offset + 3, len(ids))
        expect(page.locator(".pager span").first).to_have_text(
            f"{offset + 1}\N{EN DASH}{last} of {len(ids)} runs"
        )
        seen += page.locator("table.runs tbody tr").evaluate_all("rs => rs.map(r => r.dataset.run)")
        if last < len(ids):
            page.click("button:has-text('Next')")
    assert sorted(seen) == ids and len(set(seen)) == len(ids)
    assert page.locator("button:has-text('Next')").is_disabled()


def test_timeline_paints_bars_by_status_marks_messages_and_flags(page, stack: UIStack) -> None:
    run_id, failed = truth.failed_completion_run(stack.events)
    evs = stack.run_events(run_id)
    tl = api(stack, f"/runs/{run_id}/timeline")
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/v1/" in r.url else None)
    page.goto(stack.url + f"/runs/{run_id}")
    canvas = page.wait_for_selector(f'canvas[data-bars-painted="{truth.bars(evs)}"]')
    page.wait_for_selector(".stats")  # the run's summary is drawn too
    # the shell preloaded both answers and the page used them: one request each
    run_api = f"{stack.url}/api/v1/runs/{run_id}"
    assert sorted(asked) == [run_api, run_api + "/timeline"]
    by_status = dict(kv.split(":") for kv in canvas.get_attribute("data-bars-by-status").split())
    assert int(by_status.get("error", 0)) == len(truth.errors(evs))
    assert sum(map(int, by_status.values())) == truth.bars(evs)
    act = (p.ActionStarted, p.ActionCompleted)
    assert int(canvas.get_attribute("data-marks-painted")) == sum(
        not isinstance(e.data, act) for e in evs
    )
    lanes = {e.agentid for e in evs}
    messages = [e for e in evs if isinstance(e.data, p.Message) and e.data.to_agent in lanes]
    assert int(canvas.get_attribute("data-messages-painted")) == len(messages)
    flagged = {v["detected_by"] for v in tl["violations"]}
    assert flagged, "the run has violations"
    assert int(canvas.get_attribute("data-flags-painted")) == len(flagged)
    # the violations under the timeline, each a link that selects its event
    assert page.locator("table.violations tbody tr").count() == len(tl["violations"])
    # a click on the failed bar's completion opens the inspector on it
    page.goto(stack.url + f"/runs/{run_id}?event={failed.id}")
    inspector = page.wait_for_selector(f'aside.inspector[data-event="{failed.id}"] h2')
    assert "completed" in inspector.inner_text()


def test_inspector_shows_causes_effects_and_the_violation(page, stack: UIStack) -> None:
    run_id, failed = truth.failed_completion_run(stack.events)
    evs = stack.run_events(run_id)
    detail = api(stack, f"/events/{failed.id}")
    assert detail["violations"], "a failed completion triggers a violation"
    page.goto(stack.url + f"/runs/{run_id}?event={failed.id}")
    box = page.wait_for_selector(f'aside.inspector[data-event="{failed.id}"] h2')
    box = page.locator("aside.inspector")
    effects = [e.id for e in evs if failed.id in e.causes]
    expect(box.locator("h3", has_text="Causes")).to_have_text(f"Causes ({len(failed.causes)})")
    expect(box.locator("h3", has_text="Effects")).to_have_text(
        f"Effects in this run ({len(effects)})"
    )
    for c in failed.causes:
        assert box.locator(f'ul.ids a[href$="event={c}"]').count() == 1
    shown = box.locator("div.error b").all_inner_texts()
    assert sorted(shown) == sorted(v["category"] for v in detail["violations"])
    assert box.locator(f'a[href$="/events/{failed.id}?mode=why"]').count() == 1
    # a cause is a link that selects it in the same page
    cause = failed.causes[0]
    box.locator(f'ul.ids a[href$="event={cause}"]').click()
    page.wait_for_selector(f'aside.inspector[data-event="{cause}"] h2')
    assert page.url.endswith(f"event={cause}")


def test_debugger_plays_pauses_changes_speed_and_jumps(page, stack: UIStack) -> None:
    run_id, _ = truth.failed_completion_run(stack.events)
    index = api(stack, f"/runs/{run_id}/steps")
    page.goto(stack.url + f"/runs/{run_id}/debug")
    page.wait_for_selector('.step-event[data-step="0"]')
    speed = page.locator("select[aria-label=speed]")
    assert speed.input_value() == "2"
    page.keyboard.press("+")
    expect(speed).to_have_value("4")
    page.keyboard.press("-")
    page.keyboard.press("-")
    expect(speed).to_have_value("1")
    speed.select_option("32")
    speed.evaluate("e => e.blur()")  # the keys belong to the page again
    page.keyboard.press("G")
    page.wait_for_selector(f'.pos[data-pos="{index["count"] - 1}"]')
    page.keyboard.press("g")
    page.wait_for_selector('.pos[data-pos="0"]')
    play = page.locator("button[aria-label=play]")
    page.keyboard.press(" ")
    expect(play).to_contain_text("pause")
    page.wait_for_function("() => Number(document.querySelector('.pos').dataset.pos) >= 3")
    page.keyboard.press(" ")
    expect(play).to_contain_text("play")
    stopped = int(page.locator(".pos").get_attribute("data-pos"))
    page.wait_for_selector(f'.step-event[data-step="{stopped}"]')
    # f / F: next and previous failure, in the order the reducer found them
    fails = index["failures"]
    assert len(fails) >= 2
    page.keyboard.press("g")
    page.wait_for_selector('.pos[data-pos="0"]')
    for at in fails[:2]:
        page.keyboard.press("f")
        page.wait_for_selector(f'.step-event[data-step="{at}"][data-failure="true"]')
    page.keyboard.press("F")
    page.wait_for_selector(f'.step-event[data-step="{fails[0]}"]')
    assert f"step={fails[0]}" in page.url  # the step is in the URL


def _cy_positions(page) -> dict:
    return page.evaluate(
        """() => { const cy = document.getElementById('cy')._cyreg.cy; const out = {};
        cy.nodes().forEach((n) => { out[n.id()] = n.renderedPosition(); });
        const edges = cy.edges().map((e) => [e.source().id(), e.target().id()]);
        return { nodes: out, edges }; }"""
    )


def test_causality_depth_layered_layout_and_a_click_on_a_node(page, stack: UIStack) -> None:
    _, failed = truth.failed_completion_run(stack.events)
    page.goto(stack.url + f"/events/{failed.id}?mode=why&depth=1")
    page.wait_for_selector("#cy[data-nodes]")
    listed = {li.get_attribute("data-id") for li in page.locator(".node-list li").all()}
    assert listed == {failed.id, *failed.causes}
    # the depth field: two hops back
    page.fill("input[aria-label=depth]", "2")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"depth=2"))
    two = {failed.id, *failed.causes}
    for c in failed.causes:
        two |= set(next((e.causes for e in stack.events if e.id == c), ()))
    expect(page.locator(".node-list li")).to_have_count(len(two))
    # layered, causes left of their effects
    page.goto(stack.url + f"/events/{failed.id}?mode=why&depth=1000")
    page.wait_for_selector("#cy[data-nodes]")
    drawn = _cy_positions(page)
    assert set(drawn["nodes"]) == truth.ancestors(stack.events, failed.id) | {failed.id}
    assert drawn["edges"]
    for src, dst in drawn["edges"]:
        assert drawn["nodes"][src]["x"] < drawn["nodes"][dst]["x"], (src, dst)
    # a click on a node of the graph re-centres the page on that event
    cause = failed.causes[0]
    at = drawn["nodes"][cause]
    box = page.locator("#cy").bounding_box()
    page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])
    page.wait_for_selector(f'.node-list li.target[data-id="{cause}"]')
    assert f"/events/{cause}" in page.url


def test_impact_and_path_pages(page, stack: UIStack) -> None:
    _, failed = truth.failed_completion_run(stack.events)
    ancestors = truth.ancestors(stack.events, failed.id)
    by_id = {e.id: e for e in stack.events}
    root = next(a for a in sorted(ancestors) if a in by_id and not by_id[a].causes)
    downstream = {e.id for e in stack.events if root in truth.ancestors(stack.events, e.id)}
    page.goto(stack.url + f"/events/{root}?mode=impact&depth=1000")
    page.wait_for_selector("#cy[data-nodes]")
    listed = {li.get_attribute("data-id") for li in page.locator(".node-list li").all()}
    assert listed == downstream | {root}
    assert failed.id in listed
    # path: the failed completion back to that root, hop by hop along causes
    page.goto(stack.url + f"/events/{failed.id}?mode=why")
    page.wait_for_selector("#cy[data-nodes]")
    page.fill("input[aria-label='path target']", root)
    page.click("button:has-text('find path')")
    page.wait_for_url(re.compile(r"/path\?"))
    page.wait_for_selector("#cy[data-nodes]")
    chain = [li.get_attribute("data-id") for li in page.locator(".node-list li").all()]
    if chain[0] != root:  # the page asked for root -> failed: effects order
        chain = chain[::-1]
    assert chain[0] == root and chain[-1] == failed.id
    for cause, effect in itertools.pairwise(chain):
        assert cause in by_id[effect].causes
    assert f"in {len(chain) - 1} hop(s)" in page.locator("main p").first.inner_text()


def test_agent_page_shows_state_tools_runs_and_violations(page, stack: UIStack) -> None:
    agent = "coder-1"
    mine = [e for e in stack.events if e.agentid == agent]
    page.goto(stack.url + f"/agents/{agent}")
    page.wait_for_selector("[data-card=events]")
    assert page.locator("[data-card=events]").inner_text() == f"{len(mine):,}"
    calls: dict[str, int] = {}
    for e in truth.actions(mine):
        calls[e.data.tool] = calls.get(e.data.tool, 0) + 1
    rows = page.locator("tr[data-tool]")
    expect(rows).to_have_count(len(calls))
    for tool, n in calls.items():
        assert page.locator(f'tr[data-tool="{tool}"] td').nth(1).inner_text() == str(n)
    runs = {e.runid for e in mine if e.runid}
    shown = page.locator("h2:has-text('Recent runs') + div tbody tr a.mono").all_inner_texts()
    assert set(shown) == runs
    violations = api(stack, f"/agents/{agent}")["violations"]
    assert violations, "coder-1 has violations in the workload"
    expect(page.locator("h2:has-text('Violations') + div tbody tr")).to_have_count(len(violations))


def test_dead_letters_filter_by_reason(page, stack: UIStack) -> None:
    every = api(stack, "/deadletters")
    reason, n = sorted(every["reasons"].items())[0]
    page.goto(stack.url + "/deadletters")
    page.wait_for_selector("tr[data-reason]")
    assert page.locator("tr[data-reason]").count() == every["total"]
    page.click(f'.chips a[href$="reason={reason}"]')
    page.wait_for_url(re.compile(f"reason={reason}"))
    expect(page.locator("tr[data-reason]")).to_have_count(n)
    assert set(
        page.locator("tr[data-reason]").evaluate_all("rs => rs.map(r => r.dataset.reason)")
    ) == {reason}


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the route out), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_the_token_is_required_off_loopback(browser, stack: UIStack) -> None:
    """`agentstream ui --host 0.0.0.0` as a process: refused without a token (the line says
    why); with one, reached on the machine's own address, pages ask for it and the API
    answers 401 until the login cookie is set."""
    cli = [sys.executable, "-m", "agentstream.cli", "ui", "--host", "0.0.0.0", "--port", "0"]
    env = {**os.environ, **stack.env()}
    env.pop("AGENTSTREAM_UI_TOKEN", None)
    refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "refusing to serve the UI on 0.0.0.0" in refused.stderr
    token = "browser-test-token-0123456789"
    proc = subprocess.Popen(
        cli, env={**env, "AGENTSTREAM_UI_TOKEN": token}, stdout=subprocess.PIPE, text=True
    )
    ctx = browser.new_context()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(re.search(r"http://0\.0\.0\.0:(\d+)/runs", line).group(1))
        url = f"http://{_non_loopback_address() or '127.0.0.1'}:{port}"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/api/v1/runs", timeout=30)
        assert err.value.code == 401
        pg = ctx.new_page()
        assert pg.goto(url + "/api/v1/runs").status == 401
        pg.goto(url + "/runs/run-xss?view=list")
        pg.wait_for_selector("form input[name=token]")
        assert "/login" in pg.url
        pg.fill("input[name=token]", "wrong-token-wrong-token")
        pg.click("button[type=submit]")
        pg.wait_for_selector("p.error")
        pg.fill("input[name=token]", token)
        pg.click("button[type=submit]")
        pg.wait_for_selector(".vlist .row[data-id]")  # back on the page asked for, query and all
        assert pg.url == url + "/runs/run-xss?view=list"
        assert pg.goto(url + "/api/v1/runs").status == 200
        bearer = urllib.request.Request(
            url + "/api/v1/runs", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(bearer, timeout=30) as r:
            assert r.status == 200
    finally:
        ctx.close()
        proc.terminate()
        proc.wait(15)
