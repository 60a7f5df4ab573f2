"""Envelopes: JSON events and responses out, requests in, with specific errors for bad input."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.bridge.topics import valid_reply_topic
from gateway.errors import GatewayError, InvalidRequest
from gateway.transactions import DEFAULT_TTL_S, Priority

MCP_VERSION = "1.0"
DEFAULT_MAX_BODY = 65536
DEFAULT_MAX_DEPTH = 8
MAX_TTL_S = 3600.0
MAX_TIMEOUT_S = 60.0
#: a request the parser refuses whole (too big, not UTF-8, too deep, not JSON) is still
#: answered if its ``reply_to`` is found among the first this many bytes
SALVAGE_BYTES = 65536
_REQUEST_FIELDS = {"mcp_version", "message_id", "message_type", "timestamp", "source",
                   "destination", "action", "payload", "priority", "ttl", "timeout",
                   "reply_to", "correlation_id"}


class InvalidEnvelope(GatewayError):
    """A request that cannot be carried out; ``reply`` holds what is known of where to answer."""

    def __init__(self, message: str, reply: RequestEnvelope | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reply = reply


@dataclass
class RequestEnvelope:
    """A parsed request."""

    action: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    message_id: str = ""
    source: str = ""
    priority: Priority = Priority.MEDIUM
    ttl: float = DEFAULT_TTL_S
    timeout: float | None = None
    reply_to: str | None = None
    correlation_id: str | None = None


# Message ids: 16 random hex digits per process, then a counter. Unique across gateways and
# restarts without a uuid4 per event (3 us each, a tenth of an event's budget).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()

#: JSON out: compact UTF-8; NaN and infinities become null (msgspec does this itself).
_encoder = msgspec.json.Encoder(enc_hook=str)


def new_message_id() -> str:
    """32 hex digits, unique."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities as null, unknown types as ``str()``.

    Bytes are never expected here (decoders give hex strings); msgspec would write base64.
    """
    return _encoder.encode(obj)


def event_body(source: str, name: str, fields: dict[str, Any], received_at: float,
               seq: int) -> bytes:
    """An event envelope (``replayed`` is added at publish time if it waited in the queue)."""
    return _encoder.encode({
        "mcp_version": MCP_VERSION,
        "message_id": new_message_id(),
        "message_type": "event",
        "timestamp": received_at,
        "source": source,
        "destination": "*",
        "action": name,
        "payload": fields,
        "seq": seq,
    })


def request_body(action: str, payload: dict[str, Any], source: str, *,
                 correlation_id: str | None = None, reply_to: str | None = None,
                 timeout: float | None = None) -> bytes:
    """A request envelope (for clients: the CLI's ``request``, the dashboard).
    ``reply_to``/``correlation_id`` are the MQTT 3.1.1 way to ask for an answer."""
    body: dict[str, Any] = {
        "mcp_version": MCP_VERSION,
        "message_id": new_message_id(),
        "message_type": "request",
        "timestamp": time.time(),
        "source": source,
        "action": action,
        "payload": payload,
    }
    if timeout is not None:
        body["timeout"] = timeout
    if reply_to is not None:
        body.update(reply_to=reply_to, correlation_id=correlation_id)
    return _encoder.encode(body)


def mark_replayed(body: bytes) -> bytes:
    """The same event envelope with ``"replayed": true``."""
    return body[:-1] + b',"replayed":true}'


def response_body(
    request: RequestEnvelope,
    source: str,
    status: str,
    *,
    payload: dict[str, Any] | None = None,
    error: tuple[Any, str] | None = None,
    latency_ms: float,
) -> bytes:
    """A response envelope for ``request``."""
    body: dict[str, Any] = {
        "mcp_version": MCP_VERSION,
        "message_id": new_message_id(),
        "message_type": "response",
        "timestamp": time.time(),
        "source": source,
        "destination": request.source or "",
        "action": request.action,
        "payload": payload or {},
        "status": status,
        "latency_ms": round(latency_ms, 3),
    }
    if request.message_id:
        body["request_id"] = request.message_id
    if request.correlation_id is not None:
        body["correlation_id"] = request.correlation_id
    if error is not None:
        body["error"] = {"code": error[0], "message": error[1]}
    return _encoder.encode(body)


def parse_request(
    body: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BODY,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> RequestEnvelope:
    """Parse and check a request envelope; ``InvalidEnvelope`` says exactly what is wrong."""
    if len(body) > max_bytes:
        raise InvalidEnvelope(f"request body is {len(body)} bytes; the limit is {max_bytes}",
                              salvage_reply(body))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEnvelope(f"request body is not UTF-8: {exc.reason} at byte {exc.start}",
                              salvage_reply(body)) from None
    # Refuse deep nesting before the parser recurses into it.
    if text.count("[") + text.count("{") > max_depth and _bracket_depth(text) > max_depth:
        raise InvalidEnvelope(f"request nests deeper than {max_depth} levels",
                              salvage_reply(body))
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidEnvelope(f"request body is not JSON: {exc}", salvage_reply(body)) \
            from None
    if not isinstance(data, dict):
        raise InvalidEnvelope(f"request must be a JSON object, got {type(data).__name__}")
    # Where to answer is read first, so even a bad request gets its `invalid` response.
    request = _addressing(data)

    def bad(message: str) -> InvalidEnvelope:
        return InvalidEnvelope(message, request)

    unknown = sorted(set(data) - _REQUEST_FIELDS)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r}; expected envelope fields "
                  f"{', '.join(sorted(_REQUEST_FIELDS))}")
    if "reply_to" in data and request.reply_to is None:
        raise bad(f"reply_to {data['reply_to']!r} is not a topic to publish to")
    if data.get("mcp_version", MCP_VERSION) != MCP_VERSION:
        raise bad(f"mcp_version {data['mcp_version']!r} is not supported; expected \"1.0\"")
    if data.get("message_type", "request") != "request":
        raise bad(f"message_type {data['message_type']!r}: expected \"request\"")
    action = data.get("action")
    if not isinstance(action, str) or not action:
        raise bad(f"action {action!r} is missing or not a string")
    payload = data.get("payload", {})
    if not isinstance(payload, dict):
        raise bad(f"payload must be an object, got {type(payload).__name__}")
    request.payload = payload
    try:
        request.priority = Priority.parse(data.get("priority", Priority.MEDIUM))
    except InvalidRequest as exc:
        raise bad(str(exc)) from None
    request.ttl = _seconds(data, "ttl", DEFAULT_TTL_S, MAX_TTL_S, bad)
    if "timeout" in data:
        request.timeout = _seconds(data, "timeout", 2.0, MAX_TIMEOUT_S, bad)
    return request


def _addressing(data: dict[str, Any]) -> RequestEnvelope:
    """The fields of a request that say where and to whom to answer (and what it was),
    each checked and cut to its size; the rest of the envelope is left at its defaults."""
    request = RequestEnvelope()
    reply_to = data.get("reply_to")
    if isinstance(reply_to, str) and valid_reply_topic(reply_to):
        request.reply_to = reply_to
    correlation_id = data.get("correlation_id")
    if isinstance(correlation_id, str | int) and not isinstance(correlation_id, bool):
        request.correlation_id = _echoable(str(correlation_id)[:256])
    if isinstance(data.get("message_id"), str):
        request.message_id = _echoable(data["message_id"][:64])
    if isinstance(data.get("source"), str):
        request.source = _echoable(data["source"][:256])
    if isinstance(data.get("action"), str):
        request.action = _echoable(data["action"][:64])
    return request


def _echoable(text: str) -> str:
    """``text`` as it can go back in a response: a lone surrogate (a ``\\ud800`` escape in
    the request's JSON) cannot be encoded as UTF-8 and becomes ``?``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


_SALVAGED = frozenset(("reply_to", "correlation_id", "message_id", "source", "action"))
_TOKEN = re.compile(r'[{}\[\]"]')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_COLON = re.compile(r"[ \t\r\n]*:[ \t\r\n]*")
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)(?![0-9.eE])")
#: a value whose type the salvage does not read: the key's earlier value no longer holds
_UNREAD = object()


def salvage_reply(body: bytes) -> RequestEnvelope:
    """Where to answer a request the parser refuses whole (too big, not UTF-8, nested too
    deep, not JSON): the top-level ``reply_to`` and ``correlation_id`` (and ``message_id``,
    ``source``, ``action``) of the object that starts the body, read by a tolerant scan of
    its first ``SALVAGE_BYTES`` bytes. Bytes that are not UTF-8 become U+FFFD (a value
    containing one is not taken); nesting is counted, never recursed into; a later key wins,
    as in ``json.loads``. Never raises."""
    text = body[:SALVAGE_BYTES].decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if not text.startswith("{", start):
        return RequestEnvelope()  # not an object: no field to find
    found: dict[str, Any] = {}
    depth, pos = 0, start
    while (token := _TOKEN.search(text, pos)) is not None:
        char = token.group()
        if char != '"':
            depth += 1 if char in "{[" else -1
            pos = token.end()
            if depth <= 0:
                break  # the object has ended: what follows is not part of it
            continue
        string = _STRING.match(text, token.start())
        if string is None:
            break  # a string that does not end (cut off at the limit, or not JSON)
        pos = string.end()
        colon = _COLON.match(text, pos)
        if depth != 1 or colon is None:
            continue  # deeper, or a value rather than a key
        key = _json_string(string.group())
        if key not in _SALVAGED:
            continue
        at = colon.end()
        value: Any = _UNREAD
        if text.startswith('"', at):
            literal = _STRING.match(text, at)
            if literal is None:
                break
            pos = literal.end()
            value = _json_string(literal.group())
        elif (number := _INTEGER.match(text, at)) is not None:
            value = int(number.group())
        found[key] = value
    clean = {key: value for key, value in found.items()
             if not (isinstance(value, str) and "\ufffd" in value)}
    return _addressing(clean)


def _json_string(literal: str) -> Any:
    """The value of a JSON string literal (quotes included); ``_UNREAD`` if it is not one."""
    try:
        return json.loads(literal)
    except ValueError:
        return _UNREAD


def _seconds(data: dict, key: str, default: float, maximum: float, bad: Any) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 < value <= maximum:
        raise bad(f"{key} {value!r} is not a number of seconds in (0, {maximum:g}]")
    return float(value)


def _bracket_depth(text: str) -> int:
    """Nesting depth of brackets outside strings (cheap, before json.loads)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
