"""The `mcp` frame: spec vectors, and the fast codec proven equal to the Construct declaration."""

from __future__ import annotations

import functools
import operator

import pytest
from construct import CheckError, ChecksumError, ConstError, StreamError
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import (
    BadHeader,
    ChecksumMismatch,
    FrameError,
    OversizeLength,
    TrailingBytes,
    TruncatedFrame,
)
from gateway.frames import MCP_FRAME, Command, Frame, ProfileRegistry, decode_frame, encode_frame
from gateway.frames.checksums import xor8
from tests.strategies import frames

# Spec section 5, `mcp` profile: (name, cmd_id, payload hex, frame hex)
VECTORS = [
    ("PING", 0x02, "", "5a 02 00 00 02"),
    ("PONG", 0x82, "", "5a 82 00 00 82"),
    ("READ key=1", 0x10, "01 00", "5a 10 02 00 01 00 13"),
    ("READ_RESP key=1 u32 1234", 0x90, "01 00 d2 04 00 00", "5a 90 06 00 01 00 d2 04 00 00 41"),
    ("WRITE key=2 u16 500", 0x11, "02 00 f4 01", "5a 11 04 00 02 00 f4 01 e2"),
    ("WRITE_ACK key=2 status=0", 0x91, "02 00 00", "5a 91 03 00 02 00 00 90"),
    (
        "STATUS env-sensor",
        0x20,
        "66 08 94 11 e4 0c 10 0e 00 00",
        "5a 20 0a 00 66 08 94 11 e4 0c 10 0e 00 00 37",
    ),
    ("NACK of 0x10 code 2", 0x7F, "10 02", "5a 7f 02 00 10 02 6f"),
    ("HELLO_ACK node 7 hb 5", 0x81, "07 00 05 00", "5a 81 04 00 07 00 05 00 87"),
]


@pytest.mark.parametrize(
    ("name", "cmd_id", "payload", "wire"), VECTORS, ids=[v[0] for v in VECTORS]
)
def test_spec_vectors_both_directions(name, cmd_id, payload, wire):
    frame = Frame(cmd_id, bytes.fromhex(payload))
    assert frame.encode() == bytes.fromhex(wire)
    assert Frame.decode(bytes.fromhex(wire)) == frame
    built = MCP_FRAME.build({"body": {"value": {"cmd_id": cmd_id, "payload": frame.payload}}})
    assert built == bytes.fromhex(wire)
    parsed = MCP_FRAME.parse(bytes.fromhex(wire))
    assert (parsed.body.value.cmd_id, parsed.body.value.payload) == frame[:2]


def test_status_vector_decodes_through_the_env_sensor_profile():
    profile = ProfileRegistry().get("env-sensor")
    frame = Frame.decode(bytes.fromhex("5a 20 0a 00 66 08 94 11 e4 0c 10 0e 00 00 37"))
    assert frame.cmd_id == Command.STATUS
    fields = profile.events[Command.STATUS].layout.decode(frame.payload)
    assert fields == {
        "temperature_c": 21.5,
        "humidity_pct": 45.0,
        "battery_mv": 3300,
        "uptime_s": 3600,
    }
    assert profile.events[Command.STATUS].layout.encode(fields) == frame.payload


def test_read_resp_and_write_vectors_encode_values_through_the_profile_keys():
    profile = ProfileRegistry().get("env-sensor")
    assert profile.key("interval_ms").encode(1234) == bytes.fromhex("d2 04 00 00")
    assert profile.key(1).decode(bytes.fromhex("d2 04 00 00")) == 1234


@given(st.binary(max_size=600))
def test_xor8_is_the_xor_of_all_bytes(data):
    assert xor8(data) == functools.reduce(operator.xor, data, 0)


@given(frames)
def test_encode_decode_round_trip_matches_construct(frame):
    wire = frame.encode()
    assert decode_frame(wire) == frame
    assert MCP_FRAME.build({"body": {"value": frame._asdict()}}) == wire


def _construct_decode(data: bytes) -> Frame | type[FrameError]:
    """What the Construct declaration says of ``data`` as exactly one frame."""
    try:
        parsed = MCP_FRAME.parse(data)
    except ConstError:
        return BadHeader
    except CheckError:
        return OversizeLength
    except ChecksumError:
        return ChecksumMismatch
    except StreamError:
        return TruncatedFrame
    size = 5 + parsed.body.value.payload_len
    if len(data) > size:
        return TrailingBytes
    return Frame(parsed.body.value.cmd_id, parsed.body.value.payload)


def _fast_decode(data: bytes) -> Frame | type[FrameError]:
    try:
        return decode_frame(data)
    except FrameError as exc:
        return type(exc)


def _mutated(frame_and_edit) -> bytes:
    frame, index, value, cut = frame_and_edit
    wire = bytearray(frame.encode())
    wire[index % len(wire)] = value
    return bytes(wire[: len(wire) - cut])


arbitrary_bytes = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=40).map(lambda b: b"\x5a" + b),
    st.tuples(frames, st.integers(0, 300), st.integers(0, 255), st.integers(0, 3)).map(_mutated),
    st.tuples(frames, st.binary(max_size=3)).map(lambda t: t[0].encode() + t[1]),
)


@given(arbitrary_bytes)
def test_fast_decoder_gives_exactly_what_construct_gives(data):
    assert _fast_decode(data) == _construct_decode(data)


@pytest.mark.parametrize(
    ("wire", "error", "message"),
    [
        ("", TruncatedFrame, "needs 1 bytes, got 0"),
        ("a5 02 00 00 02", BadHeader, "expected 5a, got a5"),
        ("5a 02 00", TruncatedFrame, "needs 4 bytes, got 3"),
        ("5a 02 01 01 00", OversizeLength, "257 exceeds the maximum of 256"),
        ("5a 10 02 00 01 00", TruncatedFrame, "needs 7 bytes, got 6"),
        ("5a 10 02 00 01 00 14", ChecksumMismatch, "computed 0x13, frame says 0x14"),
        ("5a 02 00 00 02 00", TrailingBytes, "1 trailing byte"),
    ],
)
def test_decode_errors_are_typed_and_specific(wire, error, message):
    with pytest.raises(error, match=message):
        decode_frame(bytes.fromhex(wire))


def test_encode_rejects_what_cannot_be_a_frame():
    with pytest.raises(ValueError, match="257 bytes exceeds the maximum of 256"):
        encode_frame(0x20, bytes(257))
    with pytest.raises(ValueError, match="cmd_id 256 is not a byte"):
        encode_frame(256)
    assert len(encode_frame(0x20, bytes(256))) == 261
