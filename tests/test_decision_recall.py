"""Recall on decisions: the ``agent.think.decision`` v2 contract (v1 upcast, round trip,
bounds), the SDK helper, and the simulator's recall (real episode ids, rising rate)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from schemas import payloads as p
from schemas.codec import EventCodec, encode_event
from schemas.derived import Episode, episode_id_for
from schemas.envelope import DecisionEvent, new_event
from schemas.errors import InvalidEvent, RejectReason
from schemas.ids import Uuid7Generator
from schemas.jsonschema import JSON_DIR
from streams.emitter import EventFactory
from streams.reducer import fold
from streams.simulator import SimulationConfig, generate, recall_chance

T0 = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
IDS = Uuid7Generator(seed=5)
EP = episode_id_for("019c1c38-a402-7096-8bd1-799e309d6b79")


def _decision_doc(version: int, data: dict) -> bytes:
    doc = json.loads(
        encode_event(new_event(p.Decision(chosen="x"), id=IDS.new(1), time=T0, agentid="a"))
    )
    doc["type"] = f"agent.think.decision.v{version}"
    doc["dataschema"] = f"urn:agentstream:schema:agent.think.decision.v{version}"
    doc["data"] = data
    return json.dumps(doc).encode()


def test_v1_decision_is_read_as_v2_with_no_recall() -> None:
    raw = _decision_doc(1, {"chosen": "grep", "alternatives": ["ls"], "confidence": 0.5})
    event = EventCodec().decode(raw)
    assert isinstance(event, DecisionEvent) and event.type == "agent.think.decision.v2"
    assert event.dataschema == "urn:agentstream:schema:agent.think.decision.v2"
    assert event.data.recalled_episodes == [] and event.data.chosen == "grep"
    # a v1 payload cannot smuggle the new field in: v1 is closed
    err = _reject(_decision_doc(1, {"chosen": "grep", "recalled_episodes": [EP]}))
    assert err.reason == RejectReason.UNKNOWN_FIELD and err.path == "$.data.recalled_episodes"


def test_v2_decision_round_trips_with_its_episodes() -> None:
    data = p.Decision(chosen="retry", confidence=0.7, recalled_episodes=[EP, episode_id_for("b")])
    event = new_event(data, id=IDS.new(2), time=T0, agentid="a", runid="r")
    raw = encode_event(event)
    assert EventCodec().decode(raw) == event
    assert json.loads(raw)["data"]["recalled_episodes"] == [EP, episode_id_for("b")]
    # no recall: the field is left off the wire (a default), and reads back as []
    bare = encode_event(new_event(p.Decision(chosen="x"), id=IDS.new(3), time=T0, agentid="a"))
    assert b"recalled_episodes" not in bare
    assert EventCodec().decode(bare).data.recalled_episodes == []


@pytest.mark.parametrize(
    ("episodes", "reason"),
    [
        ([EP] * (p.MAX_RECALLED_EPISODES + 1), RejectReason.INVALID_VALUE),  # too many
        (["not-an-episode"], RejectReason.INVALID_VALUE),
        ([EP.upper()], RejectReason.INVALID_VALUE),  # ids are lowercase, as memory stores them
        ([EP + "\n"], RejectReason.INVALID_VALUE),
        ([EP + "0"], RejectReason.INVALID_VALUE),  # too long
        ([7], RejectReason.WRONG_TYPE),
        ("abc", RejectReason.WRONG_TYPE),
    ],
)
def test_recalled_episodes_out_of_bounds_are_rejected(episodes: object, reason: str) -> None:
    err = _reject(_decision_doc(2, {"chosen": "x", "recalled_episodes": episodes}))
    assert err.reason == reason
    assert err.path is not None and err.path.startswith("$.data.recalled_episodes")


def test_the_maximum_is_accepted_and_the_json_schema_states_the_bounds() -> None:
    most = [episode_id_for(str(i)) for i in range(p.MAX_RECALLED_EPISODES)]
    event = EventCodec().decode(_decision_doc(2, {"chosen": "x", "recalled_episodes": most}))
    assert event.data.recalled_episodes == most
    schema = json.loads((JSON_DIR / "agent.think.decision.v2.json").read_text())
    field = schema["$defs"]["Decision"]["properties"]["recalled_episodes"]
    assert field["maxItems"] == p.MAX_RECALLED_EPISODES
    assert field["items"]["maxLength"] == 36 and field["items"]["pattern"].startswith("^[0-9a-f]")
    assert (JSON_DIR / "agent.think.decision.v1.data.json").exists()


@dataclass(frozen=True)
class _Hit:
    episode_id: str


def test_sdk_takes_ids_or_recall_results_and_refuses_bad_ids_at_the_call() -> None:
    f = EventFactory("coder-1", run_id="r1", clock=lambda: T0)
    d = f.decision("use git", recalled_episodes=[EP, _Hit(episode_id_for("x"))])
    assert d.type == "agent.think.decision.v2"
    assert d.data.recalled_episodes == [EP, episode_id_for("x")]
    assert EventCodec().decode(encode_event(d)) == d
    with pytest.raises(InvalidEvent) as err:
        f.decision("use git", recalled_episodes=["episode-1"])
    assert err.value.reason == RejectReason.INVALID_VALUE
    assert err.value.path == "$.data.recalled_episodes"


def _reject(raw: bytes) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as err:
        EventCodec().decode(raw)
    return err.value


# --- the simulator -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workload() -> list:
    return list(generate(SimulationConfig(agents=8, runs=120, seed=11)))


def test_simulated_recall_cites_real_earlier_episodes_of_the_same_agent(workload) -> None:
    _, derived = fold(workload)
    episodes = {d.episode_id: d for d in derived if isinstance(d, Episode)}
    decisions = [e for e in workload if e.type == "agent.think.decision.v2"]
    cited = [d for d in decisions if d.data.recalled_episodes]
    assert cited and len(cited) < len(decisions)
    runs_seen: dict[str, list[str]] = {}
    for e in workload:
        if e.runid is not None and e.runid not in runs_seen.setdefault(e.agentid, []):
            runs_seen[e.agentid].append(e.runid)
    for d in cited:
        for eid in d.data.recalled_episodes:
            ep = episodes[eid]  # the processor derived exactly this episode
            assert ep.agent_id == d.agentid and ep.time < d.time and ep.run_id != d.runid
        # never in the agent's first run
        assert runs_seen[d.agentid].index(d.runid) > 0


def test_simulated_recall_rate_rises_over_an_agents_runs(workload) -> None:
    ordinal: dict[tuple[str, str], int] = {}
    per_agent: Counter[str] = Counter()
    for e in workload:
        if e.runid is not None and (e.agentid, e.runid) not in ordinal:
            ordinal[(e.agentid, e.runid)] = per_agent[e.agentid]
            per_agent[e.agentid] += 1
    early, late = [0, 0], [0, 0]
    for e in workload:
        if e.type == "agent.think.decision.v2":
            o = ordinal[(e.agentid, e.runid)]
            bucket = early if o < 10 else late if o >= 30 else None
            if bucket is not None:
                bucket[0] += 1
                bucket[1] += bool(e.data.recalled_episodes)
    assert early[1] / early[0] + 0.2 < late[1] / late[0]
    assert recall_chance(0) == 0 and recall_chance(1) < recall_chance(10) < 0.85


def test_recall_changes_nothing_else_and_stays_deterministic(workload) -> None:
    again = list(generate(SimulationConfig(agents=8, runs=120, seed=11)))
    assert [encode_event(e) for e in again] == [encode_event(e) for e in workload]
