"""Registration (spec section 3): HELLO at start-up, repeated about every second until
HELLO_ACK and well-formed; no HELLO once acknowledged; the heartbeat of HELLO_ACK kept; NACK 5
to a PING answered by a new HELLO with the same uid."""

from __future__ import annotations

import itertools

from gateway.conformance.checks import Failed, Skipped, check
from gateway.conformance.probe import Probe, Record
from gateway.conformance.rules import KIT_HEARTBEAT_S
from gateway.conformance.runner import HELLO_TIMEOUT_S, REBOOT_TIMEOUT_S, Context
from gateway.errors import GatewayError
from gateway.frames import Command, NackCode, decode_payload
from gateway.frames.commands import MAX_MODEL_LEN

#: the longest the first HELLO may take (``Context.first_hello``: the wait, then a reboot's)
_HELLO_WAIT_S = HELLO_TIMEOUT_S + REBOOT_TIMEOUT_S
#: REG-2: the gaps allowed between HELLO repeats, and how many gaps are watched
HELLO_GAP_S = (0.5, 1.5)
_GAPS = 2
#: REG-2: how much later than the longest gap the kit still waits, to name a late HELLO's gap
_LATE_S = 0.5
#: REG-2: a HELLO that came this soon after the port opened may be older than it looks
_STALE_S = 1.0
#: REG-4: a HELLO sent before the HELLO_ACK arrived may still come this soon after it...
IN_FLIGHT_S = 0.1
#: ... and after that no HELLO for this long
SETTLED_S = 1.5
#: REG-5: how far the device's PINGs may be off the heartbeat HELLO_ACK gave
HEARTBEAT_SLACK_S = 0.5
#: REG-6: how soon after NACK 5 the device must send HELLO again
REHELLO_S = 1.5


def _ms(t: float) -> str:
    return f"{t * 1000:.0f} ms"


def _index_after(probe: Probe, record: Record) -> int:
    """The place in ``probe.received`` just after ``record``."""
    return next(i for i, r in enumerate(probe.received) if r is record) + 1


def _index_from(probe: Probe, t: float) -> int:
    """The place in ``probe.received`` of the first record received at ``t`` or later."""
    return next((i for i, r in enumerate(probe.received) if r.t >= t), len(probe.received))


def _uid(record: Record) -> bytes:
    """The uid bytes of a HELLO, read raw (a malformed HELLO still names its uid)."""
    assert record.frame is not None
    return record.frame.payload[1:9]


async def _hello_or_skip(ctx: Context) -> Record:
    """The device's first HELLO; ``Skipped`` if none came (REG-1 fails then)."""
    try:
        return await ctx.first_hello()
    except Failed:
        raise Skipped("the device sent no HELLO (see REG-1)") from None


async def _registered(ctx: Context) -> float:
    """Set-up of REG-4 to REG-6: the device registered (its latest HELLO answered); when."""
    await _hello_or_skip(ctx)
    at = ctx.register(ctx.probe.received_once(Command.HELLO)[-1])
    assert at is not None
    return at


def _hello_ack_sent(ctx: Context, before: float) -> list[Record]:
    """The last HELLO_ACK the kit sent at or before ``before``, as evidence."""
    acks = [r for r in ctx.probe.records if r.direction == "tx"
            and r.cmd_id == Command.HELLO_ACK and r.t <= before]
    return acks[-1:]


@check("REG-1", budget_s=_HELLO_WAIT_S + 2)
async def hello_at_start(ctx: Context) -> str:
    hello = await ctx.first_hello()
    late = hello.t > ctx.options.hello_timeout_s
    return (f"the first HELLO came {_ms(hello.t)} after the port opened"
            + (" (after the kit asked for a reboot)" if late else ""))


@check("REG-2", budget_s=_HELLO_WAIT_S + (_GAPS + 1) * (HELLO_GAP_S[1] + _LATE_S) + 2)
async def hello_repeated(ctx: Context) -> str:
    first = await _hello_or_skip(ctx)
    if ctx.facts.registered_at is not None:
        raise Skipped("the device was registered before its HELLO repeats could be watched")
    probe = ctx.probe
    hellos = [first]
    seqs = {first.seq}
    try:
        while len(hellos) <= _GAPS:
            last = hellos[-1]
            within = last.t + HELLO_GAP_S[1] + _LATE_S - probe.now()
            nxt = await probe.wait_for(
                lambda r: r.cmd_id == Command.HELLO and (r.seq is None or r.seq not in seqs),
                max(0.0, within), after=_index_after(probe, last))
            if nxt is None:
                raise Failed(f"no HELLO again within {HELLO_GAP_S[1] + _LATE_S:g} s of the one "
                             f"at {_ms(last.t)} (HELLO {len(hellos)}, unanswered); a device "
                             f"repeats HELLO about every second ({HELLO_GAP_S[0]:g}-"
                             f"{HELLO_GAP_S[1]:g} s) until HELLO_ACK", hellos)
            hellos.append(nxt)
            seqs.add(nxt.seq)
            gap = nxt.t - last.t
            if gap < HELLO_GAP_S[0] and len(hellos) == 2 and last.t < _STALE_S:
                # The first HELLO seen may have been sent before the kit listened (a tty
                # keeps what nobody read; on ms720 it is resent until acknowledged): the
                # repeats are timed from the next one.
                hellos = [nxt]
                continue
            if not HELLO_GAP_S[0] <= gap <= HELLO_GAP_S[1]:
                raise Failed(f"HELLO {len(hellos)} came {gap:.2f} s after HELLO "
                             f"{len(hellos) - 1}; unanswered, a device repeats HELLO every "
                             f"{HELLO_GAP_S[0]:g}-{HELLO_GAP_S[1]:g} s", hellos)
    finally:
        ctx.register(hellos[-1])  # from here on the device is registered, as by a gateway
    gaps = ", ".join(f"{b.t - a.t:.2f} s" for a, b in itertools.pairwise(hellos))
    return f"{len(hellos)} unanswered HELLOs, {gaps} apart; then HELLO_ACK"


def hello_problems(payload: bytes) -> list[str]:
    """What is wrong with a HELLO payload, read byte by byte as spec section 3 lays it out
    (the decoder stops at the first fault, and takes any proto)."""
    if len(payload) < 13:
        return [f"it is {len(payload)} bytes, shorter than proto, uid, fw and the model's "
                f"length byte (13 bytes)"]
    problems = [] if payload[0] == 1 else [f"proto is {payload[0]}, not 1"]
    # uid and fw are fixed-size (8 bytes; u8 major, minor, patch): any bytes are valid
    model, pos, found = _short_ascii(payload, 12, "model", MAX_MODEL_LEN)
    problems += found
    if model is None:
        return problems
    if pos >= len(payload):
        return [*problems, "the caps count byte is missing"]
    count, pos = payload[pos], pos + 1
    for n in range(count):
        cap, pos, found = _short_ascii(payload, pos, f"cap {n + 1} of {count}", None)
        problems += found
        if cap is None:
            return problems
    if pos < len(payload):
        extra = len(payload) - pos
        problems.append(f"{extra} {'byte follows' if extra == 1 else 'bytes follow'} the caps")
    if not problems:
        try:
            decode_payload(Command.HELLO, payload)
        except GatewayError as exc:  # a fault the byte walk above does not know
            problems.append(str(exc))
    return problems


def _short_ascii(payload: bytes, pos: int, what: str,
                 max_len: int | None) -> tuple[str | None, int, list[str]]:
    """A u8-length-prefixed ASCII string at ``pos``: (its text or None if it is cut short,
    the place after it, what is wrong with it)."""
    if pos >= len(payload):
        return None, pos, [f"the length byte of {what} is missing"]
    size = payload[pos]
    raw = payload[pos + 1:pos + 1 + size]
    if len(raw) < size:
        return None, len(payload), [f"{what} claims {size} bytes but only {len(raw)} follow"]
    problems = []
    if max_len is not None and size > max_len:
        problems.append(f"{what} {raw.decode('ascii', 'replace')!r} is {size} bytes, over "
                        f"{max_len}")
    if any(b > 0x7F for b in raw):
        problems.append(f"{what} {raw!r} is not ASCII")
    return raw.decode("ascii", "replace"), pos + 1 + size, problems


@check("REG-3", budget_s=_HELLO_WAIT_S + 1, passive=True)
async def hello_well_formed(ctx: Context) -> str:
    await _hello_or_skip(ctx)
    hellos = ctx.probe.received_once(Command.HELLO)
    bad = []
    for record in hellos:
        assert record.frame is not None
        problems = hello_problems(record.frame.payload)
        if problems:
            bad.append((record, problems))
    if bad:
        record, problems = bad[0]
        others = f" (and {len(bad) - 1} more of the {len(hellos)} HELLOs)" if len(bad) > 1 else ""
        raise Failed(f"the HELLO at {_ms(record.t)}{others} is malformed: "
                     f"{'; '.join(problems)}", [r for r, _ in bad[:3]])
    assert hellos[0].frame is not None
    hello = decode_payload(Command.HELLO, hellos[0].frame.payload)
    return (f"{len(hellos)} HELLOs, all well-formed: proto 1, uid {hello['uid']}, fw "
            f"{hello['fw']}, model {hello['model']!r}, caps {', '.join(hello['caps']) or '-'}")


@check("REG-4", budget_s=_HELLO_WAIT_S + SETTLED_S + 2)
async def hello_stops(ctx: Context) -> str:
    acked = await _registered(ctx)
    probe = ctx.probe
    seqs = {r.seq for r in probe.received_once(Command.HELLO) if r.t < acked}
    in_flight: list[Record] = []

    def stray(record: Record) -> bool:
        if record.cmd_id != Command.HELLO or (record.seq is not None and record.seq in seqs):
            return False
        seqs.add(record.seq)
        if not in_flight and record.t - acked <= IN_FLIGHT_S:
            in_flight.append(record)  # sent before the HELLO_ACK reached the device
            return False
        return True

    hello = await probe.wait_for(stray, max(0.0, acked + SETTLED_S - probe.now()),
                                 after=_index_from(probe, acked))
    if hello is not None:
        raise Failed(f"a HELLO came {hello.t - acked:.2f} s after the kit's HELLO_ACK (at "
                     f"{_ms(acked)}); a device stops sending HELLO once it has a HELLO_ACK",
                     [*_hello_ack_sent(ctx, acked), *in_flight, hello])
    extra = (f" (one already in flight came {(in_flight[0].t - acked) * 1000:.0f} ms after "
             "it)") if in_flight else ""
    return f"no HELLO in the {SETTLED_S:g} s after HELLO_ACK{extra}"


@check("REG-5", budget_s=_HELLO_WAIT_S + 2 * (KIT_HEARTBEAT_S + HEARTBEAT_SLACK_S) + 2)
async def heartbeat_of_hello_ack(ctx: Context) -> str:
    acked = await _registered(ctx)
    probe = ctx.probe
    heartbeat = ctx.facts.heartbeat_s
    bound = heartbeat + HEARTBEAT_SLACK_S
    gave = f"HELLO_ACK gave heartbeat_s={heartbeat}"
    while True:
        pings = probe.received_once(Command.PING, acked)[:2]
        if len(pings) == 2:
            break
        last = pings[-1].t if pings else acked
        left = last + bound - probe.now()
        if left <= 0:
            after = f"the PING at {_ms(last)}" if pings else f"the HELLO_ACK at {_ms(acked)}"
            raise Failed(f"no PING in the {bound:g} s after {after}; {gave}, so a PING is "
                         f"due every {heartbeat} s", [*_hello_ack_sent(ctx, acked), *pings])
        await probe.wait_for(lambda r: r.cmd_id == Command.PING, left)
    first, second = pings
    gap = second.t - first.t
    if abs(gap - heartbeat) > HEARTBEAT_SLACK_S:
        raise Failed(f"PINGs {gap:.2f} s apart; {gave} ({heartbeat} +- "
                     f"{HEARTBEAT_SLACK_S:g} s)", [*_hello_ack_sent(ctx, acked), *pings])
    return (f"the first PING {first.t - acked:.2f} s after HELLO_ACK, the next {gap:.2f} s "
            f"later (heartbeat_s={heartbeat})")


@check("REG-6", budget_s=_HELLO_WAIT_S + 1.5 * KIT_HEARTBEAT_S + HEARTBEAT_SLACK_S
       + REHELLO_S + 2)
async def hello_again_after_nack5(ctx: Context) -> str:
    first = await _hello_or_skip(ctx)
    await _registered(ctx)
    probe = ctx.probe
    wait = 1.5 * ctx.facts.heartbeat_s + HEARTBEAT_SLACK_S
    probe.answer_pings = False  # this PING gets NACK 5, not PONG
    try:
        ping = await probe.wait_for(lambda r: r.cmd_id == Command.PING, wait)
    finally:
        probe.answer_pings = True
    if ping is None:
        raise Skipped(f"the device sent no PING in {wait:g} s to answer with NACK 5 (REG-5)")
    assert ping.frame is not None
    mark = probe.mark()
    nack = probe.send(Command.NACK, bytes([Command.PING, NackCode.NOT_REGISTERED]),
                      request_seq=ping.frame.request_seq,
                      note="the kit does not know the device")
    hello = await probe.wait_for(lambda r: r.cmd_id == Command.HELLO, REHELLO_S, after=mark)
    if hello is None:
        raise Failed(f"no HELLO within {REHELLO_S:g} s of NACK 5 (not registered) to its "
                     "PING; a device the gateway does not know registers again", [ping, nack])
    # The probe answered that HELLO (HELLO_ACK): the device is registered anew from here,
    # and LIV-2 counts its heartbeat from here, not across the re-registration.
    ack = next((r for r in reversed(probe.records) if r.direction == "tx"
                and r.cmd_id == Command.HELLO_ACK and r.t >= hello.t), None)
    ctx.facts.registered_at = hello.t if ack is None else ack.t
    if _uid(hello) != _uid(first):
        raise Failed(f"after NACK 5 it sent HELLO with uid {_uid(hello).hex()}, not its uid "
                     f"{_uid(first).hex()}: a gateway would take it for another device",
                     [first, ping, nack, hello])
    return (f"NACK 5 to the PING at {_ms(ping.t)}: HELLO again {_ms(hello.t - nack.t)} later "
            f"with the same uid {_uid(hello).hex()}, and registered again")
