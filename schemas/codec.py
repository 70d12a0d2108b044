"""Encoding and validating decoding of events.

The fast path is one msgspec pass over the tagged union of current types. Anything that
fails it is classified into a :class:`RejectReason`; old versions take the slow path
through the upcasters and then the fast path again, so there is one validator.

``decode`` raises :class:`InvalidEvent` and nothing else, whatever the bytes. What msgspec
lets through is checked after it, cheaply unless a problem is likely:

- duplicate keys (msgspec keeps the last): an event without them re-encodes to exactly as
  many ``"`` as its raw bytes hold, unless the raw bytes spell out a default value or
  escape a quote as ``\\u0022``; only then does the exact (slower) check run;
- nesting deeper than ``max_depth``: only checked exactly when the raw bytes hold more
  ``{``/``[`` than that;
- U+0000 in a string (FalkorDB cannot store it): only looked for when the bytes hold
  ``\\u0000``, the one way JSON can spell it;
- event times outside [``MIN_TIME``, ``MAX_TIME``) (numbers are bounded by the payload
  types themselves, see ``schemas/payloads.py``).
"""

from __future__ import annotations

import re
import threading
from typing import Any

import msgspec
import msgspec.inspect as mi

from schemas import strict_json
from schemas.envelope import CURRENT, EVENT_CLASSES, MAX_TIME, MIN_TIME, Event, EventType
from schemas.errors import InvalidEvent, RejectReason
from schemas.upcasting import DEFAULT_UPCASTERS, UpcasterRegistry

DEFAULT_MAX_EVENT_BYTES = 1 << 20  # 1 MiB; Kafka's default max.message.bytes is about that
DEFAULT_MAX_DEPTH = 64
"""Objects/arrays nested at most this deep (the envelope itself uses 4 levels; the rest is
for ``arguments``). Fixed, so that acceptance never depends on the caller's stack depth."""

_encoder = msgspec.json.Encoder()
_encode_into = _encoder.encode_into
_PATH_RE = re.compile(r" - at `(?P<path>[^`]+)`$")
_FIELD_RE = re.compile(r"field `(?P<field>[^`]*)`")
_BOUND_RE = re.compile(r"^Expected `(int|float)` (>=|<=|>|<) ")
_WIRE_RE = re.compile(r"(?P<name>.+)\.v(?P<version>0|[1-9][0-9]{0,8})")  # ASCII digits only
_JSON_WS = b" \t\r\n"
_SURROGATES = re.compile("[\udc80-\udcff]")  # undecodable bytes under "surrogateescape"

_generic = msgspec.json.Decoder(dict[str, Any])


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def _classify(err: msgspec.ValidationError) -> InvalidEvent:
    """msgspec's message -> reason and the JSON path of the offending field (always set)."""
    text = str(err)
    m = _PATH_RE.search(text)
    at = m.group("path") if m else "$"
    detail = text[: m.start()] if m else text
    field = _FIELD_RE.search(detail)
    path = at
    reason: RejectReason
    if "missing required field" in detail:
        path = f"{at}.{field.group('field')}" if field else at
        reason = (
            RejectReason.MISSING_AGENT_ID if path == "$.agentid" else RejectReason.MISSING_FIELD
        )
    elif at == "$.agentid" and "length" in detail:
        reason = RejectReason.MISSING_AGENT_ID
    elif "unknown field" in detail:
        path = f"{at}.{field.group('field')}" if field else at
        reason = RejectReason.UNKNOWN_FIELD
    elif detail.startswith("Expected `object`") and at == "$":
        reason = RejectReason.NOT_AN_OBJECT
    elif _BOUND_RE.match(detail) or detail in ("Number out of range", "Integer value out of range"):
        reason = RejectReason.OUT_OF_RANGE
    elif detail.startswith("Expected `"):
        # "Expected `int`, got `str`" is a type error; "Expected `str` matching …" a value error
        reason = RejectReason.WRONG_TYPE if ", got `" in detail else RejectReason.INVALID_VALUE
    else:
        reason = RejectReason.INVALID_VALUE
    return InvalidEvent(reason, detail, path)


def _not_json(raw: bytes, err: msgspec.DecodeError) -> InvalidEvent:
    if not raw.strip(_JSON_WS):
        what = "empty" if not raw else f"only whitespace ({len(raw)} bytes)"
        return InvalidEvent(RejectReason.EMPTY, f"the value is {what}; an event is a JSON object")
    return InvalidEvent(RejectReason.NOT_JSON, str(err))


def _bad_utf8(raw: bytes, err: UnicodeError) -> InvalidEvent:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as whole:
        bad = raw[whole.start : whole.end].hex(" ")
        # where: the string holding the bytes, found by reading them as lone surrogates
        path = strict_json.string_path(raw.decode("utf-8", "surrogateescape"), _SURROGATES)
        return InvalidEvent(
            RejectReason.INVALID_UTF8,
            f"not valid UTF-8 at byte {whole.start} ({bad}): {whole.reason}",
            path,
        )
    return InvalidEvent(RejectReason.INVALID_UTF8, f"not valid UTF-8: {err}")


def _too_deep(raw: bytes, max_depth: int) -> InvalidEvent:
    found = strict_json.first_problem(raw, max_depth)
    if found is not None and found.reason == RejectReason.TOO_DEEP:
        return found
    return InvalidEvent(RejectReason.TOO_DEEP, f"objects/arrays nested deeper than {max_depth}")


def _check_nul(raw: bytes) -> None:
    """U+0000 in any string or key: FalkorDB (the graph) cannot store it (C strings)."""
    path = strict_json.nul_path(raw)
    if path is not None:
        raise InvalidEvent(
            RejectReason.INVALID_VALUE,
            "strings must not contain U+0000 (NUL): the graph store cannot hold it",
            path,
        )


def _as_bytes(raw: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        try:
            return raw.encode("utf-8")
        except UnicodeEncodeError as err:  # lone surrogates
            raise InvalidEvent(
                RejectReason.INVALID_UTF8, f"not encodable as UTF-8 at character {err.start}"
            ) from None
    return bytes(raw)


def _fixed_depth(t: mi.Type, seen: frozenset[type] = frozenset()) -> float:
    """How deep JSON of type ``t`` can nest (containers), or infinity for free-form JSON."""
    match t:
        case mi.AnyType():
            return float("inf")
        case mi.StructType(cls=cls, fields=fields):
            if cls in seen:  # a recursive type
                return float("inf")
            return 1 + max((_fixed_depth(f.type, seen | {cls}) for f in fields), default=0)
        case mi.DictType(key_type=k, value_type=v):
            return 1 + max(_fixed_depth(k, seen), _fixed_depth(v, seen))
        case mi.ListType(item_type=i) | mi.VarTupleType(item_type=i) | mi.SetType(item_type=i):
            return 1 + _fixed_depth(i, seen)
        case mi.FrozenSetType(item_type=i):
            return 1 + _fixed_depth(i, seen)
        case mi.TupleType(item_types=items):
            return 1 + max((_fixed_depth(i, seen) for i in items), default=0)
        case mi.UnionType(types=types):
            return max(_fixed_depth(u, seen) for u in types)
    return 0


def _parse_wire(wire: object) -> EventType | None:
    """``name.vN`` with N in ASCII digits, no sign, no leading zero; else None."""
    if not isinstance(wire, str):
        return None
    m = _WIRE_RE.fullmatch(wire)
    return EventType(m.group("name"), int(m.group("version"))) if m else None


class EventCodec:
    """Decodes bytes into a current-version :data:`Event`, or raises :class:`InvalidEvent`."""

    def __init__(
        self,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        upcasters: UpcasterRegistry = DEFAULT_UPCASTERS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.upcasters = upcasters
        self.max_depth = max_depth
        self._decoder = msgspec.json.Decoder(Event)
        self._decode = self._decoder.decode
        self._local = threading.local()
        self._nest_freely = frozenset(
            c for c in EVENT_CLASSES if _fixed_depth(msgspec.inspect.type_info(c)) > max_depth
        )  # event types with free-form JSON (``arguments``): their depth is checked

    def encode(self, event: Event) -> bytes:
        return _encoder.encode(event)

    def decode(self, raw: bytes | bytearray | memoryview | str) -> Event:
        if raw.__class__ is not bytes:
            raw = _as_bytes(raw)
        if len(raw) > self.max_event_bytes:
            raise InvalidEvent(
                RejectReason.TOO_LARGE,
                f"event is {len(raw)} bytes, limit is {self.max_event_bytes}",
            )
        try:
            event: Event = self._decode(raw)
        except msgspec.ValidationError as err:
            invalid = _classify(err)
            if invalid.path == "$.type" and invalid.reason == RejectReason.INVALID_VALUE:
                return self._decode_other_version(raw)
            raise invalid from None
        except msgspec.DecodeError as err:
            raise _not_json(raw, err) from None
        except UnicodeError as err:
            raise _bad_utf8(raw, err) from None
        except RecursionError:
            raise _too_deep(raw, self.max_depth) from None
        if (
            event.__class__ in self._nest_freely
            and raw.count(b"{") + raw.count(b"[") > self.max_depth
            and not strict_json.depth_at_most(raw, self.max_depth)
        ):
            raise self._located(raw, RejectReason.TOO_DEEP)
        local = self._local  # one buffer per thread, reused: no allocation per event
        try:
            encoded = local.buffer
        except AttributeError:
            encoded = local.buffer = bytearray(1024)
        _encode_into(event, encoded)
        if (
            encoded != raw  # the SDK's bytes are exactly the re-encoding: no duplicates
            and (raw.count(b'"') != encoded.count(b'"') or b"\\u0022" in raw)
            and strict_json.has_duplicate_keys(raw)
        ):
            raise self._located(raw, RejectReason.DUPLICATE_KEY)
        if b"\\" in raw and b"\\u0000" in raw:  # one memchr first: most events escape nothing
            _check_nul(raw)
        if not MIN_TIME <= event.time < MAX_TIME:
            raise InvalidEvent(
                RejectReason.OUT_OF_RANGE,
                f"time {event.time.isoformat()} is outside [{MIN_TIME.isoformat()}, "
                f"{MAX_TIME.isoformat()}), the range every store keeps exactly",
                "$.time",
            )
        return event

    def _check_structure(self, raw: bytes) -> None:
        """Both exact checks (the slow path): too deep, duplicate keys."""
        if not strict_json.depth_at_most(raw, self.max_depth):
            raise self._located(raw, RejectReason.TOO_DEEP)
        if strict_json.has_duplicate_keys(raw):
            raise self._located(raw, RejectReason.DUPLICATE_KEY)
        _check_nul(raw)

    def _located(self, raw: bytes, reason: RejectReason) -> InvalidEvent:
        """The first structural problem in ``raw`` with its path (a check found ``reason``)."""
        found = strict_json.first_problem(raw, self.max_depth)
        if found is not None:
            return found
        if reason == RejectReason.TOO_DEEP:
            return _too_deep(raw, self.max_depth)
        return InvalidEvent(reason, "an object names a key twice")

    def _decode_other_version(self, raw: bytes) -> Event:
        try:
            envelope = _generic.decode(raw)
        except msgspec.ValidationError as err:
            raise _classify(err) from None
        except msgspec.DecodeError as err:
            raise _not_json(raw, err) from None
        except UnicodeError as err:
            raise _bad_utf8(raw, err) from None
        except RecursionError:
            raise _too_deep(raw, self.max_depth) from None
        self._check_structure(raw)
        wire = envelope.get("type")
        if not isinstance(wire, str):
            raise InvalidEvent(RejectReason.WRONG_TYPE, "Expected `str`", "$.type")
        parsed = _parse_wire(wire)
        current = CURRENT.get(parsed.name) if parsed else None
        if parsed is None or current is None:
            raise InvalidEvent(
                RejectReason.UNKNOWN_TYPE,
                f"unknown event type {wire!r} (a type is <name>.v<ASCII digits>)",
                "$.type",
            )
        if parsed.version > current.version:
            raise InvalidEvent(
                RejectReason.UNKNOWN_VERSION,
                f"{wire!r} is newer than this reader knows (current: {current.wire}); "
                "upgrade the consumer",
                "$.type",
            )
        return self._upcast(envelope, parsed, current)

    def _upcast(self, envelope: dict[str, Any], at: EventType, current: EventType) -> Event:
        data = envelope.get("data")
        if not isinstance(data, dict):
            if "data" not in envelope:
                raise InvalidEvent(
                    RejectReason.MISSING_FIELD, "Object missing required field `data`", "$.data"
                )
            raise InvalidEvent(RejectReason.WRONG_TYPE, "Expected `object`", "$.data")
        version = at.version
        while version < current.version:
            old_class = self.upcasters.historical.get((at.name, version))
            if old_class is not None:
                try:
                    msgspec.convert(data, old_class)
                except msgspec.ValidationError as err:
                    inner = _classify(err)
                    raise InvalidEvent(
                        inner.reason, inner.detail, _under_data(inner.path)
                    ) from None
            step = self.upcasters.step(at.name, version)
            if step is None:
                raise InvalidEvent(
                    RejectReason.UNKNOWN_VERSION,
                    f"no upcaster from {at.name}.v{version} (current: {current.wire})",
                    "$.type",
                )
            try:
                data = step(data)
            except Exception as err:  # an upcaster is plugged-in code: any failure rejects
                raise InvalidEvent(
                    RejectReason.UPCAST_FAILED, f"{at.name}.v{version}: {err!r}", "$.data"
                ) from None
            version += 1
        envelope = {**envelope, "type": current.wire, "data": data}
        if envelope.get("dataschema"):
            envelope["dataschema"] = current.dataschema
        try:
            upcast = _encoder.encode(envelope)
        except (TypeError, ValueError, OverflowError) as err:  # an upcaster returned non-JSON
            raise InvalidEvent(
                RejectReason.UPCAST_FAILED, f"{at.name}: result is not JSON: {err}", "$.data"
            ) from None
        return self.decode(upcast)


def _under_data(path: str | None) -> str:
    return "$.data" + (path[1:] if path and path.startswith("$") else "")


_default_codec = EventCodec()


def decode_event(raw: bytes | bytearray | memoryview | str) -> Event:
    """Decode with the default limits; raises :class:`InvalidEvent`."""
    return _default_codec.decode(raw)
