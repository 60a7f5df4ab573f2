"""The `ms720` frame profile (spec section 4): sync word, length, message type, sequence
number, payload, CRC-16/CCITT-FALSE; its Construct declaration, a fast codec proven equal to
it, and a sans-IO deframer.

``MS720_FRAME`` is the source of truth; ``encode_link``/``decode_link`` and ``Ms720Deframer``
use ``struct`` and crcmod's C CRC (``tests/test_ms720.py`` proves them equal on arbitrary
bytes). Control and data frames carry an `mcp` command: ``cmd_id`` then its payload.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from enum import IntEnum
from typing import NamedTuple

import crcmod.predefined
from construct import (
    Bytes,
    Check,
    Checksum,
    Const,
    Int8ul,
    Int16ul,
    Int32ul,
    RawCopy,
    Rebuild,
    Struct,
    len_,
    this,
)

from gateway.errors import (
    BadHeader,
    ChecksumMismatch,
    OversizeLength,
    TrailingBytes,
    TruncatedFrame,
)
from gateway.frames.commands import Command
from gateway.frames.deframer import DEFAULT_INTER_FRAME_TIMEOUT, Deframer
from gateway.frames.wire import Frame

SYNC = b"\x55\xaa\x55\xaa"
#: spec default maximum payload
MAX_PAYLOAD = 4096
HEADER_SIZE = 11  # sync 4, length 2, msg_type 1, seq 4
OVERHEAD = HEADER_SIZE + 2
SEQ_MODULUS = 1 << 32

#: CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, xorout 0 (crcmod's C code)
crc16: Callable[[bytes], int] = crcmod.predefined.mkCrcFun("crc-ccitt-false")


class MsgType(IntEnum):
    """The ``msg_type`` byte."""

    CONTROL = 0x01
    DATA = 0x02
    ACK = 0x03
    NACK = 0x04


MS720_FRAME = Struct(
    "sync" / Const(SYNC),
    "body"
    / RawCopy(
        Struct(
            "length" / Rebuild(Int16ul, len_(this.payload)),
            Check(this.length <= MAX_PAYLOAD),
            "msg_type" / Int8ul,
            "seq" / Int32ul,
            "payload" / Bytes(this.length),
        )
    ),
    "crc" / Checksum(Int16ul, crc16, this.body.data),
)

_HEAD = struct.Struct("<4sHBI")
_BODY_HEAD = struct.Struct("<HBI")
_CRC = struct.Struct("<H")


class LinkFrame(NamedTuple):
    """One `ms720` frame: message type, sequence number, payload (cmd_id + command payload
    for control and data frames; empty for ACK and NACK)."""

    msg_type: int
    seq: int
    payload: bytes = b""

    def encode(self) -> bytes:
        """The frame's bytes on the wire."""
        return encode_link(self.msg_type, self.seq, self.payload)

    @property
    def frame(self) -> Frame:
        """The command a control or data frame carries, with its ``request_seq``: a
        request's own seq, or the seq a response answers (taken out of its payload)."""
        payload = self.payload
        if not payload:
            return Frame(0)
        cmd_id = payload[0]
        if carries_request_seq(cmd_id):
            if len(payload) < 5:  # no request seq: the layer above counts it as unmatched
                return Frame(cmd_id, payload[1:])
            return Frame(cmd_id, payload[5:], int.from_bytes(payload[1:5], "little"))
        return Frame(cmd_id, payload[1:], self.seq)

    def __repr__(self) -> str:
        kind = MsgType(self.msg_type).name if self.msg_type in MsgType._value2member_map_ \
            else f"0x{self.msg_type:02x}"  # fmt: skip
        return f"LinkFrame({kind}, seq={self.seq}, payload={self.payload.hex(' ') or '-'})"


def carries_request_seq(cmd_id: int) -> bool:
    """Responses (cmd | 0x80) and NACK carry the request's seq after their cmd_id."""
    return cmd_id & 0x80 != 0 or cmd_id == Command.NACK


def carrying(frame: Frame, seq: int, msg_type: int = MsgType.DATA) -> LinkFrame:
    """The `ms720` frame that carries a command; a response is tagged with its
    ``request_seq`` (0 if it has none)."""
    payload = frame.payload
    if carries_request_seq(frame.cmd_id):
        payload = (frame.request_seq or 0).to_bytes(4, "little") + payload
    return LinkFrame(msg_type, seq, bytes((frame.cmd_id,)) + payload)


def encode_bare(msg_type: int, seqs: list[int]) -> bytes:
    """ACK or NACK frames (no payload) for ``seqs``, back to back: what a read answers."""
    pack, crc = _BODY_HEAD.pack, crc16
    bodies = [pack(0, msg_type, seq) for seq in seqs]
    return b"".join([SYNC + body + _CRC.pack(crc(body)) for body in bodies])


def encode_link(msg_type: int, seq: int, payload: bytes = b"",
                max_payload: int = MAX_PAYLOAD) -> bytes:
    """The wire bytes; ``ValueError`` for a bad type, seq or an oversize payload."""
    if not 0 <= msg_type <= 0xFF:
        raise ValueError(f"msg_type {msg_type} is not a byte (0..255)")
    if not 0 <= seq < SEQ_MODULUS:
        raise ValueError(f"seq {seq} is not a u32")
    if len(payload) > max_payload:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the maximum of "
                         f"{max_payload}")
    body = _BODY_HEAD.pack(len(payload), msg_type, seq) + payload
    return SYNC + body + _CRC.pack(crc16(body))


def decode_link(data: bytes, max_payload: int = MAX_PAYLOAD) -> LinkFrame:
    """Parse ``data`` as exactly one frame, checking everything ``MS720_FRAME`` checks."""
    size = len(data)
    if size < 4:
        raise TruncatedFrame(4, size) if SYNC.startswith(bytes(data)) else \
            BadHeader(SYNC, bytes(data[:4]))  # fmt: skip
    if data[:4] != SYNC:
        raise BadHeader(SYNC, bytes(data[:4]))
    if size < 6:
        raise TruncatedFrame(6, size)
    length = data[4] | data[5] << 8
    if length > max_payload:
        raise OversizeLength(length, max_payload)
    end = OVERHEAD + length
    if size < end:
        raise TruncatedFrame(max(end, HEADER_SIZE), size)
    computed = crc16(bytes(data[4:end - 2]))
    stated = data[end - 2] | data[end - 1] << 8
    if computed != stated:
        raise ChecksumMismatch(computed, stated)
    if size > end:
        raise TrailingBytes(size - end)
    _, _, msg_type, seq = _HEAD.unpack_from(data)
    return LinkFrame(msg_type, seq, bytes(data[HEADER_SIZE:end - 2]))


class Ms720Deframer(Deframer):
    """Byte stream -> ``LinkFrame`` list, resynchronising on the sync word.

    Like the `mcp` deframer (whose buffering, counters and inter-frame timeout it shares):
    bytes before a sync word are discarded; a length above ``max_payload`` or a CRC
    mismatch drops the sync word's first byte and searches again (so a real frame hidden
    behind a false sync is still found). ``bad_seqs`` lists the seqs of frames whose header
    was readable but whose CRC failed (the link answers those with NACK); the caller
    empties it.
    """

    __slots__ = ("bad_seqs", "max_payload")

    def __init__(self, *, timeout: float = DEFAULT_INTER_FRAME_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic,
                 max_payload: int = MAX_PAYLOAD, expire_on_feed: bool = True) -> None:
        super().__init__(timeout=timeout, clock=clock, expire_on_feed=expire_on_feed)
        self.max_payload = max_payload
        self.bad_seqs: list[int] = []

    def _scan(self, buf: bytes, pos: int) -> list[LinkFrame]:  # type: ignore[override]
        stats = self.stats
        frames: list[LinkFrame] = []
        end = len(buf)
        find = buf.find
        limit = self.max_payload
        while True:
            start = find(SYNC, pos)
            if start < 0:
                # Keep a tail that could be the start of a sync word.
                keep = next((k for k in (3, 2, 1) if end - pos >= k
                             and SYNC.startswith(buf[end - k:])), 0)
                stats.discarded_bytes += end - pos - keep
                self._buf = buf[end - keep:] if keep else b""
                return frames
            stats.discarded_bytes += start - pos
            if end - start < 6:
                self._buf = buf[start:]
                return frames
            length = buf[start + 4] | buf[start + 5] << 8
            if length > limit:
                stats.oversize_lengths += 1
                stats.discarded_bytes += 1
                pos = start + 1
                continue
            stop = start + OVERHEAD + length
            if stop > end:
                self._buf = buf[start:]
                return frames
            body = buf[start + 4:stop - 2]
            if crc16(body) != (buf[stop - 2] | buf[stop - 1] << 8):
                stats.checksum_errors += 1
                stats.discarded_bytes += 1
                self.bad_seqs.append(int.from_bytes(buf[start + 7:start + 11], "little"))
                pos = start + 1
                continue
            msg_type = buf[start + 6]
            seq = int.from_bytes(buf[start + 7:start + 11], "little")
            frames.append(LinkFrame(msg_type, seq, buf[start + HEADER_SIZE:stop - 2]))
            stats.frames += 1
            stats.framed_bytes += stop - start
            pos = stop
