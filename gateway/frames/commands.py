"""The command table (spec section 3) and the Construct declarations of the base payloads.

``decode_payload``/``encode_payload`` turn a base command's payload into a plain dict and
back. STATUS and device-specific commands (0x30-0x6F) belong to device profiles
(``gateway.frames.profiles``); an unknown ``cmd_id`` is data, never an exception.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from construct import (
    Adapter,
    Byte,
    Bytes,
    Check,
    Construct,
    ConstructError,
    Enum,
    GreedyBytes,
    GreedyString,
    Int8ul,
    Int16ul,
    Int32ul,
    Optional,
    PascalString,
    PrefixedArray,
    Struct,
    Terminated,
    this,
)

from gateway.errors import PayloadError

RESPONSE_BIT = 0x80
DEVICE_REQUESTS = range(0x30, 0x70)
DEVICE_RESPONSES = range(0xB0, 0xF0)
MAX_MODEL_LEN = 32


class Command(enum.IntEnum):
    """Base command ids of spec section 3."""

    HELLO = 0x01
    HELLO_ACK = 0x81
    PING = 0x02
    PONG = 0x82
    READ = 0x10
    READ_RESP = 0x90
    WRITE = 0x11
    WRITE_ACK = 0x91
    STATUS = 0x20
    LOG = 0x21
    NACK = 0x7F


class NackCode(enum.IntEnum):
    """NACK codes (also WRITE_ACK status codes other than 0)."""

    UNKNOWN_COMMAND = 1
    BAD_PAYLOAD = 2
    BUSY = 3
    CHECKSUM_ERROR = 4
    NOT_REGISTERED = 5
    DENIED = 6
    INTERNAL_ERROR = 7


class Direction(enum.Enum):
    """Who sends a command: device to gateway, gateway to device, or either."""

    DEVICE_TO_GATEWAY = "D→G"
    GATEWAY_TO_DEVICE = "G→D"
    EITHER = "either"


class LogLevel(enum.IntEnum):
    """LOG levels, 0 debug to 4 error."""

    DEBUG = 0
    INFO = 1
    NOTICE = 2
    WARNING = 3
    ERROR = 4


class _HexBytes(Adapter):
    """Fixed-size bytes shown as a hex string (e.g. a HELLO uid) so dicts are JSON-ready."""

    def _decode(self, obj: bytes, context: Any, path: str) -> str:
        return obj.hex()

    def _encode(self, obj: str | bytes, context: Any, path: str) -> bytes:
        return bytes.fromhex(obj) if isinstance(obj, str) else bytes(obj)


class _Version(Adapter):
    """Three u8 (major, minor, patch) shown as ``"1.2.3"``."""

    def _decode(self, obj: Any, context: Any, path: str) -> str:
        return ".".join(str(part) for part in obj)

    def _encode(self, obj: str, context: Any, path: str) -> list[int]:
        parts = [int(part) for part in str(obj).split(".")]
        if len(parts) != 3:
            raise ValueError(f"firmware version {obj!r} is not major.minor.patch")
        return parts


_ASCII_SHORT = PascalString(Int8ul, "ascii")

HELLO = Struct(
    "proto" / Int8ul,
    "uid" / _HexBytes(Bytes(8)),
    "fw" / _Version(Byte[3]),
    "model" / _ASCII_SHORT,
    Check(lambda ctx: len(ctx.model) <= MAX_MODEL_LEN),
    "caps" / PrefixedArray(Int8ul, _ASCII_SHORT),
    Terminated,
)
HELLO_ACK = Struct("node_id" / Int16ul, "heartbeat_s" / Int16ul, Terminated)
PING = Struct("uptime_s" / Optional(Int32ul), Terminated)
PONG = Struct(Terminated)
READ = Struct("key" / Int16ul, Terminated)
READ_RESP = Struct("key" / Int16ul, "value" / GreedyBytes)
WRITE = Struct("key" / Int16ul, "value" / GreedyBytes)
WRITE_ACK = Struct("key" / Int16ul, "status" / Int8ul, Terminated)
LOG = Struct(
    "level" / Int8ul,
    Check(this.level <= LogLevel.ERROR),
    "text" / GreedyString("utf8"),
)
NACK = Struct("rejected_cmd" / Int8ul, "code" / Enum(Int8ul, NackCode), Terminated)


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One row of the command table."""

    cmd_id: int
    name: str
    direction: Direction
    #: payload declaration; None where a device profile gives the layout (STATUS)
    payload: Construct | None
    #: True for commands that are answered (by ``cmd_id | 0x80`` or a NACK)
    is_request: bool
    #: True for unsolicited telemetry, never answered
    is_event: bool = False

    @property
    def response_id(self) -> int | None:
        """The cmd_id of the answer to this request, None if it is not a request."""
        return self.cmd_id | RESPONSE_BIT if self.is_request else None


_D2G, _G2D, _EITHER = Direction.DEVICE_TO_GATEWAY, Direction.GATEWAY_TO_DEVICE, Direction.EITHER

COMMANDS: dict[int, CommandSpec] = {
    spec.cmd_id: spec
    for spec in (
        CommandSpec(Command.HELLO, "HELLO", _D2G, HELLO, is_request=True),
        CommandSpec(Command.HELLO_ACK, "HELLO_ACK", _G2D, HELLO_ACK, is_request=False),
        CommandSpec(Command.PING, "PING", _EITHER, PING, is_request=True),
        CommandSpec(Command.PONG, "PONG", _EITHER, PONG, is_request=False),
        CommandSpec(Command.READ, "READ", _G2D, READ, is_request=True),
        CommandSpec(Command.READ_RESP, "READ_RESP", _D2G, READ_RESP, is_request=False),
        CommandSpec(Command.WRITE, "WRITE", _G2D, WRITE, is_request=True),
        CommandSpec(Command.WRITE_ACK, "WRITE_ACK", _D2G, WRITE_ACK, is_request=False),
        CommandSpec(Command.STATUS, "STATUS", _D2G, None, is_request=False, is_event=True),
        CommandSpec(Command.LOG, "LOG", _D2G, LOG, is_request=False, is_event=True),
        CommandSpec(Command.NACK, "NACK", _EITHER, NACK, is_request=False),
    )
}


def command_name(cmd_id: int) -> str:
    """The table name of a cmd_id, or ``cmd-0xNN`` for one the table does not know."""
    spec = COMMANDS.get(cmd_id)
    return spec.name if spec else f"cmd-0x{cmd_id:02x}"


def response_id(cmd_id: int) -> int:
    """The cmd_id that answers request ``cmd_id`` (``cmd_id | 0x80``)."""
    return cmd_id | RESPONSE_BIT


def is_response_to(request_id: int, answer_id: int) -> bool:
    """True when a frame with ``answer_id`` answers ``request_id`` (its response or a NACK)."""
    return answer_id in (request_id | RESPONSE_BIT, Command.NACK)


def _plain(value: Any) -> Any:
    """Construct containers to plain dicts/lists; drops Construct's private keys."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, enum.IntEnum):
        return int(value)
    if type(value).__name__ == "EnumIntegerString":
        return int(value)
    return value


def _spec_with_payload(cmd_id: int) -> CommandSpec:
    spec = COMMANDS.get(cmd_id)
    if spec is None or spec.payload is None:
        raise PayloadError(command_name(cmd_id), "no base payload layout; ask the device profile")
    return spec


def decode_payload(cmd_id: int, payload: bytes) -> dict[str, Any]:
    """Decode a base command's payload to a plain dict; ``PayloadError`` says what is wrong."""
    spec = _spec_with_payload(cmd_id)
    try:
        return _plain(spec.payload.parse(payload))
    except (ConstructError, UnicodeDecodeError) as exc:
        shown = payload.hex(" ") or "(empty)"
        raise PayloadError(spec.name, f"bad payload {shown}: {exc}") from exc


def encode_payload(cmd_id: int, fields: dict[str, Any] | None = None) -> bytes:
    """Encode a base command's payload from a dict (the shape ``decode_payload`` returns)."""
    spec = _spec_with_payload(cmd_id)
    try:
        return spec.payload.build(dict(fields or {}))
    except (ConstructError, ValueError, TypeError, UnicodeEncodeError) as exc:
        raise PayloadError(spec.name, f"cannot encode {fields!r}: {exc}") from exc
