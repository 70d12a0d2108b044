"""/api/v1 over real HTTP against the shared stack: each answer is checked against the
published workload (ground truth) or against the CLI on the same data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
import truth
from uistack import BAD_RECORDS, XSS_TEXT, UIStack

from agentstream.debug_replay import TimelineFilter, build_timeline
from schemas import payloads as p

pytestmark = pytest.mark.integration


def get(stack: UIStack, path: str, status: int = 200) -> Any:
    try:
        with urllib.request.urlopen(stack.url + path, timeout=60) as r:
            assert r.status == status, path
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        assert err.code == status, (path, err.code, err.read()[:300])
        return json.loads(err.read() or b"null")


def test_openapi_documents_every_route(stack: UIStack) -> None:
    paths = get(stack, "/api/v1/openapi.json")["paths"]
    for route in (
        "/api/v1/runs",
        "/api/v1/runs/facets",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/timeline",
        "/api/v1/runs/{run_id}/steps",
        "/api/v1/runs/{run_id}/steps/{index}",
        "/api/v1/events/{event_id}",
        "/api/v1/events/{event_id}/why",
        "/api/v1/events/{event_id}/impact",
        "/api/v1/path",
        "/api/v1/agents/{agent_id}",
        "/api/v1/deadletters",
    ):
        assert route in paths, route
        assert all(op.get("summary") for op in paths[route].values()), route


def test_runs_list_matches_the_workload(stack: UIStack) -> None:
    ids = truth.run_ids(stack.events)
    page = get(stack, "/api/v1/runs?limit=500")
    assert page["total"] == len(ids)
    rows = {r["run_id"]: r for r in page["runs"]}
    assert sorted(rows) == ids
    for run_id in ids:
        evs = stack.run_events(run_id)
        row = rows[run_id]
        assert row["events"] == len(evs), run_id
        assert row["actions"] == len(truth.actions(evs)), run_id
        assert row["errors"] == len(truth.errors(evs)), run_id
        assert row["agents"] == sorted({e.agentid for e in evs}), run_id
        finished = [e.data.status for e in evs if isinstance(e.data, p.RunFinished)]
        assert row["status"] == finished[-1], run_id


def test_runs_filter_sort_and_page(stack: UIStack) -> None:
    ids = truth.run_ids(stack.events)
    every = get(stack, "/api/v1/runs?limit=500")["runs"]
    failed = get(stack, "/api/v1/runs?status=failed&limit=500")
    assert {r["run_id"] for r in failed["runs"]} == {
        r["run_id"] for r in every if r["status"] == "failed"
    }
    by_agent = get(stack, "/api/v1/runs?agent=xss-agent")
    assert [r["run_id"] for r in by_agent["runs"]] == ["run-xss"]
    goal = get(stack, "/api/v1/runs?goal=" + urllib.request.quote("WINDOW.__xss"))
    assert [r["run_id"] for r in goal["runs"]] == ["run-xss"]
    asc = get(stack, "/api/v1/runs?sort=events&desc=false&limit=500")["runs"]
    assert [r["events"] for r in asc] == sorted(r["events"] for r in asc)
    seen: list[str] = []
    for offset in range(0, len(ids), 2):
        page = get(stack, f"/api/v1/runs?limit=2&offset={offset}&sort=started")
        assert page["total"] == len(ids)
        seen += [r["run_id"] for r in page["runs"]]
    assert sorted(seen) == ids and len(seen) == len(set(seen))
    assert get(stack, "/api/v1/runs?sort=nonsense", 400)["ok"] is False


def test_timeline_has_lanes_bars_and_violations(stack: UIStack) -> None:
    run_id, _ = truth.failed_completion_run(stack.events)
    evs = stack.run_events(run_id)
    tl = get(stack, f"/api/v1/runs/{run_id}/timeline")
    assert set(tl["lanes"]) == {e.agentid for e in evs}
    in_order = sorted(evs, key=lambda e: (e.time, e.id))
    assert [e["id"] for e in tl["events"]] == [e.id for e in in_order]
    assert len(tl["bars"]) == truth.bars(evs)
    assert sum(b["status"] == "error" for b in tl["bars"]) == len(truth.errors(evs))
    messages = [e for e in evs if isinstance(e.data, p.Message)]
    assert len(tl["messages"]) == len(messages)
    summary = get(stack, f"/api/v1/runs/{run_id}")
    assert len(tl["violations"]) == summary["violations"]


def test_step_is_the_cli_replay_debug(stack: UIStack) -> None:
    run_id, failed = truth.failed_completion_run(stack.events)
    index = get(stack, f"/api/v1/runs/{run_id}/steps")
    expected = build_timeline([(None, e) for e in stack.events], TimelineFilter(run_id=run_id))
    assert [s["id"] for s in index["steps"]] == [s.event.id for s in expected.steps]
    assert index["failures"] == expected.failures()
    at = next(s["index"] for s in index["steps"] if s["id"] == failed.id)
    assert at in index["failures"]
    step = get(stack, f"/api/v1/runs/{run_id}/steps/{at}")
    tool, call = failed.data.tool, failed.data.call_id
    counted = [k for k in step["changes"] if k.startswith((f"tools[{tool}].", f"tools[{tool}]"))]
    assert counted, step["changes"].keys()  # the failed call is counted for its tool
    assert step["changes"][f"open_actions[{call}]"]["after"] is None
    cli = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "replay", "debug", "--run", run_id, "--json"],
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    cli_step = json.loads(cli.stdout)["steps"][at]
    assert cli_step["event"]["id"] == step["event"]["id"]
    assert cli_step["state"] == step["state"]
    assert cli_step["changes"] == step["changes"]
    get(stack, f"/api/v1/runs/{run_id}/steps/{index['count']}", 404)


def test_why_is_exactly_the_simulated_ancestry(stack: UIStack) -> None:
    _, failed = truth.failed_completion_run(stack.events)
    why = get(stack, f"/api/v1/events/{failed.id}/why?depth=1000")
    got = {e["id"] for e in why["events"]} - {failed.id}
    assert got == truth.ancestors(stack.events, failed.id)
    impact = get(stack, f"/api/v1/events/{failed.id}/impact")
    assert impact["event"]["id"] == failed.id
    root = next(e["id"] for e in why["events"] if e["id"] in why["roots"])
    chain = get(stack, f"/api/v1/path?source={failed.id}&target={root}")
    assert chain["relation"] == "caused_by"
    assert chain["events"][0]["id"] == failed.id and chain["events"][-1]["id"] == root


def test_event_detail_and_errors(stack: UIStack) -> None:
    _, failed = truth.failed_completion_run(stack.events)
    e = get(stack, f"/api/v1/events/{failed.id}")
    assert e["payload"]["status"] == "error"
    assert e["causes"] == list(failed.causes)
    assert e["agent_id"] == failed.agentid
    assert get(stack, "/api/v1/events/not-a-uuid", 400)["ok"] is False
    assert get(stack, "/api/v1/runs/no-such-run/timeline", 404)["ok"] is False
    assert get(stack, "/api/v1/events/00000000-0000-7000-8000-000000000000/why", 404)


def test_agent_state_tools_and_runs(stack: UIStack) -> None:
    agent = "coder-1"
    a = get(stack, f"/api/v1/agents/{agent}")
    mine = [e for e in stack.events if e.agentid == agent]
    assert a["state"]["events_total"] == len(mine)
    done = truth.actions(mine)
    assert sum(t["calls"] for t in a["tools"]) == len(done)
    assert sum(t["errors"] for t in a["tools"]) == len(truth.errors(mine))
    assert {r["run_id"] for r in a["runs"]["runs"]} == {e.runid for e in mine if e.runid}
    get(stack, "/api/v1/agents/nobody-at-all", 404)


def test_dead_letters_show_bytes_safely(stack: UIStack) -> None:
    d = get(stack, "/api/v1/deadletters")
    assert d["all"] >= len(BAD_RECORDS)
    shown = {r["original"]["encoding"]: r for r in d["records"] if r.get("key") == "bad-producer"}
    assert shown["text"]["original"]["text"] == BAD_RECORDS[0].decode()
    assert shown["hex"]["original"]["text"].startswith("00000000  00 01 02 03")
    reason = shown["hex"]["reason"]
    only = get(stack, f"/api/v1/deadletters?reason={reason}")
    assert only["records"] and all(r["reason"] == reason for r in only["records"])


def test_hostile_text_is_returned_as_data(stack: UIStack) -> None:
    tl = get(stack, "/api/v1/runs/run-xss/timeline")
    assert any(XSS_TEXT in e["summary"] for e in tl["events"])


def test_pages_carry_the_security_headers(stack: UIStack) -> None:
    for path in ("/runs", "/runs/run-xss", "/api/v1/runs", "/static/app.js"):
        with urllib.request.urlopen(stack.url + path) as r:
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
            assert r.headers["X-Content-Type-Options"] == "nosniff"
    with urllib.request.urlopen(stack.url + "/runs") as r:
        page = r.read().decode()
    assert "<script>" not in page.replace(" ", "")  # no inline script in the shell


def test_steps_from_the_archive_equal_steps_from_kafka(stack: UIStack) -> None:
    import time

    run_id, failed = truth.failed_completion_run(stack.events)
    kafka = get(stack, f"/api/v1/runs/{run_id}/steps")
    deadline = time.monotonic() + 90
    while True:  # the archiver closes a segment a second after its last record
        try:
            with urllib.request.urlopen(
                stack.url + f"/api/v1/runs/{run_id}/steps?source=archive&refresh=true", timeout=60
            ) as r:
                archive = json.loads(r.read())
            if archive["steps"] == kafka["steps"]:
                break
        except urllib.error.HTTPError as err:
            assert err.code in (404, 503), err.read()
        assert time.monotonic() < deadline, "the archive never held the whole run"
        time.sleep(0.5)
    at = next(s["index"] for s in kafka["steps"] if s["id"] == failed.id)
    a = get(stack, f"/api/v1/runs/{run_id}/steps/{at}?source=archive")
    k = get(stack, f"/api/v1/runs/{run_id}/steps/{at}")
    assert a["state"] == k["state"] and a["changes"] == k["changes"]
    same = ("partition", "offset")  # the archive numbers log generations from 1, Kafka says 0
    assert [a["position"][x] for x in same] == [k["position"][x] for x in same]
