"""Dashboards: every panel's rows are what `agentstream query --named` returns with the same
parameters; in Chromium the numbers shown equal the CLI's. The learning dashboard's own
tests are in test_learning.py."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict

import pytest
from part2kit import cli, get, page, qs  # noqa: F401 (fixtures)
from uistack import UIStack

pytestmark = pytest.mark.integration

DASHBOARDS = {
    "cost": ["dash_cost_by_agent", "dash_cost_by_model"],
    "tools": ["dash_tool_reliability"],
    "violations": ["dash_violations"],
    "learning": ["dash_learning"],
}


def _cli_rows(stack: UIStack, name: str, params: dict[str, str]) -> list[dict]:
    args = ["query", "--named", name, "-f", "json"]
    for k, v in params.items():
        args += ["-p", f"{k}={v}"]
    res = cli(stack, *args)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.decode().splitlines() if line]


def _norm(rows: list[dict]) -> list[dict]:
    """Times as the CLI's JSON writes them and the API's both parse to the same text."""
    return json.loads(json.dumps(rows, sort_keys=True).replace("+00:00", "Z"))


@pytest.mark.parametrize("which", list(DASHBOARDS))
def test_each_panel_equals_the_cli_named_query(stack: UIStack, which: str) -> None:
    d = get(stack, f"/api/v1/dashboards/{which}")
    assert list(d["panels"]) == DASHBOARDS[which]
    for name, panel in d["panels"].items():
        assert panel["query"] == name and panel["rows"], name
        assert _norm(panel["rows"]) == _norm(_cli_rows(stack, name, panel["params"])), name


def test_range_tenant_and_bucket_reach_the_sql(stack: UIStack) -> None:
    since, until = "2026-01-01T00:00:00", "2026-01-01T00:05:00"
    d = get(stack, "/api/v1/dashboards/cost?" + qs(since=since, until=until, bucket=60))
    panel = d["panels"]["dash_cost_by_agent"]
    assert panel["params"]["bucket"] == "60" and panel["params"]["since"].startswith(
        "2026-01-01 00:00:00"
    )
    buckets = {r["bucket"] for r in panel["rows"]}
    assert buckets and all("2026-01-01T00:0" in b for b in buckets) and len(buckets) <= 5
    assert _norm(panel["rows"]) == _norm(_cli_rows(stack, "dash_cost_by_agent", panel["params"]))
    none = get(stack, "/api/v1/dashboards/cost?" + qs(tenant="no-such-tenant"))
    assert all(not p["rows"] for p in none["panels"].values())
    bad = get(stack, "/api/v1/dashboards/cost?" + qs(since=until, until=since), status=400)
    assert "range is empty" in bad["error"]
    assert "no dashboard" in get(stack, "/api/v1/dashboards/nope", status=400)["error"]


def test_violation_drill_down_lists_that_category(stack: UIStack) -> None:
    d = get(stack, "/api/v1/dashboards/violations")
    counts: dict[str, int] = defaultdict(int)
    for r in d["panels"]["dash_violations"]["rows"]:
        counts[r["category"]] += r["violations"]
    for category, n in counts.items():
        rows = get(
            stack, "/api/v1/dashboards/violations/events?" + qs(category=category, limit=1000)
        )
        assert len(rows["rows"]) == n and {r["category"] for r in rows["rows"]} == {category}


# --- in Chromium ---------------------------------------------------------------------------


def test_cost_dashboard_numbers_equal_the_cli(page, stack: UIStack) -> None:  # noqa: F811
    page.goto(stack.url + "/dashboards/cost")
    page.wait_for_selector('[data-chart="cost-agent"] canvas')
    res = cli(stack, "query", "--named", "dash_cost_by_agent", "-f", "csv")
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for r in csv.DictReader(io.StringIO(res.stdout.decode())):
        totals[r["agent_id"]][0] += float(r["cost_usd"])
        totals[r["agent_id"]][1] += int(r["tokens"])
    table = page.locator('[data-panel="cost-agent"] table[data-totals="agent_id"]')
    shown = {row.get_attribute("data-key"): row for row in table.locator("tbody tr").all()}
    assert set(shown) == set(totals)
    for agent, (cost, tokens) in totals.items():
        row = shown[agent]
        assert row.locator('[data-col="cost_usd"]').inner_text() == f"{cost:.6f}"
        assert row.locator('[data-col="tokens"]').inner_text() == f"{tokens:,}"
    # the panel's SQL link opens the same named query in the workspace, same rows
    page.click('[data-panel="cost-agent"] a[data-sql-for="dash_cost_by_agent"]')
    page.wait_for_selector("table[data-result] tbody tr")
    assert page.locator("[data-result-total]").get_attribute("data-result-total") == str(
        sum(1 for _ in csv.DictReader(io.StringIO(res.stdout.decode())))
    )


def test_violations_drill_down(page, stack: UIStack) -> None:  # noqa: F811
    api = get(stack, "/api/v1/dashboards/violations")
    counts: dict[str, int] = defaultdict(int)
    for r in api["panels"]["dash_violations"]["rows"]:
        counts[r["category"]] += r["violations"]
    category = max(counts, key=counts.get)
    page.goto(stack.url + "/dashboards/violations")
    cell = page.locator(
        f'table[data-totals="category"] tr[data-key="{category}"] [data-col="violations"]'
    )
    assert cell.inner_text() == str(counts[category])
    page.click(f'a[data-drill="{category}"]')
    page.wait_for_selector('[data-panel="drill"] tbody tr')
    assert page.locator('[data-panel="drill"] tbody tr').count() == counts[category]
