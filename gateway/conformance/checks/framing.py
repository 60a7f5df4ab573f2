"""Framing (spec section 1; section 4 on ms720): the frames the device sends are valid, and
its receiver resynchronises as the spec says: past garbage, a bad checksum, a truncated
frame, and a frame that arrives in pieces.

On ms720 a bad or truncated frame the kit sends carries the seq the next good one then
reuses: the device's link never delivered that seq, so it is the one it waits for (a new
seq would leave a gap the link holds later frames behind).
"""

from __future__ import annotations

from gateway.conformance.checks import Failed, check
from gateway.conformance.probe import Record, Reply
from gateway.conformance.rules import REQUEST_TIMEOUT_S
from gateway.conformance.runner import EVIDENCE_LINES, Context
from gateway.frames import Command, NackCode, encode_payload
from gateway.frames.commands import RESPONSE_BIT, command_name
from gateway.frames.ms720 import MAX_PAYLOAD as MS720_MAX_PAYLOAD
from gateway.frames.wire import MAX_PAYLOAD

#: FRM-1 judges at least this much of the device's traffic (from the port's opening): a
#: short run (--only framing) would otherwise see a STATUS or two
_WATCH_S = 3.0
#: bytes that are no frame: neither the mcp header (0x5A) nor the ms720 sync's (0x55, 0xAA)
GARBAGE = bytes(b for b in range(0x00, 0x100, 7) if b not in (0x5A, 0x55, 0xAA))
#: how long garbage, or a frame with a bad checksum, must go unanswered
_GARBAGE_QUIET_S = 0.1
_BAD_CHECKSUM_QUIET_S = 0.3
#: FRM-4: the device's inter-frame timeout is 100 ms; the kit waits past it, then wants a
#: PONG this soon
_INTER_FRAME_S = 0.1
_TRUNCATED_WAIT_S = 0.2
_AFTER_TRUNCATED_S = 0.5
#: the payload length the truncated frame declares, and how many of its bytes are sent
#: (a large one: on a device that never drops it, the kit's own frames that follow, ms720
#: ACKs among them, must not fill it up within the wait)
_DECLARED = 200
_SENT_OF_PAYLOAD = 4
#: FRM-5: a byte-by-byte frame is written within this long (well inside the inter-frame
#: timeout, which counts from the frame's first byte), at most 5 ms between bytes
_BYTEWISE_SPAN_S = 0.04
_BYTE_GAP_S = 0.005
_PARTS_GAP_S = 0.02


def _described(record: Record) -> str:
    """An answer as a sentence's object: ``NACK code 2`` or ``READ_RESP key=1 ...``."""
    frame = record.frame
    if frame is not None and frame.cmd_id == Command.NACK and len(frame.payload) == 2:
        return f"NACK code {frame.payload[1]}"
    return record.text


def _ponged(reply: Reply, what: str, within: float) -> float:
    """The latency of the PONG that answered ``reply``'s PING; ``Failed`` saying ``what``
    came before it, if none or another answer came."""
    answer = reply.answer
    if answer is None:
        raise Failed(f"no answer to a good PING within {within * 1000:.0f} ms {what}",
                     reply.records)
    if answer.cmd_id != Command.PONG:
        raise Failed(f"a good PING {what} was answered by {_described(answer)}, not PONG",
                     reply.records)
    assert reply.latency is not None
    return reply.latency


def _answers_to(cmd_id: int, records: list[Record]) -> list[Record]:
    """What answers ``cmd_id`` among ``records`` that nobody claimed yet."""
    return [r for r in records if r.frame is not None and r.claimed_by is None
            and (r.cmd_id == cmd_id | RESPONSE_BIT
                 or (r.cmd_id == Command.NACK and r.frame.payload[:1] == bytes([cmd_id])))]


def _a_key_read(ctx: Context) -> tuple[int, bytes, str]:
    """A request whose answer shows it was acted on: READ of the profile's first key (PING
    when the profile has no keys): cmd, payload, name."""
    if ctx.profile.keys:
        key = min(ctx.profile.keys.values(), key=lambda k: k.id)
        return (Command.READ, encode_payload(Command.READ, {"key": key.id}),
                f"READ of {key.name}")
    return Command.PING, b"", "PING"


@check("FRM-1", budget_s=_WATCH_S + 1, passive=True)
async def frames_are_valid(ctx: Context) -> str:
    probe = ctx.probe
    if probe.now() < _WATCH_S:
        await probe.quiet(_WATCH_S - probe.now())  # see enough of its frames to judge
    counts = probe.framing.counters()
    check_name = "CRC-16" if probe.linked else "checksum"
    bound = MS720_MAX_PAYLOAD if probe.linked else MAX_PAYLOAD
    # Bytes before the first frame, up to a frame's worth, may be the tail of a frame the
    # device was sending as the port opened: not the device's fault.
    opening = probe.before_first_frame or {}
    cut = opening.get("discarded_bytes", 0) <= bound + 13
    forgiven = {k: opening.get(k, 0) if cut else 0
                for k in ("discarded_bytes", "checksum_errors", "oversize_lengths")}
    discarded = counts["discarded_bytes"] - forgiven["discarded_bytes"]
    checksums = counts["checksum_errors"] - forgiven["checksum_errors"]
    oversize = counts["oversize_lengths"] - forgiven["oversize_lengths"]
    first = probe.first_frame_at
    raw = [r for r in probe.received if r.link == "raw"
           and not (cut and first is not None and r.t <= first)]
    if discarded or checksums or oversize or raw:
        raise Failed(f"{discarded} of the {counts['bytes_in']} bytes the device sent were no "
                     f"valid frame ({checksums} frame{'' if checksums == 1 else 's'} failed their "
                     f"{check_name}, {oversize} declared a length over {bound}); shown: the "
                     "reads that held them",
                     raw[:EVIDENCE_LINES])
    cut_note = (f" ({forgiven['discarded_bytes']} bytes before the first one ignored: the "
                "tail of a frame cut by the port's opening)"
                if forgiven["discarded_bytes"] else "")
    return (f"{counts['frames']} frames ({counts['bytes_in']} bytes) received over "
            f"{probe.now():.1f} s, every one with a good header, length and {check_name}"
            f"{cut_note}")


@check("FRM-2", budget_s=_GARBAGE_QUIET_S + REQUEST_TIMEOUT_S + 1)
async def ignores_garbage(ctx: Context) -> str:
    probe = ctx.probe
    mark = probe.mark()
    garbage = probe.write_raw(GARBAGE, f"{len(GARBAGE)} bytes of garbage (no header byte)")
    await probe.quiet(_GARBAGE_QUIET_S)  # garbage is not answered
    answered = [r for r in probe.received[mark:] if r.is_response and r.claimed_by is None]
    if answered:
        for record in answered:
            record.claimed_by = "FRM-2 (garbage)"
        raise Failed(f"{len(GARBAGE)} bytes of garbage were answered by "
                     f"{_described(answered[0])}; bytes that are no frame are discarded "
                     "unanswered", [garbage, *answered])
    reply = await probe.request(Command.PING, within=REQUEST_TIMEOUT_S, who="FRM-2")
    latency = _ponged(reply, f"after {len(GARBAGE)} bytes of garbage", REQUEST_TIMEOUT_S)
    return (f"{len(GARBAGE)} bytes of garbage ignored; the next PING answered in "
            f"{latency * 1000:.1f} ms")


@check("FRM-3", budget_s=_BAD_CHECKSUM_QUIET_S + REQUEST_TIMEOUT_S + 1)
async def ignores_a_bad_checksum(ctx: Context) -> str:
    probe = ctx.probe
    check_name = "CRC" if probe.linked else "checksum"
    cmd_id, payload, what = _a_key_read(ctx)
    mark = probe.mark()
    bad = probe.send(cmd_id, payload, corrupt=True)
    await probe.quiet(_BAD_CHECKSUM_QUIET_S)  # the bad frame must not be acted on
    answers = _answers_to(cmd_id, probe.received[mark:])
    for record in answers:
        record.claimed_by = "FRM-3 (bad checksum)"
    # NACK 4 (checksum error seen) is the one answer a bad frame may get
    checksum_nack = (Command.NACK, bytes([cmd_id, NackCode.CHECKSUM_ERROR]))
    acted = [r for r in answers if r.frame is None or r.frame[:2] != checksum_nack]
    # The good PING goes even when the bad frame was acted on: on ms720 it takes the seq
    # the device's link still waits for, so the link is left as it was found.
    mark = probe.mark()
    sent = probe.send(Command.PING, seq=bad.seq, note="seq of the bad frame" if bad.seq
                      is not None else "")
    reply = await probe.answer_to(sent, after=mark, within=REQUEST_TIMEOUT_S, who="FRM-3")
    if acted:
        raise Failed(f"a {what} with a wrong {check_name} was acted on: answered by "
                     f"{_described(acted[0])} within {_BAD_CHECKSUM_QUIET_S * 1000:.0f} ms; a "
                     "frame whose check fails is dropped (or NACKed with code 4)",
                     [bad, *acted])
    latency = _ponged(reply, f"after a {what} with a wrong {check_name}", REQUEST_TIMEOUT_S)
    nacked = " (NACKed with code 4)" if answers else ""
    return (f"a {what} with a wrong {check_name} not acted on{nacked}; the next PING "
            f"answered in {latency * 1000:.1f} ms")


@check("FRM-4", budget_s=_TRUNCATED_WAIT_S + _AFTER_TRUNCATED_S + 2)
async def drops_a_truncated_frame(ctx: Context) -> str:
    probe = ctx.probe
    seq = probe.next_seq() if probe.linked else None
    whole = probe.wire_of(Command.READ, bytes(_DECLARED), seq=seq)
    cut = len(whole) - _DECLARED - (2 if probe.linked else 1) + _SENT_OF_PAYLOAD
    truncated = probe.write_raw(whole[:cut], f"a READ frame declaring {_DECLARED} payload "
                                f"bytes, cut after {_SENT_OF_PAYLOAD} of them"
                                + (f" (seq={seq})" if seq is not None else ""))
    await probe.quiet(_TRUNCATED_WAIT_S)  # past the inter-frame timeout
    mark = probe.mark()
    sent = probe.send(Command.PING, seq=seq, note="seq of the truncated frame" if seq
                      is not None else "")
    reply = await probe.answer_to(sent, after=mark, within=_AFTER_TRUNCATED_S, who="FRM-4")
    if reply.answer is None:
        # Leave the device as found: complete the frame it still holds (its check will
        # fail), and take the answer the PING swallowed by it may get then.
        probe.write_raw(bytes(len(whole)), f"{len(whole)} zero bytes: the rest of the "
                        "truncated frame, so the device can drop it")
        late = await probe.answer_to(sent, after=mark, within=_BAD_CHECKSUM_QUIET_S,
                                     who="FRM-4 (late)")
        shown = [truncated, *reply.records, *late.records[1:]]
        raise Failed(f"no answer to a good PING sent {_TRUNCATED_WAIT_S * 1000:.0f} ms after a "
                     f"truncated frame, within {_AFTER_TRUNCATED_S * 1000:.0f} ms: the device "
                     f"seems to keep a partial frame past the inter-frame timeout "
                     f"({_INTER_FRAME_S * 1000:.0f} ms), reading the PING as its payload",
                     shown)
    latency = _ponged(reply, "after a truncated frame", _AFTER_TRUNCATED_S)
    return (f"a frame cut after {cut} of {len(whole)} bytes dropped; a PING "
            f"{_TRUNCATED_WAIT_S * 1000:.0f} ms later answered in {latency * 1000:.1f} ms")


@check("FRM-5", budget_s=4 * REQUEST_TIMEOUT_S + 2)
async def understands_a_split_frame(ctx: Context) -> str:
    probe = ctx.probe
    requests: list[tuple[int, bytes, str]] = [(Command.PING, b"", "PING")]
    if ctx.profile.keys:
        requests.append(_a_key_read(ctx))
    shown = []
    for cmd_id, payload, what in requests:
        size = len(probe.wire_of(cmd_id, payload, seq=0))
        bytewise_gap = min(_BYTE_GAP_S, _BYTEWISE_SPAN_S / (size - 1))
        for cuts, gap, how in ((None, bytewise_gap, "byte by byte"),
                               ([size // 2], _PARTS_GAP_S, "in two parts")):
            mark = probe.mark()
            sent = await probe.send_in_parts(cmd_id, payload, cuts=cuts, gap_s=gap)
            span = probe.now() - sent.t
            reply = await probe.answer_to(sent, after=mark, within=REQUEST_TIMEOUT_S,
                                          who="FRM-5")
            answer = reply.answer
            written = f"written {how} ({size} bytes over {span * 1000:.0f} ms)"
            if answer is None:
                raise Failed(f"no answer within {REQUEST_TIMEOUT_S:g} s to a {what} {written}",
                             reply.records)
            if answer.cmd_id != cmd_id | RESPONSE_BIT:
                raise Failed(f"a {what} {written} was answered by {_described(answer)}, not "
                             f"{command_name(cmd_id | RESPONSE_BIT)}", reply.records)
        shown.append(what)
    return f"{' and '.join(shown)} each answered, written byte by byte and in two parts"
