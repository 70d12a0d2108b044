"""What every event the codec accepts must satisfy, checked independently of the codec.

Used by tests/test_codec_fuzz.py and bench/bench_fuzz.py:

- :class:`SchemaOracle`: the raw bytes, read by the stdlib ``json`` module, validate against
  the committed JSON Schema of their type (``schemas/json/``); an old version's payload
  against its ``<type>.data.json`` and the upcast event against the current type's schema;
- :func:`store_problems`: the rows the analytics projection and the archive build
  (``projections.analytics.rows.events_table``, ``schemas.arrow.events_to_table``) hold
  every value exactly, a fold of the events gives states whose totals are finite and whose
  table rows build, and each event re-encodes to bytes that decode to the same event.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import jsonschema

from schemas.envelope import CLASS_BY_WIRE, MAX_TIME, MIN_TIME, Event
from schemas.jsonschema import JSON_DIR

UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1


def _validator(path: Path) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(path.read_text()))


class SchemaOracle:
    """Validators for every committed schema file, built once."""

    def __init__(self, directory: Path = JSON_DIR) -> None:
        self.union = _validator(directory / "event.json")
        self.by_type = {wire: _validator(directory / f"{wire}.json") for wire in CLASS_BY_WIRE}
        self.data_by_type = {
            p.name.removesuffix(".data.json"): _validator(p) for p in directory.glob("*.data.json")
        }

    def problems(self, raw: bytes, event: Event, union: bool = False) -> list[str]:
        """Why the accepted ``raw`` does not validate (empty when it does)."""
        try:
            doc = json.loads(raw)
        except ValueError as err:
            return [f"the stdlib json module cannot read it: {err}"]
        if not isinstance(doc, dict):
            return ["not an object"]
        wire = doc.get("type")
        out: list[str] = []
        if wire in self.by_type:
            out += [e.message for e in self.by_type[wire].iter_errors(doc)]
            if union:
                out += [f"event.json: {e.message}" for e in self.union.iter_errors(doc)]
        elif wire in self.data_by_type:  # an old version, accepted through an upcaster
            out += [f"data: {e.message}" for e in self.data_by_type[wire].iter_errors(doc["data"])]
            upcast = {**doc, "type": event.type, "data": json.loads(_encode(event))["data"]}
            if "dataschema" in doc:
                upcast["dataschema"] = event.dataschema
            out += [f"upcast: {e.message}" for e in self.by_type[event.type].iter_errors(upcast)]
        else:
            out.append(f"accepted type {wire!r} has no committed schema")
        return out


def _encode(event: Event) -> bytes:
    from schemas.codec import encode_event

    return encode_event(event)


def store_problems(events: Sequence[Event]) -> list[str]:
    """Why the stores could not hold ``events`` exactly (empty when they can)."""
    from projections.analytics.rows import events_table, latest_states, states_table
    from schemas.arrow import events_to_table
    from schemas.codec import EventCodec
    from schemas.state import decode_state, encode_state
    from streams.reducer import fold

    out: list[str] = []
    codec = EventCodec()
    for e in events:
        if codec.decode(_encode(e)) != e:
            out.append(f"{e.id}: re-encoding does not round-trip")
        if not MIN_TIME <= e.time < MAX_TIME:
            out.append(f"{e.id}: time {e.time} outside the stores' range")
    n = len(events)
    try:
        fast = events_table(events, [0] * n, list(range(n)))
        plain = events_to_table(events, [0] * n, list(range(n)))
    except Exception as err:  # any failure to build a row is the finding
        return [*out, f"rows do not build: {type(err).__name__}: {err}"]
    if not fast.equals(plain):
        out.append("the projection's rows differ from schemas.arrow's")
    cols = fast.to_pydict()
    for i, e in enumerate(events):
        d = e.data
        want = {
            "time": e.time,
            "input_tokens": getattr(d, "input_tokens", 0),
            "output_tokens": getattr(d, "output_tokens", 0),
            "cost_usd": getattr(d, "cost_usd", 0.0),
        }
        for col, value in want.items():
            if cols[col][i] != value:
                out.append(f"{e.id}: {col} stored as {cols[col][i]!r}, event has {value!r}")
        for col in ("input_tokens", "output_tokens"):
            if not 0 <= cols[col][i] <= UINT32_MAX:  # the ClickHouse column is UInt32
                out.append(f"{e.id}: {col} {cols[col][i]} does not fit UInt32")
        for col in ("cost_usd", "latency_ms"):
            v = cols[col][i]
            if v is not None and not math.isfinite(v):
                out.append(f"{e.id}: {col} is {v}")
    try:
        states, _derived = fold(events)
        table = states_table(latest_states(states.values()))
    except Exception as err:
        return [*out, f"fold/state rows fail: {type(err).__name__}: {err}"]
    for s in states.values():
        w = s.world
        if not (math.isfinite(w.cost_usd) and 0 <= w.input_tokens <= INT64_MAX):
            out.append(f"state {s.agent_id}: totals overflow ({w.cost_usd}, {w.input_tokens})")
        if decode_state(encode_state(s)) != s:
            out.append(f"state {s.agent_id}: does not round-trip through JSON")
    if table.num_rows != len(states):
        out.append("state rows missing")
    return out
