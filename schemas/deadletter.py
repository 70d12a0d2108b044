"""The dead-letter record: what the processors write to ``agent-events-dlq``.

One record per rejected input record. Key = the original record's key (so it lands on
the same DLQ partition as its agent's other rejects); value = this Struct as JSON. The
original bytes travel base64-encoded in ``original`` (msgspec's encoding of ``bytes``),
so a DLQ record is self-contained and a consumer needs no Kafka headers to read it.

Encodings in the JSON (documented field by field in docs/producing.md, "What happens to
invalid events"; a test holds the two together): ``key`` and ``original`` are standard
base64 with padding (``bytes`` fields; a key need not be UTF-8), ``original_sha256`` is
lowercase hex, ``timestamp_ms`` epoch milliseconds. Every field is always written, ``null``
when it does not apply, so a consumer in any language sees one shape.
"""

from __future__ import annotations

import hashlib

import msgspec

DEFAULT_MAX_ORIGINAL_BYTES = 512 * 1024
"""Originals above this are truncated in the DLQ record (base64 grows them by 4/3, and the
DLQ topic has the same size limit as any other); the full bytes stay at topic/partition/
offset, and ``original_sha256`` identifies them."""


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    reason: str  # schemas.errors.RejectReason value, e.g. "not_json"
    detail: str
    path: str | None = None  # JSON path of the offending field, when known
    topic: str  # where the original record was read
    partition: int
    offset: int
    timestamp_ms: int | None = None  # the original record's timestamp
    key: bytes | None = None  # the original record's key
    original: bytes  # the original value bytes (maybe truncated, see below)
    original_size: int
    original_sha256: str
    original_truncated: bool = False
    rejected_by: str  # the consumer group that rejected it
    # reason "processing_error" only: which stage raised (e.g. "processor", "projection:graph",
    # "archiver") and the exception's type name; None for input rejected on admission
    stage: str | None = None
    error_type: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)


def dead_letter(
    error: dict[str, str | None],
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
    rejected_by: str,
    max_original_bytes: int = DEFAULT_MAX_ORIGINAL_BYTES,
    stage: str | None = None,
    error_type: str | None = None,
) -> DeadLetter:
    """Build the record for one rejected input; ``error`` is ``InvalidEvent.as_dict()``."""
    raw = value or b""
    return DeadLetter(
        reason=error["reason"] or "unknown",
        detail=error.get("detail") or "",
        path=error.get("path"),
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        key=key,
        original=raw[:max_original_bytes],
        original_size=len(raw),
        original_sha256=hashlib.sha256(raw).hexdigest(),
        original_truncated=len(raw) > max_original_bytes,
        rejected_by=rejected_by,
        stage=stage,
        error_type=error_type,
    )


def encode_dead_letter(record: DeadLetter) -> bytes:
    return _encoder.encode(record)


def decode_dead_letter(raw: bytes | bytearray | memoryview | str) -> DeadLetter:
    return _decoder.decode(raw)
