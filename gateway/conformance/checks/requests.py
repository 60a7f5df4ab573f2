"""Requests (spec sections 2 and 3): READ and WRITE of the profile's keys, the NACK codes
of what the device cannot do, its device-specific commands, and on mcp one answer per
request.

Values are the profile's own (its key codec decodes and bounds them); every value a check
writes is written back to what it read before, also when the check fails.
"""

from __future__ import annotations

from typing import Any

from gateway.conformance.checks import Failed, Skipped, check
from gateway.conformance.probe import Record
from gateway.conformance.rules import REQUEST_TIMEOUT_S
from gateway.conformance.runner import EVIDENCE_LINES, Context
from gateway.errors import GatewayError
from gateway.frames import COMMANDS, Command, KeySpec, NackCode, encode_payload
from gateway.frames.commands import DEVICE_REQUESTS, RESPONSE_BIT, command_name
from gateway.frames.profiles import FieldSpec

#: keys (commands) a check tries at most, so its budget bounds it: READ and WRITE are a
#: frame or two each, so a conformant device answers all of them in a fraction of it
_MOST = 16
#: the key REQ-4 asks for when the profile has it: the highest not in the profile
_HIGHEST_KEY = 0xFFFF
#: the first base cmd_id the kit tries as an undefined command (0x03..0x0F are unused)
_FIRST_UNDEFINED = 0x03


def _named(key: KeySpec) -> str:
    return f"{key.name} (0x{key.id:04x})"


def _described(record: Record) -> str:
    frame = record.frame
    if frame is not None and frame.cmd_id == Command.NACK and len(frame.payload) == 2:
        code = frame.payload[1]
        try:
            name = NackCode(code).name.lower().replace("_", " ")
        except ValueError:
            name = "not a NACK code"
        return f"NACK code {code} ({name})"
    return record.text


def _nack_code(record: Record, cmd_id: int) -> int | None:
    """The code of a NACK of ``cmd_id``; None if ``record`` is none."""
    frame = record.frame
    if frame is None or frame.cmd_id != Command.NACK or len(frame.payload) != 2 \
            or frame.payload[0] != cmd_id:  # fmt: skip
        return None
    return frame.payload[1]


async def _ask(ctx: Context, cmd_id: int, payload: bytes, what: str, who: str,
               ) -> tuple[Record, list[Record]]:
    """Send a request; its answer and the records to show. ``Failed`` if none came."""
    reply = await ctx.probe.request(cmd_id, payload, within=REQUEST_TIMEOUT_S, who=who)
    if reply.answer is None:
        raise Failed(f"no answer to {what} within {REQUEST_TIMEOUT_S:g} s", reply.records)
    return reply.answer, reply.records


async def _read(ctx: Context, key: KeySpec, who: str) -> tuple[Any, list[Record]]:
    """READ ``key``: its value, decoded and within bounds; ``Failed`` saying what is not."""
    what = f"READ of {_named(key)}"
    answer, shown = await _ask(ctx, Command.READ, encode_payload(Command.READ, {"key": key.id}),
                               what, who)
    frame = answer.frame
    assert frame is not None
    if frame.cmd_id != Command.READ_RESP:
        raise Failed(f"{what} was answered by {_described(answer)}, not READ_RESP", shown)
    if len(frame.payload) < 2:
        raise Failed(f"the READ_RESP to {what} has {len(frame.payload)} payload bytes; it "
                     "starts with the u16 key", shown)
    got = int.from_bytes(frame.payload[:2], "little")
    if got != key.id:
        raise Failed(f"{what} was answered by a READ_RESP of key 0x{got:04x}, not "
                     f"0x{key.id:04x}", shown)
    raw = frame.payload[2:]
    try:
        value = key.decode(raw)
    except GatewayError as exc:
        raise Failed(f"the value in the READ_RESP to {what} ({raw.hex(' ') or 'empty'}) is "
                     f"no {key.field.type}: {exc}", shown) from None
    try:
        key.encode(value)  # the key's bounds: min, max, max_len
    except GatewayError as exc:
        raise Failed(f"the value {value!r} the READ_RESP to {what} carries is out of the "
                     f"key's bounds: {exc}", shown) from None
    return value, shown


async def _write(ctx: Context, key: KeySpec, value: Any, who: str,
                 ) -> tuple[int, list[Record]]:
    """WRITE ``value`` to ``key``: the WRITE_ACK's status; ``Failed`` if the answer is not
    a WRITE_ACK of that key."""
    what = f"WRITE of {value!r} to {_named(key)}"
    payload = key.id.to_bytes(2, "little") + key.encode(value)
    answer, shown = await _ask(ctx, Command.WRITE, payload, what, who)
    frame = answer.frame
    assert frame is not None
    if frame.cmd_id != Command.WRITE_ACK or len(frame.payload) != 3:
        raise Failed(f"{what} was answered by {_described(answer)}, not a WRITE_ACK (key u16, "
                     "status u8)", shown)
    got = int.from_bytes(frame.payload[:2], "little")
    if got != key.id:
        raise Failed(f"{what} was answered by a WRITE_ACK of key 0x{got:04x}", shown)
    return frame.payload[2], shown


def _other_value(key: KeySpec, current: Any) -> Any | None:
    """A valid value of ``key`` other than ``current`` (as it reads back), close to it:
    one step up or down for a number; None if the key has no other."""
    spec = key.field
    if spec.type == "bool":
        candidates: list[Any] = [not current]
    elif spec.type == "utf8":
        candidates = ["conformance", "CONFORMANCE", "k", "K"]
    elif spec.type == "bytes":
        candidates = ["c0", "0c"]
    else:
        step = spec.scale or 1
        candidates = [current + step, current - step]
    for candidate in candidates:
        try:
            value = key.decode(key.encode(candidate))
        except GatewayError:
            continue
        if value != current:
            return value
    return None


def _interval_in_force(ctx: Context, key: KeySpec, before: Any, now: Any) -> None:
    """Tell the telemetry checks an interval_ms write took effect."""
    if key.name != "interval_ms":
        return
    intervals = ctx.facts.intervals
    if not intervals:
        intervals.append((0.0, before))
    intervals.append((ctx.probe.now(), now))


def _first(items: list[Any], kind: str) -> tuple[list[Any], str]:
    """The first ``_MOST`` of ``items``, and a note if that is not all of them."""
    if len(items) <= _MOST:
        return items, ""
    return items[:_MOST], f" (the first {_MOST} of {len(items)} {kind})"


@check("REQ-1", budget_s=_MOST * REQUEST_TIMEOUT_S)
async def reads_every_key(ctx: Context) -> str:
    keys = sorted(ctx.profile.keys.values(), key=lambda k: k.id)
    if not keys:
        raise Skipped(f"the profile {ctx.profile.name} has no keys")
    keys, more = _first(keys, "keys")
    values = []
    for key in keys:
        value, _ = await _read(ctx, key, "REQ-1")
        values.append(f"{key.name}={value!r}")
    return (f"{len(values)} keys read{more}, each of its type and in bounds: "
            f"{', '.join(values)}")


@check("REQ-2", budget_s=_MOST * 5 * REQUEST_TIMEOUT_S)
async def writes_are_stored(ctx: Context) -> str:
    keys = sorted((k for k in ctx.profile.keys.values() if k.writable), key=lambda k: k.id)
    if not keys:
        raise Skipped(f"the profile {ctx.profile.name} has no read-write keys")
    keys, more = _first(keys, "read-write keys")
    done, unchanged = [], []
    for key in keys:
        original, _ = await _read(ctx, key, "REQ-2")
        new = _other_value(key, original)
        if new is None:
            unchanged.append(key.name)
            continue
        written = False
        try:
            status, wrote = await _write(ctx, key, new, "REQ-2")
            if status != 0:
                raise Failed(f"WRITE of {new!r} to {_named(key)} (was {original!r}) answered "
                             f"WRITE_ACK status {status}, not 0 (ok)", wrote)
            written = True
            _interval_in_force(ctx, key, original, new)
            got, read = await _read(ctx, key, "REQ-2")
            if got != new:
                raise Failed(f"{_named(key)} reads {got!r} after a WRITE of {new!r} answered "
                             "status 0", wrote + read)
            status, wrote = await _write(ctx, key, original, "REQ-2")
            written = status != 0
            if status != 0:
                raise Failed(f"writing {_named(key)} back to {original!r} answered WRITE_ACK "
                             f"status {status}, not 0 (ok)", wrote)
            _interval_in_force(ctx, key, new, original)
            got, read = await _read(ctx, key, "REQ-2")
            if got != original:
                raise Failed(f"{_named(key)} reads {got!r} after being written back to "
                             f"{original!r}", wrote + read)
        finally:
            if written:  # a failure half-way: the original value back, come what may
                await ctx.probe.request(Command.WRITE, key.id.to_bytes(2, "little")
                                        + key.encode(original), within=REQUEST_TIMEOUT_S,
                                        who="REQ-2 (restore)")
        done.append(f"{key.name} {original!r} -> {new!r} -> {original!r}")
    if not done:
        raise Skipped(f"no read-write key has a second valid value ({', '.join(unchanged)})")
    return f"written, read back and restored{more}: {'; '.join(done)}"


@check("REQ-3", budget_s=_MOST * 3 * REQUEST_TIMEOUT_S)
async def readonly_is_denied(ctx: Context) -> str:
    keys = sorted((k for k in ctx.profile.keys.values() if not k.writable), key=lambda k: k.id)
    if not keys:
        raise Skipped(f"the profile {ctx.profile.name} has no read-only keys")
    keys, more = _first(keys, "read-only keys")
    for key in keys:
        original, _ = await _read(ctx, key, "REQ-3")
        new = _other_value(key, original)
        new = original if new is None else new
        status, shown = await _write(ctx, key, new, "REQ-3")
        if status != NackCode.DENIED:
            if status == 0:  # it took the value: put the original back
                await ctx.probe.request(Command.WRITE, key.id.to_bytes(2, "little")
                                        + key.encode(original), within=REQUEST_TIMEOUT_S,
                                        who="REQ-3 (restore)")
            raise Failed(f"WRITE of {new!r} to the read-only key {_named(key)} answered "
                         f"WRITE_ACK status {status}, not 6 (denied)", shown)
        got, read = await _read(ctx, key, "REQ-3")
        if got != original:
            raise Failed(f"the read-only key {_named(key)} answered status 6 (denied) yet "
                         f"reads {got!r} after the WRITE of {new!r}, not {original!r}",
                         shown + read)
    return (f"read-only {', '.join(k.name for k in keys)}{more}: WRITE denied (status 6), "
            "the value unchanged")


@check("REQ-4", budget_s=2 * REQUEST_TIMEOUT_S + 1)
async def unknown_key_is_bad_payload(ctx: Context) -> str:
    key_id = next(k for k in range(_HIGHEST_KEY, 0, -1) if k not in ctx.profile.keys)
    key = key_id.to_bytes(2, "little")
    what = f"READ of key 0x{key_id:04x} (not in the profile {ctx.profile.name})"
    answer, shown = await _ask(ctx, Command.READ, key, what, "REQ-4")
    if _nack_code(answer, Command.READ) != NackCode.BAD_PAYLOAD:
        raise Failed(f"{what} was answered by {_described(answer)}, not NACK code 2 (bad "
                     "payload)", shown)
    what = f"WRITE of 4 zero bytes to key 0x{key_id:04x} (not in the profile)"
    answer, shown = await _ask(ctx, Command.WRITE, key + bytes(4), what, "REQ-4")
    frame = answer.frame
    assert frame is not None
    ack_2 = frame.cmd_id == Command.WRITE_ACK and frame.payload == key + bytes([2])
    if not ack_2 and _nack_code(answer, Command.WRITE) != NackCode.BAD_PAYLOAD:
        raise Failed(f"{what} was answered by {_described(answer)}, not WRITE_ACK status 2 "
                     "nor NACK code 2 (bad payload)", shown)
    how = "WRITE_ACK status 2" if ack_2 else "NACK code 2"
    return f"key 0x{key_id:04x}: READ answered NACK code 2, WRITE {how}"


@check("REQ-5", budget_s=2 * REQUEST_TIMEOUT_S + 1)
async def unknown_command_is_nacked(ctx: Context) -> str:
    unknown = [next(c for c in DEVICE_REQUESTS if c not in ctx.profile.commands),
               next(c for c in range(_FIRST_UNDEFINED, 0x70) if c not in COMMANDS
                    and c not in ctx.profile.commands)]
    for cmd_id in unknown:
        kind = "device-specific command" if cmd_id in DEVICE_REQUESTS else "command"
        what = f"the {kind} 0x{cmd_id:02x} (not in the profile {ctx.profile.name})"
        answer, shown = await _ask(ctx, cmd_id, b"", what, "REQ-5")
        if _nack_code(answer, cmd_id) != NackCode.UNKNOWN_COMMAND:
            raise Failed(f"{what} was answered by {_described(answer)}, not NACK code 1 "
                         "(unknown command)", shown)
    return f"commands {', '.join(f'0x{c:02x}' for c in unknown)} each answered NACK code 1"


@check("REQ-6", budget_s=3 * REQUEST_TIMEOUT_S + 1)
async def malformed_is_bad_payload(ctx: Context) -> str:
    key_id = min(ctx.profile.keys, default=1)
    key = key_id.to_bytes(2, "little")
    cases = [(Command.READ, key[:1], "a READ of 1 byte (its key is a u16)"),
             (Command.READ, key + b"\x00", "a READ of 3 bytes (a key and a byte too many)"),
             (Command.WRITE, key[:1], "a WRITE of 1 byte (no whole key)")]
    for cmd_id, payload, what in cases:
        answer, shown = await _ask(ctx, cmd_id, payload, what, "REQ-6")
        if _nack_code(answer, cmd_id) != NackCode.BAD_PAYLOAD:
            raise Failed(f"{what} was answered by {_described(answer)}, not NACK code 2 (bad "
                         "payload)", shown)
    return f"{len(cases)} malformed READ/WRITE payloads each answered NACK code 2"


def _least(spec: FieldSpec) -> Any:
    """The smallest valid value of a request field: its min, else zero (empty, false)."""
    if spec.type == "bool":
        return False
    if spec.type in ("utf8", "bytes"):
        return ""
    return spec.min if spec.min is not None else 0


@check("REQ-7", budget_s=_MOST * REQUEST_TIMEOUT_S)
async def device_commands_answer_their_layout(ctx: Context) -> str:
    # reboot restarts the device mid-run (first_hello uses it to see a HELLO)
    commands = [c for c in sorted(ctx.profile.commands.values(), key=lambda c: c.cmd_id)
                if c.name != "reboot"]
    if not commands:
        raise Skipped(f"the profile {ctx.profile.name} has no device-specific commands"
                      + (" but reboot" if ctx.profile.commands else ""))
    commands, more = _first(commands, "commands")
    done = []
    for spec in commands:
        values = {f.name: _least(f) for f in spec.request.fields}
        try:
            payload = spec.request.encode(values, what=spec.name)
        except GatewayError as exc:
            raise Skipped(f"the kit cannot build a request for {spec.name}: {exc}") from None
        what = f"{spec.name} (0x{spec.cmd_id:02x}) with {values or 'no fields'}"
        answer, shown = await _ask(ctx, spec.cmd_id, payload, what, "REQ-7")
        frame = answer.frame
        assert frame is not None
        if frame.cmd_id != spec.cmd_id | RESPONSE_BIT:
            raise Failed(f"{what} was answered by {_described(answer)}, not "
                         f"0x{spec.cmd_id | RESPONSE_BIT:02x}", shown)
        try:
            spec.response.decode(frame.payload, what=spec.name)
        except GatewayError as exc:
            fields = ", ".join(f"{f.name} {f.type}" for f in spec.response.fields)
            raise Failed(f"the answer to {what} does not decode by its declared layout "
                         f"({fields}): {exc}", shown) from None
        done.append(spec.name)
    return f"{', '.join(done)}{more} each answered with its declared layout"


def _is_request(record: Record) -> bool:
    return record.direction == "tx" and record.frame is not None and not record.is_response


def _answers(request: Record, record: Record) -> bool:
    assert request.frame is not None
    cmd_id = request.frame.cmd_id
    return record.cmd_id == cmd_id | RESPONSE_BIT or _nack_code(record, cmd_id) is not None


@check("REQ-8", budget_s=1, passive=True)
async def one_answer_per_request(ctx: Context) -> str:
    """Every device response is matched to the last request the kit sent that it answers:
    claimed by it, or late (that request had no answer in time); a second answer to a
    request, or one that answers no request, breaks the rule."""
    records = ctx.probe.records
    answered: dict[int, Record] = {}  # id of a request -> its first answer
    requests: list[Record] = []
    wrong: list[tuple[str, list[Record]]] = []
    count = late = 0
    for record in records:
        if _is_request(record):
            requests.append(record)
            continue
        if record.direction != "rx" or not record.is_response:
            continue
        count += 1
        request = next((r for r in reversed(requests) if _answers(r, record)), None)
        if request is None:
            wrong.append((f"{record.text} at {record.t * 1000:.1f} ms answers nothing the kit "
                          "asked", [record]))
            continue
        first = answered.get(id(request))
        if first is None:
            answered[id(request)] = record
            late += record.claimed_by is None
            continue
        if record.claimed_by is None:
            wrong.append((f"the {command_name(request.frame.cmd_id)} at "  # type: ignore[union-attr]
                          f"{request.t * 1000:.1f} ms was answered twice: at "
                          f"{first.t * 1000:.1f} ms and again at {record.t * 1000:.1f} ms",
                          [request, first, record]))
    if wrong:
        more = f" ({len(wrong)} such answers in all)" if len(wrong) > 1 else ""
        evidence = [r for _, shown in wrong for r in shown]
        raise Failed(f"{wrong[0][0]}{more}; over mcp a request gets one answer",
                     evidence[:EVIDENCE_LINES])
    tail = f" ({late} after the kit stopped waiting)" if late else ""
    return f"{count} answers, each to a request of its own{tail}"
