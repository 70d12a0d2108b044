"""The dashboards' data: each chart runs one named query (``projections/analytics/
dashboards.py``, the same text ``agentstream query --named`` runs) with the page's time
range, tenant and bucket, and says which query and parameters it ran so the page can
open it in the SQL workspace. The learning trends are fitted here (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentstream.ui.backends import Backends

DASHBOARDS: dict[str, tuple[str, ...]] = {
    "cost": ("dash_cost_by_agent", "dash_cost_by_model"),
    "tools": ("dash_tool_reliability",),
    "violations": ("dash_violations",),
    "learning": ("dash_learning",),
}


@dataclass(frozen=True)
class Range:
    since: datetime | None
    until: datetime | None
    tenant: str
    bucket_s: int

    def params(self, name: str) -> dict[str, Any]:
        from projections.analytics.queries import NAMED_QUERIES

        given: dict[str, Any] = {"tenant": self.tenant}
        if self.since is not None:
            given["since"] = self.since.strftime("%Y-%m-%d %H:%M:%S.%f")
        if self.until is not None:
            given["until"] = self.until.strftime("%Y-%m-%d %H:%M:%S.%f")
        if "bucket" in NAMED_QUERIES[name].params:
            given["bucket"] = self.bucket_s
        return NAMED_QUERIES[name].bind(given)


def auto_bucket(since: datetime | None, until: datetime | None) -> int:
    """About 60 buckets over the range, rounded to a familiar width."""
    if since is None or until is None:
        return 3600
    span = max(1.0, (until - since).total_seconds())
    for width in (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400):
        if span / width <= 90:
            return width
    return 30 * 86400


def run_named(b: Backends, name: str, rng: Range) -> dict[str, Any]:
    from projections.analytics.queries import NAMED_QUERIES

    params = rng.params(name)
    rows = b.query(NAMED_QUERIES[name].sql, params)
    return {"query": name, "params": {k: str(v) for k, v in params.items()}, "rows": rows}


def dashboard(b: Backends, which: str, rng: Range) -> dict[str, Any]:
    if which not in DASHBOARDS:
        raise ValueError(f"no dashboard {which!r}: choose one of {', '.join(DASHBOARDS)}")
    out: dict[str, Any] = {"dashboard": which, "bucket_s": rng.bucket_s, "panels": {}}
    for name in DASHBOARDS[which]:
        out["panels"][name] = run_named(b, name, rng)
    if which == "learning":
        rows = out["panels"]["dash_learning"]["rows"]
        out["trends"] = learning_trends(rows)
    return out


def fit(ys: Sequence[float]) -> dict[str, Any]:
    """Least-squares slope per run and the change from the first to the last tenth of
    runs (means of each tenth; a tenth is at least one run)."""
    n = len(ys)
    if n == 0:
        return {"n": 0, "slope": None, "first_tenth": None, "last_tenth": None, "change": None}
    tenth = max(1, math.ceil(n / 10))
    first = sum(ys[:tenth]) / tenth
    last = sum(ys[-tenth:]) / tenth
    slope = None
    if n >= 2:
        mx = (n - 1) / 2
        my = sum(ys) / n
        sxx = sum((i - mx) ** 2 for i in range(n))
        slope = sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sxx
    return {
        "n": n,
        "slope": None if slope is None else round(slope, 6),
        "first_tenth": round(first, 6),
        "last_tenth": round(last, 6),
        "change": round(last - first, 6),
        "tenth": tenth,
    }


def learning_trends(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per agent and fleet-wide, over successive runs (start order): the series of action
    success rates and feedback scores with their fits. Runs without actions (or without
    feedback) are left out of that series."""
    agents: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        agents.setdefault(r["agent_id"], []).append(r)

    def series(rs: Sequence[dict[str, Any]], field: str) -> dict[str, Any]:
        pts = [(i, float(r[field])) for i, r in enumerate(rs) if r[field] is not None]
        ys = [y for _, y in pts]
        return {"runs": [r["run_id"] for r in rs if r[field] is not None], "values": ys, **fit(ys)}

    out = {
        agent: {
            "success_rate": series(rs, "success_rate"),
            "feedback": series(rs, "feedback_score"),
        }
        for agent, rs in sorted(agents.items())
    }
    return {
        "fleet": {
            "success_rate": series(rows, "success_rate"),
            "feedback": series(rows, "feedback_score"),
        },
        "agents": out,
        "recall_share": None,
        "recall_note": (
            "decisions do not say yet which recalled episode they used: the event contract "
            "has no field for it (see docs/ui.md)"
        ),
    }
