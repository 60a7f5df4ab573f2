"""The ms720 link (spec section 4): ACKs, retransmission, duplicates, bad CRCs, the request
seq a response carries, the device's own seq, the kit's seq wrapping, requests in flight.

The passive checks read the kit's frames back out of the bytes it wrote (``_kit_frames``):
those it sent whole, and those it wrote in parts or among garbage (the framing checks do),
so every frame the device could have acknowledged or answered is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.conformance.checks import Failed, Skipped, check
from gateway.conformance.probe import Probe, Record
from gateway.conformance.rules import REQUEST_TIMEOUT_S
from gateway.conformance.runner import Context
from gateway.errors import GatewayError
from gateway.frames import Command, Frame, encode_payload
from gateway.frames.commands import RESPONSE_BIT, command_name
from gateway.frames.ms720 import (
    SEQ_MODULUS,
    Ms720Deframer,
    MsgType,
    carries_request_seq,
    decode_link,
)

#: LNK-2: the spec's window for the first re-send ("about 200 ms")
RESEND_MIN_S = 0.15
RESEND_MAX_S = 0.40
#: LNK-2: how long the kit waits for each next copy (the window's end and a margin)
_COPY_WAIT_S = RESEND_MAX_S + 0.15
#: LNK-3, LNK-4: how long a second answer, or an answer to a bad frame, has to show
_QUIET_S = 0.3
#: LNK-6: frames in a row the kit may fail to read (bytes it discarded) before a seq jump
#: is the device's
_LOST_AT_MOST = 4
#: LNK-6: a jump this far either way before the first HELLO is a reboot (a new first seq)
_RESTART = 1024
#: LNK-7: how far below the wrap the kit's seq may be for the check to walk it across
_WRAP_REACH = 64
#: LNK-8: requests sent back to back
_IN_FLIGHT = 8
#: seqs a failure lists at most, and reasons
_SHOWN = 8
_WHY_SHOWN = 3
_HALF = SEQ_MODULUS // 2


@dataclass(frozen=True, slots=True)
class _Sent:
    """A frame the kit sent, as the device would read it."""

    #: the record whose bytes ended it
    record: Record
    seq: int
    frame: Frame
    #: its CRC is right (not made wrong on purpose)
    intact: bool


def _kit_frames(probe: Probe) -> list[_Sent]:
    """Every data or control frame the kit wrote, in order."""
    # Raw writes (garbage, parts of frames) are read as the device reads the line; no
    # inter-frame timeout, so a truncated frame is dropped by its CRC instead.
    loose = Ms720Deframer(expire_on_feed=False)
    out = []
    for record in probe.records:
        if record.direction != "tx":
            continue
        if record.link == "raw":
            out += [_Sent(record, link.seq, link.frame, True) for link in loose.feed(record.wire)
                    if link.msg_type in (MsgType.DATA, MsgType.CONTROL) and link.payload]
        elif record.link is None and record.frame is not None and record.seq is not None:
            try:
                decode_link(record.wire)
            except GatewayError:
                out.append(_Sent(record, record.seq, record.frame, False))
            else:
                out.append(_Sent(record, record.seq, record.frame, True))
    return out


def _answers(record: Record, cmd_id: int, seq: int) -> bool:
    """``record`` answers the request ``cmd_id`` of seq ``seq`` (cmd | 0x80, or its NACK)."""
    frame = record.frame
    if frame is None or frame.request_seq != seq:
        return False
    return _answers_cmd(frame, cmd_id)


def _answers_cmd(frame: Frame, cmd_id: int) -> bool:
    if frame.cmd_id == cmd_id | RESPONSE_BIT:
        return True
    return frame.cmd_id == Command.NACK and frame.payload[:1] == bytes([cmd_id])


def _is_device_frame(record: Record) -> bool:
    return record.frame is not None and record.seq is not None


def _seqs(records: list[Record] | list[_Sent]) -> str:
    shown = [f"{r.seq} {command_name(r.frame.cmd_id)}" for r in records[:_SHOWN]
             if r.frame is not None and r.seq is not None]
    more = len(records) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _some(reasons: list[str]) -> str:
    """The first few reasons, and how many more."""
    more = len(reasons) - _WHY_SHOWN
    return "; ".join(reasons[:_WHY_SHOWN]) + (f"; and {more} more" if more > 0 else "")


# ---------------------------------------------------------------------- LNK-1


@check("LNK-1", budget_s=REQUEST_TIMEOUT_S + 2, passive=True)
async def every_frame_acknowledged(ctx: Context) -> str:
    probe = ctx.probe
    first: dict[int, _Sent] = {}
    for sent in _kit_frames(probe):
        if sent.intact:
            first.setdefault(sent.seq, sent)
    if not first:
        raise Skipped("the kit sent no frame to be acknowledged")

    acks: dict[int, list[float]] = {}
    for r in probe.received:
        if r.link == "ack" and r.seq is not None:
            acks.setdefault(r.seq, []).append(r.t)
    unreadable = [r.t for r in probe.received if r.link == "raw"]
    delays: list[float] = []
    missing: list[_Sent] = []
    garbled = 0
    for sent in first.values():
        seq, t = sent.seq, sent.record.t
        after = [a for a in acks.get(seq, ()) if a >= t]
        left = t + REQUEST_TIMEOUT_S - probe.now()
        if not after and left > 0:  # sent last: its ACK may be on the way
            ack = await probe.wait_for(lambda r, s=seq, t=t: r.link == "ack" and r.seq == s
                                       and r.t >= t, left, after=0)
            after = [ack.t] if ack is not None else []
        if after:
            delays.append(min(after) - t)
        elif any(t <= u <= t + REQUEST_TIMEOUT_S for u in unreadable):
            garbled += 1  # its ACK may be in bytes the kit could not read (line noise)
        else:
            missing.append(sent)
    if missing:
        which = "none" if len(missing) == len(first) else str(len(missing))
        raise Failed(f"{which} of the {len(first)} frames the kit sent got an ACK with "
                     f"its seq ({_seqs(missing)} got none); every data and control frame "
                     "is acknowledged", [s.record for s in missing])
    noise = (f" ({garbled} whose ACK may be in bytes the kit could not read)" if garbled
             else "")
    return (f"{len(first)} frames of the kit, each acknowledged{noise}, the slowest ACK after "
            f"{max(delays, default=0) * 1000:.1f} ms")


# ---------------------------------------------------------------------- LNK-2


@check("LNK-2", budget_s=REQUEST_TIMEOUT_S + 24 * _COPY_WAIT_S + 2)
async def resends_unacknowledged(ctx: Context) -> str:
    probe = ctx.probe
    retries = ctx.options.link_retries
    seen = {r.seq for r in probe.received if _is_device_frame(r)}
    original: Record | None = None
    probe.acking = False
    try:
        mark = probe.mark()
        ping = probe.send(Command.PING, note="LNK-2: the kit stops acknowledging")
        # Its PONG, or whatever new frame comes first (a STATUS): left unacknowledged.
        original = await probe.wait_for(lambda r: _is_device_frame(r) and r.seq not in seen,
                                        REQUEST_TIMEOUT_S, after=mark)
        if original is None:
            raise Skipped(f"no frame from the device within {REQUEST_TIMEOUT_S:g} s of a "
                          "PING, so none to leave unacknowledged")
        assert original.frame is not None
        kind = f"{command_name(original.frame.cmd_id)} (seq {original.seq})"
        copies = [original]
        while len(copies) <= retries + 1:
            copy = await probe.wait_for(
                lambda r: r.seq == original.seq and _is_device_frame(r)
                and all(r is not c for c in copies), _COPY_WAIT_S, after=mark)
            if copy is None:
                break
            copies.append(copy)
        resends = copies[1:]
        evidence = [ping, *copies]
        if not resends:
            raise Failed(f"its {kind} was sent once: no copy within {_COPY_WAIT_S * 1000:.0f} "
                         "ms without an ACK; an unacknowledged frame is sent again after "
                         "about 200 ms", evidence)
        gaps = [(b.t - a.t) * 1000 for a, b in zip(copies, resends, strict=False)]
        if not RESEND_MIN_S * 1000 <= gaps[0] <= RESEND_MAX_S * 1000:
            raise Failed(f"its {kind} was sent again {gaps[0]:.0f} ms after it went "
                         f"unacknowledged; the spec says about 200 ms "
                         f"({RESEND_MIN_S * 1000:.0f}-{RESEND_MAX_S * 1000:.0f} ms)", evidence)
        if len(resends) > retries:
            raise Failed(f"its {kind} was sent again {len(resends)} times (and counting) "
                         f"without an ACK; the configured number of re-sends is {retries}",
                         evidence)
        shown = ", ".join(f"{g:.0f}" for g in gaps)
        return (f"{kind} sent again {len(resends)} times without an ACK (at most {retries}), "
                f"{shown} ms apart, then no more")
    finally:
        probe.acking = True
        if original is not None and original.seq is not None:
            probe.ack(original.seq)  # the device has given up on it, or stops now


# ---------------------------------------------------------------------- LNK-3


@check("LNK-3", budget_s=REQUEST_TIMEOUT_S + _QUIET_S + 2)
async def duplicate_delivered_once(ctx: Context) -> str:
    probe = ctx.probe
    seq = probe.next_seq()
    mark = probe.mark()
    sent = [probe.send(Command.PING, seq=seq, note="LNK-3"),
            probe.send(Command.PING, seq=seq, note="LNK-3: the same frame again")]
    pong = await probe.wait_for(lambda r: _answers(r, Command.PING, seq), REQUEST_TIMEOUT_S,
                                after=mark)
    if pong is None:
        raise Failed(f"no PONG within {REQUEST_TIMEOUT_S:g} s to a PING (seq {seq}) sent "
                     "twice", sent + probe.received[mark:])
    pong.claimed_by = "LNK-3"
    await probe.quiet(_QUIET_S)
    window = probe.received[mark:]
    acks = [r for r in window if r.link == "ack" and r.seq == seq]
    pongs: dict[int, Record] = {}
    for r in window:
        if _answers(r, Command.PING, seq) and r.seq is not None:
            pongs.setdefault(r.seq, r)
    if len(pongs) > 1:
        raise Failed(f"the PING sent twice with seq {seq} was answered {len(pongs)} times "
                     f"(PONGs seq {', '.join(map(str, pongs))}); a duplicate is acknowledged "
                     "again but delivered once", sent + list(pongs.values()))
    if len(acks) < 2:
        raise Failed(f"the PING sent twice with seq {seq} was acknowledged "
                     f"{len(acks)} time{'s' if len(acks) != 1 else ''}; a duplicate is "
                     "acknowledged again (each copy gets an ACK)", sent + acks + [pong])
    return f"a PING sent twice with seq {seq}: {len(acks)} ACKs, one PONG"


# ---------------------------------------------------------------------- LNK-4


@check("LNK-4", budget_s=_QUIET_S + REQUEST_TIMEOUT_S + 2)
async def bad_crc_not_acted_on(ctx: Context) -> str:
    probe = ctx.probe
    seq = probe.next_seq()
    mark = probe.mark()
    bad = probe.send(Command.PING, seq=seq, corrupt=True, note="LNK-4")
    await probe.quiet(_QUIET_S)
    window = probe.received[mark:]
    acted = [r for r in window if _answers(r, Command.PING, seq)]
    if acted:
        raise Failed(f"it answered a PING whose CRC was wrong (seq {seq}) with "
                     f"{command_name(acted[0].cmd_id or 0)}; a frame with a bad CRC is never "
                     "acted on", [bad, *acted])
    acked = [r for r in window if r.link == "ack" and r.seq == seq]
    if acked:
        raise Failed(f"it acknowledged (ACK seq {seq}) a PING whose CRC was wrong; a frame "
                     "with a bad CRC is NACKed or ignored", [bad, *acked])
    nacked = any(r.link == "nack" and r.seq == seq for r in window)
    # Sent again intact with the same seq, as a sender does after a NACK or a timeout.
    mark = probe.mark()
    good = probe.send(Command.PING, seq=seq, note="LNK-4: the same PING, its CRC right")
    pong = await probe.wait_for(lambda r: _answers(r, Command.PING, seq), REQUEST_TIMEOUT_S,
                                after=mark)
    if pong is None:
        raise Failed(f"no PONG within {REQUEST_TIMEOUT_S:g} s to a good PING (seq {seq}) "
                     "sent after the same PING with a bad CRC",
                     [bad, good, *probe.received[mark:]])
    pong.claimed_by = "LNK-4"
    return (f"a PING with a bad CRC (seq {seq}) was {'NACKed' if nacked else 'ignored'}, not "
            f"answered; sent again intact, answered in {(pong.t - good.t) * 1000:.1f} ms")


# ---------------------------------------------------------------------- LNK-5


@check("LNK-5", budget_s=1, passive=True)
async def responses_carry_request_seq(ctx: Context) -> str:
    probe = ctx.probe
    requests: dict[int, list[_Sent]] = {}
    for sent in _kit_frames(probe):
        if not carries_request_seq(sent.frame.cmd_id):
            requests.setdefault(sent.seq, []).append(sent)
    seen: set[int] = set()
    wrong: list[Record] = []
    why: list[str] = []
    count = 0
    for r in probe.received:
        if not r.is_response or r.seq is None or r.seq in seen:
            continue  # a copy of a response is the same response
        seen.add(r.seq)
        count += 1
        frame = r.frame
        assert frame is not None
        asked = requests.get(frame.request_seq, []) if frame.request_seq is not None else []
        if any(s.record.t <= r.t and _answers_cmd(frame, s.frame.cmd_id) for s in asked):
            continue
        wrong.append(r)
        name = command_name(frame.cmd_id)
        if frame.request_seq is None:
            why.append(f"{name} (seq {r.seq}) carries none")
            continue
        before = [s for group in requests.values() for s in group
                  if s.record.t <= r.t and _answers_cmd(frame, s.frame.cmd_id)]
        latest = max(before, key=lambda s: s.record.t, default=None)
        hint = ""
        if latest is not None:
            hint = f", the kit's last {command_name(latest.frame.cmd_id)} before it {latest.seq}"
        why.append(f"{name} (seq {r.seq}) carries {frame.request_seq}{hint}")
    if not count:
        raise Skipped("the device sent no response")
    if wrong:
        raise Failed(f"{len(wrong)} of {count} responses do not carry the seq of a request "
                     f"they answer (in the 4 bytes after their cmd_id): "
                     f"{_some(why)}", wrong)
    return f"{count} responses, each carrying the seq of the request it answers"


# ---------------------------------------------------------------------- LNK-6


@check("LNK-6", budget_s=1, passive=True)
async def seq_counts_up(ctx: Context) -> str:
    # A reboot (the kit may ask for one before the first HELLO) starts a new sequence: a far
    # jump up to that HELLO is one.
    hello = ctx.facts.hello
    booted_by = hello.t if hello is not None else -1.0
    first: dict[int, Record] = {}
    newest: Record | None = None
    #: seqs skipped where the kit could not read what came (a frame lost on the line): their
    #: re-send may come later, out of order
    unread: set[int] = set()
    #: when the kit last discarded bytes from the device (a read's records share its time)
    unreadable_at = -1.0
    copies = 0
    for r in ctx.probe.received:
        if r.link == "raw":
            unreadable_at = r.t
            continue
        if not _is_device_frame(r):
            continue
        assert r.seq is not None
        earlier = first.get(r.seq)
        if earlier is not None:
            if earlier.wire != r.wire:
                raise Failed(f"its seq {r.seq} was used for two different frames "
                             f"({earlier.text}, then {r.text}); each new frame takes the "
                             "next seq, only a re-send repeats one", [earlier, r])
            copies += 1
            continue
        first[r.seq] = r
        if r.seq in unread:
            unread.discard(r.seq)
            continue
        if newest is not None and newest.seq is not None:
            step = (r.seq - newest.seq) % SEQ_MODULUS
            lost = unreadable_at >= newest.t  # bytes discarded since it (or in its read)
            if step != 1 and lost and step <= _LOST_AT_MOST + 1:
                unread.update((newest.seq + i) % SEQ_MODULUS for i in range(1, step))
            elif unreadable_at >= 0 and step >= SEQ_MODULUS - _LOST_AT_MOST:
                continue  # a late re-send of a frame the kit could not read (it was first)
            elif r.t <= booted_by and _RESTART <= step <= SEQ_MODULUS - _RESTART:
                unread.clear()
            elif step != 1:
                how = f"skipping {step - 1}" if step < _HALF else f"back by {SEQ_MODULUS - step}"
                raise Failed(f"its seq went from {newest.seq} to {r.seq} ({how}) between two "
                             "new frames; a device's seq goes up by one for each new frame",
                             [newest, r])
        newest = r
    if newest is None:
        raise Skipped("the device sent no data or control frame")
    never = f", {len(unread)} never read (lost on the line)" if unread else ""
    return (f"{len(first)} frames, seqs {next(iter(first))} to {newest.seq} one by one, "
            f"{copies} re-sent with their seq{never}")


# ---------------------------------------------------------------------- LNK-7


def _wrap_index(sent: list[_Sent]) -> int | None:
    """Where the kit's seq wrapped: the first frame whose seq is below its predecessor's."""
    for i in range(1, len(sent)):
        if sent[i - 1].seq >= _HALF > sent[i].seq:
            return i
    return None


def _requests(sent: list[_Sent]) -> list[_Sent]:
    """The requests among ``sent``, each seq once (a copy sent again is the same request)."""
    out: dict[int, _Sent] = {}
    for s in sent:
        if not carries_request_seq(s.frame.cmd_id):
            out.setdefault(s.seq, s)
    return list(out.values())


@check("LNK-7", budget_s=(_WRAP_REACH + 4) * 0.1 + 2 * REQUEST_TIMEOUT_S + 2)
async def kit_seq_wraps(ctx: Context) -> str:
    probe = ctx.probe
    if _wrap_index(_kit_frames(probe)) is None:
        below = (SEQ_MODULUS - probe.upcoming_seq) % SEQ_MODULUS
        if below > _WRAP_REACH:
            raise Skipped(f"the kit's seq is {probe.upcoming_seq}, {below} below the wrap: "
                          "too far to walk it across")
        # PINGs one at a time until two after the wrap are answered.
        answered: Record | None = None
        while True:
            reply = await probe.request(Command.PING, within=REQUEST_TIMEOUT_S, who="LNK-7",
                                        note="LNK-7: across the wrap")
            seq = reply.sent.seq
            assert seq is not None
            if reply.answer is None:
                where = ("the first after the kit's seq wrapped from 4294967295 to 0"
                         if seq == 0 else f"{seq} after the wrap" if seq < _HALF
                         else f"{SEQ_MODULUS - seq} below the wrap")
                before = ""
                if answered is not None:
                    before = f"; the PING before it (seq {answered.seq}) was answered"
                links = [r for r in probe.received if r.link is not None and r.seq == seq
                         and r.t >= reply.sent.t]
                raise Failed(f"no answer within {REQUEST_TIMEOUT_S:g} s to the PING with seq "
                             f"{seq} ({where}){before}",
                             [*([answered] if answered else []), *reply.records, *links])
            answered = reply.sent
            if seq == 1:
                break
    sent = [s for s in _kit_frames(probe) if s.intact]
    at = _wrap_index(sent)
    if at is None:
        raise Skipped(f"the kit's seq did not wrap (it is {probe.upcoming_seq})")
    before = _requests(sent[:at])[-2:]
    after = _requests(sent[at:])[:2]
    if not after:  # only answers went out since the wrap: ask something now
        reply = await probe.request(Command.PING, within=REQUEST_TIMEOUT_S, who="LNK-7",
                                    note="LNK-7: after the wrap")
        assert reply.sent.seq is not None
        assert reply.sent.frame is not None
        after = [_Sent(reply.sent, reply.sent.seq, reply.sent.frame, True)]
    crossing = before + after
    unanswered = [s for s in crossing
                  if not any(_answers(r, s.frame.cmd_id, s.seq) and r.t >= s.record.t
                             for r in probe.received)]
    if unanswered:
        raise Failed(f"requests sent as the kit's seq wrapped from 4294967295 to 0 went "
                     f"unanswered: {_seqs(unanswered)} (of {_seqs(crossing)})",
                     [s.record for s in crossing])
    return f"requests across the kit's seq wrap all answered: {_seqs(crossing)}"


# ---------------------------------------------------------------------- LNK-8


@check("LNK-8", budget_s=REQUEST_TIMEOUT_S + 2)
async def requests_in_flight(ctx: Context) -> str:
    probe = ctx.probe
    keys = list(ctx.profile.keys.values())
    asked: dict[int, tuple[Record, int | None]] = {}  # seq -> (request, key id)
    mark = probe.mark()
    for i in range(_IN_FLIGHT):
        note = f"LNK-8: {i + 1} of {_IN_FLIGHT} in flight"
        if keys:
            key = keys[i % len(keys)].id
            record = probe.send(Command.READ, encode_payload(Command.READ, {"key": key}),
                                note=note)
        else:
            key = None
            record = probe.send(Command.PING, note=note)
        assert record.seq is not None
        asked[record.seq] = (record, key)
    cmd = Command.READ if keys else Command.PING
    start = probe.now()
    pending = dict(asked)
    wrong: list[str] = []
    evidence: list[Record] = []
    slowest = 0.0
    def answers_one(r: Record) -> bool:
        seq = None if r.frame is None else r.frame.request_seq
        return seq is not None and seq in pending and _answers(r, cmd, seq)

    while pending:
        left = start + REQUEST_TIMEOUT_S - probe.now()
        answer = await probe.wait_for(answers_one, max(0.0, left), after=mark)
        if answer is None:
            break
        assert answer.frame is not None
        assert answer.frame.request_seq is not None
        request, key = pending.pop(answer.frame.request_seq)
        answer.claimed_by = "LNK-8"
        slowest = max(slowest, answer.t - request.t)
        frame = answer.frame
        if frame.cmd_id == Command.NACK:
            wrong.append(f"seq {request.seq} was answered by NACK code "
                         f"{frame.payload[1] if len(frame.payload) > 1 else '?'}")
            evidence += [request, answer]
        elif key is not None and frame.payload[:2] != key.to_bytes(2, "little"):
            got = int.from_bytes(frame.payload[:2], "little") if len(frame.payload) >= 2 else None
            wrong.append(f"the READ_RESP tagged with seq {request.seq} (a READ of key "
                         f"0x{key:04x}) carries key {'?' if got is None else f'0x{got:04x}'}")
            evidence += [request, answer]
    if pending:
        late = sorted(pending, key=lambda s: pending[s][0].t)
        also = f"; and {_some(wrong)}" if wrong else ""
        raise Failed(f"{len(pending)} of the {_IN_FLIGHT} {command_name(cmd)}s sent back to "
                     f"back got no answer within {REQUEST_TIMEOUT_S:g} s (seqs "
                     f"{', '.join(map(str, late))}){also}; several requests may be in flight "
                     "and each is answered", [r for r, _ in asked.values()]
                     + [r for r in probe.received[mark:] if r.is_response])
    if wrong:
        raise Failed(f"of {_IN_FLIGHT} {command_name(cmd)}s sent back to back, "
                     f"{_some(wrong)}", evidence)
    seqs = list(asked)
    return (f"{_IN_FLIGHT} {command_name(cmd)}s in flight (seqs {seqs[0]} to {seqs[-1]}), "
            f"all answered with their seqs, the last after {slowest * 1000:.1f} ms")
