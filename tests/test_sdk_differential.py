"""device-sdk's C frames against the gateway's Python ones: same bytes, same deframing.

The C side is ``libmcp.so`` through ``tests/sdk_lib.py`` (MCP_MAX_PAYLOAD=256, so the C
`mcp` deframer takes the spec's 256-byte payloads and its `ms720` one 261 bytes). The
Python side is the reference: ``encode_frame``/``Deframer`` and ``encode_link``/
``Ms720Deframer`` (given the same limit). Deframing is compared after every single feed and
expire: the frames, the bad seqs (ms720), every counter and the bytes buffered, on streams of
valid, corrupted and cut frames and garbage, split at random, fed at random integer-ms times
so that the 100 ms inter-frame timeout fires now and then.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from gateway.frames import Deframer, Frame, decode_frame, encode_frame
from gateway.frames.ms720 import SYNC, LinkFrame, Ms720Deframer, crc16, decode_link, encode_link
from tests import sdk_lib
from tests.sdk_lib import CDeframer, c_crc16, c_encode, c_ms720_encode
from tests.strategies import frames, payloads

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "serial-frames.md"
TIMEOUT_MS = 100
MS720_LIMIT = sdk_lib.MS720_MAX_PAYLOAD  # 261: MCP_MAX_PAYLOAD + 5


@pytest.fixture(autouse=True, scope="module")
def _library():
    """Build and load libmcp.so once; skip (fail under CI) without gcc and make."""
    return sdk_lib.library()


# ---------------------------------------------------------------- the two sides in step


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Both:
    """The C and the Python deframer of one profile, fed the same steps and compared after
    each one. Times are integer ms; the C side sees them modulo 2**32."""

    def __init__(self, ms720: bool) -> None:
        self.ms720 = ms720
        self.clock = Clock()
        if ms720:
            self.py = Ms720Deframer(timeout=float(TIMEOUT_MS), clock=self.clock,
                                    max_payload=MS720_LIMIT)
        else:
            self.py = Deframer(timeout=float(TIMEOUT_MS), clock=self.clock)
        self.c = CDeframer(ms720)
        self.frames: list = []
        self.bad_seqs: list[int] = []
        self.steps: list[str] = []

    def feed(self, data: bytes, now: int) -> list:
        self.clock.now = float(now)
        self.steps.append(f"feed({data.hex(' ') or '-'}) at {now}")
        return self._check(self.py.feed(data), self.c.feed(data, now))

    def expire(self, now: int) -> list:
        self.steps.append(f"expire at {now}")
        return self._check(self.py.expire(float(now)), self.c.expire(now))

    def _check(self, py: list, c: list) -> list:
        where = f"after step {len(self.steps)}: {self.steps[-1]}"
        assert c == py, f"frames differ {where} (C first)"
        if self.ms720:
            assert self.c.bad_seqs == self.py.bad_seqs, f"bad seqs differ {where} (C first)"
            self.bad_seqs += self.py.bad_seqs
            self.c.bad_seqs.clear()
            self.py.bad_seqs.clear()
        assert self.c.stats == dataclasses.asdict(self.py.stats), \
            f"counters differ {where} (C first)"  # fmt: skip
        assert self.c.buffered == self.py.buffered, f"buffered bytes differ {where} (C first)"
        stats = self.c.stats
        assert stats["bytes_in"] == stats["framed_bytes"] + stats["discarded_bytes"] \
            + self.c.buffered  # fmt: skip
        self.frames += c
        return c


# ---------------------------------------------------------------- encoding


def spec_vectors() -> tuple[list[bytes], list[bytes], int]:
    """Section 5 of serial-frames.md: the `mcp` frames, the `ms720` frames and the CRC-16
    check value; from the tests that hold the same vectors when the spec is not beside the
    repository."""
    if not SPEC.exists():
        from tests.test_ms720 import VECTORS as MS720_VECTORS  # noqa: PLC0415
        from tests.test_wire import VECTORS as MCP_VECTORS  # noqa: PLC0415

        return ([bytes.fromhex(v[3]) for v in MCP_VECTORS],
                [bytes.fromhex(wire) for _, wire in MS720_VECTORS], 0x29B1)
    section = SPEC.read_text().split("## 5.", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, re.DOTALL)
    hexes = r"((?:[0-9a-f]{2} )*[0-9a-f]{2})"
    lists = []
    for block in blocks[:2]:
        wires: list[str] = []
        for line in block.splitlines():
            named = re.fullmatch(r"\S.*?\s{2,}" + hexes + r"\s*", line)
            bare = re.fullmatch(r"\s+" + hexes + r"\s*", line)
            if named:
                wires.append(named.group(1))
            elif bare and wires:  # a wrapped line: its name stands alone on the line above
                wires.append(bare.group(1))
        lists.append([bytes.fromhex(w) for w in wires])
    check = re.search(r"`123456789` is `0x([0-9A-Fa-f]{4})`", section)
    assert check, "no CRC-16 check value in section 5"
    return lists[0], lists[1], int(check.group(1), 16)


MCP_VECTORS, MS720_VECTORS, CRC_CHECK = spec_vectors()


def test_the_spec_vectors_were_found():
    assert len(MCP_VECTORS) >= 9
    assert len(MS720_VECTORS) >= 2


@pytest.mark.parametrize("wire", MCP_VECTORS, ids=lambda w: w.hex(" ")[:20])
def test_c_encodes_the_mcp_spec_vectors(wire):
    frame = decode_frame(wire)
    assert c_encode(frame.cmd_id, frame.payload) == wire


@pytest.mark.parametrize("wire", MS720_VECTORS, ids=lambda w: w.hex(" ")[:20])
def test_c_encodes_the_ms720_spec_vectors(wire):
    frame = decode_link(wire)
    assert c_ms720_encode(*frame) == wire


def test_c_crc16_check_value():
    assert c_crc16(b"123456789") == CRC_CHECK == crc16(b"123456789")


@settings(max_examples=300)
@given(frames)
def test_mcp_encoding_is_identical(frame):
    assert c_encode(frame.cmd_id, frame.payload) == encode_frame(frame.cmd_id, frame.payload)


@given(st.integers(0, 255), st.binary(min_size=257, max_size=300))
def test_c_refuses_an_oversize_mcp_payload_as_python_does(cmd_id, payload):
    assert c_encode(cmd_id, payload) == b""
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(cmd_id, payload)


@settings(max_examples=300)
@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.one_of(payloads, st.binary(max_size=600)))
def test_ms720_encoding_is_identical(msg_type, seq, payload):
    assert c_ms720_encode(msg_type, seq, payload) == encode_link(msg_type, seq, payload)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_crc16_is_identical(data):
    assert c_crc16(data) == crc16(data)


# ---------------------------------------------------------------- stream strategies


def flip(wire: bytes, at: int, mask: int) -> bytes:
    at %= len(wire)
    return wire[:at] + bytes([wire[at] ^ mask]) + wire[at + 1:]


def cut(wire: bytes, at: int, head: bool) -> bytes:
    at = 1 + at % (len(wire) - 1)
    return wire[:at] if head else wire[at:]


@st.composite
def same_size_run(draw: st.DrawFn) -> bytes:
    """8-20 valid frames of one length (up to 48): the Python deframer's batch path."""
    length = draw(st.integers(0, 48))
    cmd_id = draw(st.integers(0, 255))
    count = draw(st.integers(8, 20))
    body = draw(st.binary(min_size=length * count, max_size=length * count))
    return b"".join(encode_frame(cmd_id, body[i * length:(i + 1) * length])
                    for i in range(count))


mcp_wires = frames.map(Frame.encode)
mcp_pieces = st.one_of(
    mcp_wires,
    mcp_wires,
    mcp_wires,
    same_size_run(),
    st.builds(flip, mcp_wires, st.integers(0, 300), st.integers(1, 255)),
    st.builds(cut, mcp_wires, st.integers(0, 300), st.booleans()),
    # a header with a length above 256, and what follows it
    st.builds(lambda cmd, n, tail: bytes([0x5A, cmd]) + n.to_bytes(2, "little") + tail,
              st.integers(0, 255), st.integers(257, 0xFFFF), st.binary(max_size=8)),
    st.binary(max_size=40).map(lambda b: b.replace(b"\x5a", b"\x00")),  # garbage, no 0x5A
    st.binary(max_size=40),
    st.lists(st.sampled_from([0x5A, 0x5A, 0x00, 0x01, 0xFF]), max_size=12).map(bytes),
)

link_frames = st.builds(LinkFrame, st.integers(0, 255), st.integers(0, 2**32 - 1),
                        st.one_of(st.binary(max_size=24), st.binary(max_size=MS720_LIMIT),
                                  st.binary(min_size=200, max_size=MS720_LIMIT)))
ms720_wires = link_frames.map(LinkFrame.encode)
ms720_pieces = st.one_of(
    ms720_wires,
    ms720_wires,
    ms720_wires,
    ms720_wires,
    st.builds(flip, ms720_wires, st.integers(0, 300), st.integers(1, 255)),
    st.builds(cut, ms720_wires, st.integers(0, 300), st.booleans()),
    # a sync word with a length above 261, and what follows it
    st.builds(lambda n, tail: SYNC + n.to_bytes(2, "little") + tail,
              st.integers(MS720_LIMIT + 1, 0xFFFF), st.binary(max_size=12)),
    st.binary(max_size=40).map(lambda b: b.replace(b"\x55", b"\x00")),  # garbage, no 0x55
    st.binary(max_size=40),
    st.lists(st.sampled_from([0x55, 0xAA, 0x55, 0xAA, 0x00]), max_size=12).map(bytes),
    st.sampled_from([SYNC[:1], SYNC[:2], SYNC[:3], SYNC, SYNC[1:], b"\x55\xaa\x55\x55\xaa"]),
)

chunk_sizes = st.one_of(st.integers(1, 6), st.integers(1, 64), st.integers(1, 600),
                        st.just(1 << 20))  # the rest at once
# mostly small steps (a frame arriving), the timeout's edges, and longer silences
time_steps = st.one_of(st.just(0), st.integers(0, 10), st.integers(0, 250),
                       st.sampled_from([TIMEOUT_MS - 1, TIMEOUT_MS, TIMEOUT_MS + 1]))
# a 32-bit ms clock wraps every 49.7 days: the C core only subtracts
start_times = st.one_of(st.just(0), st.integers(0, 2**32 - 1), st.just(2**32 - 150))


def run_stream(ms720: bool, stream: bytes, data: st.DataObject, start: int) -> Both:
    both = Both(ms720)
    now, pos = start, 0
    while pos < len(stream):
        now += data.draw(time_steps, label="ms")
        if data.draw(st.integers(0, 4), label="expire?") == 0:
            both.expire(now)
            now += data.draw(time_steps, label="ms")
        size = data.draw(chunk_sizes, label="chunk")
        both.feed(stream[pos:pos + size], now)
        pos += size
    both.feed(b"", now)  # an empty read: only the timeout acts
    both.expire(now + data.draw(time_steps, label="ms"))
    both.expire(now + 10 * TIMEOUT_MS)  # the line fell silent: everything is flushed
    assert both.c.buffered == 0
    note("\n".join(both.steps))
    return both


@settings(max_examples=400, deadline=None)
@given(st.lists(mcp_pieces, min_size=3, max_size=16).map(b"".join), start_times, st.data())
def test_mcp_deframers_agree_step_by_step(stream, start, data):
    run_stream(False, stream, data, start)


@settings(max_examples=400, deadline=None)
@given(st.lists(ms720_pieces, min_size=3, max_size=16).map(b"".join), start_times, st.data())
def test_ms720_deframers_agree_step_by_step(stream, start, data):
    run_stream(True, stream, data, start)


# ---------------------------------------------------------------- the regression matrix

GOLDEN_MCP = [
    Frame(0x02, b""),
    Frame(0x10, b"\x01\x00"),
    Frame(0x20, bytes.fromhex("66 08 94 11 e4 0c 10 0e 00 00")),
    Frame(0x21, b"\x02boot ok"),
    Frame(0x90, bytes.fromhex("01 00 d2 04 00 00")),
    Frame(0x30, bytes(range(256))),  # the longest payload
    Frame(0x20, b"\x5a\x5a\x5a"),  # header bytes inside a payload
]
GOLDEN_MS720 = [
    LinkFrame(0x02, 1, b"\x10\x01\x00"),
    LinkFrame(0x03, 1),
    LinkFrame(0x02, 0xFFFFFFFF, b"\x20" + bytes.fromhex("66 08 94 11 e4 0c 10 0e 00 00")),
    LinkFrame(0x01, 7, bytes(range(256)) + b"\x55\xaa\x55\xaa\x00"),  # 261 bytes, a sync inside
    LinkFrame(0x04, 0x55AA55AA),
]
GARBAGE = {False: b"\x00\xff\x13\x37", True: b"\x00\xff\x13\x37"}
#: garbage that looks like the start of a frame: a header or sync word with a length
HEADERY = {False: b"\x5a\x01\x00", True: b"\x55\xaa\x55\xaa\x05\x00\x02"}


def golden(ms720: bool) -> tuple[list, list[bytes]]:
    frames = GOLDEN_MS720 if ms720 else GOLDEN_MCP
    return frames, [f.encode() for f in frames]


def broken(ms720: bool) -> bytes:
    """A frame whose last byte (checksum or CRC) is wrong."""
    wire = bytearray(golden(ms720)[1][2])
    wire[-1] ^= 0xFF
    return bytes(wire)


LAYOUTS = {
    "clean": lambda w, ms720: b"".join(w),
    "garbage before": lambda w, ms720: GARBAGE[ms720] + b"".join(w),
    "garbage after": lambda w, ms720: b"".join(w) + GARBAGE[ms720],
    "garbage between": lambda w, ms720: GARBAGE[ms720].join(w),
    "frame-like garbage before": lambda w, ms720: HEADERY[ms720] + b"".join(w),
    "frame-like garbage between": lambda w, ms720: HEADERY[ms720].join(w),
    "broken frame between": lambda w, ms720: broken(ms720).join(w),
}
SPLITS = {
    "whole": lambda data: [data],
    "halves": lambda data: [data[:len(data) // 2], data[len(data) // 2:]],
    "byte by byte": lambda data: [data[i:i + 1] for i in range(len(data))],
}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ms720", [False, True], ids=["mcp", "ms720"])
def test_golden_frames_in_every_layout_and_split(ms720, layout, split):
    frames, wires = golden(ms720)
    both = Both(ms720)
    for chunk in SPLITS[split](LAYOUTS[layout](wires, ms720)):
        both.feed(chunk, 0)  # one instant: splitting, not timing, is under test here
    both.expire(10 * TIMEOUT_MS)
    assert both.frames == frames
    if layout == "broken frame between" and ms720:
        assert both.bad_seqs == [frames[2].seq] * (len(frames) - 1)


@pytest.mark.parametrize("ms720", [False, True], ids=["mcp", "ms720"])
@pytest.mark.parametrize(("gap", "stale"), [(TIMEOUT_MS - 1, False), (TIMEOUT_MS, True)])
def test_a_partial_frame_goes_stale_at_the_timeout(ms720, gap, stale):
    frames, wires = golden(ms720)
    wire = wires[2]
    both = Both(ms720)
    both.feed(wire[:7], 1000)
    both.expire(1000 + gap)
    both.feed(wire[7:], 1000 + gap)
    assert both.frames == ([] if stale else [frames[2]])
    assert both.c.stats["stale_frames"] == int(stale)


@pytest.mark.parametrize("ms720", [False, True], ids=["mcp", "ms720"])
def test_frames_behind_a_stale_partial_are_recovered(ms720):
    frames, wires = golden(ms720)
    both = Both(ms720)
    longest = max(wires, key=len)
    both.feed(longest[:40] + wires[1], 0)  # a long frame cut short, then a whole one
    assert both.frames == []
    both.expire(TIMEOUT_MS)
    assert both.frames == [frames[1]]
    assert both.c.buffered == 0


@pytest.mark.parametrize("ms720", [False, True], ids=["mcp", "ms720"])
def test_a_fresh_candidate_inside_a_stale_buffer_is_not_dropped_early(ms720):
    frames, wires = golden(ms720)
    false_start = (SYNC + b"\x40\x00\x02" if ms720 else b"\x5a\x20\x40\x00")  # wants 64 bytes
    both = Both(ms720)
    both.feed(false_start, 0)
    both.feed(wires[2][:8], 80)
    both.expire(100)  # the false start goes; the real one is 20 ms old
    both.feed(wires[2][8:], 150)
    assert both.frames == [frames[2]]
    assert both.c.stats["stale_frames"] == 1


@pytest.mark.parametrize("ms720", [False, True], ids=["mcp", "ms720"])
def test_the_clock_wrapping_changes_nothing(ms720):
    frames, wires = golden(ms720)
    both = Both(ms720)
    start = 2**32 - 50  # the C side sees 4294967246, then 49
    both.feed(wires[2][:8], start)
    both.feed(wires[2][8:], start + 99)
    both.feed(wires[1][:3], start + 120)
    both.feed(wires[1][3:], start + 220)  # stale by then
    assert both.frames == [frames[2]]
    assert both.c.stats["stale_frames"] >= 1


@pytest.mark.parametrize("ms720", [False, True], ids=["mcp", "ms720"])
def test_a_length_above_the_limit_drops_one_byte(ms720):
    frames, wires = golden(ms720)
    if ms720:
        stream = SYNC + (MS720_LIMIT + 1).to_bytes(2, "little") + wires[0]
    else:
        stream = bytes.fromhex("5a 20 01 01") + wires[0]  # length 257
    both = Both(ms720)
    both.feed(stream, 0)
    assert both.frames == [frames[0]]
    assert both.c.stats["oversize_lengths"] == 1
