"""device-sdk's C deframers and encoders through ctypes, shaped like the Python ones.

The library is ``device-sdk/build/host/libmcp.so`` (``make -C device-sdk
build/host/libmcp.so``: MCP_MAX_PAYLOAD=256, ms720 compiled in), built once per process by
``library()``. Its shim (``device-sdk/tests/shim.c``) records each frame the deframers
emit in a fixed-size record, so no C-to-Python callbacks are needed: ``CDeframer`` reads the
records out of the shim's struct after each call and resets the count.

    CDeframer(ms720=False).feed(data, now_ms) -> [Frame(cmd_id, payload)]
    CDeframer(ms720=True).feed(data, now_ms)  -> [LinkFrame(msg_type, seq, payload)]
                                                 (+ .bad_seqs, as Ms720Deframer's)
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import struct
import subprocess
from pathlib import Path

from gateway.frames import Frame
from gateway.frames.deframer import DeframerStats
from gateway.frames.ms720 import LinkFrame

SDK = Path(__file__).resolve().parent.parent / "device-sdk"
LIB_PATH = SDK / "build" / "host" / "libmcp.so"
#: DeframerStats' fields, in the order shim_stats writes them
STAT_FIELDS = tuple(DeframerStats.__dataclass_fields__)
#: records the shim holds per call (SHIM_FRAMES in shim.c)
SHIM_FRAMES = 4096
#: the C deframers' payload limits in this build
MCP_MAX_PAYLOAD = 256
MS720_MAX_PAYLOAD = MCP_MAX_PAYLOAD + 5

_RECORD_HEAD = struct.Struct("<BBHI")  # kind, bad, len, seq; then payload[261]
_COUNT = struct.Struct("<I")


class BuildUnavailable(RuntimeError):
    """gcc or make is missing: the library cannot be built on this machine."""


class ShimFrame(ctypes.Structure):
    """shim_frame_t, to check the layout this module reads by offsets."""

    _fields_ = (
        ("kind", ctypes.c_uint8),
        ("bad", ctypes.c_uint8),
        ("len", ctypes.c_uint16),
        ("seq", ctypes.c_uint32),
        ("payload", ctypes.c_uint8 * MS720_MAX_PAYLOAD),
    )


def build() -> Path:
    """Run make (cheap when the library is up to date); BuildUnavailable without gcc/make."""
    missing = [tool for tool in ("gcc", "make") if shutil.which(tool) is None]
    if missing:
        raise BuildUnavailable(f"{' and '.join(missing)} needed to build {LIB_PATH.name}")
    result = subprocess.run(["make", "-C", str(SDK), "build/host/libmcp.so"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"make failed:\n{result.stdout}\n{result.stderr}")
    return LIB_PATH


@functools.cache
def load() -> ctypes.CDLL:
    """The library, built on first use; BuildUnavailable without gcc or make."""
    lib = ctypes.CDLL(str(build()))
    size_t, u8, u16, u32, buf = (ctypes.c_size_t, ctypes.c_uint8, ctypes.c_uint16,
                                 ctypes.c_uint32, ctypes.c_char_p)
    for name in ("shim_size", "shim_frame_size", "shim_frames_offset"):
        getattr(lib, name).restype = size_t
        getattr(lib, name).argtypes = ()
    for name in ("shim_max_payload", "shim_ms720_max_payload"):
        getattr(lib, name).restype = ctypes.c_uint
        getattr(lib, name).argtypes = ()
    lib.shim_init.restype = None
    lib.shim_init.argtypes = (ctypes.c_void_p,)
    lib.shim_feed.restype = u32
    lib.shim_feed.argtypes = (ctypes.c_void_p, ctypes.c_int, buf, size_t, u32)
    lib.shim_expire.restype = u32
    lib.shim_expire.argtypes = (ctypes.c_void_p, ctypes.c_int, u32)
    lib.shim_stats.restype = None
    lib.shim_stats.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(u32))
    lib.shim_encode.restype = size_t
    lib.shim_encode.argtypes = (ctypes.c_void_p, u8, buf, size_t)
    lib.shim_ms720_encode.restype = size_t
    lib.shim_ms720_encode.argtypes = (ctypes.c_void_p, u8, u32, buf, size_t)
    lib.shim_crc16.restype = u16
    lib.shim_crc16.argtypes = (buf, size_t)
    # The layout this module reads by hand must be the one the compiler chose.
    if lib.shim_frame_size() != ctypes.sizeof(ShimFrame):
        raise RuntimeError(f"shim_frame_t is {lib.shim_frame_size()} bytes, expected "
                           f"{ctypes.sizeof(ShimFrame)}: shim.c changed")
    if (lib.shim_max_payload(), lib.shim_ms720_max_payload()) != (MCP_MAX_PAYLOAD,
                                                                   MS720_MAX_PAYLOAD):
        raise RuntimeError("libmcp.so was built with other payload limits")
    if lib.shim_size() < lib.shim_frames_offset() + SHIM_FRAMES * lib.shim_frame_size():
        raise RuntimeError("shim_t holds fewer records than SHIM_FRAMES: shim.c changed")
    return lib


def library() -> ctypes.CDLL:
    """``load()`` for a test: skips (fails under CI) when the machine lacks gcc or make."""
    try:
        return load()
    except BuildUnavailable as e:
        from tests.harness import lacking  # noqa: PLC0415 (pytest only where it is needed)

        lacking(str(e))


def _out(size: int) -> ctypes.Array:
    return ctypes.create_string_buffer(max(size, 1))


def c_encode(cmd_id: int, payload: bytes = b"") -> bytes:
    """mcp_encode's bytes (b"" for a payload above 256, where it returns 0)."""
    out = _out(len(payload) + 5)
    n = library().shim_encode(out, cmd_id, bytes(payload), len(payload))
    return out.raw[:n]


def c_ms720_encode(msg_type: int, seq: int, payload: bytes = b"") -> bytes:
    """mcp_ms720_encode's bytes."""
    out = _out(len(payload) + 13)
    n = library().shim_ms720_encode(out, msg_type, seq, bytes(payload), len(payload))
    return out.raw[:n]


def c_crc16(data: bytes) -> int:
    """mcp_crc16 from MCP_CRC16_INIT."""
    return library().shim_crc16(bytes(data), len(data))


class CDeframer:
    """One of the shim's deframers (mcp or ms720), with the Python deframers' interface.

    Times are integer milliseconds (taken modulo 2**32, as the C core's uint32_t clock).
    ``bad_seqs`` (ms720) collects the seqs of frames whose CRC failed, like
    ``Ms720Deframer.bad_seqs`` (the caller empties it).
    """

    def __init__(self, ms720: bool) -> None:
        lib = self._lib = library()
        self.ms720 = int(bool(ms720))
        self._shim = ctypes.create_string_buffer(lib.shim_size())
        self._view = memoryview(self._shim).cast("B")
        self._frames_at = lib.shim_frames_offset()
        self._frame_size = lib.shim_frame_size()
        # `uint32_t count` is the field right before the records (both 4-aligned)
        self._count_at = self._frames_at - 4
        lib.shim_init(self._shim)
        self._stats = (ctypes.c_uint32 * 8)()
        self.bad_seqs: list[int] = []

    def feed(self, data: bytes, now_ms: int) -> list:
        """Feed bytes at ``now_ms``; the frames found, in stream order."""
        data = bytes(data)
        count = self._lib.shim_feed(self._shim, self.ms720, data, len(data),
                                    now_ms & 0xFFFFFFFF)
        return self._take(count)

    def feed_count(self, data: bytes, now_ms: int) -> int:
        """Feed, and only count the records (frames and bad seqs) made: for the bench."""
        count = self._lib.shim_feed(self._shim, self.ms720, data, len(data),
                                    now_ms & 0xFFFFFFFF)
        if count > SHIM_FRAMES:
            raise OverflowError(f"{count} records in one call; the shim keeps {SHIM_FRAMES}")
        _COUNT.pack_into(self._view, self._count_at, 0)
        return count

    def expire(self, now_ms: int) -> list:
        """Drop a stale incomplete frame at ``now_ms``; the frames found behind it."""
        return self._take(self._lib.shim_expire(self._shim, self.ms720, now_ms & 0xFFFFFFFF))

    def _take(self, count: int) -> list:
        view = self._view
        if _COUNT.unpack_from(view, self._count_at)[0] != count:
            raise RuntimeError("the shim's count is not where this module reads it")
        if count > SHIM_FRAMES:
            raise OverflowError(f"{count} records in one call; the shim keeps {SHIM_FRAMES}")
        frames: list = []
        for i in range(count):
            at = self._frames_at + i * self._frame_size
            kind, bad, length, seq = _RECORD_HEAD.unpack_from(view, at)
            payload = bytes(view[at + 8 : at + 8 + length])
            if bad:
                self.bad_seqs.append(seq)
            elif self.ms720:
                frames.append(LinkFrame(kind, seq, payload))
            else:
                frames.append(Frame(kind, payload))
        _COUNT.pack_into(view, self._count_at, 0)
        return frames

    def _read_stats(self) -> list[int]:
        self._lib.shim_stats(self._shim, self.ms720, self._stats)
        return list(self._stats)

    @property
    def stats(self) -> dict[str, int]:
        """The counters, named as DeframerStats' fields."""
        return dict(zip(STAT_FIELDS, self._read_stats()[:7], strict=True))

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return self._read_stats()[7]
