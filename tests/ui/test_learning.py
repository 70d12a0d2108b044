"""The learning dashboard: its trends are ``dash_learning``'s rows reshaped (fits included),
the simulated recall reaches it, and in Chromium the recall figures shown (per agent and
fleet: slices, slope, first and last tenth, change) equal ``agentstream query --named
dash_learning``'s output."""

from __future__ import annotations

import json

import pytest
from part2kit import cli, get, page  # noqa: F401 (fixtures)
from uistack import UIStack

from agentstream.ui.dashboards import LEARNING_METRICS, learning_trends

pytestmark = pytest.mark.integration

FIT = ("slope", "first_tenth", "last_tenth", "change")


def cli_learning(stack: UIStack, **params: str) -> list[dict]:
    args = ["query", "--named", "dash_learning", "-f", "json"]
    for k, v in params.items():
        args += ["-p", f"{k}={v}"]
    res = cli(stack, *args)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.decode().splitlines() if line]


def whole(rows: list[dict], scope: str, agent: str, metric: str) -> dict:
    (row,) = [
        r
        for r in rows
        if (r["scope"], r["agent_id"], r["metric"], r["point"]) == (scope, agent, metric, None)
    ]
    return row


def slices(rows: list[dict], scope: str, agent: str, metric: str) -> list[float]:
    pts = [
        r
        for r in rows
        if (r["scope"], r["agent_id"], r["metric"]) == (scope, agent, metric)
        and r["point"] is not None
    ]
    return [r["value"] for r in sorted(pts, key=lambda r: r["point"]) if r["value"] is not None]


def test_trends_are_the_named_querys_rows_reshaped(stack: UIStack) -> None:
    d = get(stack, "/api/v1/dashboards/learning")
    panel = d["panels"]["dash_learning"]
    rows = cli_learning(stack, **panel["params"])
    assert panel["params"]["points"] == "20"
    t = d["trends"]
    assert set(t["agents"]) == {r["agent_id"] for r in rows if r["scope"] == "agent"}
    for metric in LEARNING_METRICS:
        fleet = whole(rows, "fleet", "", metric)
        assert t["fleet"][metric]["n"] == fleet["runs_with_value"]
        assert [t["fleet"][metric][k] for k in FIT] == [fleet[k] for k in FIT]
        assert t["fleet"][metric]["values"] == slices(rows, "fleet", "", metric)
        for agent, series in t["agents"].items():
            row = whole(rows, "agent", agent, metric)
            assert [series[metric][k] for k in FIT] == [row[k] for k in FIT]
            assert series[metric]["values"] == slices(rows, "agent", agent, metric)
    # and the pure reshaping on its own: a slice without a value is left out of its line
    base = {"scope": "agent", "agent_id": "a", "metric": "recall_rate"}
    fit = {"runs_with_value": 2, "slope": 0.5, "first_tenth": 0.0, "last_tenth": 1.0}
    one = [
        base | {"point": None, "run_to": 3, "value": 0.5} | fit | {"change": 1.0},
        base | {"point": 0, "run_to": 1, "value": 0.0},
        base | {"point": 1, "run_to": 2, "value": None},
        base | {"point": 2, "run_to": 3, "value": 1.0},
    ]
    a = learning_trends(one)["agents"]["a"]["recall_rate"]
    assert (a["x"], a["values"]) == ([1, 3], [0.0, 1.0])
    assert (a["n"], a["slope"], a["change"]) == (2, 0.5, 1.0)


def test_recall_reaches_the_dashboard(stack: UIStack) -> None:
    rows = cli_learning(stack)
    fleet = whole(rows, "fleet", "", "recall_rate")
    decisions = [e for e in stack.events if e.type == "agent.think.decision.v2" and e.runid]
    cited = sum(1 for e in decisions if e.data.recalled_episodes)
    assert cited > 0
    assert (fleet["decisions"], fleet["decisions_with_recall"]) == (len(decisions), cited)
    assert fleet["runs_with_value"] > 0 and fleet["slope"] is not None


def test_recall_figures_on_the_page_equal_the_cli(page, stack: UIStack) -> None:  # noqa: F811
    rows = cli_learning(stack)
    page.goto(stack.url + "/dashboards/learning")
    page.wait_for_selector('[data-chart="fleet-recall_rate"] canvas')
    fleet = whole(rows, "fleet", "", "recall_rate")

    def shown(root: str) -> dict:
        el = page.locator(f'{root} [data-fit="recall rate"]')
        return {
            "n": int(el.get_attribute("data-n")),
            "slope": float(el.locator("[data-slope]").get_attribute("data-slope")),
            "change": float(el.locator("[data-change]").get_attribute("data-change")),
            "first_tenth": float(el.get_attribute("data-first")),
            "last_tenth": float(el.get_attribute("data-last")),
        }

    def expected(row: dict) -> dict:
        return {"n": row["runs_with_value"]} | {k: row[k] for k in FIT}

    assert shown('[data-panel="fleet-recall_rate"]') == expected(fleet)
    values = page.locator('[data-trend="fleet-recall_rate"]').get_attribute("data-values")
    assert json.loads(values) == slices(rows, "fleet", "", "recall_rate")
    agents = sorted({r["agent_id"] for r in rows if r["scope"] == "agent"})
    checked = 0
    for agent in agents:
        row = whole(rows, "agent", agent, "recall_rate")
        if not row["runs_with_value"] or row["slope"] is None:
            continue  # an agent that never decides (the planner) shows "no runs with one yet"
        assert shown(f'[data-agent-trend="{agent}"]') == expected(row), agent
        series = page.locator(f'[data-trend="agent-recall-{agent}"]').get_attribute("data-values")
        assert json.loads(series) == slices(rows, "agent", agent, "recall_rate")
        checked += 1
    assert checked >= 2
    # the panel's SQL link opens dash_learning in the workspace
    link = page.locator('[data-panel="fleet-recall_rate"] a[data-sql-for="dash_learning"]')
    assert "named=dash_learning" in (link.get_attribute("href") or "")
