"""Step-through: the same reducer re-run as ``agentstream replay debug``, kept per run.

Building a run's timeline reads the log (Kafka or the archive) and folds the history of the
run's agents once (:func:`agentstream.debug_replay.read_history` and ``build_timeline``,
the functions the CLI calls); afterwards every step is served from memory, rendered by the
CLI's ``step_json``. Timelines are cached per (run, source), a few at a time, and built
once even when several requests ask at the same moment.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from agentstream.debug_replay import (
    _KEYED,
    Timeline,
    TimelineFilter,
    build_timeline,
    read_history,
    step_json,
)
from agentstream.ui.backends import Backends, NotFound, Unavailable
from agentstream.ui.timeline import kind

CACHED_TIMELINES = 6
SOURCES = ("kafka", "archive")


@dataclass
class Built:
    timeline: Timeline
    source: str
    agents: list[str] | None
    seconds: float
    built_at: float


class StepCache:
    def __init__(self, backends: Backends, size: int = CACHED_TIMELINES) -> None:
        self.backends = backends
        self.size = size
        self._built: OrderedDict[tuple[str, str], Built] = OrderedDict()
        self._pending: dict[tuple[str, str], asyncio.Future[Built]] = {}

    async def get(self, run_id: str, source: str, refresh: bool = False) -> Built:
        if source not in SOURCES:
            raise ValueError(f"source must be kafka or archive, got {source!r}")
        key = (run_id, source)
        if not refresh and key in self._built:
            self._built.move_to_end(key)
            return self._built[key]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Built] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            built = await self._build(run_id, source)
            fut.set_result(built)
        except BaseException as err:
            fut.set_exception(err)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._pending[key]
        self._built[key] = built
        while len(self._built) > self.size:
            self._built.popitem(last=False)
        return built

    async def _build(self, run_id: str, source: str) -> Built:
        agents, bounds = await asyncio.to_thread(self._plan, run_id)
        root = self.backends.archive_root
        if source == "archive" and not root.is_dir():
            raise Unavailable(
                f"no archive at {root} — run the archiver (`agentstream up`) or use kafka"
            )
        t0 = time.monotonic()
        try:
            history = await read_history(
                self.backends.bootstrap,
                source,
                root,
                agents=agents,
                bounds=bounds if source == "kafka" else None,
            )
        except (OSError, RuntimeError, TimeoutError) as err:
            raise Unavailable(
                f"cannot read {source} at {self.backends.bootstrap}: {err} — check "
                "`agentstream status`, or step through the archive"
            ) from None
        timeline = await asyncio.to_thread(build_timeline, history, TimelineFilter(run_id=run_id))
        if not timeline.steps:
            raise NotFound(f"no events of run {run_id!r} in {source}")
        return Built(timeline, source, agents, time.monotonic() - t0, time.time())

    def _plan(self, run_id: str) -> tuple[list[str] | None, dict[int, tuple[int, int]] | None]:
        """The run's agents (only their history is folded) and, per partition, the offsets
        from their first event to just after the run's last: nothing outside is needed for
        the run's steps. (None, None) when analytics cannot say: then everything is read."""
        try:
            agents = sorted(
                r["a"]
                for r in self.backends.query(
                    "SELECT DISTINCT agent_id AS a FROM events WHERE run_id = {run:String}",
                    {"run": run_id},
                )
            )
            if not agents:
                return None, None
            ends = self.backends.query(
                "SELECT log_partition AS p, max(log_offset) AS hi, countIf(log_offset IS NULL) "
                "AS unknown FROM events WHERE run_id = {run:String} GROUP BY p",
                {"run": run_id},
            )
            starts = self.backends.query(
                "SELECT log_partition AS p, min(log_offset) AS lo FROM events "
                "WHERE agent_id IN {agents:Array(String)} AND log_partition IS NOT NULL "
                "GROUP BY p",
                {"agents": agents},
            )
        except Unavailable:
            return None, None
        if any(r["p"] is None or r["unknown"] for r in ends):
            return agents, None  # positions not recorded: read the whole log
        lo = {int(r["p"]): int(r["lo"]) for r in starts}
        bounds = {int(r["p"]): (lo.get(int(r["p"]), 0), int(r["hi"]) + 1) for r in ends}
        return agents, bounds


def summary(built: Built) -> dict[str, Any]:
    """What the scrubber needs: one short line per step, and where the failures are."""
    tl = built.timeline
    return {
        "count": len(tl.steps),
        "failures": tl.failures(),
        "events_folded": tl.events_folded,
        "agents": tl.agents,
        "source": built.source,
        "build_seconds": round(built.seconds, 3),
        "keyed": list(_KEYED),
        "steps": [
            {
                "index": s.index,
                "id": s.event.id,
                "agent": s.event.agentid,
                "kind": kind(s.event.type),
                "failure": s.failure,
                "violation": any(type(d).__name__ == "Violation" for d in s.derived),
            }
            for s in tl.steps
        ],
    }


def step(built: Built, index: int) -> dict[str, Any]:
    steps = built.timeline.steps
    if not 0 <= index < len(steps):
        raise NotFound(f"step {index} is outside 0..{len(steps) - 1}")
    out = step_json(steps[index])
    out["count"] = len(steps)
    return out
