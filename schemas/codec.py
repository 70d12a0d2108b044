"""Encoding and validating decoding of events.

The fast path is one msgspec pass over the tagged union of current types. Anything that
fails it is classified into a :class:`RejectReason`; old versions take the slow path
through the upcasters and then the fast path again, so there is one validator.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from schemas.envelope import CURRENT, Event, EventType
from schemas.errors import InvalidEvent, RejectReason
from schemas.upcasting import DEFAULT_UPCASTERS, UpcasterRegistry

DEFAULT_MAX_EVENT_BYTES = 1 << 20  # 1 MiB; Kafka's default max.message.bytes is about that

_encoder = msgspec.json.Encoder()
_PATH_RE = re.compile(r" - at `(?P<path>[^`]+)`$")


class _TypeOnly(msgspec.Struct):
    type: str


_type_only = msgspec.json.Decoder(_TypeOnly)
_generic = msgspec.json.Decoder(dict[str, Any])


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def _classify(err: msgspec.ValidationError) -> InvalidEvent:
    text = str(err)
    m = _PATH_RE.search(text)
    path = m.group("path") if m else None
    detail = text[: m.start()] if m else text
    reason: RejectReason
    if ("missing required field `agentid`" in detail and path in (None, "$")) or (
        path == "$.agentid" and "length" in detail
    ):
        reason = RejectReason.MISSING_AGENT_ID
    elif "missing required field" in detail:
        reason = RejectReason.MISSING_FIELD
    elif "unknown field" in detail:
        reason = RejectReason.UNKNOWN_FIELD
    elif detail.startswith("Expected `object`") and path in (None, "$"):
        reason = RejectReason.NOT_AN_OBJECT
    elif detail.startswith("Expected `"):
        # "Expected `int`, got `str`" is a type error; "Expected `int` >= 0" a value error
        reason = RejectReason.WRONG_TYPE if ", got `" in detail else RejectReason.INVALID_VALUE
    else:
        reason = RejectReason.INVALID_VALUE
    return InvalidEvent(reason, detail, path)


class EventCodec:
    """Decodes bytes into a current-version :data:`Event`, or raises :class:`InvalidEvent`."""

    def __init__(
        self,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        upcasters: UpcasterRegistry = DEFAULT_UPCASTERS,
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.upcasters = upcasters
        self._decoder = msgspec.json.Decoder(Event)

    def encode(self, event: Event) -> bytes:
        return _encoder.encode(event)

    def decode(self, raw: bytes | bytearray | memoryview | str) -> Event:
        if len(raw) > self.max_event_bytes:
            raise InvalidEvent(
                RejectReason.TOO_LARGE,
                f"event is {len(raw)} bytes, limit is {self.max_event_bytes}",
            )
        try:
            return self._decoder.decode(raw)
        except msgspec.ValidationError as err:
            invalid = _classify(err)
            if invalid.path == "$.type" and invalid.reason == RejectReason.INVALID_VALUE:
                return self._decode_other_version(raw)
            raise invalid from None
        except msgspec.DecodeError as err:
            raise InvalidEvent(RejectReason.NOT_JSON, str(err)) from None

    def _decode_other_version(self, raw: bytes | bytearray | memoryview | str) -> Event:
        wire = _type_only.decode(raw).type
        parsed = EventType.parse(wire)
        current = CURRENT.get(parsed.name) if parsed else None
        if parsed is None or current is None:
            raise InvalidEvent(RejectReason.UNKNOWN_TYPE, f"unknown event type {wire!r}", "$.type")
        if parsed.version > current.version:
            raise InvalidEvent(
                RejectReason.UNKNOWN_VERSION,
                f"{wire!r} is newer than this reader knows (current: {current.wire}); "
                "upgrade the consumer",
                "$.type",
            )
        return self._upcast(_generic.decode(raw), parsed, current)

    def _upcast(self, envelope: dict[str, Any], at: EventType, current: EventType) -> Event:
        data = envelope.get("data")
        if not isinstance(data, dict):
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
            except (KeyError, TypeError, ValueError) as err:
                raise InvalidEvent(
                    RejectReason.UPCAST_FAILED, f"{at.name}.v{version}: {err!r}", "$.data"
                ) from None
            version += 1
        envelope = {**envelope, "type": current.wire, "data": data}
        if envelope.get("dataschema"):
            envelope["dataschema"] = current.dataschema
        return self.decode(_encoder.encode(envelope))


def _under_data(path: str | None) -> str:
    return "$.data" + (path[1:] if path and path.startswith("$") else "")


_default_codec = EventCodec()


def decode_event(raw: bytes | bytearray | memoryview | str) -> Event:
    """Decode with the default limits; raises :class:`InvalidEvent`."""
    return _default_codec.decode(raw)
