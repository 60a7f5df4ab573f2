"""Base command payloads: table, round trips and specific errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import PayloadError
from gateway.frames import (
    COMMANDS,
    Command,
    NackCode,
    command_name,
    decode_payload,
    encode_payload,
    is_response_to,
    response_id,
)

ascii_short = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=32)
u16 = st.integers(0, 0xFFFF)

PAYLOADS = {
    Command.HELLO: st.fixed_dictionaries(
        {
            "proto": st.integers(0, 255),
            "uid": st.binary(min_size=8, max_size=8).map(bytes.hex),
            "fw": st.tuples(*[st.integers(0, 255)] * 3).map(lambda v: ".".join(map(str, v))),
            "model": ascii_short,
            "caps": st.lists(ascii_short, max_size=6),
        }
    ),
    Command.HELLO_ACK: st.fixed_dictionaries({"node_id": u16, "heartbeat_s": u16}),
    Command.PING: st.fixed_dictionaries(
        {"uptime_s": st.one_of(st.none(), st.integers(0, 2**32 - 1))}
    ),
    Command.PONG: st.just({}),
    Command.READ: st.fixed_dictionaries({"key": u16}),
    Command.READ_RESP: st.fixed_dictionaries({"key": u16, "value": st.binary(max_size=64)}),
    Command.WRITE: st.fixed_dictionaries({"key": u16, "value": st.binary(max_size=64)}),
    Command.WRITE_ACK: st.fixed_dictionaries({"key": u16, "status": st.integers(0, 255)}),
    Command.LOG: st.fixed_dictionaries({"level": st.integers(0, 4), "text": st.text(max_size=60)}),
    Command.NACK: st.fixed_dictionaries(
        {"rejected_cmd": st.integers(0, 255), "code": st.sampled_from(list(NackCode)).map(int)}
    ),
}


@pytest.mark.parametrize("cmd", list(PAYLOADS), ids=lambda c: c.name)
@given(data=st.data())
def test_every_base_command_round_trips(cmd, data):
    fields = data.draw(PAYLOADS[cmd])
    payload = encode_payload(cmd, fields)
    assert decode_payload(cmd, payload) == fields
    assert encode_payload(cmd, decode_payload(cmd, payload)) == payload


def test_every_payload_layout_in_the_table_has_a_strategy():
    with_layout = {c for c, spec in COMMANDS.items() if spec.payload is not None}
    assert with_layout == set(PAYLOADS)


def test_spec_payload_vectors():
    assert decode_payload(Command.NACK, bytes.fromhex("10 02")) == {"rejected_cmd": 0x10, "code": 2}
    assert decode_payload(Command.HELLO_ACK, bytes.fromhex("07 00 05 00")) == {
        "node_id": 7,
        "heartbeat_s": 5,
    }
    assert decode_payload(Command.WRITE_ACK, bytes.fromhex("02 00 00")) == {"key": 2, "status": 0}
    assert decode_payload(Command.PING, b"") == {"uptime_s": None}
    assert encode_payload(Command.PING, {}) == b""


def test_command_table_names_directions_and_responses():
    assert COMMANDS[Command.READ].response_id == Command.READ_RESP
    assert COMMANDS[Command.PING].response_id == Command.PONG
    assert COMMANDS[Command.STATUS].is_event
    assert COMMANDS[Command.STATUS].response_id is None
    assert response_id(0x30) == 0xB0
    assert is_response_to(0x10, 0x90)
    assert is_response_to(0x10, 0x7F)
    assert not is_response_to(0x10, 0x91)
    assert command_name(0x20) == "STATUS"
    assert command_name(0x42) == "cmd-0x42"


@pytest.mark.parametrize(
    ("cmd", "payload", "message"),
    [
        (Command.HELLO_ACK, "07", "HELLO_ACK: bad payload 07"),
        (Command.READ, "01 00 00", "READ: bad payload"),
        (Command.PING, "01 02", "PING: bad payload"),
        (Command.LOG, "09 41", "LOG: bad payload"),  # level above 4
        (Command.LOG, "01 ff", "LOG: bad payload"),  # not UTF-8
        (
            Command.HELLO,
            "01" + "00" * 8 + "010203" + "21" + "41" * 33 + "00",
            "HELLO",
        ),  # model > 32
    ],
)
def test_malformed_payloads_name_the_command(cmd, payload, message):
    with pytest.raises(PayloadError, match=message):
        decode_payload(cmd, bytes.fromhex(payload))


def test_status_and_unknown_commands_have_no_base_layout():
    with pytest.raises(PayloadError, match="STATUS: no base payload layout"):
        decode_payload(Command.STATUS, b"")
    with pytest.raises(PayloadError, match="cmd-0x42"):
        decode_payload(0x42, b"")


def test_encode_errors_are_payload_errors():
    with pytest.raises(PayloadError, match="HELLO_ACK: cannot encode"):
        encode_payload(Command.HELLO_ACK, {"node_id": 70000, "heartbeat_s": 5})
    with pytest.raises(PayloadError, match="HELLO: cannot encode"):
        encode_payload(
            Command.HELLO, {"proto": 1, "uid": "00", "fw": "1.2", "model": "", "caps": []}
        )
