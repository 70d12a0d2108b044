"""Memory search: the memory projection runs next to the shared stack; recall through the
API and in Chromium finds a lesson the pipeline recorded (ground truth: the analytics
``episodes`` table, read with the CLI)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
from part2kit import cli, get, page, qs, start_memory  # noqa: F401 (fixtures)
from uistack import UIStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def memory(stack: UIStack) -> Iterator[UIStack]:
    proc = start_memory(stack)
    try:
        yield stack
    finally:
        proc.stop()


def _known_lesson(stack: UIStack) -> dict[str, str]:
    res = cli(
        stack,
        "query",
        "SELECT agent_id, tool, situation, lesson FROM episodes FINAL "
        "WHERE lesson IS NOT NULL AND agent_id != 'xss-agent' ORDER BY episode_id LIMIT 1",
        "-f",
        "csv",
    )
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout.decode())))
    assert rows, "the workload recorded no lesson"
    return rows[0]


def test_recall_finds_a_known_lesson(memory: UIStack) -> None:
    known = _known_lesson(memory)
    found = get(
        memory, "/api/v1/memory/recall?" + qs(q=known["situation"], agent=known["agent_id"], k=5)
    )
    assert found["ok"] and found["episodes"]
    top = found["episodes"][0]
    assert top["agent_id"] == known["agent_id"]
    assert any(e["lesson"] == known["lesson"] for e in found["episodes"])
    assert all(0 <= e["similarity"] <= 1.0001 for e in found["episodes"])
    # filters narrow the candidates
    failures = get(
        memory, "/api/v1/memory/recall?" + qs(q=known["situation"], outcome="failure", k=20)
    )
    assert failures["episodes"] and {e["outcome"] for e in failures["episodes"]} == {"failure"}
    tool = get(
        memory, "/api/v1/memory/recall?" + qs(q=known["situation"], tool=known["tool"], k=20)
    )
    assert {e["tool"] for e in tool["episodes"]} == {known["tool"]}
    none = get(memory, "/api/v1/memory/recall?" + qs(q=known["situation"], tenant="no-such-tenant"))
    assert none["episodes"] == []
    bad = get(memory, "/api/v1/memory/recall?" + qs(q="x", since="yesterday"), status=400)
    assert "since" in bad["error"]


def test_memory_page_shows_the_lesson_with_links(page, memory: UIStack) -> None:  # noqa: F811
    known = _known_lesson(memory)
    page.goto(memory.url + "/memory?" + qs(q=known["situation"], agent=known["agent_id"], k=5))
    page.wait_for_selector("[data-episode]")
    lessons = page.locator("[data-episode] [data-lesson]").all_inner_texts()
    assert any(known["lesson"] in text for text in lessons)
    first = page.locator("[data-episode]").first
    assert first.locator("a").first.get_attribute("href") == f"/agents/{known['agent_id']}"
    assert float(first.locator("[data-sim]").get_attribute("data-sim")) > 0
