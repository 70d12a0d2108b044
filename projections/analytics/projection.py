"""The analytics projection: the log -> ClickHouse, effectively once.

How a batch is applied (the runner commits offsets only after ``apply`` returned):

1. The batch's rows go into a per-writer temporary staging table (Arrow insert).
2. One ``INSERT … SELECT`` moves into ``events`` only the staged rows whose ``event_id`` is
   not stored yet (an anti-join restricted to the batch's agents and time range: a
   primary-key range lookup) and only one copy of an id repeated inside the batch.
3. The rollups' materialized views therefore see each event exactly once.

A redelivered batch (crash between insert and commit), a retried batch or a partial
replay inserts nothing it already holds. Events of one agent always come from one
partition, and a partition has one writer, so no two writers race on the same ids.

One case the anti-join cannot fix: an insert that failed half-way, after ``events`` took
the rows but before every view wrote its rollup (ClickHouse commits them separately). The
retry then finds the rows present and skips them, and the rollup would stay short. So
after any failed insert, and at every start, the rollups are checked against ``events``
month by month and a month that differs is recomputed from ``events`` and swapped in
atomically (``REPLACE PARTITION``): :meth:`AnalyticsProjection.repair_rollups`.

Violations and episodes use the same staging anti-join on their ids (plus the revision
for episodes); agent states are upserts into a ReplacingMergeTree (read with FINAL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from projections.analytics import rows as r
from projections.analytics import schema
from projections.analytics.store import DEFAULT_DATABASE, AnalyticsStore, parse_url
from schemas.arrow import EVENT_ROW_SCHEMA
from schemas.codec import DEFAULT_MAX_EVENT_BYTES, EventCodec
from schemas.derived import Episode, Violation, decode_episode, decode_violation
from schemas.envelope import EventBase
from schemas.state import AgentState, decode_state
from schemas.topics import EPISODES, EVENTS, STATE, VIOLATIONS

if TYPE_CHECKING:
    from agentstream.settings import Settings
    from projections.analytics.readonly import QueryLimits
    from projections.analytics.service import QueryService
    from projections.runner import Record

log = logging.getLogger(__name__)

EVENT_COLUMNS = tuple(EVENT_ROW_SCHEMA.names)
_ROLLUP_SOURCES = frozenset(r.source for r in schema.ROLLUPS)


class AnalyticsProjection:
    """Feeds ``events``, ``violations``, ``episodes``, ``agent_state`` and the rollups.

    ``serve_queries_in``: on chDB, the directory where the read endpoint of this process
    is recorded (``DATA_DIR/run``); :meth:`setup` starts it, so ``agentstream query``
    works while this process holds the chDB directory.
    """

    name = "analytics"
    topics: tuple[str, ...] = (EVENTS, VIOLATIONS, EPISODES, STATE)

    def __init__(
        self,
        url: str,
        database: str | None = None,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        serve_queries_in: Path | None = None,
        query_limits: QueryLimits | None = None,
    ) -> None:
        self.url = url
        self.database = database or parse_url(url).database or DEFAULT_DATABASE
        self.serve_queries_in = serve_queries_in
        self.query_limits = query_limits  # the read endpoint's (default: QueryLimits())
        self._codec = EventCodec(max_event_bytes)
        self.decoders: Mapping[str, Callable[[bytes], object]] = {
            EVENTS: self._codec.decode,
            VIOLATIONS: decode_violation,
            EPISODES: decode_episode,
            STATE: decode_state,
        }
        self._store: AnalyticsStore | None = None
        self._service: QueryService | None = None
        self._needs_repair = True  # checked once at start: the last run may have crashed
        self._staged: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> AnalyticsProjection:
        """The projection for the configured store; on chDB it also serves reads."""
        url = settings.analytics_url
        kwargs: dict[str, Any] = {"max_event_bytes": settings.max_event_bytes}
        if url.startswith("chdb://"):
            kwargs["serve_queries_in"] = settings.data_dir.resolve() / "run"
            from projections.analytics.reader import limits_from

            kwargs["query_limits"] = limits_from(settings)
        kwargs.update(overrides)
        return cls(url, **kwargs)

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def store(self) -> AnalyticsStore:
        if self._store is None:
            self.setup()
        assert self._store is not None
        return self._store

    def setup(self) -> None:
        """Create or upgrade the tables, repair rollups a crash left short, start serving."""
        if self._store is None:
            self._store = AnalyticsStore(self.url, self.database)
        applied = schema.migrate(self._store)
        if applied:
            log.info("analytics: applied schema migrations %s", applied)
        self._staged.clear()
        self.repair_rollups()
        if self.serve_queries_in is not None and self._service is None:
            from projections.analytics.service import QueryService

            self._service = QueryService(
                self._store, self.serve_queries_in, limits=self.query_limits
            )
            self._service.start()

    def close(self) -> None:
        if self._service is not None:
            self._service.stop()
            self._service = None
        if self._store is not None:
            self._store.close()
            self._store = None

    # --- the runner's entry point -----------------------------------------------------------
    def apply(self, records: Sequence[Record]) -> None:
        """Apply one batch of decoded records from any of the projection's topics."""
        events: list[EventBase] = []
        parts: list[int] = []
        offsets: list[int] = []
        violations: list[Violation] = []
        episodes: list[Episode] = []
        states: list[AgentState] = []
        for rec in records:
            value = rec.value
            if rec.topic == EVENTS:
                events.append(value)  # type: ignore[arg-type]
                parts.append(rec.partition)
                offsets.append(rec.offset)
            elif rec.topic == VIOLATIONS:
                violations.append(value)  # type: ignore[arg-type]
            elif rec.topic == EPISODES:
                episodes.append(value)  # type: ignore[arg-type]
            elif rec.topic == STATE:
                states.append(value)  # type: ignore[arg-type]
            else:
                raise ValueError(f"analytics projection got a record of topic {rec.topic!r}")
        if events:
            self.apply_table(r.events_table(events, parts, offsets))  # type: ignore[arg-type]
        if violations:
            self.apply_violations(violations)
        if episodes:
            self.apply_episodes(episodes)
        if states:
            self.apply_states(states)

    # --- per table ----------------------------------------------------------------------------
    def apply_table(self, table: pa.Table) -> None:
        """Insert event rows (EVENT_ROW_SCHEMA) that are not stored yet; the replay fast path.

        Rows may come straight from the Parquet archive: no JSON round trip.
        """
        if table.num_rows == 0:
            return
        missing = set(EVENT_COLUMNS) - set(table.column_names)
        if missing:
            raise ValueError(f"apply_table: rows lack columns {sorted(missing)}")
        table = table.select(EVENT_COLUMNS)
        db = self.database
        self._insert_new(
            "events",
            table,
            f"""
            INSERT INTO {db}.events ({_cols(EVENT_COLUMNS)})
            SELECT {_cols(EVENT_COLUMNS)} FROM {{stage}}
            WHERE event_id NOT IN (
                SELECT event_id FROM {db}.events
                WHERE (tenant, agent_id) IN (SELECT tenant, agent_id FROM {{stage}})
                  AND time >= (SELECT min(time) FROM {{stage}})
                  AND time <= (SELECT max(time) FROM {{stage}})
                  AND event_id IN (SELECT event_id FROM {{stage}}))
            LIMIT 1 BY event_id
            """,
        )

    def apply_violations(self, violations: Sequence[Violation]) -> None:
        cols = tuple(r.VIOLATION_SCHEMA.names)
        db = self.database
        self._insert_new(
            "violations",
            r.violations_table(violations),
            f"""
            INSERT INTO {db}.violations ({_cols(cols)})
            SELECT {_cols(cols)} FROM {{stage}}
            WHERE violation_id NOT IN (
                SELECT violation_id FROM {db}.violations
                WHERE (tenant, agent_id) IN (SELECT tenant, agent_id FROM {{stage}}))
            LIMIT 1 BY violation_id
            """,
        )

    def apply_episodes(self, episodes: Sequence[Episode]) -> None:
        cols = tuple(r.EPISODE_SCHEMA.names)
        db = self.database
        self._insert_new(
            "episodes",
            r.episodes_table(episodes),
            f"""
            INSERT INTO {db}.episodes ({_cols(cols)})
            SELECT {_cols(cols)} FROM {{stage}}
            WHERE (episode_id, revision) NOT IN (
                SELECT episode_id, revision FROM {db}.episodes
                WHERE (tenant, agent_id) IN (SELECT tenant, agent_id FROM {{stage}}))
            LIMIT 1 BY episode_id, revision
            """,
        )

    def apply_states(self, states: Sequence[AgentState]) -> None:
        """Upsert the latest state per agent (ReplacingMergeTree by ``events_total``)."""
        table = r.states_table(r.latest_states(states))
        with self.store.lock.shared():
            self.store.insert_arrow(self.store.table("agent_state"), table)

    # --- the staging anti-join --------------------------------------------------------------
    def _stage_name(self, target: str) -> str:
        return f"_stage_{target}"

    def _ensure_stage(self, target: str, columns: Sequence[str]) -> str:
        """A temporary (per-connection) Memory table with the target's column types."""
        name = self._stage_name(target)
        if name not in self._staged:
            store = self.store
            types = dict(
                store.rows(
                    "SELECT name, type FROM system.columns "
                    "WHERE database = {db:String} AND table = {t:String}",
                    {"db": store.database, "t": target},
                )
            )
            defs = ", ".join(f"`{c}` {types[c]}" for c in columns)
            store.command(f"DROP TEMPORARY TABLE IF EXISTS {name}")
            store.command(f"CREATE TEMPORARY TABLE {name} ({defs}) ENGINE = Memory")
            self._staged.add(name)
        return name

    def _insert_new(self, target: str, table: pa.Table, insert_sql: str) -> None:
        store = self.store
        stage = self._ensure_stage(target, table.column_names)
        with store.lock.shared():
            if self._needs_repair:
                self.repair_rollups()
            store.command(f"TRUNCATE TABLE {stage}")
            store.insert_arrow(stage, table)
            try:
                store.command(insert_sql.format(stage=stage))
            except Exception:
                # the target may hold rows whose rollup rows were not written: check before the
                # retry (events and violations feed rollups)
                self._needs_repair = self._needs_repair or target in _ROLLUP_SOURCES
                raise

    # --- rollup consistency -----------------------------------------------------------------
    def verify_rollups(self) -> dict[str, list[int]]:
        """Per rollup table, the months (YYYYMM; 0 = the whole table) whose counts disagree
        with their source. Empty lists everywhere: every event (and violation) is counted
        exactly once."""
        return {t: sorted(bad) for t, (bad, _) in self._compare_rollups().items()}

    def _compare_rollups(self) -> dict[str, tuple[set[int], dict[int, int]]]:
        """Per table: the bad months, and the months that have any source rows."""
        store = self.store
        out: dict[str, tuple[set[int], dict[int, int]]] = {}
        for rollup in schema.ROLLUPS:
            source = dict(store.rows(schema.source_counts_sql(rollup, store.database)))
            rolled = dict(store.rows(schema.rollup_counts_sql(rollup, store.database)))
            bad = {m for m in set(source) | set(rolled) if source.get(m, 0) != rolled.get(m, 0)}
            seen_bad, seen_source = out.get(rollup.table, (set(), {}))
            for m, n in source.items():
                seen_source[m] = seen_source.get(m, 0) + n
            out[rollup.table] = (seen_bad | bad, seen_source)
        return out

    def repair_rollups(self) -> dict[str, list[int]]:
        """Recompute from the sources each rollup month that disagrees; return what was fixed.

        The month is rebuilt aside and swapped in with REPLACE PARTITION, so readers see
        either the old or the repaired month, never an empty one. A table fed by several
        views is rebuilt from all of them.
        """
        store = self.store
        db = store.database
        fixed: dict[str, list[int]] = {}
        for table, (bad, source) in self._compare_rollups().items():
            if not bad:
                continue
            rollups = schema.ROLLUPS_BY_TABLE[table]
            partitioned = rollups[0].month_column is not None
            scratch = f"{db}._repair_{table}"
            store.command(f"DROP TABLE IF EXISTS {scratch} SYNC")
            store.command(f"CREATE TABLE {scratch} AS {db}.{table}")
            try:
                for month in sorted(bad):
                    partition = str(month) if partitioned else "tuple()"
                    if not source.get(month):  # nothing in the sources: the rollup rows are bogus
                        store.command(f"ALTER TABLE {db}.{table} DROP PARTITION {partition}")
                    else:
                        for rollup in rollups:
                            store.command(
                                schema.rollup_rebuild_sql(
                                    rollup, db, scratch, month if partitioned else None
                                )
                            )
                        store.command(
                            f"ALTER TABLE {db}.{table} REPLACE PARTITION {partition} FROM {scratch}"
                        )
                        store.command(f"TRUNCATE TABLE {scratch}")
                    log.warning("analytics: rebuilt %s (month %s) from its sources", table, month)
            finally:
                store.command(f"DROP TABLE IF EXISTS {scratch} SYNC")
            fixed[table] = sorted(bad)
        self._needs_repair = False
        return fixed


def _cols(names: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)
