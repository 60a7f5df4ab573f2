"""Turns a byte stream into `mcp` frames, resynchronising exactly as spec section 1 says.

Sans-IO: ``Deframer.feed(bytes) -> list[Frame]``; the caller owns the port and the clock.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat

from gateway.frames.checksums import XOR_OF_PAIR
from gateway.frames.wire import HEADER, HEADER_BYTES, MAX_PAYLOAD, OVERHEAD, Frame

#: Spec default: an incomplete frame older than this is dropped (one byte at a time).
DEFAULT_INTER_FRAME_TIMEOUT = 0.100

_HEAD = struct.Struct("<BBH")
_new_frame = tuple.__new__  # Frame(...) without NamedTuple's Python-level __new__: ~2x faster

#: Runs of same-size frames with payloads up to this size are checked in one batch.
_RUN_MAX_PAYLOAD = 48
#: A batch pays off from about this many frames on.
_RUN_MIN_FRAMES = 8
#: After a batch that found a short run, this many frames go one by one before the next try.
_RUN_BACKOFF_FRAMES = 64
_RUN_HEADERS = HEADER_BYTES * _RUN_MIN_FRAMES


def _window_xor(value: int, width: int) -> int:
    """Byte i of the result is the XOR of bytes i .. i+width-1 of ``value`` (little-endian).

    Doubling: ``acc`` holds windows of 1, 2, 4... bytes; the set bits of ``width`` pick
    which of them, shifted into place, make up the window.
    """
    result = 0
    offset = 0
    acc = value
    span = 1
    while True:
        if width & span:
            result ^= acc >> (8 * offset)
            offset += span
        if span << 1 > width:
            return result
        acc ^= acc >> (8 * span)
        span <<= 1


@dataclass(slots=True)
class DeframerStats:
    """Counters of one deframer. ``bytes_in == framed_bytes + discarded_bytes + buffered``."""

    bytes_in: int = 0
    frames: int = 0
    framed_bytes: int = 0
    discarded_bytes: int = 0
    checksum_errors: int = 0
    oversize_lengths: int = 0
    #: incomplete frames dropped because they were older than the inter-frame timeout
    stale_frames: int = 0


class Deframer:
    """Incremental `mcp` deframer with a bounded buffer.

    Rules (spec section 1): skip to a ``0x5A``; a length above 256 drops that one byte; a
    complete frame whose XOR does not match drops that one byte (the real frame may start
    inside the rejected bytes); a good frame is emitted and scanning continues after it.
    Every discarded byte is counted.

    Guarantee: a valid frame preceded by garbage is never lost, with one exception the
    8-bit XOR cannot rule out: a *false frame* that starts at a ``0x5A`` inside the garbage,
    has a plausible length and happens to pass the XOR (about 1 in 256 such candidates)
    is emitted, and if it overlaps the real frame the real frame is swallowed. Garbage
    without ``0x5A`` bytes can never cause a loss. Links that need better use ``ms720``.

    Only one incomplete frame is ever kept between calls, so the buffer holds at most
    ``MAX_FRAME - 1`` (260) bytes. That incomplete frame is dropped, one byte at a time,
    once it is older than ``timeout`` seconds (measured from the call that first saw it
    incomplete): on the next ``feed`` or when the caller's timer calls ``expire``
    (``deadline`` says when). A frame whose first byte was already in the buffer when it
    went stale is judged by the time of the last ``feed``, so it is never dropped early.

    ``expire_on_feed=False`` leaves expiry to ``expire`` alone: for a reader with a timer
    of its own, where a late ``feed`` means the reader was busy, not that the line was
    silent (the rest of the frame waited in the OS's buffer).
    """

    __slots__ = ("_buf", "_clock", "_expire_on_feed", "_last_rx", "_since", "stats", "timeout")

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_INTER_FRAME_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        expire_on_feed: bool = True,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"inter-frame timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.stats = DeframerStats()
        self._clock = clock
        self._buf = b""
        self._since = 0.0
        self._last_rx = 0.0
        self._expire_on_feed = expire_on_feed

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def restart_clock(self) -> None:
        """Count a held incomplete frame's age from now.

        For a reader that stopped reading on purpose (backpressure): meanwhile the rest of
        the frame waited in the OS's buffer, not on a silent line, so the pause must not
        make it stale.
        """
        now = self._clock()
        self._since = self._last_rx = now

    @property
    def deadline(self) -> float | None:
        """Clock time at which the held incomplete frame goes stale, or None if none is held."""
        return self._since + self.timeout if self._buf else None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return the complete frames found, in stream order."""
        now = self._clock()
        frames = self._expire(now) if self._buf and self._expire_on_feed else []
        if not data:
            return frames
        self.stats.bytes_in += len(data)
        old = self._buf
        buf = old + data if old else bytes(data)
        frames += self._scan(buf, 0)
        # A frame still incomplete at the same start keeps its age; a new one starts now.
        if self._buf and (not old or len(buf) - len(self._buf) != 0):
            self._since = now
        self._last_rx = now
        return frames

    @staticmethod
    def _scan_run(buf: bytes, pos: int, end: int, length: int, frames: list[Frame]) -> int:
        """Emit the valid frames of ``length`` that follow each other from ``pos``, in one batch.

        Byte-for-byte the same result as the one-by-one loop, which would emit each of these
        frames in turn: every one starts with 0x5A, has the same length field and a matching
        XOR. Checks run over the whole run with C-level slicing and integer ops, so a port
        streaming same-size STATUS frames costs a few hundred ns per frame. Returns the
        bytes consumed (0 when the first frame is not valid: the caller handles it).
        """
        size = length + OVERHEAD
        probe = _RUN_MIN_FRAMES * size
        # Cheap look at the first few frames first: mixed traffic gives up here.
        if buf[pos : pos + probe : size] != _RUN_HEADERS or buf[pos + 2 : pos + probe : size] \
                != buf[pos + 2 : pos + 3] * _RUN_MIN_FRAMES:  # fmt: skip
            return 0
        count = (end - pos) // size
        region = buf[pos : pos + count * size]
        # How many frames in a row repeat the header and the length bytes.
        count -= len(region[0::size].lstrip(HEADER_BYTES))
        low = region[2::size]
        count = min(count, len(low) - len(low.lstrip(low[:1])))
        high = region[3::size]
        count = min(count, len(high) - len(high.lstrip(high[:1])))
        if count <= 0:
            return 0
        run = count * size
        # XOR over each frame's body and checksum (its size - 1 bytes after the header) is 0.
        body_xor = _window_xor(int.from_bytes(region[1:run], "little"), size - 1)
        sums = body_xor.to_bytes(run, "little")[0::size][:count]
        count -= len(sums.lstrip(b"\0"))
        if count <= 0:
            return 0
        run = count * size
        frames.extend(
            map(
                _new_frame,
                repeat(Frame),
                zip(region[1:run:size], [region[at : at + length] for at in range(4, run, size)],
                    repeat(None, count), strict=True),
            )
        )
        return run

    def expire(self, now: float | None = None) -> list[Frame]:
        """Drop a held incomplete frame if it is stale at ``now`` (default: the clock's
        time); return frames found behind it."""
        if not self._buf:
            return []
        return self._expire(self._clock() if now is None else now)

    def _expire(self, now: float) -> list[Frame]:
        frames: list[Frame] = []
        while self._buf and now - self._since >= self.timeout:
            self.stats.stale_frames += 1
            self.stats.discarded_bytes += 1
            frames += self._scan(self._buf, 1)
            # Whatever start is left came in at the latest feed: judge it by that time.
            self._since = self._last_rx
        return frames

    def _scan(self, buf: bytes, pos: int) -> list[Frame]:
        """The hot loop: emit frames from ``buf[pos:]``, keep an incomplete tail in ``_buf``.

        Written as one flat loop with locals on purpose: it runs once per frame at >1M/s.
        """
        end = len(buf)
        frames: list[Frame] = []
        append = frames.append
        find = buf.find
        unpack = _HEAD.unpack_from
        from_bytes = int.from_bytes
        pairs = XOR_OF_PAIR
        new = _new_frame
        discarded = checksum_errors = oversize = framed = 0
        run_from = pos  # no batch before this position (backoff after a short run)
        while pos < end:
            if buf[pos] != HEADER:
                start = find(HEADER_BYTES, pos)
                if start < 0:
                    discarded += end - pos
                    pos = end
                    break
                discarded += start - pos
                pos = start
            if end - pos < 4:
                break
            _, cmd_id, length = unpack(buf, pos)
            if length > MAX_PAYLOAD:
                oversize += 1
                discarded += 1
                pos += 1
                continue
            stop = pos + OVERHEAD + length
            if stop > end:
                break
            if (length <= _RUN_MAX_PAYLOAD and pos >= run_from
                    and end - pos >= _RUN_MIN_FRAMES * (length + OVERHEAD)):  # fmt: skip
                consumed = self._scan_run(buf, pos, end, length, frames)
                framed += consumed
                pos += consumed
                if consumed < _RUN_MIN_FRAMES * (length + OVERHEAD):
                    run_from = pos + _RUN_BACKOFF_FRAMES * (length + OVERHEAD)
                if consumed:
                    continue
            payload = buf[pos + 4 : stop - 1]
            # XOR of the payload: fold the bytes as one integer down to 16 bits, then a table.
            fold = from_bytes(payload, "little")
            if length > 16:
                fold ^= fold >> 1024
                fold ^= fold >> 512
                fold ^= fold >> 256
                fold ^= fold >> 128
            fold ^= fold >> 64
            fold ^= fold >> 32
            if (pairs[(fold ^ (fold >> 16)) & 0xFFFF] ^ cmd_id ^ length ^ (length >> 8)
                    ^ buf[stop - 1]) & 0xFF:  # fmt: skip
                checksum_errors += 1
                discarded += 1
                pos += 1
                continue
            append(new(Frame, (cmd_id, payload, None)))
            framed += stop - pos
            pos = stop
        self._buf = buf[pos:] if pos < end else b""
        stats = self.stats
        stats.frames += len(frames)
        stats.framed_bytes += framed
        stats.discarded_bytes += discarded
        stats.checksum_errors += checksum_errors
        stats.oversize_lengths += oversize
        return frames
