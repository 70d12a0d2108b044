"""Fuzzing the codec: whatever the bytes, ``InvalidEvent`` or an event the stores hold exactly.

A seeded mutator (tests/codec_mutator.py) turns the committed corpus
(tests/data/codec_seeds.jsonl) into ``AGENTSTREAM_FUZZ_INPUTS`` inputs (default 100,000;
``AGENTSTREAM_FUZZ_SEED`` picks another stream). Every input must either raise
``InvalidEvent`` or decode to an event that validates against the committed JSON Schema and
that the stores hold exactly (tests/fuzz_oracle.py); the accepted ones also go through a
real chDB. bench/bench_fuzz.py runs the same for 1M inputs and reports rates and timings.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from codec_mutator import Mutator, load_seeds
from fuzz_oracle import SchemaOracle, store_problems
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import EventCodec, encode_event
from schemas.envelope import MAX_TIME, MIN_TIME, Event
from schemas.errors import InvalidEvent, RejectReason

INPUTS = int(os.environ.get("AGENTSTREAM_FUZZ_INPUTS", "100000"))
SEED = int(os.environ.get("AGENTSTREAM_FUZZ_SEED", "20261205"))


@dataclass
class Fuzzed:
    reasons: Counter[str] = field(default_factory=Counter)  # InvalidEvent by reason
    others: list[str] = field(default_factory=list)  # anything else raised: the findings
    accepted: dict[bytes, Event] = field(default_factory=dict)  # by distinct raw bytes
    n_accepted: int = 0  # inputs accepted, repeats included


def fuzz(n: int, seed: int) -> Fuzzed:
    codec = EventCodec()
    out = Fuzzed()
    mutator = Mutator(load_seeds(), seed)
    for _ in range(n):
        raw = mutator.next()
        try:
            out.accepted[raw] = codec.decode(raw)
            out.n_accepted += 1
        except InvalidEvent as err:
            out.reasons[err.reason.value] += 1
        except Exception as err:  # the finding: anything but InvalidEvent
            out.others.append(f"{type(err).__name__}: {err!s:.200} <- {raw[:300]!r}")
    return out


@pytest.fixture(scope="module")
def fuzzed() -> Fuzzed:
    return fuzz(INPUTS, SEED)


def test_only_invalid_event_is_raised(fuzzed):
    reasons, others, accepted = fuzzed.reasons, fuzzed.others, fuzzed.accepted
    assert others == [], f"{len(others)} inputs raised something else, e.g. {others[:5]}"
    assert sum(reasons.values()) + fuzzed.n_accepted == INPUTS
    # the mutator reaches every codec reason (the ones it cannot make are listed)
    unreachable = {"key_mismatch", "processing_error", "too_large", "upcast_failed"}
    assert {r.value for r in RejectReason} - unreachable <= set(reasons), reasons
    assert len(accepted) > INPUTS // 100  # the accepted side is exercised too


def test_every_accepted_input_validates_against_the_committed_schema(fuzzed):
    accepted = fuzzed.accepted
    oracle = SchemaOracle()
    bad = []
    for i, (raw, event) in enumerate(accepted.items()):
        problems = oracle.problems(raw, event, union=i % 25 == 0)
        if problems:
            bad.append(f"{problems[:3]} <- {raw[:300]!r}")
    assert bad == [], f"{len(bad)} accepted inputs fail the JSON Schema, e.g. {bad[:5]}"


def test_every_accepted_input_is_held_exactly_by_the_row_builders(fuzzed):
    events = list(fuzzed.accepted.values())
    problems = []
    for i in range(0, len(events), 2000):
        problems += store_problems(events[i : i + 2000])
    assert problems == [], f"{len(problems)} problems, e.g. {problems[:5]}"


def test_accepted_inputs_round_trip_through_chdb(tmp_path: Path, fuzzed):
    """The real store: the accepted events in ``events``, its rollups and ``agent_state``."""
    from projections.analytics import schema
    from projections.analytics.rows import events_table, latest_states, states_table
    from projections.analytics.store import AnalyticsStore
    from streams.reducer import fold

    events = list(fuzzed.accepted.values())[:3000]
    n = len(events)
    with AnalyticsStore(f"chdb://{tmp_path / 'ch'}", "fuzz") as store:
        schema.migrate(store)
        store.insert_arrow(store.table("events"), events_table(events, [0] * n, list(range(n))))
        states, _ = fold(events)
        store.insert_arrow(store.table("agent_state"), states_table(latest_states(states.values())))
        back = store.query_arrow(
            "SELECT time, input_tokens, output_tokens, cost_usd, latency_ms, payload "
            "FROM events ORDER BY log_offset"
        ).to_pydict()
        want = events_table(events).to_pydict()
        for col in ("time", "input_tokens", "output_tokens", "cost_usd", "latency_ms", "payload"):
            assert back[col] == want[col], col
        # rollups: minutes are DateTime (to 2106), sums are UInt64 / Float64
        minutes = store.rows(
            "SELECT min(minute), max(minute), sum(input_tokens), sum(output_tokens) "
            "FROM agent_minute"
        )[0]
        utc = sorted(e.time.astimezone(UTC).replace(tzinfo=None) for e in events)
        first, last = (m.replace(tzinfo=None) for m in minutes[:2])  # UTC either way
        assert first == utc[0].replace(second=0, microsecond=0)
        assert last == utc[-1].replace(second=0, microsecond=0)
        assert minutes[2:] == (sum(want["input_tokens"]), sum(want["output_tokens"]))
        totals = store.rows("SELECT sum(input_tokens), sum(cost_usd) FROM agent_state FINAL")[0]
        assert totals[0] == sum(s.world.input_tokens for s in states.values())
        assert totals[1] == pytest.approx(sum(s.world.cost_usd for s in states.values()))


def test_accepted_inputs_round_trip_through_falkordb(falkordb, fuzzed):
    """The graph: every accepted event's node holds its time (epoch µs), text and ids exactly."""
    from projections.graph.falkordb_store import FalkorDBStore
    from projections.graph.model import event_row
    from projections.graph.projection import project

    last: dict[str, Event] = {}  # mutations share ids: the graph keeps one node per id
    for event in list(fuzzed.accepted.values())[:1500]:
        last.pop(event.id, None)
        last[event.id] = event
    store = FalkorDBStore.from_url(falkordb.url, "fuzz")
    try:
        store.setup()
        events = list(last.values())
        for i in range(0, len(events), 250):
            project(store, events[i : i + 250])
        rows = store.read(
            "MATCH (e:Event) RETURN e.id, e.time, e.agent, e.run, e.tenant, e.summary, e.status"
        )
    finally:
        store.close()
    got = {r[0]: r[1:] for r in rows}  # also nodes for causes that are not in the batch
    assert set(last) <= set(got)
    for event_id, event in last.items():
        row = event_row(event)
        want = (row["time"], row["agent"], row["run"], row["tenant"], row["summary"])
        assert got[event_id][:5] == want, event_id
        assert got[event_id][5] == row["status"]


# --- hypothesis: values drawn around every bound, in an otherwise valid event ----------------

BASE = {
    "specversion": "1.0",
    "id": "019c1c38-a400-7067-8cce-093f61790134",
    "source": "/agents/a",
    "time": "2026-02-03T04:05:06Z",
    "agentid": "a",
}
NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**32 - 1, 2**32, 2**63 - 1, 2**63, 1e9, 1e12, 1e15, -1e9]),
    st.floats(allow_nan=False, allow_infinity=False),
)
TIME = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
)


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    tokens=NUMBER,
    cost=NUMBER,
    latency=NUMBER,
    score=NUMBER,
    time=TIME,
    text=st.text(max_size=20),
)
def test_values_around_the_bounds(tokens, cost, latency, score, time, text):
    import json

    oracle = _oracle()
    codec = EventCodec()
    thought = {
        **BASE,
        "type": "agent.think.thought.v1",
        "time": time.isoformat(),
        "data": {
            "text": text,
            "gen_ai.request.model": "m",
            "gen_ai.usage.input_tokens": tokens,
            "cost_usd": cost,
            "latency_ms": latency,
        },
    }
    feedback = {
        **BASE,
        "type": "agent.learn.feedback.v1",
        "data": {"score": score, "source": "test"},
    }
    for doc in (thought, feedback):
        raw = json.dumps(doc).encode()
        try:
            event = codec.decode(raw)
        except InvalidEvent:
            continue
        assert oracle.problems(raw, event) == []
        assert store_problems([event]) == []
        assert MIN_TIME <= event.time < MAX_TIME
    offset = time.utcoffset()
    in_range = MIN_TIME <= time < MAX_TIME and offset is not None and offset.seconds % 60 == 0
    ok_tokens = isinstance(tokens, int) and 0 <= tokens < 2**32
    ok_floats = all(0 <= v <= b for v, b in ((cost, 1e9), (latency, 1e12)))
    if in_range and ok_tokens and ok_floats:
        assert codec.decode(json.dumps(thought).encode()).time == time  # accepted, exactly


_ORACLE: list[SchemaOracle] = []


def _oracle() -> SchemaOracle:
    if not _ORACLE:
        _ORACLE.append(SchemaOracle())
    return _ORACLE[0]


def test_the_bounds_themselves_are_accepted():
    """Edges, exactly: the last instant before MAX_TIME, UInt32 max, the float bounds."""
    seeds = [EventCodec().decode(s) for s in load_seeds()]
    assert any(e.time == MIN_TIME for e in seeds)
    assert any(e.time == MAX_TIME - timedelta(microseconds=1) for e in seeds)
    assert any(getattr(e.data, "input_tokens", 0) == 2**32 - 1 for e in seeds)
    assert store_problems(seeds) == []
    assert datetime(1970, 1, 1, tzinfo=UTC) == MIN_TIME
    assert [EventCodec().decode(encode_event(e)) for e in seeds] == seeds
