"""The event contract: round trips for every type, every reject reason, committed JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from schemas import payloads as p
from schemas.codec import EventCodec, decode_event, encode_event
from schemas.envelope import CLASS_BY_PAYLOAD, EVENT_CLASSES, ActionCompletedEvent, new_event
from schemas.errors import InvalidEvent, RejectReason
from schemas.ids import Uuid7Generator
from schemas.jsonschema import JSON_DIR, render_all, stale_files
from schemas.upcasting import UpcasterRegistry

T0 = datetime(2026, 2, 3, 4, 5, 6, 789_000, tzinfo=UTC)
IDS = Uuid7Generator(seed=99)


def full_payloads() -> list[p.Payload]:
    """One payload per type, every optional field set (defaults are left off the wire)."""
    return [
        p.Thought(
            text="reasoning ü ✓",
            model="gpt-4o",
            provider="openai",
            input_tokens=12,
            output_tokens=34,
            latency_ms=56.5,
            cost_usd=0.0012,
        ),
        p.Plan(
            goal="g",
            steps=[
                p.PlanStep(id="a", description="first"),
                p.PlanStep(id="b", description="second", depends_on=["a"]),
            ],
        ),
        p.Decision(chosen="x", alternatives=["y", "z"], confidence=0.25, rationale="why"),
        p.ActionStarted(
            call_id="c1", tool="git", arguments={"a": 1, "nested": {"b": [1, 2]}}, expected="ok"
        ),
        p.ActionCompleted(
            call_id="c1",
            tool="git",
            status="error",
            result="boom",
            actual="conflict",
            error_type="GitConflict",
            duration_ms=12.5,
        ),
        p.Message(to_agent="coder-1", text="hi", conversation_id="conv"),
        p.Lesson(situation="s", action="a", outcome="o", insight="i"),
        p.Feedback(score=-0.5, source="human", comment="meh"),
        p.AgentStarted(name="n", role="coder", model="m"),
        p.AgentStopped(reason="bye"),
        p.RunStarted(goal="g"),
        p.RunFinished(status="cancelled", summary="stopped"),
    ]


def make(data: p.Payload, **envelope: Any):
    return new_event(
        data,
        id=IDS.new(1_770_000_000_000),
        time=T0,
        agentid="coder-1",
        runid="run-1",
        taskid="task-1",
        tenant="acme",
        causes=(IDS.new(1_770_000_000_000),),
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        subject="scenario/x",
        **envelope,
    )


def wire(**overrides: Any) -> dict[str, Any]:
    """A valid thought event as a JSON object, with overrides (None deletes a key)."""
    doc = json.loads(encode_event(make(p.Thought(text="t", model="m", input_tokens=3))))
    for k, v in overrides.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    return doc


def reject(raw: bytes | dict, codec: EventCodec | None = None) -> InvalidEvent:
    if isinstance(raw, dict):
        raw = json.dumps(raw).encode()
    with pytest.raises(InvalidEvent) as err:
        (codec or EventCodec()).decode(raw)
    return err.value


# --- round trips -------------------------------------------------------------------------


def test_every_type_has_a_sample():
    assert {CLASS_BY_PAYLOAD[type(d)] for d in full_payloads()} == set(EVENT_CLASSES)


@pytest.mark.parametrize("data", full_payloads(), ids=lambda d: type(d).__name__)
def test_round_trip_every_type(data):
    event = make(data)
    raw = encode_event(event)
    decoded = EventCodec().decode(raw)
    assert decoded == event
    assert type(decoded) is type(event)
    assert encode_event(decoded) == raw  # stable bytes
    assert decode_event(raw) == event
    doc = json.loads(raw)
    assert doc["type"] == event.type and doc["specversion"] == "1.0"
    assert doc["dataschema"] == f"urn:agentstream:schema:{event.type}"
    assert event.category in ("think", "act", "learn", "lifecycle")


def test_minimal_event_round_trips_with_defaults():
    event = new_event(p.AgentStopped(), id=IDS.new(1), time=T0, agentid="a")
    doc = json.loads(encode_event(event))
    assert "causes" not in doc and "tenant" not in doc and "data" in doc  # defaults omitted
    decoded = decode_event(encode_event(event))
    assert decoded.tenant == "default" and decoded.causes == () and decoded.data.reason == "done"


def test_otel_genai_names_on_the_wire():
    doc = json.loads(encode_event(make(full_payloads()[0])))
    assert doc["data"]["gen_ai.request.model"] == "gpt-4o"
    assert doc["data"]["gen_ai.usage.input_tokens"] == 12
    done = json.loads(encode_event(make(full_payloads()[4])))
    assert done["data"]["gen_ai.tool.name"] == "git"
    assert done["data"]["error.type"] == "GitConflict"


def test_time_keeps_microseconds_and_zone():
    t = datetime(2026, 1, 1, 10, 0, 0, 123_456, tzinfo=UTC) + timedelta(hours=0)
    event = new_event(p.RunStarted(goal="g"), id=IDS.new(2), time=t, agentid="a")
    assert decode_event(encode_event(event)).time == t


# --- every reject reason -------------------------------------------------------------------


def test_not_json():
    err = reject(b'{"type": "agent.think.thought.v1", ')
    assert err.reason == RejectReason.NOT_JSON
    assert reject(b"\xff\xfe").reason == RejectReason.NOT_JSON
    assert reject(b"").reason == RejectReason.NOT_JSON


def test_not_an_object():
    for raw in (b"[1, 2]", b'"text"', b"42", b"null"):
        assert reject(raw).reason == RejectReason.NOT_AN_OBJECT, raw


def test_too_large():
    raw = json.dumps(wire(data={"text": "x" * 2000, "gen_ai.request.model": "m"})).encode()
    err = reject(raw, EventCodec(max_event_bytes=1000))
    assert err.reason == RejectReason.TOO_LARGE
    assert "1000" in err.detail
    EventCodec(max_event_bytes=len(raw)).decode(raw)  # exactly at the limit is fine


def test_missing_field():
    err = reject(wire(source=None))
    assert err.reason == RejectReason.MISSING_FIELD and "source" in err.detail
    assert reject(wire(type=None)).reason == RejectReason.MISSING_FIELD
    err = reject(wire(data={"text": "t"}))  # model missing inside the payload
    assert err.reason == RejectReason.MISSING_FIELD and err.path == "$.data"


def test_missing_agent_id():
    assert reject(wire(agentid=None)).reason == RejectReason.MISSING_AGENT_ID
    err = reject(wire(agentid=""))
    assert err.reason == RejectReason.MISSING_AGENT_ID and err.path == "$.agentid"


def test_wrong_type():
    err = reject(wire(data={"text": "t", "gen_ai.request.model": "m", "latency_ms": "slow"}))
    assert err.reason == RejectReason.WRONG_TYPE
    assert err.path == "$.data.latency_ms"
    assert reject(wire(causes="not-a-list")).reason == RejectReason.WRONG_TYPE
    assert reject(wire(data=[1])).reason == RejectReason.WRONG_TYPE


def test_invalid_value():
    cases = {
        "id": wire(id="not-a-uuid"),
        "v4 id": wire(id="0b7e7a5c-2c53-4c1e-8f0c-6c8e1e1d2a3b"),
        "naive time": wire(time="2026-01-01T00:00:00"),
        "negative tokens": wire(
            data={"text": "t", "gen_ai.request.model": "m", "gen_ai.usage.input_tokens": -1}
        ),
        "specversion": wire(specversion="0.3"),
        "traceparent": wire(traceparent="nope"),
    }
    for name, doc in cases.items():
        assert reject(doc).reason == RejectReason.INVALID_VALUE, name
    err = reject(
        wire(
            type="agent.learn.feedback.v1",
            data={"score": 1.0, "source": "oracle"},
        )
    )
    assert err.reason == RejectReason.INVALID_VALUE and err.path == "$.data.source"


def test_unknown_field():
    err = reject(wire(colour="blue"))
    assert err.reason == RejectReason.UNKNOWN_FIELD and "colour" in err.detail
    err = reject(wire(data={"text": "t", "gen_ai.request.model": "m", "mood": "happy"}))
    assert err.reason == RejectReason.UNKNOWN_FIELD and err.path == "$.data"


def test_unknown_type():
    for t in ("agent.think.dream.v1", "no-version", "agent.think.thought"):
        err = reject(wire(type=t))
        assert err.reason == RejectReason.UNKNOWN_TYPE, t
        assert err.path == "$.type"


def test_unknown_version():
    err = reject(wire(type="agent.think.thought.v9"))
    assert err.reason == RejectReason.UNKNOWN_VERSION
    assert "upgrade the consumer" in err.detail


def test_upcast_failed():
    broken = UpcasterRegistry()

    @broken.register("agent.act.completed", 1)  # no historical class: the step sees raw data
    def _boom(data: dict) -> dict:
        return {**data, "status": "ok" if data["missing_key"] else "error"}

    doc = wire(
        type="agent.act.completed.v1",
        data={"gen_ai.tool.call.id": "c", "gen_ai.tool.name": "t", "ok": True},
    )
    err = reject(doc, EventCodec(upcasters=broken))
    assert err.reason == RejectReason.UPCAST_FAILED and err.path == "$.data"


def test_no_upcaster_for_an_old_version_is_unknown_version():
    doc = wire(
        type="agent.act.completed.v1",
        data={"gen_ai.tool.call.id": "c", "gen_ai.tool.name": "t", "ok": True},
    )
    err = reject(doc, EventCodec(upcasters=UpcasterRegistry()))
    assert err.reason == RejectReason.UNKNOWN_VERSION


# reasons raised outside the codec, tested where they are raised
# schemas/admission.py: Kafka key != agentid; a stage raised on an admitted event
NOT_FROM_THE_CODEC = {"key_mismatch", "processing_error"}


def test_every_reason_is_covered_by_this_file():
    """If a codec reason is added to the enum, this file must grow a test for it."""
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    for reason in RejectReason:
        if reason.value not in NOT_FROM_THE_CODEC:
            assert f"RejectReason.{reason.name}" in source, reason


def test_invalid_event_as_dict_is_the_dead_letter_shape():
    err = reject(wire(agentid=""))
    d = err.as_dict()
    assert d == {"reason": "missing_agent_id", "detail": err.detail, "path": "$.agentid"}
    assert json.loads(json.dumps(d)) == d
    assert str(err).startswith("missing_agent_id: ")


# --- upcasting ---------------------------------------------------------------------------


@pytest.mark.parametrize(("ok", "status"), [(True, "ok"), (False, "error")])
def test_v1_completion_is_upcast_to_v2(ok, status):
    doc = wire(
        type="agent.act.completed.v1",
        dataschema="urn:agentstream:schema:agent.act.completed.v1",
        data={"gen_ai.tool.call.id": "c", "gen_ai.tool.name": "git", "ok": ok, "result": "r"},
    )
    event = EventCodec().decode(json.dumps(doc).encode())
    assert isinstance(event, ActionCompletedEvent)
    assert event.type == "agent.act.completed.v2"
    assert event.dataschema == "urn:agentstream:schema:agent.act.completed.v2"
    assert event.data.status == status and event.data.result == "r"


def test_bad_v1_payload_is_rejected_with_a_v1_shaped_reason():
    doc = wire(
        type="agent.act.completed.v1",
        data={"gen_ai.tool.call.id": "c", "gen_ai.tool.name": "git", "ok": "yes"},
    )
    err = reject(doc)
    assert err.reason == RejectReason.WRONG_TYPE and err.path == "$.data.ok"


# --- JSON Schema -------------------------------------------------------------------------


def test_committed_json_schemas_are_not_stale():
    assert stale_files() == [], "run: python -m schemas.jsonschema"
    assert {f.name for f in JSON_DIR.glob("*.json")} == set(render_all())


def test_json_schema_accepts_encoded_events_and_rejects_bad_ones():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((JSON_DIR / "event.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for data in full_payloads():
        validator.validate(json.loads(encode_event(make(data))))
    assert not validator.is_valid(wire(agentid=None))
    assert not validator.is_valid(wire(colour="blue"))
    one = json.loads((JSON_DIR / "agent.think.thought.v1.json").read_text())
    jsonschema.Draft202012Validator(one).validate(wire())


def test_msgspec_is_the_only_validator():
    """decode() validates in one pass: a struct built by hand with bad data is not checked,
    but its bytes are rejected on the way back in."""
    bad = msgspec.structs.replace(make(p.RunStarted(goal="g")), agentid="")
    assert reject(encode_event(bad)).reason == RejectReason.MISSING_AGENT_ID
