"""The SQL workspace: its API against the CLI on the same store (same rows, same files, same
refusals), cancelling a long statement really stops it, and the page in Chromium."""

from __future__ import annotations

import csv
import io
import threading
import time
import urllib.request

import pyarrow.parquet as pq
import pytest
from part2kit import cli, get, get_bytes, page, qs  # noqa: F401 (fixtures)
from uistack import UIStack

pytestmark = pytest.mark.integration

ATTACKS = (
    "INSERT INTO events (event_id) VALUES (generateUUIDv4())",
    "SELECT * FROM file('/etc/passwd', 'TSVWithNames')",
    "DESCRIBE file('/etc/passwd', 'TSVWithNames')",
    "SELECT 1; DROP TABLE events",
)


def _cli_error(stack: UIStack, sql: str) -> str:
    res = cli(stack, "query", sql)
    assert res.returncode != 0
    return res.stderr.decode().strip().removeprefix("error: ")


def test_named_queries_and_schema_are_listed(stack: UIStack) -> None:
    from projections.analytics.queries import NAMED_QUERIES

    named = get(stack, "/api/v1/sql/named")["queries"]
    assert [q["name"] for q in named] == list(NAMED_QUERIES)
    for q in named:
        assert q["sql"] == NAMED_QUERIES[q["name"]].sql.strip() and q["title"]
    tables = {t["name"]: t for t in get(stack, "/api/v1/sql/schema")["tables"]}
    assert {"events", "violations", "agent_minute", "run_agent"} <= set(tables)
    assert "payload" in {c["name"] for c in tables["events"]["columns"]}


def test_a_named_query_pages_and_sorts_like_the_cli(stack: UIStack) -> None:
    res = cli(stack, "query", "--named", "least_reliable_tools", "-p", "limit=50", "-f", "csv")
    assert res.returncode == 0, res.stderr
    want = list(csv.DictReader(io.StringIO(res.stdout.decode())))
    params = qs(named="least_reliable_tools", param=["limit=50"], limit=3, fresh="true")
    first = get(stack, "/api/v1/sql?" + params)
    assert first["ok"] and first["total"] == len(want) and len(first["rows"]) == min(3, len(want))
    assert first["server_ms"] > 0 and first["engine_ms"] is not None
    cols = [c["name"] for c in first["columns"]]
    assert cols == list(want[0])
    page2 = get(
        stack,
        "/api/v1/sql?" + qs(named="least_reliable_tools", param=["limit=50"], offset=3, limit=3),
    )
    got = [dict(zip(cols, r, strict=True)) for r in first["rows"] + page2["rows"]]
    assert [g["tool"] for g in got] == [w["tool"] for w in want[:6]]
    by_calls = get(
        stack,
        "/api/v1/sql?"
        + qs(
            named="least_reliable_tools", param=["limit=50"], sort="calls", desc="true", limit=1000
        ),
    )
    calls = [r[cols.index("calls")] for r in by_calls["rows"]]
    assert calls == sorted((int(w["calls"]) for w in want), reverse=True)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_downloads_equal_the_cli_output(stack: UIStack, fmt: str, tmp_path) -> None:
    out = tmp_path / f"cli.{fmt}"
    res = cli(stack, "query", "--named", "agent_leaderboard", "-f", fmt, "-o", str(out))
    assert res.returncode == 0, res.stderr
    got = get_bytes(stack, "/api/v1/sql/download?" + qs(named="agent_leaderboard", format=fmt))
    if fmt == "csv":
        assert got == out.read_bytes()
    else:
        assert pq.read_table(io.BytesIO(got)).equals(pq.read_table(out))


@pytest.mark.parametrize("sql", ATTACKS)
def test_refusals_are_the_cli_s_words(stack: UIStack, sql: str) -> None:
    body = get(stack, "/api/v1/sql?" + qs(sql=sql), status=400)
    assert body["ok"] is False and body["error"].startswith("refused")
    assert body["error"] == _cli_error(stack, sql)


def _running(stack: UIStack, marker: str) -> int:
    sql = (
        "SELECT count() AS n FROM system.processes "
        f"WHERE query LIKE '%{marker}%' AND query NOT LIKE '%system.processes%'"
    )
    return get(stack, "/api/v1/sql?" + qs(sql=sql, fresh="true"))["rows"][0][0]


def test_a_cancelled_statement_stops_in_the_engine(stack: UIStack) -> None:
    marker = "sipHash64(number + 4242)"
    sql = f"SELECT sum({marker}) FROM numbers(100000000000)"  # minutes of work
    url = stack.url + "/api/v1/sql?" + qs(sql=sql, fresh="true")
    failed: list[BaseException] = []

    def client() -> None:
        try:
            urllib.request.urlopen(url, timeout=2)  # gives up after 2 s: the client goes away
        except BaseException as err:
            failed.append(err)

    t = threading.Thread(target=client)
    t.start()
    deadline = time.monotonic() + 30
    while _running(stack, marker) == 0:  # it did start in the engine
        assert time.monotonic() < deadline, "the long statement never showed in system.processes"
    t.join(30)
    assert failed, "the long statement finished instead of timing out"
    deadline = time.monotonic() + 30
    while _running(stack, marker) != 0:  # and it is gone soon after its client left
        assert time.monotonic() < deadline, "the engine kept running the abandoned statement"


# --- in Chromium ---------------------------------------------------------------------------


def test_workspace_runs_a_named_query_charts_and_downloads(page, stack: UIStack, tmp_path) -> None:  # noqa: F811
    page.goto(stack.url + "/sql")
    page.click('details[data-named="runs_by_status"] summary')
    page.click('button[data-open="runs_by_status"]')
    page.wait_for_selector('.editor[data-editor="codemirror"]')
    page.click('button[data-action="run"]')
    page.wait_for_selector("table[data-result] tbody tr")
    res = cli(stack, "query", "--named", "runs_by_status", "-f", "csv")
    want = list(csv.reader(io.StringIO(res.stdout.decode())))
    heads = page.locator("table[data-result] th").all_inner_texts()
    assert heads == want[0]
    cells = [
        row.locator("td").all_inner_texts()
        for row in page.locator("table[data-result] tbody tr").all()
    ]
    assert cells == want[1:]
    assert "ms" in page.locator("[data-server-ms]").inner_text()
    assert "named=runs_by_status" in page.url  # shareable
    page.click('button[data-action="chart"]')
    page.wait_for_selector('[data-chart="result"] canvas')
    assert page.locator('[data-chart="result"]').get_attribute("data-points") == str(len(want) - 1)
    for fmt in ("csv", "parquet"):
        cli_file = tmp_path / f"cli.{fmt}"
        assert (
            cli(
                stack, "query", "--named", "runs_by_status", "-f", fmt, "-o", str(cli_file)
            ).returncode
            == 0
        )
        with page.expect_download() as dl:
            page.click(f'a[data-download="{fmt}"]')
        got = tmp_path / f"ui.{fmt}"
        dl.value.save_as(got)
        if fmt == "csv":
            assert got.read_bytes() == cli_file.read_bytes()
        else:
            assert pq.read_table(got).equals(pq.read_table(cli_file))


def test_workspace_refuses_a_write_and_a_file_read_like_the_cli(page, stack: UIStack) -> None:  # noqa: F811
    for sql in ATTACKS[:2]:
        page.goto(stack.url + "/sql?" + qs(sql=sql))
        err = page.locator('p.error[data-error-kind="readonly"]')
        err.wait_for()
        assert err.inner_text() == _cli_error(stack, sql)
