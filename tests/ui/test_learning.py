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


def whole(rows: list[dict], scope: str, agent: str = "") -> dict:
    (row,) = [r for r in rows if (r["scope"], r["agent_id"], r["point"]) == (scope, agent, None)]
    return row


def slices(rows: list[dict], scope: str, agent: str, column: str) -> list[float]:
    pts = [
        r for r in rows if (r["scope"], r["agent_id"]) == (scope, agent) and r["point"] is not None
    ]
    return [r[column] for r in sorted(pts, key=lambda r: r["point"]) if r[column] is not None]


def test_trends_are_the_named_querys_rows_reshaped(stack: UIStack) -> None:
    d = get(stack, "/api/v1/dashboards/learning")
    panel = d["panels"]["dash_learning"]
    rows = cli_learning(stack, **panel["params"])
    assert panel["params"]["points"] == "20"
    t = d["trends"]
    assert set(t["agents"]) == {r["agent_id"] for r in rows if r["scope"] == "agent"}
    for trend, (column, prefix) in LEARNING_METRICS.items():
        fleet = whole(rows, "fleet")
        assert t["fleet"][trend]["n"] == fleet[f"{prefix}_runs"]
        assert [t["fleet"][trend][k] for k in FIT] == [fleet[f"{prefix}_{k}"] for k in FIT]
        assert t["fleet"][trend]["values"] == slices(rows, "fleet", "", column)
        for agent, series in t["agents"].items():
            row = whole(rows, "agent", agent)
            assert [series[trend][k] for k in FIT] == [row[f"{prefix}_{k}"] for k in FIT]
            assert series[trend]["values"] == slices(rows, "agent", agent, column)
    # and the pure reshaping on its own: a slice without a value is left out of its line
    one = [
        {"scope": "agent", "agent_id": "a", "point": None, "run_to": 3}
        | {f"{p}_{k}": 0.5 for _, p in LEARNING_METRICS.values() for k in FIT}
        | {f"{p}_runs": 2 for _, p in LEARNING_METRICS.values()},
        {"scope": "agent", "agent_id": "a", "point": 0, "run_to": 1}
        | {"success_rate": 1.0, "feedback_score": None, "recall_rate": 0.0},
        {"scope": "agent", "agent_id": "a", "point": 1, "run_to": 3}
        | {"success_rate": 0.5, "feedback_score": 0.2, "recall_rate": 1.0},
    ]
    a = learning_trends(one)["agents"]["a"]
    assert a["feedback"]["x"] == [3] and a["recall_rate"]["values"] == [0.0, 1.0]
    assert a["success_rate"]["n"] == 2 and a["success_rate"]["slope"] == 0.5


def test_recall_reaches_the_dashboard(stack: UIStack) -> None:
    rows = cli_learning(stack)
    fleet = whole(rows, "fleet")
    decisions = [e for e in stack.events if e.type == "agent.think.decision.v2" and e.runid]
    cited = sum(1 for e in decisions if e.data.recalled_episodes)
    assert cited > 0
    assert (fleet["decisions"], fleet["decisions_with_recall"]) == (len(decisions), cited)
    assert fleet["recall_runs"] > 0 and fleet["recall_slope"] is not None


def test_recall_figures_on_the_page_equal_the_cli(page, stack: UIStack) -> None:  # noqa: F811
    rows = cli_learning(stack)
    page.goto(stack.url + "/dashboards/learning")
    page.wait_for_selector('[data-chart="fleet-recall_rate"] canvas')
    fleet = whole(rows, "fleet")

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
        return {"n": row["recall_runs"]} | {k: row[f"recall_{k}"] for k in FIT}

    assert shown('[data-panel="fleet-recall_rate"]') == expected(fleet)
    values = page.locator('[data-trend="fleet-recall_rate"]').get_attribute("data-values")
    assert json.loads(values) == slices(rows, "fleet", "", "recall_rate")
    agents = sorted({r["agent_id"] for r in rows if r["scope"] == "agent"})
    checked = 0
    for agent in agents:
        row = whole(rows, "agent", agent)
        if not row["recall_runs"] or row["recall_slope"] is None:
            continue  # an agent that never decides (the planner) shows "no runs with one yet"
        assert shown(f'[data-agent-trend="{agent}"]') == expected(row), agent
        series = page.locator(f'[data-trend="agent-recall-{agent}"]').get_attribute("data-values")
        assert json.loads(series) == slices(rows, "agent", agent, "recall_rate")
        checked += 1
    assert checked >= 2
    # the panel's SQL link opens dash_learning in the workspace
    link = page.locator('[data-panel="fleet-recall_rate"] a[data-sql-for="dash_learning"]')
    assert "named=dash_learning" in (link.get_attribute("href") or "")
