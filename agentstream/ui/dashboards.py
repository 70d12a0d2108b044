"""The dashboards' data: each chart runs one named query (``projections/analytics/
dashboards.py``, the same text ``agentstream query --named`` runs) with the page's time
range, tenant and bucket, and says which query and parameters it ran so the page can
open it in the SQL workspace. The learning trends (slices and fits) come fitted from
``dash_learning``; they are only reshaped here for the charts."""

from __future__ import annotations

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


LEARNING_METRICS: tuple[str, ...] = ("success_rate", "feedback_score", "recall_rate")
"""The metrics of ``dash_learning`` (its ``metric`` column), one trend each."""

_FIT = ("slope", "first_tenth", "last_tenth", "change")


def learning_trends(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``dash_learning``'s rows as chart series: per scope (the fleet, each agent) and
    metric, the slices' values (x: the slice's last run number for an agent, the slice
    number for the fleet) and the fit of the whole series (its row with point NULL). Only
    reshaped here: every number is the named query's."""

    def empty() -> dict[str, dict[str, Any]]:
        return {m: {"x": [], "values": [], "n": 0, **dict.fromkeys(_FIT)} for m in LEARNING_METRICS}

    fleet = empty()
    agents: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        series = fleet if r["scope"] == "fleet" else agents.setdefault(r["agent_id"], empty())
        s = series.get(r["metric"])
        if s is None:
            continue
        if r["point"] is None:
            s["n"] = r["runs_with_value"]
            s.update({k: r[k] for k in _FIT})
        elif r["value"] is not None:
            s["x"].append(r["point"] + 1 if r["scope"] == "fleet" else r["run_to"])
            s["values"].append(r["value"])
    return {"fleet": fleet, "agents": dict(sorted(agents.items()))}
