"""Requests built from an action and its arguments: the frame to send, the response that
answers it, how to read that response, and what the answer will say (key name, unit).

This is the device profile's knowledge (its keys, value types and commands) and stays
sans-IO: ``DeviceProfile.request_for`` checks the arguments once, the session queues the
frame and hands the matched response to ``PreparedRequest.answer``; nothing downstream
resolves a key or decodes a value again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError, InvalidRequest, ValueEncodingError
from gateway.frames.commands import COMMANDS, RESPONSE_BIT, Command, Direction, command_name
from gateway.frames.wire import MAX_PAYLOAD, Frame

if TYPE_CHECKING:  # profiles.py imports this module: only the names, for the hints
    from gateway.frames.profiles import CommandDef, DeviceProfile, KeySpec

#: the actions every profile has; a profile's own commands come after them
BUILTIN_ACTIONS = ("read", "write", "raw", "ping")


@dataclass(frozen=True, slots=True)
class Answer:
    """What a response to a request says."""

    #: the decoded value: a key's real value, a command's fields, ``{}`` for a ping; for a
    #: response that does not decode, its raw bytes and what was wrong (data is never dropped)
    value: Any = None
    #: a WRITE_ACK with a non-zero status: the device refused, with this NACK code
    refused: int | None = None
    #: why the response did not decode (None when it did)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request checked against a profile: the frame to send, what answers it, how to read
    the answer and what the answer will say."""

    action: str
    frame: Frame
    #: the cmd_id of the response that answers it (``frame.cmd_id | 0x80``); a NACK of
    #: ``frame.cmd_id`` answers it too
    response_id: int
    #: reads the response that answered it (``answer`` adds what a decode error leaves)
    reader: Callable[[Frame], Answer] = field(repr=False, compare=False)
    #: the profile key of a read or write, by name (None for other actions)
    key: str | None = None
    #: that key's unit, if the profile gives one
    unit: str | None = None

    def answer(self, response: Frame) -> Answer:
        """Read the response that answered this request (the transactions matched it)."""
        try:
            return self.reader(response)
        except GatewayError as exc:
            return Answer({"raw_hex": response.payload.hex(), "error": str(exc)},
                          error=str(exc))


def request_for(profile: DeviceProfile, action: str, args: Mapping[str, Any]) -> PreparedRequest:
    """Check ``action`` and ``args`` against ``profile`` and build the request.

    Raises ``InvalidRequest`` (nothing else) for an unknown action, key or command, or a
    value that cannot be encoded.
    """
    if action in ("read", "write"):
        return _key_request(profile, action, args)
    if action == "ping":
        return PreparedRequest(action, Frame(Command.PING), Command.PONG, _empty_answer)
    if action == "raw":
        return _raw_request(args)
    try:
        spec = profile.command(action)
    except KeyError:
        known = [*BUILTIN_ACTIONS, *(c.name for c in profile.commands.values())]
        raise InvalidRequest(
            f"unknown action {action!r}; known actions: {', '.join(known)}") from None
    try:
        payload = spec.request.encode(dict(args), what=action)
    except GatewayError as exc:
        raise InvalidRequest(str(exc)) from None
    _check_size(action, payload)
    return PreparedRequest(action, Frame(spec.cmd_id, payload), spec.cmd_id | RESPONSE_BIT,
                           lambda frame: _command_answer(spec, frame))


def _key_request(profile: DeviceProfile, action: str, args: Mapping[str, Any]) -> PreparedRequest:
    """A read or a write: both answer the key's value (a write's, as the device holds it)."""
    if "key" not in args:
        raise InvalidRequest(f"{action} needs a key")
    try:
        key = profile.key(args["key"])
    except KeyError as exc:
        raise InvalidRequest(exc.args[0]) from None
    head = key.id.to_bytes(2, "little")
    unit = key.field.unit
    if action == "read":
        return PreparedRequest(action, Frame(Command.READ, head), Command.READ_RESP,
                               lambda frame: Answer(_key_value(key, frame)), key.name, unit)
    if "value" not in args:
        raise InvalidRequest(f"write of {key.name} needs a value")
    try:
        value = key.encode(args["value"])
    except (ValueEncodingError, GatewayError) as exc:
        raise InvalidRequest(str(exc)) from None
    _check_size(f"write of {key.name}", head + value)
    written = key.decode(value)  # what a read would answer now (scaled, rounded)
    return PreparedRequest(action, Frame(Command.WRITE, head + value), Command.WRITE_ACK,
                           lambda frame: _write_answer(frame, written), key.name, unit)


def _raw_request(args: Mapping[str, Any]) -> PreparedRequest:
    cmd_id = args.get("cmd_id")
    if isinstance(cmd_id, bool) or not isinstance(cmd_id, int) or not 0 <= cmd_id < 0x7F \
            or cmd_id & RESPONSE_BIT:  # fmt: skip
        raise InvalidRequest(f"raw cmd_id {cmd_id!r} is not a request command (0..126)")
    spec = COMMANDS.get(cmd_id)
    if spec is not None and spec.direction is Direction.DEVICE_TO_GATEWAY:
        raise InvalidRequest(f"raw cmd_id {cmd_id} ({command_name(cmd_id)}) is not a request "
                             "a gateway sends")
    try:
        data = bytes.fromhex(str(args.get("data_hex", "")))
    except ValueError:
        raise InvalidRequest(f"data_hex {args.get('data_hex')!r} is not hex") from None
    if len(data) > MAX_PAYLOAD:
        raise InvalidRequest(f"data_hex is {len(data)} bytes; a payload holds at most "
                             f"{MAX_PAYLOAD}")
    return PreparedRequest("raw", Frame(cmd_id, data), cmd_id | RESPONSE_BIT, _raw_answer)


def _check_size(what: str, payload: bytes) -> None:
    """A payload longer than a frame holds (a utf8 or bytes value without ``max_len``)
    would fail when written, after it was queued: refuse it here, as ``raw`` does."""
    if len(payload) > MAX_PAYLOAD:
        raise InvalidRequest(f"{what} is {len(payload)} bytes; a payload holds at most "
                             f"{MAX_PAYLOAD}")


def _key_value(key: KeySpec, frame: Frame) -> Any:
    """A READ_RESP's value (after its u16 key, which the transactions matched)."""
    return key.decode(frame.payload[2:])


def _write_answer(frame: Frame, written: Any) -> Answer:
    """A WRITE_ACK: ``key`` u16, ``status`` u8 (0 = ok, otherwise a NACK code)."""
    code = frame.payload[2] if frame.cmd_id == Command.WRITE_ACK and len(frame.payload) > 2 \
        else 0
    return Answer(refused=code) if code else Answer(written)


def _command_answer(spec: CommandDef, frame: Frame) -> Answer:
    return Answer(spec.response.decode(frame.payload, what=spec.name))


def _raw_answer(frame: Frame) -> Answer:
    return Answer({"cmd_id": frame.cmd_id, "data_hex": frame.payload.hex()})


def _empty_answer(frame: Frame) -> Answer:
    return Answer({})
