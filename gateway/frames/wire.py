"""The `mcp` frame on the wire: its Construct declaration and a fast codec proven equal to it.

``MCP_FRAME`` is the single source of truth for the layout (spec section 1). Construct parses
about 100k frames/s and its compiler is not meant for untrusted input, so ``decode_frame`` and
the deframer use ``struct`` and integer folding instead; ``tests/test_wire.py`` proves with
hypothesis that they accept and reject exactly what ``MCP_FRAME`` does.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from construct import (
    Bytes,
    Check,
    Checksum,
    Const,
    Int8ul,
    Int16ul,
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
from gateway.frames.checksums import xor8

HEADER = 0x5A
HEADER_BYTES = b"\x5a"
MAX_PAYLOAD = 256
#: header + cmd_id + payload_len + checksum
OVERHEAD = 5
MAX_FRAME = OVERHEAD + MAX_PAYLOAD

MCP_FRAME = Struct(
    "header" / Const(HEADER_BYTES),
    "body"
    / RawCopy(
        Struct(
            "cmd_id" / Int8ul,
            "payload_len" / Rebuild(Int16ul, len_(this.payload)),
            Check(this.payload_len <= MAX_PAYLOAD),
            "payload" / Bytes(this.payload_len),
        )
    ),
    "checksum" / Checksum(Int8ul, xor8, this.body.data),
)

_HEAD = struct.Struct("<BBH")
_BODY_HEAD = struct.Struct("<BH")


class Frame(NamedTuple):
    """One frame: a command id and its raw payload. Immutable and cheap to create.

    ``request_seq`` is set on the `ms720` profile only (spec section 4): for a request
    received, its own link seq; for a response, the seq of the request it answers (the link
    layer reads it from, or writes it into, the response's payload). None on `mcp`.
    """

    cmd_id: int
    payload: bytes = b""
    request_seq: int | None = None

    def encode(self) -> bytes:
        """The frame's bytes on the wire."""
        return encode_frame(self.cmd_id, self.payload)

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        """Parse exactly one frame; raises a ``FrameError`` subclass saying what is wrong."""
        return decode_frame(data)

    def __repr__(self) -> str:
        seq = "" if self.request_seq is None else f", request_seq={self.request_seq}"
        return f"Frame(cmd_id=0x{self.cmd_id:02x}, payload={self.payload.hex(' ') or '-'}{seq})"


def encode_frame(cmd_id: int, payload: bytes = b"") -> bytes:
    """Build the wire bytes of a frame; ``ValueError`` for a bad cmd_id or oversize payload."""
    if not 0 <= cmd_id <= 0xFF:
        raise ValueError(f"cmd_id {cmd_id} is not a byte (0..255)")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the maximum of {MAX_PAYLOAD}")
    body = _BODY_HEAD.pack(cmd_id, len(payload)) + payload
    return HEADER_BYTES + body + bytes((xor8(body),))


def decode_frame(data: bytes) -> Frame:
    """Parse ``data`` as exactly one frame, checking everything ``MCP_FRAME`` checks."""
    size = len(data)
    if size < 1:
        raise TruncatedFrame(1, size)
    if data[0] != HEADER:
        raise BadHeader(HEADER_BYTES, bytes(data[:1]))
    if size < 4:
        raise TruncatedFrame(4, size)
    _, cmd_id, length = _HEAD.unpack_from(data)
    if length > MAX_PAYLOAD:
        raise OversizeLength(length, MAX_PAYLOAD)
    end = OVERHEAD + length
    if size < end:
        raise TruncatedFrame(end, size)
    computed = xor8(data[1 : end - 1])
    if computed != data[end - 1]:
        raise ChecksumMismatch(computed, data[end - 1])
    if size > end:
        raise TrailingBytes(size - end)
    return Frame(cmd_id, bytes(data[4 : end - 1]))
