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
    assert err.path is None  # no JSON, no path


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
    assert err.reason == RejectReason.MISSING_FIELD
    assert err.path == "$.data.gen_ai.request.model"  # the path names the missing field
    assert reject(wire(source=None)).path == "$.source"


def test_missing_agent_id():
    err = reject(wire(agentid=None))
    assert err.reason == RejectReason.MISSING_AGENT_ID and err.path == "$.agentid"
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
    assert err.path == "$.colour"  # a top-level field has a path too
    err = reject(wire(data={"text": "t", "gen_ai.request.model": "m", "mood": "happy"}))
    assert err.reason == RejectReason.UNKNOWN_FIELD and err.path == "$.data.mood"


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


# --- issue 11: whatever the bytes, only InvalidEvent; only what every store holds exactly --


THOUGHT = {"text": "t", "gen_ai.request.model": "m"}


def raw_of(**overrides: Any) -> bytes:
    return json.dumps(wire(**overrides)).encode()


def test_invalid_utf8_in_a_string_is_invalid_utf8():
    raw = raw_of(data={"text": "XX", "gen_ai.request.model": "m"}).replace(b"XX", b"\xff")
    err = reject(raw)
    assert err.reason == RejectReason.INVALID_UTF8
    at = raw.index(b"\xff")
    assert f"byte {at}" in err.detail  # where, in the original bytes
    assert err.path == "$.data.text"  # and in the document
    assert reject(b'{"a": 1, \xff}').path is None  # not inside any string: no path
    old = raw_of(
        type="agent.act.completed.v1",
        data={"gen_ai.tool.call.id": "c", "gen_ai.tool.name": "t", "ok": True, "result": "XX"},
    ).replace(b"XX", b"a\xc3")  # the upcasting path too; a truncated sequence
    assert reject(old).reason == RejectReason.INVALID_UTF8
    with pytest.raises(InvalidEvent) as err_str:  # str input with a lone surrogate
        EventCodec().decode(raw_of().decode().replace('"t"', '"\udcff"'))
    assert err_str.value.reason == RejectReason.INVALID_UTF8


def test_duplicate_keys_are_rejected_with_their_path():
    raw = raw_of()
    err = reject(raw[:-1] + b', "agentid": "someone-else"}')
    assert err.reason == RejectReason.DUPLICATE_KEY and err.path == "$.agentid"
    # the same key spelled with an escape is the same key
    err = reject(raw[:-1] + b', "agent\\u0069d": "someone-else"}')
    assert err.reason == RejectReason.DUPLICATE_KEY and err.path == "$.agentid"
    err = reject(raw.replace(b'"text": "t"', b'"text": "t", "text": "u"'))
    assert err.reason == RejectReason.DUPLICATE_KEY and err.path == "$.data.text"
    plan = raw_of(
        type="agent.think.plan.v1",
        data={
            "goal": "g",
            "steps": [{"id": "a", "description": "d"}, {"id": "b", "description": "d"}],
        },
    )
    err = reject(plan.replace(b'"id": "b"', b'"id": "b", "id": "c"'))
    assert err.reason == RejectReason.DUPLICATE_KEY and err.path == "$.data.steps[1].id"
    args = raw_of(
        type="agent.act.started.v1",
        data={"gen_ai.tool.call.id": "c", "gen_ai.tool.name": "t", "arguments": {"x": 1}},
    )
    err = reject(args.replace(b'"x": 1', b'"x": 1, "x": 2'))  # free-form JSON too
    assert err.reason == RejectReason.DUPLICATE_KEY and err.path == "$.data.arguments.x"
    v1 = raw_of(
        type="agent.act.completed.v1",
        data={"gen_ai.tool.call.id": "c", "gen_ai.tool.name": "t", "ok": True},
    )
    err = reject(v1.replace(b'"ok": true', b'"ok": true, "ok": false'))
    assert err.reason == RejectReason.DUPLICATE_KEY and err.path == "$.data.ok"
    # equal keys in different objects, defaults spelled out, escaped quotes: all fine
    EventCodec().decode(plan)
    EventCodec().decode(raw_of(tenant="default", datacontenttype="application/json"))
    EventCodec().decode(raw_of(subject='say \\u0022hi\\u0022 "there"'))


def _started_with(arguments_json: bytes) -> bytes:
    raw = raw_of(
        type="agent.act.started.v1",
        data={"gen_ai.tool.call.id": "c", "gen_ai.tool.name": "t", "arguments": {"a": 0}},
    )
    return raw.replace(b'{"a": 0}', arguments_json)


def test_deep_nesting_is_too_deep_whatever_the_callers_stack():
    deep = _started_with(b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    err = reject(deep)  # was RecursionError
    assert err.reason == RejectReason.TOO_DEEP
    assert err.path.startswith("$.data.arguments.a[0][0]")
    # the limit is the codec's, not the interpreter's: the same verdict at any stack depth
    codec = EventCodec(max_depth=16)
    # envelope, data, arguments: 3 levels, then the value of "a"
    fits = _started_with(b'{"a": ' + b"[" * 13 + b"]" * 13 + b"}")  # 3 + 13 = 16 levels
    too = _started_with(b'{"a": ' + b'[{"k": ' * 7 + b"1" + b"}]" * 7 + b"}")  # 3 + 14 = 17
    assert reject(too, codec).reason == RejectReason.TOO_DEEP

    def at_depth(n: int, fn: Any) -> Any:
        return fn() if n == 0 else at_depth(n - 1, fn)

    for stack in (0, 200, 800):
        assert at_depth(stack, lambda: codec.decode(fits)).data.arguments["a"]
        with pytest.raises(InvalidEvent) as err:
            at_depth(stack, lambda: codec.decode(too))
        assert err.value.reason == RejectReason.TOO_DEEP
    # brackets inside strings do not count
    EventCodec(max_depth=8).decode(_started_with(b'{"a": "' + b"[" * 100 + b'"}'))


def test_non_ascii_version_digits_are_an_unknown_type():
    for t in ("agent.think.thought.v\u0661", "agent.think.thought.v01", "agent.think.thought.v+1"):
        err = reject(wire(type=t))
        assert err.reason == RejectReason.UNKNOWN_TYPE and err.path == "$.type", t
    huge = reject(wire(type="agent.think.thought.v" + "9" * 5000))  # no int() of 5000 digits
    assert huge.reason == RejectReason.UNKNOWN_TYPE


def _thought(**data: Any) -> dict[str, Any]:
    return wire(data={**THOUGHT, **data})


def test_integers_of_2_63_and_more_are_out_of_range():
    for n in (2**63, 2**64, 10**30):
        err = reject(_thought(**{"gen_ai.usage.output_tokens": n}))
        assert err.reason == RejectReason.OUT_OF_RANGE, n
        assert err.path == "$.data.gen_ai.usage.output_tokens"


def test_token_counts_must_fit_uint32_instead_of_wrapping():
    from projections.analytics.rows import events_table
    from schemas.arrow import events_to_table

    err = reject(_thought(**{"gen_ai.usage.input_tokens": 5_000_000_000}))
    assert err.reason == RejectReason.OUT_OF_RANGE
    assert err.path == "$.data.gen_ai.usage.input_tokens"
    assert reject(_thought(**{"gen_ai.usage.input_tokens": -1})).reason == (
        RejectReason.OUT_OF_RANGE
    )
    top = p.UINT32_MAX
    event = decode_event(json.dumps(_thought(**{"gen_ai.usage.input_tokens": top})).encode())
    assert event.data.input_tokens == 2**32 - 1
    for table in (events_to_table([event]), events_table([event])):
        assert table["input_tokens"].to_pylist() == [top]  # the columns hold it exactly
    schema = json.loads((JSON_DIR / "agent.think.thought.v1.json").read_text())
    payload = schema["$defs"]["Thought"]["properties"]["gen_ai.usage.input_tokens"]
    assert payload["maximum"] == top  # the committed JSON Schema says so too


def test_float_sums_cannot_overflow_to_inf():
    from schemas.state import decode_state, encode_state
    from streams.reducer import fold

    for field in ("cost_usd", "latency_ms"):
        err = reject(_thought(**{field: 1e308}))  # two of these summed are inf
        assert err.reason == RejectReason.OUT_OF_RANGE and err.path == f"$.data.{field}"
    done = {"gen_ai.tool.call.id": "c", "gen_ai.tool.name": "t", "status": "ok"}
    err = reject(wire(type="agent.act.completed.v2", data={**done, "duration_ms": 1e300}))
    assert err.reason == RejectReason.OUT_OF_RANGE
    err = reject(wire(type="agent.learn.feedback.v1", data={"score": -1e300, "source": "test"}))
    assert err.reason == RejectReason.OUT_OF_RANGE
    # at the bounds, any number of events a log can hold sums to a finite number
    assert p.MAX_COST_USD * 2**63 < 1.7e308 and p.MAX_DURATION_MS * 2**63 < 1.7e308
    events = [
        decode_event(
            encode_event(
                make(p.Thought(text="t", model="m", cost_usd=p.MAX_COST_USD, latency_ms=1.0))
            )
        )
        for _ in range(3)
    ]
    states, _ = fold(events)
    (state,) = states.values()
    assert state.world.cost_usd == 3 * p.MAX_COST_USD
    assert decode_state(encode_state(state)) == state  # round-trips, no inf


def test_times_outside_what_the_stores_hold_are_out_of_range():
    from projections.analytics.rows import events_table
    from schemas.envelope import MAX_TIME, MIN_TIME

    for t in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1969-12-31T23:59:59.999999Z",
              "2106-01-01T00:00:00Z", "2105-12-31T23:30:00-01:00"):  # fmt: skip
        err = reject(wire(time=t))
        assert err.reason == RejectReason.OUT_OF_RANGE and err.path == "$.time", t
    first = decode_event(raw_of(time="1970-01-01T00:00:00Z"))
    last = decode_event(raw_of(time="2105-12-31T23:59:59.999999Z"))
    shifted = decode_event(raw_of(time="1969-12-31T23:00:00-01:00"))  # = MIN_TIME
    assert first.time == MIN_TIME == shifted.time
    assert last.time == MAX_TIME - timedelta(microseconds=1)
    table = events_table([first, last, shifted])
    assert table["time"].to_pylist() == [first.time, last.time, shifted.time]


def test_empty_value_has_its_own_reason():
    for raw in (b"", b"  \r\n\t"):
        err = reject(raw)
        assert err.reason == RejectReason.EMPTY, raw
        assert "truncated" not in err.detail
    assert reject(b"{").reason == RejectReason.NOT_JSON  # truncated is not empty


def test_an_id_with_a_trailing_newline_is_invalid():
    """Python's ``$`` matches before a final newline: the pattern alone let these through."""
    doc = wire()
    err = reject(wire(id=doc["id"] + "\n"))
    assert err.reason == RejectReason.INVALID_VALUE and err.path == "$.id"
    err = reject(wire(causes=[doc["causes"][0] + "\n"]))
    assert err.reason == RejectReason.INVALID_VALUE and err.path == "$.causes[0]"
    err = reject(wire(traceparent=doc["traceparent"] + "\n"))
    assert err.reason == RejectReason.INVALID_VALUE and err.path == "$.traceparent"


def test_nul_characters_are_rejected_because_the_graph_cannot_hold_them():
    """FalkorDB takes its queries as C strings: a U+0000 anywhere in a stored string fails."""
    for overrides, path in (
        ({"runid": "\x00"}, "$.runid"),
        ({"agentid": "a\x00b"}, "$.agentid"),
        ({"data": {**THOUGHT, "text": "x\x00"}}, "$.data.text"),
    ):
        err = reject(wire(**overrides))
        assert err.reason == RejectReason.INVALID_VALUE and err.path == path, overrides
    args = _started_with(b'{"k\\u0000": 1}')
    assert reject(args).path == "$.data.arguments.k\\u0000"
    # an escaped backslash followed by the text "u0000" is no NUL
    EventCodec().decode(raw_of(subject="C:\\u0000"))


def test_an_upcaster_that_raises_anything_is_upcast_failed():
    broken = UpcasterRegistry()

    @broken.register("agent.act.completed", 1)
    def _boom(data: dict) -> dict:
        raise ZeroDivisionError("not a KeyError/TypeError/ValueError")

    doc = wire(
        type="agent.act.completed.v1",
        data={"gen_ai.tool.call.id": "c", "gen_ai.tool.name": "t", "ok": True},
    )
    err = reject(doc, EventCodec(upcasters=broken))
    assert err.reason == RejectReason.UPCAST_FAILED and "ZeroDivisionError" in err.detail


# --- dead letters ------------------------------------------------------------------------

# reasons that have no JSON path: the bytes are not (yet) a JSON document
PATHLESS = {"not_json", "empty", "too_large"}


def test_every_codec_rejection_has_a_path_when_one_exists():
    samples: list[bytes | dict] = [
        b"{nope",
        b"",
        raw_of(data={"text": "XX", "gen_ai.request.model": "m"}).replace(b"XX", b"\xff"),
        b"[1]",
        wire(agentid=None),
        wire(agentid=""),
        wire(source=None),
        wire(type=None),
        wire(colour=1),
        wire(data={**THOUGHT, "mood": 1}),
        wire(data={**THOUGHT, "latency_ms": "slow"}),
        wire(id="nope"),
        wire(type="agent.think.dream.v1"),
        wire(type="agent.think.thought.v9"),
        wire(time="0001-01-01T00:00:00Z"),
        _thought(**{"gen_ai.usage.input_tokens": 2**40}),
        raw_of()[:-1] + b', "agentid": "x"}',
        _started_with(b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}"),
    ]
    seen = set()
    for raw in samples:
        err = reject(raw)
        seen.add(err.reason.value)
        if err.reason.value in PATHLESS:
            assert err.path is None, err
        else:
            assert err.path and err.path.startswith("$"), err
    assert reject(raw_of(), EventCodec(max_event_bytes=10)).path is None
    codec_reasons = {r.value for r in RejectReason} - NOT_FROM_THE_CODEC - {"upcast_failed"}
    assert codec_reasons - {"too_large", "wrong_type"} <= seen


def test_dead_letter_fields_and_their_encodings_are_documented():
    """docs/producing.md's dead-letter section names every field, its encoding, every reason."""
    import base64
    from pathlib import Path

    from schemas.deadletter import DeadLetter, dead_letter, encode_dead_letter

    err = reject(b"")
    record = dead_letter(
        err.as_dict(),
        topic="agent-events",
        partition=1,
        offset=7,
        timestamp_ms=1_770_000_000_000,
        key=b"coder-\xff",  # keys are bytes, not necessarily UTF-8
        value=b"",
        rejected_by="g",
    )
    doc = json.loads(encode_dead_letter(record))
    assert doc["reason"] == "empty" and doc["path"] is None
    assert base64.b64decode(doc["key"]) == b"coder-\xff"
    assert base64.b64decode(doc["original"]) == b""
    docs = (Path(__file__).parent.parent / "docs" / "producing.md").read_text()
    section = docs.split("### What happens to invalid events", 1)[1].split("\n## ", 1)[0]
    for field in msgspec.structs.fields(DeadLetter):
        assert f"`{field.encode_name}`" in section, field.encode_name
    assert "`key`" in section and "base64" in section.split("`key`", 1)[1].split("\n", 1)[0]
    for reason in RejectReason:
        assert f"| `{reason.value}` |" in section, reason
