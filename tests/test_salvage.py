"""Issue 13 item 6: the salvage of ``reply_to`` from request bodies the parser refuses whole
(too big, nested too deep, not UTF-8, not JSON), fuzzed: it never raises, never takes a
nested ``reply_to``, agrees with ``json.loads`` on every JSON object, and still finds the
field whatever follows it within the first 64 KiB."""

from __future__ import annotations

import json

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.bridge.envelope import (
    SALVAGE_BYTES,
    InvalidEnvelope,
    RequestEnvelope,
    parse_request,
    response_body,
    salvage_reply,
)
from gateway.bridge.topics import valid_reply_topic

FIELDS = ("reply_to", "correlation_id", "message_id", "source", "action")


def addressing(request: RequestEnvelope) -> tuple:
    return tuple(getattr(request, name) for name in FIELDS)


def parsed_addressing(body: bytes) -> tuple:
    """What the full parser makes of the addressing fields of a JSON object body."""
    try:
        request = parse_request(body, max_bytes=1 << 30, max_depth=1 << 30)
    except InvalidEnvelope as exc:
        request = exc.reply
    assert request is not None, "an object always has an addressing"
    return addressing(request)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["reply_to", "a", "correlation_id", "x\"y", "é"])
                      | st.text(max_size=5), inner, max_size=3),
    max_leaves=12)
# Topics are UTF-8 on the wire: no lone surrogates (json.dumps(..., ensure_ascii=False) cannot
# encode them; hypothesis found one).
topics = st.text(st.characters(blacklist_characters="\ufffd", blacklist_categories=("Cs",)),
                 min_size=1, max_size=20)
field_values = st.one_of(topics, st.integers(), st.none(), st.booleans(), json_values)
envelopes = st.dictionaries(
    st.sampled_from([*FIELDS, "payload", "ttl", "other"]), field_values, max_size=6)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_and_give_a_publishable_answer(raw):
    request = salvage_reply(raw)
    assert request.reply_to is None or valid_reply_topic(request.reply_to)
    # whatever is salvaged can go back in a response
    response_body(request, "gw", "invalid", error=("invalid", "x"), latency_ms=1.0)


@settings(max_examples=300)
@given(envelopes, st.booleans(), st.sampled_from([None, 0, 2]))
def test_it_agrees_with_json_loads_on_every_object(envelope, ascii_only, indent):
    body = json.dumps(envelope, ensure_ascii=ascii_only, indent=indent).encode()
    assert addressing(salvage_reply(body)) == parsed_addressing(body)


@given(json_values, topics)
def test_a_nested_reply_to_is_never_taken(value, topic):
    body = json.dumps({"payload": {"reply_to": topic, "v": value}, "list": [{"reply_to": topic}],
                       "text": f'"reply_to": "{topic}"'}).encode()
    assert salvage_reply(body).reply_to is None


TAILS = st.one_of(
    st.binary(max_size=50),                                    # garbage, or cut off: not JSON
    st.integers(9, 200).map(lambda n: b', "payload": ' + b"[" * n),    # too deep
    st.just(b', "action": "r\xe9ad"}'),                         # not UTF-8
    st.integers(1, 3).map(lambda n: b', "payload": "' + b"a" * (70_000 * n)),  # too big
)


@given(topics.filter(valid_reply_topic), st.text(max_size=10) | st.integers(), TAILS)
def test_the_reply_to_is_found_whatever_follows_it(topic, correlation, tail):
    # A tail that goes on with the number (``0`` then ``.5``) is another correlation id.
    assume(not (isinstance(correlation, int) and tail[:1] and tail[:1] in b"0123456789.eE"))
    head = json.dumps({"reply_to": topic, "correlation_id": correlation}).encode()[:-1]
    body = head + tail
    try:
        parse_request(body)
    except InvalidEnvelope as exc:
        reply = exc.reply
    else:
        return  # the tail made it a valid request after all: nothing to salvage
    assert reply is not None
    assert (reply.reply_to, reply.correlation_id) == (topic, str(correlation))


def test_a_later_key_wins_as_in_json_loads():
    body = b'{"reply_to": "replies/a", "correlation_id": 1, "reply_to": "replies/b", ' \
        b'"correlation_id": [2], "payload": ' + b"[" * 20
    request = salvage_reply(body)
    assert (request.reply_to, request.correlation_id) == ("replies/b", None)
    assert salvage_reply(b'{"reply_to": "replies/a", "reply_to": 5').reply_to is None


def test_only_the_first_64_kib_are_scanned():
    padding = b'{"payload": "' + b"a" * SALVAGE_BYTES + b'", '
    late = padding + b'"reply_to": "replies/late"}'
    assert salvage_reply(late).reply_to is None
    early = b'{"reply_to": "replies/early", ' + padding[1:] + b"}"
    assert salvage_reply(early).reply_to == "replies/early"


def test_a_reply_to_with_bytes_that_are_not_utf8_is_not_taken():
    assert salvage_reply(b'{"reply_to": "replies/\xff", "action": "read"}').reply_to is None
    assert salvage_reply(b'{"reply_to": "replies/a", "action": "\xff"}').reply_to == "replies/a"
