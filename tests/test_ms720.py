"""The `ms720` profile: spec vectors, the fast codec against the Construct declaration, and
the deframer with garbage, corruption and split reads."""

from __future__ import annotations

import random

import pytest
from construct import ConstructError
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ChecksumMismatch, FrameError, OversizeLength
from gateway.frames import Frame
from gateway.frames.ms720 import (
    MS720_FRAME,
    SYNC,
    LinkFrame,
    Ms720Deframer,
    MsgType,
    carrying,
    crc16,
    decode_link,
    encode_bare,
    encode_link,
)

VECTORS = [  # spec section 5
    (LinkFrame(MsgType.DATA, 1, bytes([0x10, 0x01, 0x00])),
     "55 aa 55 aa 03 00 02 01 00 00 00 10 01 00 63 17"),
    (LinkFrame(MsgType.ACK, 1), "55 aa 55 aa 00 00 03 01 00 00 00 a8 69"),
]


def test_crc_check_value():
    assert crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize(("frame", "wire"), VECTORS)
def test_spec_vectors(frame, wire):
    data = bytes.fromhex(wire)
    assert frame.encode() == data
    assert decode_link(data) == frame
    built = MS720_FRAME.build({"body": {"value": {"msg_type": frame.msg_type,
                                                  "seq": frame.seq,
                                                  "payload": frame.payload}}})
    assert built == data


def test_a_data_frame_carries_an_mcp_command():
    link = carrying(Frame(0x10, b"\x01\x00"), seq=1)
    assert link.encode().hex(" ") == VECTORS[0][1]
    assert link.frame == Frame(0x10, b"\x01\x00", 1)  # a request: its own seq
    answer = carrying(Frame(0x90, b"\x01\x00\x05", request_seq=1), seq=7)
    assert answer.payload == b"\x90" + (1).to_bytes(4, "little") + b"\x01\x00\x05"
    assert answer.frame == Frame(0x90, b"\x01\x00\x05", 1)  # a response: the seq it answers


link_frames = st.builds(LinkFrame, st.integers(0, 255), st.integers(0, 2**32 - 1),
                        st.binary(max_size=300))


@given(link_frames)
def test_round_trip(frame):
    assert decode_link(encode_link(*frame)) == frame


def _construct(data: bytes) -> LinkFrame | None:
    try:
        parsed = MS720_FRAME.parse(data)
    except ConstructError:
        return None
    body = parsed.body.value
    if len(data) != 13 + body.length:
        return None  # trailing bytes: not exactly one frame
    return LinkFrame(body.msg_type, body.seq, bytes(body.payload))


def _fast(data: bytes) -> LinkFrame | None:
    try:
        return decode_link(data)
    except FrameError:
        return None


@given(st.one_of(
    st.binary(max_size=40),
    link_frames.map(lambda f: f.encode()),
    st.tuples(link_frames, st.integers(0, 400), st.integers(0, 255)).map(
        lambda t: _flip(t[0].encode(), t[1], t[2])),
))
@settings(max_examples=500)
def test_the_fast_codec_accepts_exactly_what_construct_does(data):
    assert _fast(data) == _construct(data)


def _flip(data: bytes, index: int, value: int) -> bytes:
    index %= len(data)
    return data[:index] + bytes([value]) + data[index + 1:]


garbage = st.binary(max_size=20).map(lambda b: bytes(x for x in b if x != 0x55))


@given(st.lists(st.tuples(garbage, link_frames), max_size=12), garbage,
       st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_the_deframer_finds_every_frame_in_garbage_and_split_reads(items, tail, sizes):
    stream = b"".join(g + f.encode() for g, f in items) + tail
    deframer = Ms720Deframer(timeout=1e9)
    got: list[LinkFrame] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = sizes[i % len(sizes)]
        got += deframer.feed(stream[pos:pos + step])
        pos, i = pos + step, i + 1
    assert got == [f for _, f in items]
    stats = deframer.stats
    assert stats.bytes_in == stats.framed_bytes + stats.discarded_bytes + deframer.buffered
    assert stats.discarded_bytes == sum(len(g) for g, _ in items) + len(tail) - deframer.buffered


def test_a_corrupt_frame_is_dropped_counted_and_its_seq_reported():
    good = LinkFrame(MsgType.DATA, 7, b"\x20" + bytes(10))
    bad = bytearray(LinkFrame(MsgType.DATA, 6, b"\x20" + bytes(10)).encode())
    bad[-1] ^= 0xFF
    deframer = Ms720Deframer()
    assert deframer.feed(bytes(bad) + good.encode()) == [good]
    assert deframer.stats.checksum_errors == 1
    assert deframer.bad_seqs == [6]
    with pytest.raises(ChecksumMismatch):
        decode_link(bytes(bad))


def test_an_oversize_length_resyncs_and_is_counted():
    good = LinkFrame(MsgType.ACK, 3)
    deframer = Ms720Deframer(max_payload=16)
    assert deframer.feed(SYNC + b"\xff\xff" + good.encode()) == [good]
    assert deframer.stats.oversize_lengths == 1
    with pytest.raises(OversizeLength):
        decode_link(SYNC + b"\xff\xff\x02" + bytes(8))


def test_a_stale_partial_frame_is_dropped_after_the_timeout():
    now = [0.0]
    deframer = Ms720Deframer(timeout=0.1, clock=lambda: now[0])
    frame = LinkFrame(MsgType.DATA, 1, b"\x20\x01")
    assert deframer.feed(frame.encode()[:9]) == []
    now[0] = 1.0
    assert deframer.expire() == []
    assert deframer.buffered == 0
    assert deframer.stats.stale_frames == 1
    assert deframer.feed(frame.encode()) == [frame]


def test_noise_recovery_rate():
    rng = random.Random(7)
    frames = [LinkFrame(MsgType.DATA, i, b"\x20" + rng.randbytes(10)) for i in range(2000)]
    stream = b"".join(rng.randbytes(rng.randint(0, 8)) + f.encode() for f in frames)
    got = Ms720Deframer().feed(stream)
    assert got == frames  # CRC-16: no false frame in 2,000 (1 in 65,536 per false sync)


@given(st.sampled_from([MsgType.ACK, MsgType.NACK]),
       st.lists(st.integers(0, 2**32 - 1), max_size=20))
def test_bare_frames_in_a_batch_equal_one_by_one(msg_type, seqs):
    assert encode_bare(msg_type, seqs) == b"".join(LinkFrame(msg_type, s).encode() for s in seqs)
