"""The learning dashboard: its panel is ``dash_learning``'s rows, the simulated recall
reaches it, and in Chromium the figures shown (per agent and fleet: slices, slope, first
and last tenth, change; recall for every agent, the other two for the fleet) equal
``agentstream query --named dash_learning``'s output."""

from __future__ import annotations

import json

import pytest
from part2kit import cli, get, page  # noqa: F401 (fixtures)
from uistack import UIStack

pytestmark = pytest.mark.integration

FIT = ("slope", "first_tenth", "last_tenth", "change")
# The simulated workload (January 2026), not what the live tests publish at wall-clock time
# while the pipeline may still be projecting it: the page and the CLI see the same rows.
UNTIL = "2026-06-01T00:00:00"


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


def test_the_panel_is_the_named_query(stack: UIStack) -> None:
    d = get(stack, f"/api/v1/dashboards/learning?until={UNTIL}")
    panel = d["panels"]["dash_learning"]
    assert panel["params"]["points"] == "20" and "trends" not in d
    assert panel["rows"] == cli_learning(stack, **panel["params"])


def test_recall_reaches_the_dashboard(stack: UIStack) -> None:
    rows = cli_learning(stack, until=UNTIL.replace("T", " "))
    fleet = whole(rows, "fleet", "", "recall_rate")
    decisions = [e for e in stack.events if e.type == "agent.think.decision.v2" and e.runid]
    cited = sum(1 for e in decisions if e.data.recalled_episodes)
    assert cited > 0
    assert (fleet["decisions"], fleet["decisions_with_recall"]) == (len(decisions), cited)
    assert fleet["runs_with_value"] > 0 and fleet["slope"] is not None


LABELS = {
    "success_rate": "success rate",
    "feedback_score": "feedback",
    "recall_rate": "recall rate",
}


def test_figures_on_the_page_equal_the_cli(page, stack: UIStack) -> None:  # noqa: F811
    rows = cli_learning(stack, until=UNTIL.replace("T", " "))
    page.goto(stack.url + f"/dashboards/learning?until={UNTIL}")
    page.wait_for_selector('[data-chart="fleet-recall_rate"] canvas')

    def num(v: str | None) -> float | None:
        return float(v) if v else None  # '' on the page: no value

    def shown(root: str, metric: str) -> dict:
        el = page.locator(f'{root} [data-fit="{LABELS[metric]}"]')
        return {
            "n": int(el.get_attribute("data-n") or 0),
            "slope": num(el.get_attribute("data-slope")),
            "change": num(el.get_attribute("data-change")),
            "first_tenth": num(el.get_attribute("data-first")),
            "last_tenth": num(el.get_attribute("data-last")),
        }

    def expected(row: dict) -> dict:
        return {"n": row["runs_with_value"]} | {k: row[k] for k in FIT}

    for metric in LABELS:  # the fleet: all three trends, line and fit
        row = whole(rows, "fleet", "", metric)
        assert row["runs_with_value"] and row["slope"] is not None, metric
        assert shown(f'[data-panel="fleet-{metric}"]', metric) == expected(row), metric
        line = page.locator(f'[data-trend="fleet-{metric}"]')
        assert json.loads(line.get_attribute("data-values")) == slices(rows, "fleet", "", metric)
    agents = sorted({r["agent_id"] for r in rows if r["scope"] == "agent"})
    recalling = 0
    for agent in agents:  # every agent: the recall line, and the fit of each trend it has
        for metric in LABELS:
            row = whole(rows, "agent", agent, metric)
            if not row["runs_with_value"] or row["slope"] is None:
                continue  # e.g. the planner never decides: "no runs with one yet"
            assert shown(f'[data-agent-trend="{agent}"]', metric) == expected(row), agent
        row = whole(rows, "agent", agent, "recall_rate")
        line = page.locator(f'[data-trend="agent-recall-{agent}"]')
        assert json.loads(line.get_attribute("data-values")) == slices(
            rows, "agent", agent, "recall_rate"
        )
        recalling += bool(row["runs_with_value"] and row["slope"] is not None)
    assert recalling >= 2
    # the panel's SQL link opens dash_learning in the workspace
    link = page.locator('[data-panel="fleet-recall_rate"] a[data-sql-for="dash_learning"]')
    assert "named=dash_learning" in (link.get_attribute("href") or "")
