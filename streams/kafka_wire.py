"""The few Kafka wire-protocol structures the gate reads: request headers and Produce.

Why hand-written: the gate (:mod:`streams.gate`) forwards every frame unchanged and only
needs to know, for each Produce request, how many records it carries per partition, and
from the matching response, where the broker put them. aiokafka's protocol classes decode
only the versions aiokafka itself speaks, while outside clients (librdkafka, Java) use the
flexible versions (Produce v9+, compact encodings and tagged fields). Pure functions over
bytes; every malformed input raises :class:`WireError`, never anything else.

References: the Kafka protocol guide (kafka.apache.org/protocol) and the message JSON
definitions ``ProduceRequest.json`` / ``ProduceResponse.json`` (versions 0-13).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PRODUCE = 0
FIRST_FLEXIBLE_PRODUCE = 9  # compact strings/arrays/bytes and tagged fields from v9
FIRST_TOPIC_ID_PRODUCE = 13  # topics named by a 16-byte id instead of a name from v13

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_HEAD = struct.Struct(">hhi")  # api_key, api_version, correlation_id


class WireError(ValueError):
    """Bytes that are not the Kafka structure they should be."""


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    body_offset: int  # where the request body starts in the frame


@dataclass(frozen=True, slots=True)
class ProduceRequest:
    """What a Produce request asks: ``acks`` and the records per (topic, partition).

    ``topic`` is the topic's name, or ``"id:<32 hex>"`` for v13+ requests that name topics
    by id. ``counts`` holds records per partition (record batches of magic 2 carry their
    count; older message sets are counted entry by entry)."""

    acks: int
    counts: dict[tuple[str, int], int]


@dataclass(frozen=True, slots=True)
class PartitionAck:
    topic: str
    partition: int
    error_code: int
    base_offset: int


class _Reader:
    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.end:
            raise WireError(f"truncated: wanted {n} bytes at {self.pos} of {self.end}")
        at = self.pos
        self.pos += n
        return at

    def i16(self) -> int:
        return _I16.unpack_from(self.buf, self.take(2))[0]

    def i32(self) -> int:
        return _I32.unpack_from(self.buf, self.take(4))[0]

    def i64(self) -> int:
        return _I64.unpack_from(self.buf, self.take(8))[0]

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            b = self.buf[self.take(1)]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise WireError("varint longer than 5 bytes")

    def string(self, flexible: bool) -> str | None:
        n = self.uvarint() - 1 if flexible else self.i16()
        if n < 0:
            return None
        at = self.take(n)
        try:
            return bytes(self.buf[at : at + n]).decode()
        except UnicodeDecodeError as err:
            raise WireError(f"string is not UTF-8: {err}") from None

    def skip_string(self, flexible: bool) -> None:
        n = self.uvarint() - 1 if flexible else self.i16()
        if n > 0:
            self.take(n)

    def bytes_span(self, flexible: bool) -> tuple[int, int]:
        """(start, length) of a nullable bytes field; length -1 for null."""
        n = self.uvarint() - 1 if flexible else self.i32()
        if n < 0:
            return self.pos, -1
        return self.take(n), n

    def array_len(self, flexible: bool) -> int:
        n = self.uvarint() - 1 if flexible else self.i32()
        if n > self.end - self.pos:  # every element takes at least one byte
            raise WireError(f"array of {n} elements in {self.end - self.pos} bytes")
        return n

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())

    def topic(self, version: int, flexible: bool) -> str:
        if version >= FIRST_TOPIC_ID_PRODUCE:
            at = self.take(16)
            return "id:" + bytes(self.buf[at : at + 16]).hex()
        name = self.string(flexible)
        if name is None:
            raise WireError("null topic name")
        return name


def request_header(frame: bytes | memoryview) -> RequestHeader:
    """The header of one request frame (without its 4-byte size prefix).

    Header v1 (``client_id`` as a nullable int16 string) for every request; for flexible
    Produce versions (v9+) header v2 adds tagged fields. Other APIs' flexible headers are
    not needed: the gate only reads past the header of Produce requests."""
    if len(frame) < _HEAD.size:
        raise WireError(f"request of {len(frame)} bytes has no header")
    api_key, api_version, correlation_id = _HEAD.unpack_from(frame, 0)
    r = _Reader(frame, _HEAD.size)
    if api_key == PRODUCE:
        r.skip_string(flexible=False)  # client_id stays a classic string in header v2
        if api_version >= FIRST_FLEXIBLE_PRODUCE:
            r.skip_tags()
    return RequestHeader(api_key, api_version, correlation_id, r.pos)


def record_count(buf: bytes | memoryview, start: int, length: int) -> int:
    """Records in a ``records`` field: the sum of every batch's ``lastOffsetDelta + 1``
    (magic 2), or one per entry of a legacy (magic 0/1) message set."""
    count, pos, end = 0, start, start + length
    while pos + 17 <= end:
        batch_len = _I32.unpack_from(buf, pos + 8)[0]
        if batch_len <= 0 or pos + 12 + batch_len > end:
            break  # a partial trailing batch is allowed by the protocol; it is not written
        magic = buf[pos + 16]
        if magic >= 2:
            if batch_len < 49:
                raise WireError(f"record batch of {batch_len} bytes is shorter than its header")
            count += _I32.unpack_from(buf, pos + 23)[0] + 1
        else:
            count += 1
        pos += 12 + batch_len
    return count


def produce_request(frame: bytes | memoryview, header: RequestHeader) -> ProduceRequest:
    """The acks and per-partition record counts of a Produce request frame."""
    version = header.api_version
    flexible = version >= FIRST_FLEXIBLE_PRODUCE
    r = _Reader(frame, header.body_offset)
    if version >= 3:
        r.skip_string(flexible)  # transactional_id
    acks = r.i16()
    r.i32()  # timeout_ms
    counts: dict[tuple[str, int], int] = {}
    for _ in range(r.array_len(flexible)):
        topic = r.topic(version, flexible)
        for _ in range(r.array_len(flexible)):
            partition = r.i32()
            start, length = r.bytes_span(flexible)
            if length > 0:
                key = (topic, partition)
                counts[key] = counts.get(key, 0) + record_count(frame, start, length)
            if flexible:
                r.skip_tags()
        if flexible:
            r.skip_tags()
    return ProduceRequest(acks, counts)


def response_correlation_id(frame: bytes | memoryview) -> int:
    if len(frame) < 4:
        raise WireError(f"response of {len(frame)} bytes has no correlation id")
    return _I32.unpack_from(frame, 0)[0]


def produce_response(frame: bytes | memoryview, version: int) -> list[PartitionAck]:
    """Every partition's result in a Produce response frame (without its size prefix)."""
    flexible = version >= FIRST_FLEXIBLE_PRODUCE
    r = _Reader(frame, 4)
    if flexible:
        r.skip_tags()  # response header v1
    acks: list[PartitionAck] = []
    for _ in range(r.array_len(flexible)):
        topic = r.topic(version, flexible)
        for _ in range(r.array_len(flexible)):
            partition = r.i32()
            error_code = r.i16()
            base_offset = r.i64()
            if version >= 2:
                r.i64()  # log_append_time_ms
            if version >= 5:
                r.i64()  # log_start_offset
            if version >= 8:
                for _ in range(r.array_len(flexible)):  # record_errors
                    r.i32()
                    r.skip_string(flexible)
                    if flexible:
                        r.skip_tags()
                r.skip_string(flexible)  # error_message
            if flexible:
                r.skip_tags()
            acks.append(PartitionAck(topic, partition, error_code, base_offset))
        if flexible:
            r.skip_tags()
    return acks


# --- addresses in answers: what the gate rewrites so clients only ever see the gate --------

METADATA = 3
FIND_COORDINATOR = 10
DESCRIBE_CLUSTER = 60
FIRST_FLEXIBLE_METADATA = 9
FIRST_FLEXIBLE_FIND_COORDINATOR = 3
FIRST_BATCHED_FIND_COORDINATOR = 4  # a ``coordinators`` array instead of one coordinator
ADDRESS_APIS = frozenset({METADATA, FIND_COORDINATOR, DESCRIBE_CLUSTER})


def _encode_string(value: str, flexible: bool) -> bytes:
    raw = value.encode()
    if not flexible:
        return _I16.pack(len(raw)) + raw
    n, out = len(raw) + 1, bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + raw


def _address_spans(
    frame: bytes | memoryview, api_key: int, version: int
) -> tuple[list[tuple[int, int]], bool]:
    """(start, end) of every broker address -- a host string followed by its int32 port --
    in a Metadata, FindCoordinator or DescribeCluster response frame, and whether the
    frame uses the flexible (compact) encoding."""
    spans: list[tuple[int, int]] = []
    flexible = {
        METADATA: version >= FIRST_FLEXIBLE_METADATA,
        FIND_COORDINATOR: version >= FIRST_FLEXIBLE_FIND_COORDINATOR,
        DESCRIBE_CLUSTER: True,
    }[api_key]
    r = _Reader(frame, 4)
    if flexible:
        r.skip_tags()  # response header v1

    def address() -> None:
        start = r.pos
        r.skip_string(flexible)
        r.i32()
        spans.append((start, r.pos))

    if api_key == METADATA:
        if version >= 3:
            r.i32()  # throttle_time_ms
        for _ in range(r.array_len(flexible)):
            r.i32()  # node_id
            address()
            if version >= 1:
                r.skip_string(flexible)  # rack
            if flexible:
                r.skip_tags()
    elif api_key == FIND_COORDINATOR:
        if version >= 1:
            r.i32()  # throttle_time_ms
        if version < FIRST_BATCHED_FIND_COORDINATOR:
            r.i16()  # error_code
            if version >= 1:
                r.skip_string(flexible)  # error_message
            r.i32()  # node_id
            address()
        else:
            for _ in range(r.array_len(flexible)):
                r.skip_string(flexible)  # key
                r.i32()  # node_id
                address()
                r.i16()  # error_code
                r.skip_string(flexible)  # error_message
                r.skip_tags()
    else:  # DESCRIBE_CLUSTER
        r.i32()  # throttle_time_ms
        r.i16()  # error_code
        r.skip_string(True)  # error_message
        if version >= 1:
            r.take(1)  # endpoint_type
        r.skip_string(True)  # cluster_id
        r.i32()  # controller_id
        for _ in range(r.array_len(True)):
            r.i32()  # broker_id
            address()
            r.skip_string(True)  # rack
            r.skip_tags()
    return spans, flexible


def rewrite_addresses(
    frame: bytes | memoryview, api_key: int, version: int, host: str, port: int
) -> bytes:
    """The response frame with every broker address replaced by ``host:port``; the rest of
    the frame is copied unchanged. Raises :class:`WireError` on a malformed frame."""
    spans, flexible = _address_spans(frame, api_key, version)
    replacement = _encode_string(host, flexible) + _I32.pack(port)
    out, last = bytearray(), 0
    for start, end in spans:
        out += frame[last:start]
        out += replacement
        last = end
    out += frame[last:]
    return bytes(out)
