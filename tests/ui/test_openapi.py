"""The /api/v1 contract is committed (agentstream/ui/openapi.json): a change to a route,
parameter or answer model shows up in review as a diff of that file. This test fails when
the live schema differs from the snapshot.

Refresh after an intended API change (then review and commit the diff):

    python tests/ui/test_openapi.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

SNAPSHOT = Path(__file__).resolve().parents[2] / "agentstream" / "ui" / "openapi.json"


def live_schema() -> dict[str, Any]:
    """The schema FastAPI serves at /api/v1/openapi.json, from the app ``agentstream ui``
    runs (building the app opens no connection: backends are reached on first request)."""
    from agentstream.settings import Settings
    from agentstream.ui.app import create_app

    schema = create_app(Settings()).openapi()
    schema["info"].pop("version", None)  # the package version is not part of the contract
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_openapi_matches_the_committed_snapshot() -> None:
    assert SNAPSHOT.exists(), f"no snapshot: run `python {Path(__file__).name} --write`"
    live, committed = render(live_schema()), SNAPSHOT.read_text(encoding="utf-8")
    if live != committed:
        old, new = json.loads(committed), json.loads(live)
        added = sorted(set(new["paths"]) - set(old["paths"]))
        removed = sorted(set(old["paths"]) - set(new["paths"]))
        changed = sorted(
            p for p in set(new["paths"]) & set(old["paths"]) if new["paths"][p] != old["paths"][p]
        )
        pytest.fail(
            "the /api/v1 schema differs from agentstream/ui/openapi.json "
            f"(routes added {added}, removed {removed}, changed {changed}; models "
            f"{'differ' if new.get('components') != old.get('components') else 'equal'}). "
            "If intended: python tests/ui/test_openapi.py --write, and commit the diff."
        )


def test_snapshot_documents_the_api_routes() -> None:
    paths = json.loads(SNAPSHOT.read_text(encoding="utf-8"))["paths"]
    assert "/api/v1/runs" in paths and "/api/v1/agents/{agent_id}" in paths
    assert all(p.startswith("/api/v1/") or p in {"/healthz", "/login"} for p in paths), paths


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {sys.argv[0]} --write   (rewrites {SNAPSHOT})")
    SNAPSHOT.write_text(render(live_schema()), encoding="utf-8")
    print(f"wrote {SNAPSHOT}")
