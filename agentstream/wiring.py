"""Building each projection from the settings: the one place that knows which backend.

Projections take plain constructor arguments; this module reads :class:`Settings` and
picks the store (chDB or a ClickHouse server, FalkorDB or Neo4j, Chroma on disk or a
server). Heavy imports (chDB, torch) happen only for the projections asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from agentstream.settings import Settings
from projections.runner import Projection, RunnerConfig

PROJECTIONS = ("analytics", "graph", "memory")


def build_analytics(settings: Settings) -> Projection:
    from projections.analytics import AnalyticsProjection

    return AnalyticsProjection.from_settings(settings)


def build_graph(settings: Settings) -> Projection:
    from projections.graph.projection import GraphProjection
    from projections.graph.store import open_store

    store = open_store(
        settings.graph_url,
        settings.graph_name,
        user=settings.neo4j_user,
        password=settings.neo4j_password,
    )
    return GraphProjection(store, max_event_bytes=settings.max_event_bytes)


def build_memory(settings: Settings) -> Projection:
    """One torch thread unless ``embedding_threads`` says otherwise: the projection shares the
    cores with the processor and the other projections, and torch's default (a thread per
    core) starved them (demo, 2 cores: catching up on 10k events took 67 s instead of ~10 s)."""
    from projections.memory.projection import MemoryProjection
    from projections.memory.recall import default_store

    if settings.embedding_threads is None:
        settings = settings.model_copy(update={"embedding_threads": 1})
    return MemoryProjection(default_store(settings, create=True))


BUILDERS: dict[str, Callable[[Settings], Projection]] = {
    "analytics": build_analytics,
    "graph": build_graph,
    "memory": build_memory,
}


def runner_config(name: str) -> RunnerConfig:
    """Batch shape per projection: big batches for columnar inserts, small ones for the model."""
    if name == "memory":
        from projections.memory.projection import MEMORY_RUNNER_CONFIG

        return replace(MEMORY_RUNNER_CONFIG)
    if name == "graph":
        return RunnerConfig(max_batch=5_000, max_wait_ms=250)
    return RunnerConfig(max_batch=20_000, max_wait_ms=250)
