"""The dashboards' data: each chart runs one named query (``projections/analytics/
dashboards.py``, the same text ``agentstream query --named`` runs) with the page's time
range, tenant and bucket, and says which query and parameters it ran so the page can
open it in the SQL workspace. The learning trends (slices and fits) come fitted from
``dash_learning``; the page only reshapes its rows into lines."""

from __future__ import annotations

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
    return out
