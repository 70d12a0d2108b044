"""Memory search: ``recall`` in the browser, the same function ``agentstream recall`` and
agents call (``projections.memory.recall``), on the store the settings name. The store and
its embedder are opened once per UI process, on the first search (loading the embedding
model takes seconds), then kept."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentstream.settings import Settings
    from projections.memory.recall import Searcher


class MemorySearch:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._searcher: Searcher | None = None
        self._lock = threading.Lock()

    def searcher(self) -> Searcher:
        from agentstream.ui.backends import Unavailable
        from projections.memory.recall import default_store

        with self._lock:
            if self._searcher is None:
                try:
                    # the store itself (Chroma): the exact index would hold every episode
                    # in this process's memory for a page that is used now and then
                    self._searcher = default_store(self.settings)
                except Exception as err:  # missing store, model or Chroma: say which
                    raise Unavailable(
                        f"memory store at {self.settings.memory_location} cannot be opened: "
                        f"{err} — run the memory projection (`agentstream up` with memory in "
                        "AGENTSTREAM_PROJECTIONS, or `agentstream project memory`)"
                    ) from None
            return self._searcher

    def search(
        self,
        text: str,
        k: int,
        agent: str | None,
        tool: str | None,
        outcome: str | None,
        since: str | None,
        tenant: str | None,
    ) -> dict[str, Any]:
        from projections.memory.recall import parse_since, recall

        when = parse_since(since) if since else None
        if outcome is not None and outcome not in ("success", "failure"):
            raise ValueError(f"outcome must be success or failure, got {outcome!r}")
        found = recall(
            text,
            k,
            agent=agent,
            tool=tool,
            outcome=outcome,  # type: ignore[arg-type]
            since=when,
            tenant=tenant,
            store=self.searcher(),
        )
        return {
            "ok": True,
            "query": text,
            "episodes": [{**e.as_dict(), "similarity": round(1 - e.distance, 4)} for e in found],
        }
