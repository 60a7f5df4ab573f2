"""Requests built in the codec (``DeviceProfile.request_for``): what a valid request sends
decodes back, through the codec, to the same key and value; anything else is refused with
``InvalidRequest`` and nothing else, before a frame exists."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.frames import Command, Frame, Layout, NackCode, ProfileRegistry, decode_payload
from gateway.frames.profiles import FIELD_TYPES, DeviceProfile, FieldSpec, KeySpec, parse_profile
from gateway.frames.requests import Answer, PreparedRequest

REGISTRY = ProfileRegistry()
PROFILES = [REGISTRY.get(name) for name in REGISTRY.names()]
#: every key of every built-in profile
KEYS = [(profile, key) for profile in PROFILES for key in profile.keys.values()]
ENV = REGISTRY.get("env-sensor")


def wire_range(spec: FieldSpec) -> tuple[int, int]:
    """The raw integers an integer field's wire type holds (u32: 0..2**32-1)."""
    bits = int(spec.type[1:])
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if spec.type[0] == "i" else (0, 2**bits - 1)


def real_range(spec: FieldSpec) -> tuple[float, float]:
    """The real values a numeric field may hold: its min/max within what its type holds."""
    low = -math.inf if spec.min is None else spec.min
    high = math.inf if spec.max is None else spec.max
    if spec.type in ("f32", "f64"):
        return low, high
    wire_low, wire_high = wire_range(spec)
    if spec.scale is not None:
        wire_low, wire_high = spec.from_wire(wire_low), spec.from_wire(wire_high)
    return max(low, wire_low), min(high, wire_high)


def valid_values(spec: FieldSpec) -> st.SearchStrategy[tuple[Any, Any]]:
    """(a value a request may carry, the real value the device then holds) for a field."""
    kind = spec.type
    if kind == "bool":
        return st.booleans().map(lambda v: (v, v))
    if kind == "utf8":
        limit = 64 if spec.max_len is None else spec.max_len
        return st.text(max_size=limit).filter(lambda t: len(t.encode()) <= limit) \
            .map(lambda v: (v, v))
    if kind == "bytes":
        data = st.binary(max_size=64 if spec.max_len is None else spec.max_len)
        # bytes are written as bytes or as a hex string, and always read back as hex
        return data.flatmap(lambda b: st.sampled_from([(b, b.hex()), (b.hex(), b.hex())]))
    low, high = real_range(spec)
    if kind in ("f32", "f64"):
        floats = st.floats(min_value=max(low, -(2.0**100)), max_value=min(high, 2.0**100),
                           allow_nan=False, width=32 if kind == "f32" else 64)
        return floats.map(lambda v: (v, v))
    if spec.scale is None:
        return st.integers(math.ceil(low), math.floor(high)).map(lambda v: (v, v))
    # a scaled field holds raw integers: real = raw x scale, as the device would answer
    wire_low, wire_high = wire_range(spec)
    raw = st.integers(max(wire_low, -(2**40)), min(wire_high, 2**40)).map(spec.from_wire)
    return raw.filter(lambda v: low <= v <= high).map(lambda v: (v, v))


def invalid_values(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Values no request may write to a field: the wrong type, out of range, too long."""
    wrong_type = st.one_of(st.none(), st.lists(st.integers(), max_size=2),
                           st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    kind = spec.type
    if kind == "bool":
        return st.one_of(wrong_type, st.integers(), st.text(max_size=5))
    if kind == "utf8":
        too_long = [] if spec.max_len is None else [
            st.text(min_size=spec.max_len + 1, max_size=spec.max_len + 8)]
        surrogate = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
        return st.one_of(wrong_type, st.integers(), st.booleans(), surrogate, *too_long)
    if kind == "bytes":
        too_long = [] if spec.max_len is None else [
            st.binary(min_size=spec.max_len + 1, max_size=spec.max_len + 8)]
        not_hex = st.text(min_size=1, max_size=6).filter(lambda t: not _is_hex(t))
        return st.one_of(wrong_type, st.integers(), st.booleans(), not_hex, *too_long)
    low, high = real_range(spec)
    out = [st.sampled_from([math.nan, math.inf, -math.inf]),
           st.integers(max_value=-(2**1100)), st.integers(min_value=2**1100)]
    # beyond the range by a whole step of the scale (a scaled value is rounded to a step)
    step = math.ceil(spec.scale or 1)
    if math.isfinite(low):
        out.append(st.integers(max_value=math.floor(low) - step))
    if math.isfinite(high):
        out.append(st.integers(min_value=math.ceil(high) + step))
    if kind == "f32":
        out.append(st.floats(min_value=1e39, allow_infinity=False))
    return st.one_of(wrong_type, st.booleans(), st.text(max_size=5), *out)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def on_the_wire(prepared: PreparedRequest) -> Frame:
    """The request frame as the device receives it: encoded to bytes, decoded back."""
    return Frame.decode(prepared.frame.encode())




@st.composite
def any_field(draw: st.DrawFn) -> FieldSpec:
    """A key of a user's profile: any type, with or without scale, bounds or max_len."""
    kind = draw(st.sampled_from(FIELD_TYPES))
    if kind in ("utf8", "bytes"):
        return FieldSpec("level", kind, max_len=draw(st.none() | st.integers(0, 40)))
    if kind == "bool":
        return FieldSpec("level", kind)
    scale = None if kind[0] == "f" else draw(st.none() | st.sampled_from([0.01, 0.5, 10]))
    low, high = draw(st.none() | st.integers(-1000, 0)), draw(st.none() | st.integers(1, 1000))
    return FieldSpec("level", kind, scale=scale, min=low, max=high)


def _profile_of(spec: FieldSpec) -> tuple[DeviceProfile, KeySpec]:
    key = KeySpec(7, spec, True, None, Layout.build((spec,)))
    return DeviceProfile("user", "", {}, {7: key}, {}), key


#: every key of the built-in profiles, and keys of every type a user profile may declare
keys = st.sampled_from(KEYS) | any_field().map(_profile_of)
key_and_value = keys.flatmap(
    lambda pk: st.tuples(st.just(pk), valid_values(pk[1].field)))
key_and_invalid = keys.flatmap(
    lambda pk: st.tuples(st.just(pk), invalid_values(pk[1].field)))


@given(keys, st.booleans(), st.data())
def test_a_read_names_its_key_on_the_wire_and_reads_the_answer_back(pk, by_id, data):
    profile, key = pk
    prepared = profile.request_for("read", {"key": key.id if by_id else key.name})
    frame = on_the_wire(prepared)
    assert frame.cmd_id == Command.READ
    assert decode_payload(Command.READ, frame.payload) == {"key": key.id}
    assert (prepared.key, prepared.unit, prepared.response_id) == (
        key.name, key.field.unit, Command.READ_RESP)
    sent, held = data.draw(valid_values(key.field))
    response = Frame(Command.READ_RESP, key.id.to_bytes(2, "little") + key.encode(sent))
    assert prepared.answer(Frame.decode(response.encode())) == Answer(held)


@given(key_and_value, st.booleans())
def test_a_write_decodes_back_through_the_codec_to_the_same_key_and_value(kv, by_id):
    (profile, key), (sent, held) = kv
    prepared = profile.request_for("write", {"key": key.id if by_id else key.name,
                                             "value": sent})
    frame = on_the_wire(prepared)
    assert frame.cmd_id == Command.WRITE
    fields = decode_payload(Command.WRITE, frame.payload)
    assert profile.key(fields["key"]).name == key.name
    assert profile.key(fields["key"]).decode(fields["value"]) == held
    assert (prepared.key, prepared.unit, prepared.response_id) == (
        key.name, key.field.unit, Command.WRITE_ACK)
    head = key.id.to_bytes(2, "little")
    assert prepared.answer(Frame(Command.WRITE_ACK, head + b"\x00")) == Answer(held)
    assert prepared.answer(Frame(Command.WRITE_ACK, head + bytes([NackCode.DENIED]))) == \
        Answer(refused=NackCode.DENIED)


@given(key_and_invalid)
def test_an_invalid_value_is_always_invalid_request(kv):
    (profile, key), value = kv
    with pytest.raises(InvalidRequest, match=f"^{key.name}: "):
        profile.request_for("write", {"key": key.name, "value": value})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6,
)


@given(st.sampled_from(PROFILES),
       st.sampled_from(["read", "write", "raw", "ping", "reboot", ""])
       | st.text(max_size=8),
       st.dictionaries(st.sampled_from(["key", "value", "cmd_id", "data_hex", "x"]),
                       json_values | st.sampled_from(["interval_ms", "name", "fw_build", 1, 2,
                                                      3, 48]), max_size=4))
def test_any_request_from_the_fabric_is_a_frame_that_encodes_or_invalid_request(
        profile, action, args):
    """Whatever JSON a client sends: a request whose frame can be written, or InvalidRequest
    (which the request server answers ``invalid``); never an exception that leaves the
    request unanswered."""
    try:
        prepared = profile.request_for(action, args)
    except InvalidRequest:
        return
    frame = on_the_wire(prepared)
    if prepared.key is not None:
        spec = profile.key(prepared.key)
        assert int.from_bytes(frame.payload[:2], "little") == spec.id


@pytest.mark.parametrize(
    ("action", "args", "message"),
    [
        ("read", {"key": "colour"}, "profile env-sensor has no key 'colour'; known keys: "
         "interval_ms (1), name (2), fw_build (3)"),
        ("read", {}, "read needs a key"),
        ("write", {"key": "interval_ms", "value": 5}, "interval_ms: 5 is below the minimum 10"),
        ("write", {"key": "interval_ms"}, "write of interval_ms needs a value"),
        ("write", {"key": "name", "value": "\ud800"},
         "name: '\\ud800' is not UTF-8 text (it holds a lone surrogate)"),
        ("raw", {"cmd_id": 0x90}, "raw cmd_id 144 is not a request command (0..126)"),
        ("raw", {"cmd_id": 0x20}, "raw cmd_id 32 (STATUS) is not a request a gateway sends"),
        ("raw", {"cmd_id": 0x30, "data_hex": "zz"}, "data_hex 'zz' is not hex"),
        ("raw", {"cmd_id": 0x30, "data_hex": "00" * 257},
         "data_hex is 257 bytes; a payload holds at most 256"),
        ("reboot", {}, "unknown action 'reboot'; known actions: read, write, raw, ping"),
    ],
)
def test_invalid_requests_say_what_is_wrong(action, args, message):
    with pytest.raises(InvalidRequest) as caught:
        ENV.request_for(action, args)
    assert str(caught.value) == message


def test_ping_raw_and_profile_commands_answer_their_own_shapes():
    ping = ENV.request_for("ping", {})
    assert (ping.frame, ping.response_id, ping.key) == (Frame(Command.PING), Command.PONG, None)
    assert ping.answer(Frame(Command.PONG)) == Answer({})
    raw = ENV.request_for("raw", {"cmd_id": 0x30, "data_hex": "0102"})
    assert (raw.frame, raw.response_id) == (Frame(0x30, b"\x01\x02"), 0xB0)
    assert raw.answer(Frame(0xB0, b"\xab")) == Answer({"cmd_id": 0xB0, "data_hex": "ab"})
    profile = parse_profile({"name": "lamp", "commands": [{
        "id": 0x30, "name": "blink",
        "request": [{"name": "times", "type": "u8"}],
        "response": [{"name": "done", "type": "bool"}]}]})
    blink = profile.request_for("blink", {"times": 3})
    assert (blink.frame, blink.response_id) == (Frame(0x30, b"\x03"), 0xB0)
    assert blink.answer(Frame(0xB0, b"\x01")) == Answer({"done": True})
    with pytest.raises(InvalidRequest, match=r"^blink: missing times$"):
        profile.request_for("blink", {})
    with pytest.raises(InvalidRequest, match=r"known actions: read, write, raw, ping, blink$"):
        profile.request_for("dim", {})


def test_an_answer_that_does_not_decode_keeps_its_bytes_and_says_why():
    """Never drop data: a READ_RESP too short for its key's type is passed on raw."""
    read = ENV.request_for("read", {"key": "interval_ms"})
    answer = read.answer(Frame(Command.READ_RESP, b"\x01\x00\x07"))
    assert answer.error is not None
    assert answer.error.startswith("interval_ms: bad payload 07")
    assert answer.value == {"raw_hex": "010007", "error": answer.error}


def test_a_value_longer_than_a_frame_holds_is_refused_before_it_is_queued():
    """A utf8 or bytes key without max_len: 254 bytes fit beside the key id, 255 do not (the
    write would fail in the driver, after it was queued, and take the device's requests
    with it)."""
    profile, _ = _profile_of(FieldSpec("note", "utf8"))
    assert len(profile.request_for("write", {"key": 7, "value": "x" * 254}).frame.payload) \
        == 256
    with pytest.raises(InvalidRequest) as caught:
        profile.request_for("write", {"key": 7, "value": "x" * 255})
    assert str(caught.value) == "write of note is 257 bytes; a payload holds at most 256"
    command = parse_profile({"name": "printer", "commands": [{
        "id": 0x40, "name": "print", "request": [{"name": "text", "type": "utf8"}]}]})
    with pytest.raises(InvalidRequest, match=r"^print is 300 bytes; a payload holds at most"):
        command.request_for("print", {"text": "y" * 300})


@pytest.mark.parametrize(("kind", "value"), [("f32", 1e39), ("f32", 2**200), ("f64", 10**400),
                                             ("i16", 10**400)])
def test_numbers_beyond_a_float_are_out_of_range_not_an_overflow(kind, value):
    """A value too big for the wire (or for a float at all) is a ValueEncodingError like any
    out-of-range value, so a request carrying it is answered ``invalid``."""
    profile, key = _profile_of(FieldSpec("level", kind, scale=0.01 if kind == "i16" else None))
    with pytest.raises(InvalidRequest, match=r"^level: .* out of range"):
        profile.request_for("write", {"key": key.id, "value": value})
