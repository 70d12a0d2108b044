"""Take the screenshots of docs/ui.md: every page of the UI on a small real stack.

    python docs/ui_screenshots.py            # builds the test stack (~15 s), then shoots
    python docs/ui_screenshots.py --url http://127.0.0.1:8700   # a UI that is running

Uses Debian's chromium through Playwright (never ``playwright install``). The stack is the
one the UI tests use (tests/ui/uistack.py): the simulator's runs, a hostile-text run and
a few bad records, so every page has something to show. Writes docs/ui/<page>.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "ui"))
OUT = HERE / "ui"
# the simulated workload spans minutes: one-minute buckets over its first quarter hour
RANGE = "&bucket=60&since=2026-01-01T00:00:00&until=2026-01-01T00:15:00"


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=120) as r:
        return json.loads(r.read())


def pick(url: str) -> dict[str, str]:
    """A run with failures, its first failed completion, and that run's plan."""
    runs = _get(url + "/api/v1/runs?limit=100&sort=errors")["runs"]
    run = next(r for r in runs if r["run_id"] != "run-xss" and r["errors"] and r["violations"])
    tl = _get(url + f"/api/v1/runs/{run['run_id']}/timeline")
    failed = next(b["completed"] for b in tl["bars"] if b["status"] == "error")
    plan = next(e["id"] for e in tl["events"] if e["kind"] == "plan")
    root = next(e["id"] for e in tl["events"] if e["kind"] == "run_started")
    return {
        "run": run["run_id"],
        "failed": failed,
        "plan": plan,
        "root": root,
        "agent": tl["lanes"][1] if len(tl["lanes"]) > 1 else tl["lanes"][0],
    }


def shoot(url: str, publish: Callable[[], None] | None = None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    ids = pick(url)
    run, failed = ids["run"], ids["failed"]
    OUT.mkdir(exist_ok=True)
    shots = [
        ("runs", "/runs", "table.runs tbody tr", None),
        ("run-timeline", f"/runs/{run}?event={failed}", "aside.inspector .tree", None),
        ("run-list", f"/runs/{run}?view=list&event={failed}", "aside.inspector .tree", None),
        ("debugger", f"/runs/{run}/debug?event={failed}", ".step-state .tree", None),
        ("why", f"/events/{failed}?mode=why", "#cy[data-nodes]", None),
        ("impact", f"/events/{ids['plan']}?mode=impact", "#cy[data-nodes]", None),
        ("path", f"/path?source={failed}&target={ids['root']}", "#cy[data-nodes]", None),
        ("agent", f"/agents/{ids['agent']}", "table.grid", None),
        ("dead-letters", "/deadletters", "tr[data-reason]", "button[data-k]"),
        # part 2 (live events are published while the live view is shot, see shoot_live)
        ("dashboard-cost", "/dashboards/cost?" + RANGE, '[data-chart="cost-agent"] canvas', None),
        ("dashboard-tools", "/dashboards/tools?" + RANGE, '[data-chart="tool-p95"] canvas', None),
        ("dashboard-violations", "/dashboards/violations?category=tool_error" + RANGE,
         '[data-panel="drill"] tbody tr', None),
        ("dashboard-learning", "/dashboards/learning",
         '[data-chart="fleet-recall_rate"] canvas', None),
        ("sql", "/sql?named=least_reliable_tools", "table[data-result] tbody tr",
         'button[data-action="chart"]'),
        ("sql-refused", "/sql?sql=SELECT%20*%20FROM%20file('/etc/passwd')", "p.error", None),
    ]  # fmt: skip
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        for name, path, ready, click in shots:
            page.goto(url + path)
            page.wait_for_selector(ready, timeout=60_000)
            if click:
                page.click(click)
            page.wait_for_timeout(600)  # graph layout animation and fonts settle
            target = OUT / f"{name}.png"
            page.screenshot(path=str(target))
            written.append(target)
        written += shoot_part2(page, url, publish)
        browser.close()
    return written


def shoot_part2(page: Any, url: str, publish: Callable[[], None] | None) -> list[Path]:
    """The live view while events flow (``publish`` sends some for a few seconds), and
    memory search when the UI can recall (it needs the memory projection's store)."""
    import threading

    written = []
    page.goto(url + "/live")
    page.wait_for_selector('[data-conn="live"]', timeout=60_000)
    if publish is not None:
        t = threading.Thread(target=publish)
        t.start()
        page.wait_for_selector('[data-table="tail"] tr[data-ts]', timeout=60_000)
        page.wait_for_timeout(3000)  # a few seconds of rates on the chart
        t.join()
    else:
        page.wait_for_timeout(5000)
    target = OUT / "live.png"
    page.screenshot(path=str(target))
    written.append(target)
    lesson = _lesson(url)
    if lesson is None:
        print("memory search: no episodes with a lesson to search for; shot skipped")
        return written
    query = urllib.parse.urlencode({"q": lesson["situation"], "k": 5})
    page.goto(url + "/memory?" + query)
    try:
        page.wait_for_selector("[data-episode]", timeout=120_000)
    except Exception:
        print("memory search: the UI could not recall (is the memory projection running?)")
        return written
    target = OUT / "memory.png"
    page.screenshot(path=str(target))
    written.append(target)
    return written


def _lesson(url: str) -> dict[str, str] | None:
    sql = (
        "SELECT situation FROM episodes FINAL WHERE lesson IS NOT NULL "
        "AND agent_id != 'xss-agent' ORDER BY episode_id LIMIT 1"
    )
    rows = _get(url + "/api/v1/sql?" + urllib.parse.urlencode({"sql": sql}))["rows"]
    return {"situation": rows[0][0]} if rows else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running UI (default: build the test stack)")
    args = ap.parse_args()
    if args.url:
        written = shoot(args.url.rstrip("/"))
    else:
        from part2kit import fresh_events, start_memory
        from part2kit import publish as send
        from uistack import build

        root = Path(tempfile.mkdtemp(prefix="ui_shots_"))
        stack = build(root)
        memory = None
        try:
            memory = start_memory(stack)

            def publish() -> None:
                for i in range(6):
                    send(stack, fresh_events(f"run-live-{i}", agent=f"live-agent-{i % 3}"))

            written = shoot(stack.url, publish)
        finally:
            if memory is not None:
                memory.stop()
            stack.stop()
            shutil.rmtree(root, ignore_errors=True)
    for w in written:
        print(w.relative_to(HERE.parent))


if __name__ == "__main__":
    main()
