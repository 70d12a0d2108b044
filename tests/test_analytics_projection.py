"""The analytics projection: exact counts in raw tables AND rollups under every redelivery.

In-process tests drive ``apply`` with decoded records like the runner does; the crash
test runs the real runner against a real broker in a child process that dies between
the insert and the offset commit.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from projections.analytics import schema
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.rows import events_table
from projections.analytics.sample import SampleCounts, sample_events
from projections.analytics.store import AnalyticsStore
from projections.runner import ProjectionRunner, Record, RunnerConfig, wait_until
from schemas.arrow import events_to_table
from schemas.codec import encode_event
from schemas.derived import Episode, Violation, ViolationCategory, encode_derived
from schemas.state import AgentState, Outlook, encode_state
from schemas.topics import EPISODES, EVENTS, STATE, VIOLATIONS

N = 3000


@pytest.fixture
def url(tmp_path) -> str:
    return f"chdb://{tmp_path / 'ch'}"


@pytest.fixture
def projection(url) -> Iterator[AnalyticsProjection]:
    p = AnalyticsProjection(url)
    p.setup()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def sample() -> tuple[list, SampleCounts]:
    counts = SampleCounts()
    events = list(sample_events(N, agents=6, counts=counts))
    return events, counts


def records(events, start: int = 0) -> list[Record]:
    """As the runner hands them over: one agent's events on one partition, in order."""
    out = []
    offsets: Counter[int] = Counter()
    for e in events:
        part = int(e.agentid.rsplit("-", 1)[1]) % 3
        out.append(Record(EVENTS, part, start + offsets[part], e.agentid.encode(), e, 0))
        offsets[part] += 1
    return out


def assert_exact(store: AnalyticsStore, counts: SampleCounts) -> None:
    """Raw table and every rollup hold each produced event exactly once."""
    by_type = dict(store.rows("SELECT type, count() FROM events GROUP BY type"))
    assert by_type == dict(counts.by_type)
    by_agent = dict(store.rows("SELECT agent_id, count() FROM events GROUP BY agent_id"))
    assert by_agent == dict(counts.by_agent)
    assert store.scalar("SELECT uniqExact(event_id) FROM events") == counts.total
    rolled = dict(store.rows("SELECT type, sum(events) FROM agent_minute GROUP BY type"))
    assert rolled == dict(counts.by_type)
    rolled_agents = dict(
        store.rows("SELECT agent_id, sum(events) FROM agent_minute GROUP BY agent_id")
    )
    assert rolled_agents == dict(counts.by_agent)
    assert store.scalar("SELECT sum(errors) FROM agent_minute") == counts.failed_actions
    assert store.scalar("SELECT sum(input_tokens) FROM agent_minute") == counts.input_tokens
    assert store.scalar("SELECT sum(output_tokens) FROM agent_minute") == counts.output_tokens
    completed = sum(v for k, v in counts.by_type.items() if k.startswith("agent.act.completed"))
    assert store.rows("SELECT sum(calls), sum(errors) FROM tool_minute") == [
        (completed, counts.failed_actions)
    ]
    assert store.scalar("SELECT sum(events) FROM run_summary") == counts.total
    assert store.scalar("SELECT sum(actions) FROM run_summary") == completed
    finished = store.rows(
        "SELECT countIf(s = 'failed'), countIf(s != '') FROM "
        "(SELECT run_id, max(status) AS s FROM run_summary GROUP BY run_id)"
    )
    runs_finished = counts.by_type["agent.lifecycle.run_finished.v1"]
    assert finished == [(counts.failed_runs, runs_finished)]


def test_columnar_rows_equal_the_shared_arrow_rows(sample):
    events, _ = sample
    parts, offs = list(range(len(events))), [i * 3 for i in range(len(events))]
    assert events_table(events, parts, offs).equals(events_to_table(events, parts, offs))
    assert events_table(events).equals(events_to_table(events))


def test_one_pass_gives_exact_counts(projection, sample):
    events, counts = sample
    projection.apply(records(events))
    assert_exact(projection.store, counts)
    assert projection.verify_rollups() == {r.table: [] for r in schema.ROLLUPS}


def test_the_same_batch_applied_twice_counts_once(projection, sample):
    events, counts = sample
    batch = records(events)
    projection.apply(batch)
    projection.apply(batch)
    assert_exact(projection.store, counts)


def test_duplicates_inside_one_batch_count_once(projection, sample):
    """A producer retry can put the same event twice in the log (different offsets)."""
    events, counts = sample
    doubled = records(events) + records(events[:500], start=10_000)
    projection.apply(doubled)
    assert_exact(projection.store, counts)


def test_partial_and_overlapping_replays_count_once(projection, sample):
    events, counts = sample
    recs = records(events)
    projection.apply(recs[:1000])
    projection.apply(recs[500:2000])  # overlaps the first batch
    projection.apply(recs[1500:])  # overlaps the second
    projection.apply(recs[700:1200])  # a partial replay of history
    assert_exact(projection.store, counts)


def test_replay_through_apply_table_counts_once(projection, sample):
    """The archive fast path (Arrow rows, no JSON) dedups against what the log delivered."""
    events, counts = sample
    projection.apply(records(events[:2000]))
    projection.apply_table(events_to_table(events))
    assert_exact(projection.store, counts)


def test_a_view_failing_mid_insert_is_repaired_before_the_retry(projection, sample):
    """ClickHouse commits events before (some) views: a failed insert leaves rollups short.

    The retry finds the rows in events and skips them; the projection rebuilds the short
    rollup months from events first, so the counts come out exact anyway.
    """
    events, counts = sample
    store = projection.store
    recs = records(events)
    projection.apply(recs[:1000])
    db = store.database
    store.command(f"CREATE TABLE {db}.boom (n UInt8) ENGINE = MergeTree ORDER BY n")
    store.command(
        f"CREATE MATERIALIZED VIEW {db}.zz_boom_mv TO {db}.boom AS "
        f"SELECT throwIf(agent_id = 'agent-003', 'injected') AS n FROM {db}.events"
    )
    with pytest.raises(Exception, match="injected"):
        projection.apply(recs[1000:2000])
    # the raw rows went in, at least one rollup did not: the failure really left a hole
    assert store.scalar("SELECT count() FROM events") == 2000
    assert any(projection.verify_rollups().values())
    store.command(f"DROP VIEW {db}.zz_boom_mv")
    projection.apply(recs[1000:2000])  # the runner's retry
    projection.apply(recs[2000:])
    assert_exact(store, counts)


def test_rollups_left_short_by_a_crash_are_repaired_at_start(url, sample):
    events, counts = sample
    p = AnalyticsProjection(url)
    p.setup()
    p.apply(records(events))
    db = p.store.database
    p.store.command(f"TRUNCATE TABLE {db}.tool_minute")  # as if killed before the views wrote
    p.store.command(f"ALTER TABLE {db}.agent_minute DROP PARTITION 202501")
    p.close()
    again = AnalyticsProjection(url)
    try:
        again.setup()
        assert_exact(again.store, counts)
    finally:
        again.close()


def test_crash_between_insert_and_commit_counts_once(kafka, url, sample, tmp_path):
    """The real runner, killed (os._exit) right after its first apply, before the commit."""
    events, counts = sample
    asyncio.run(_produce(kafka.bootstrap, events))
    child = textwrap.dedent(
        f"""
        import asyncio, os
        from projections.analytics.projection import AnalyticsProjection
        from projections.runner import RunnerConfig, run_projection

        p = AnalyticsProjection({url!r})
        real_apply = p.apply

        def apply_then_die(records):
            real_apply(records)
            os._exit(17)  # the insert is durable, the offsets are not committed

        p.apply = apply_then_die
        config = RunnerConfig(max_batch=800, max_wait_ms=200, session_timeout_ms=6000)
        asyncio.run(run_projection(p, {kafka.bootstrap!r}, asyncio.Event(), config=config))
        """
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=240)
    assert done.returncode == 17, done.stderr.decode()[-2000:]
    with AnalyticsStore(url) as s:
        inserted_before_crash = s.scalar("SELECT count() FROM events")
    assert 0 < inserted_before_crash < N

    p = AnalyticsProjection(url)
    try:
        runner = ProjectionRunner(
            p,
            kafka.bootstrap,
            config=RunnerConfig(max_batch=800, max_wait_ms=100, session_timeout_ms=6000),
        )
        asyncio.run(_run_until_caught_up(runner))
        assert runner.stats.applied == N  # nothing was committed: everything redelivered
        assert_exact(p.store, counts)
    finally:
        p.close()


def test_violations_episodes_and_states_upsert(projection):
    t0 = datetime(2025, 1, 6, 9, tzinfo=UTC)
    violations = [
        Violation(
            violation_id=f"00000000-0000-4000-8000-{i:012d}",
            category=ViolationCategory.TOOL_ERROR if i % 3 else ViolationCategory.WRONG_RESULT,
            agent_id=f"agent-{i % 4}",
            run_id=f"run-{i}",
            task_id=None,
            tenant="default",
            time=t0 + timedelta(seconds=i),
            detected_by=f"0194a000-0000-7000-8000-{i:012d}",
            event_ids=(f"0194a000-0000-7000-8000-{i:012d}",),
            tool="search",
        )
        for i in range(30)
    ]
    episodes = [
        Episode(
            episode_id=f"00000000-0000-4000-9000-{i:012d}",
            revision=0,
            agent_id=f"agent-{i % 4}",
            run_id=None,
            task_id=None,
            tenant="default",
            time=t0 + timedelta(seconds=i),
            situation="s",
            action="a",
            tool="search",
            outcome="failure",
            result="r",
        )
        for i in range(10)
    ]
    revised = [msgspec.structs.replace(e, revision=1, lesson="retry later") for e in episodes[:4]]
    states = [
        AgentState(
            agent_id="agent-1",
            events_total=n,
            world=Outlook(actions=n, errors=1, mismatches=2, failed=3, recent_success_rate=0.5),
        )
        for n in (3, 7, 12)
    ]

    def recs(topic, values):
        return [Record(topic, 0, i, None, v, 0) for i, v in enumerate(values)]

    for _ in range(2):  # everything delivered twice
        projection.apply(recs(VIOLATIONS, violations))
        projection.apply(recs(EPISODES, episodes))
        projection.apply(recs(EPISODES, revised))
        projection.apply(recs(STATE, states))
    s = projection.store
    assert s.scalar("SELECT count() FROM violations") == 30  # exact even without FINAL
    assert dict(s.rows("SELECT category, count() FROM violations FINAL GROUP BY category")) == {
        "tool_error": 20,
        "wrong_result": 10,
    }
    assert s.scalar("SELECT count() FROM episodes FINAL") == 10
    assert s.scalar("SELECT countIf(revision = 1) FROM episodes FINAL") == 4
    assert s.scalar("SELECT count() FROM episodes") == 14  # each (id, revision) once
    assert s.rows(
        "SELECT agent_id, events_total, actions, errors, mismatches, failed, recent_success_rate "
        "FROM agent_state FINAL"
    ) == [("agent-1", 12, 12, 1, 2, 3, 0.5)]


def test_decoders_read_what_the_processors_write(projection):
    ev = next(iter(sample_events(1)))
    v = Violation(
        violation_id="00000000-0000-4000-8000-000000000001",
        category=ViolationCategory.TIMEOUT,
        agent_id="a",
        run_id=None,
        task_id=None,
        tenant="default",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        detected_by="0194a000-0000-7000-8000-000000000001",
        event_ids=(),
    )
    state = AgentState(agent_id="a")
    d = projection.decoders
    assert d[EVENTS](encode_event(ev)) == ev
    assert d[VIOLATIONS](encode_derived(v)) == v
    assert d[STATE](encode_state(state)) == state
    assert set(d) == set(projection.topics)


def test_build_aside_and_swap_in(url, sample):
    """The replay hook: rebuild into another database, then swap it in atomically."""
    events, counts = sample
    live = AnalyticsProjection(url)
    live.setup()
    try:
        live.apply(records(events[:100]))
        rebuild = AnalyticsProjection(url, database="rebuild_1")
        rebuild.setup()
        rebuild.apply_table(events_to_table(events))
        rebuild.close()
        live.store.replace_live_with("rebuild_1")
        assert_exact(live.store, counts)
        live.apply(records(events))  # the live projection goes on, idempotently
        assert_exact(live.store, counts)
    finally:
        live.close()


async def _produce(bootstrap: str, events) -> None:
    from streams.producer import EventProducer

    async with EventProducer(bootstrap) as producer:
        for e in events:
            await producer.send(e)
        await producer.flush()


async def _run_until_caught_up(runner: ProjectionRunner) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        assert await wait_until(lambda: runner.caught_up() and runner.stats.applied >= N, 120), (
            runner.stats
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
