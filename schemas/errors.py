"""The one error every decoding failure raises, with a machine-readable reason.

The reason string is what lands in the dead-letter record, so it is part of the contract.
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    TOO_LARGE = "too_large"
    MISSING_FIELD = "missing_field"
    MISSING_AGENT_ID = "missing_agent_id"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    UNKNOWN_FIELD = "unknown_field"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_VERSION = "unknown_version"
    UPCAST_FAILED = "upcast_failed"
    KEY_MISMATCH = "key_mismatch"  # Kafka key is not the event's agentid: per-agent order lost
    EMPTY = "empty"  # the value is empty (zero bytes, or only JSON whitespace)
    INVALID_UTF8 = "invalid_utf8"  # not valid UTF-8 (JSON text must be)
    DUPLICATE_KEY = "duplicate_key"  # an object names the same key twice
    TOO_DEEP = "too_deep"  # objects/arrays nested deeper than the codec's max_depth
    OUT_OF_RANGE = "out_of_range"  # a number or time outside what every store holds exactly
    PROCESSING_ERROR = "processing_error"  # admitted, but a stage raised on it (DeadLetter.stage)


class InvalidEvent(ValueError):
    """Raised for any input that is not a valid AgentStream event."""

    def __init__(self, reason: RejectReason, detail: str, path: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.path = path
        where = f" at {path}" if path else ""
        super().__init__(f"{reason.value}: {detail}{where}")

    def as_dict(self) -> dict[str, str | None]:
        return {"reason": self.reason.value, "detail": self.detail, "path": self.path}
