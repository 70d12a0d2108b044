"""OTLP/HTTP request bodies to ``ExportTraceServiceRequest``: protobuf or JSON, gzip or not.

Pure. Every way a body can be wrong raises :class:`BadRequest` with the HTTP status the
OTLP specification asks for and a message that says what to fix.

OTLP/JSON is the protobuf JSON mapping with two exceptions the spec makes: trace and span
ids are hex strings (not base64), and enums may be integers. Unknown fields are ignored.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_json = msgspec.json.Decoder()
_ID_FIELDS = {"traceId": 16, "trace_id": 16, "spanId": 8, "span_id": 8,
              "parentSpanId": 8, "parent_span_id": 8}  # fmt: skip


class BadRequest(Exception):
    """A request the receiver refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def gunzip(body: bytes, max_bytes: int) -> bytes:
    """Inflate a gzip body, refusing to inflate past ``max_bytes`` (a gzip bomb is a 413)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, max_bytes + 1)
    except zlib.error as err:
        raise BadRequest(400, f"body is not valid gzip: {err}") from None
    if len(out) > max_bytes or d.unconsumed_tail:
        raise BadRequest(
            413, f"body inflates past the limit of {max_bytes} bytes (otlp_max_body_bytes)"
        )
    if not d.eof:
        raise BadRequest(400, "gzip body is truncated")
    return out


def decode_body(
    body: bytes, content_type: str | None, content_encoding: str | None, max_bytes: int
) -> tuple[ExportTraceServiceRequest, str]:
    """The request and the media type to answer in."""
    mt = media_type(content_type)
    if mt not in (PROTOBUF, JSON):
        raise BadRequest(
            415,
            f"unsupported content type {content_type!r}: send {PROTOBUF} or {JSON} (OTLP/HTTP)",
        )
    enc = (content_encoding or "identity").strip().lower()
    if enc == "gzip":
        body = gunzip(body, max_bytes)
    elif enc not in ("identity", ""):
        raise BadRequest(415, f"unsupported content encoding {content_encoding!r}: use gzip")
    if mt == PROTOBUF:
        return parse_protobuf(body), mt
    return parse_json(body), mt


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except DecodeError as err:
        raise BadRequest(400, f"malformed protobuf ExportTraceServiceRequest: {err}") from None
    return req


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    try:
        doc = _json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"malformed JSON: {err}") from None
    if not isinstance(doc, dict):
        raise BadRequest(400, "the JSON body must be an object (ExportTraceServiceRequest)")
    _hex_ids_to_base64(doc, "$")
    req = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, req, ignore_unknown_fields=True)
    except json_format.ParseError as err:
        raise BadRequest(400, f"invalid OTLP/JSON: {err}") from None
    return req


def _hex_ids_to_base64(node: Any, path: str) -> None:
    """OTLP/JSON ids are hex; the protobuf JSON mapping expects base64 for bytes."""
    if isinstance(node, dict):
        for key, value in node.items():
            size = _ID_FIELDS.get(key)
            if size is not None and isinstance(value, str):
                if value == "":
                    continue
                try:
                    raw = bytes.fromhex(value)
                except ValueError:
                    raise BadRequest(400, f"{path}.{key}: {value[:40]!r} is not a hex id") from None
                if len(raw) != size:
                    raise BadRequest(
                        400, f"{path}.{key}: need {size * 2} hex digits, got {len(value)}"
                    )
                node[key] = base64.b64encode(raw).decode()
            elif isinstance(value, dict | list):
                _hex_ids_to_base64(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, dict | list):
                _hex_ids_to_base64(item, f"{path}[{i}]")


def encode_response(resp: ExportTraceServiceResponse, mt: str) -> bytes:
    if mt == JSON:
        return json_format.MessageToJson(resp, indent=None).encode()
    return resp.SerializeToString()


def error_body(code: int, message: str, mt: str) -> bytes:
    """A ``google.rpc.Status`` in the request's encoding (what OTLP/HTTP errors carry)."""
    from google.rpc.status_pb2 import Status

    status = Status(code=code, message=message)
    if mt == JSON:
        return json_format.MessageToJson(status, indent=None).encode()
    if mt == PROTOBUF:
        return status.SerializeToString()
    return msgspec.json.encode({"code": code, "message": message})
