"""Request envelopes: every malformed input gets a specific message and, if possible, a reply."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.bridge.envelope import (
    InvalidEnvelope,
    RequestEnvelope,
    event_body,
    mark_replayed,
    parse_request,
    response_body,
)
from gateway.bridge.topics import Topics

REPLY = {"reply_to": "app/replies", "correlation_id": "c-1"}


def body(**fields) -> bytes:
    return json.dumps({"action": "read", "payload": {"key": 1}, **REPLY, **fields}).encode()


def test_a_full_request():
    request = parse_request(body(priority="high", ttl=5, timeout=0.5, message_id="m1",
                                 source="app-1", mcp_version="1.0", message_type="request"))
    assert (request.action, request.payload, request.priority) == ("read", {"key": 1}, "high")
    assert (request.ttl, request.timeout) == (5.0, 0.5)
    assert (request.reply_to, request.correlation_id) == ("app/replies", "c-1")


MALFORMED = [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "must be a JSON object, got list"),
    (b'"read"', "must be a JSON object, got str"),
    (b"null", "must be a JSON object, got NoneType"),
    (body(action=None), "action None is missing"),
    (body(action=""), "action '' is missing"),
    (body(payload=[1]), "payload must be an object, got list"),
    (body(priority="urgent"), "priority 'urgent' is not one of high, medium, low"),
    (body(ttl=-1), "ttl -1 is not a number of seconds"),
    (body(ttl="5"), "ttl '5' is not a number of seconds"),
    (body(timeout=0), "timeout 0 is not a number of seconds"),
    (body(timeout=1e9), "timeout 1000000000.0 is not a number of seconds"),
    (body(mcp_version="2.0"), "mcp_version '2.0' is not supported"),
    (body(message_type="event"), "message_type 'event': expected \"request\""),
    (body(colour="red"), "unknown field 'colour'"),
    (json.dumps({"action": "read", "reply_to": "a/#"}).encode(), "reply_to 'a/#' is not a topic"),
    (b'{"action": "read", "payload": ' + b'{"a": ' * 20 + b"1" + b"}" * 20 + b"}",
     "nests deeper than 8 levels"),
    (b"[" * 60_000, "nests deeper than 8 levels"),
    (b'{"action": "read", "payload": {"x": "' + b"a" * 70_000 + b'"}}',
     "request body is 70040 bytes; the limit is 65536"),
]


@pytest.mark.parametrize(("raw", "message"), MALFORMED)
def test_malformed_requests_are_invalid_with_a_specific_message(raw, message):
    with pytest.raises(InvalidEnvelope) as info:
        parse_request(raw)
    assert message in info.value.message


def test_a_bad_request_still_knows_where_to_answer():
    with pytest.raises(InvalidEnvelope) as info:
        parse_request(body(priority="urgent"))
    assert info.value.reply.reply_to == "app/replies"
    assert info.value.reply.correlation_id == "c-1"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_invalid(raw):
    with contextlib.suppress(InvalidEnvelope):
        parse_request(raw)


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3)))
def test_arbitrary_json_never_raises_anything_but_invalid(value):
    with contextlib.suppress(InvalidEnvelope):
        parse_request(json.dumps({"action": "x", "payload": value}).encode())


def test_event_and_response_bodies():
    event = json.loads(event_body("gw/dev", "status", {"t": 1.5, "x": float("nan")}, 10.0, 7))
    assert event["message_type"] == "event"
    assert event["seq"] == 7
    assert event["payload"] == {"t": 1.5, "x": None}
    assert len(event["message_id"]) == 32
    ids = {json.loads(event_body("g/d", "s", {}, 1.0, 1))["message_id"] for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    replayed = json.loads(mark_replayed(event_body("gw/dev", "status", {}, 1.0, 1)))
    assert replayed["replayed"] is True
    request = RequestEnvelope(action="read", source="app", correlation_id="c", message_id="m")
    response = json.loads(response_body(request, "gw/dev", "nack", error=(6, "denied"),
                                        latency_ms=1.23456))
    assert response["status"] == "nack"
    assert response["error"] == {"code": 6, "message": "denied"}
    assert response["correlation_id"] == "c"
    assert response["latency_ms"] == 1.235


def test_topics():
    topics = Topics("mcp/v1", "edge-1")
    assert topics.device_event("a", "status") == "mcp/v1/edge-1/devices/a/events/status"
    assert topics.device_of_request_topic("mcp/v1/edge-1/devices/a/requests") == "a"
    assert topics.device_of_request_topic("mcp/v1/edge-1/devices/a/b/requests") is None
    assert topics.device_of_request_topic("mcp/v1/other/devices/a/requests") is None
