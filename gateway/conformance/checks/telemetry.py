"""Telemetry (spec section 3 and the profile): STATUS decodes by the profile's layout and
comes every interval_ms, a WRITE of interval_ms changes its period at once, LOG frames are
well-formed."""

from __future__ import annotations

import itertools
import statistics

from gateway.conformance.checks import Failed, Skipped, check
from gateway.conformance.probe import Record, Reply
from gateway.conformance.rules import (
    ANSWER_BOUND_S,
    INTERVAL_SLACK_S,
    INTERVAL_TOLERANCE,
    REQUEST_TIMEOUT_S,
)
from gateway.conformance.runner import Context
from gateway.errors import GatewayError
from gateway.frames import Command, KeySpec, decode_payload, encode_payload
from gateway.frames.commands import LogLevel, command_name
from gateway.frames.profiles import EventSpec

#: STATUS intervals TEL-2 and TEL-3 judge a period by
INTERVALS = 4
#: the period TEL-3 sets: short, so its intervals take a second
TEST_INTERVAL_MS = 250
#: how long TEL-2 may watch for the STATUS frames the transcript lacks
_WATCH_S = 10.0
_INTERVAL_KEY = "interval_ms"


def _ms(t: float) -> str:
    return f"{t * 1000:.0f} ms"


def _status_event(ctx: Context) -> EventSpec:
    event = ctx.profile.events.get(Command.STATUS)
    if event is None:
        raise Skipped(f"the profile {ctx.profile.name} declares no STATUS event (0x20)")
    return event


def _interval_key(ctx: Context) -> KeySpec:
    for key in ctx.profile.keys.values():
        if key.name == _INTERVAL_KEY:
            return key
    raise Skipped(f"the profile {ctx.profile.name} has no {_INTERVAL_KEY} key, so it declares "
                  "no STATUS period")


def _late_s(period_s: float) -> float:
    """How long after the last STATUS the kit waits for the next: twice the period (the
    longest interval allowed), and an answer's time."""
    return 2 * period_s + ANSWER_BOUND_S


async def _read_interval(ctx: Context, key: KeySpec, who: str) -> int:
    """interval_ms as the device reads it; ``Skipped`` if it cannot be read (REQ-1)."""
    reply = await ctx.probe.request(Command.READ, encode_payload(Command.READ, {"key": key.id}),
                                    within=REQUEST_TIMEOUT_S, who=who)
    answer = reply.answer
    why = f"no answer in {REQUEST_TIMEOUT_S:g} s"
    if answer is not None:
        assert answer.frame is not None
        why = f"answered {command_name(answer.frame.cmd_id)}"
        if answer.frame.cmd_id == Command.READ_RESP:
            try:
                fields = decode_payload(Command.READ_RESP, answer.frame.payload)
                if fields["key"] == key.id:
                    return int(key.decode(fields["value"]))
                why = f"answered with key {fields['key']}"
            except GatewayError as exc:
                why = str(exc)
    raise Skipped(f"a READ of {_INTERVAL_KEY} failed ({why}; see REQ-1), so the STATUS period "
                  "is not known")


async def _write_interval(ctx: Context, key: KeySpec, value_ms: int, who: str) -> Reply:
    payload = encode_payload(Command.WRITE, {"key": key.id, "value": key.encode(value_ms)})
    return await ctx.probe.request(Command.WRITE, payload, within=REQUEST_TIMEOUT_S, who=who)


def _write_problem(reply: Reply, key: KeySpec) -> str | None:
    """What is wrong with the answer to a WRITE (None: WRITE_ACK of the key, status 0)."""
    answer = reply.answer
    if answer is None:
        return f"no answer in {REQUEST_TIMEOUT_S:g} s"
    assert answer.frame is not None
    if answer.frame.cmd_id != Command.WRITE_ACK:
        return f"answered {command_name(answer.frame.cmd_id)}, not WRITE_ACK"
    try:
        ack = decode_payload(Command.WRITE_ACK, answer.frame.payload)
    except GatewayError as exc:
        return str(exc)
    if ack["key"] != key.id or ack["status"] != 0:
        return f"WRITE_ACK of key {ack['key']} with status {ack['status']}, not status 0"
    return None


def _note_interval(ctx: Context, since: float, value_ms: int) -> None:
    """Record the interval_ms in force from ``since`` (``Facts.intervals``)."""
    intervals = ctx.facts.intervals
    if not intervals or intervals[-1][1] != value_ms:
        intervals.append((since, value_ms))


def _last_interval_write(ctx: Context, key: KeySpec) -> float:
    """When the kit last wrote interval_ms (0: never): the period is the one read since."""
    written = [r.t for r in ctx.probe.records if r.direction == "tx"
               and r.cmd_id == Command.WRITE and r.frame is not None
               and r.frame.payload[:2] == key.id.to_bytes(2, "little")]
    return max([0.0, *written, *(t for t, _ in ctx.facts.intervals[1:])])


async def _collect(ctx: Context, since: float, period_s: float,
                   count: int) -> tuple[list[Record], str | None]:
    """STATUS frames received from ``since`` on, waiting until there are ``count``; and, if
    one was too late to wait for, why."""
    probe = ctx.probe
    while True:
        statuses = probe.received_once(Command.STATUS, since)
        if len(statuses) >= count:
            return statuses, None
        last = statuses[-1].t if statuses else since
        left = last + _late_s(period_s) - probe.now()
        if left <= 0:
            after = (f"the one at {_ms(last)}" if statuses
                     else f"{_ms(since)}" if since else "the port opened")
            return statuses, (f"no STATUS in the {_late_s(period_s):g} s after {after}; "
                              f"interval_ms is {period_s * 1000:.0f} ms")
        await probe.wait_for(lambda r: r.cmd_id == Command.STATUS, left)


def _judge(statuses: list[Record], period_s: float, context: str = "",
           shown: list[Record] | None = None) -> str:
    """The pass note for STATUS frames at ``period_s``; ``Failed`` (``context`` before why,
    ``shown`` and the frames as evidence) if their period is not it."""
    intervals = [b.t - a.t for a, b in itertools.pairwise(statuses)]
    median = statistics.median(intervals)
    allowed = max(period_s * INTERVAL_TOLERANCE, INTERVAL_SLACK_S)
    if abs(median - period_s) > allowed:
        raise Failed(f"{context}the median of {len(intervals)} STATUS intervals is "
                     f"{_ms(median)}; interval_ms is {_ms(period_s)}, so it must be "
                     f"{_ms(period_s - allowed)}-{_ms(period_s + allowed)}",
                     [*(shown or []), *statuses[-INTERVALS - 1:]])
    longest, at = max((gap, i) for i, gap in enumerate(intervals))
    if longest > 2 * period_s:
        raise Failed(f"{context}{_ms(longest)} between the STATUS at {_ms(statuses[at].t)} "
                     f"and the next, over twice interval_ms ({_ms(2 * period_s)})",
                     [*(shown or []), *statuses[at:at + 2]])
    return (f"{len(intervals)} STATUS intervals, median {_ms(median)}, longest {_ms(longest)} "
            f"(interval_ms {_ms(period_s)})")


@check("TEL-1", budget_s=1, passive=True)
async def status_decodes(ctx: Context) -> str:
    event = _status_event(ctx)
    statuses = ctx.probe.received_once(Command.STATUS)
    if not statuses:
        raise Skipped("no STATUS came during the run")
    layout = event.layout
    fields = ", ".join(f"{f.name} {f.type}" for f in layout.fields)
    size = layout.fast.size if layout.fast is not None else None
    bad = []
    for record in statuses:
        assert record.frame is not None
        try:
            layout.decode(record.frame.payload, what=event.name)
        except GatewayError as exc:
            bad.append((record, exc))
    if bad:
        record, exc = bad[0]
        assert record.frame is not None
        got = len(record.frame.payload)
        detail = (f"it has {got} payload bytes; the profile's {event.name} layout ({fields}) "
                  f"is {size} bytes") if size is not None and size != got else str(exc)
        raise Failed(f"{len(bad)} of {len(statuses)} STATUS frames do not decode by the "
                     f"profile's layout; the first, at {_ms(record.t)}: {detail}",
                     [r for r, _ in bad[:4]])
    shape = f"{size} bytes: {fields}" if size is not None else fields
    return f"{len(statuses)} STATUS frames, all decode by the {event.name} layout ({shape})"


@check("TEL-2", budget_s=REQUEST_TIMEOUT_S + _WATCH_S + 3)
async def status_period(ctx: Context) -> str:
    _status_event(ctx)
    key = _interval_key(ctx)
    value_ms = await _read_interval(ctx, key, "TEL-2")
    period_s = value_ms / 1000
    _note_interval(ctx, ctx.probe.now(), value_ms)
    # The transcript since the last interval write (if any) shows the period read now.
    since = _last_interval_write(ctx, key)
    have = len(ctx.probe.received_once(Command.STATUS, since))
    if (INTERVALS + 1 - have) * period_s > _WATCH_S:
        raise Skipped(f"interval_ms is {value_ms} ms: watching {INTERVALS + 1 - have} more "
                      f"STATUS would take longer than the {_WATCH_S:g} s this check may")
    statuses, missing = await _collect(ctx, since, period_s, INTERVALS + 1)
    if missing is not None:
        raise Failed(missing, statuses[-3:])
    return _judge(statuses, period_s)


@check("TEL-3", budget_s=3 * REQUEST_TIMEOUT_S
       + (INTERVALS + 1) * _late_s(TEST_INTERVAL_MS / 1000) + 2)
async def interval_write_applies(ctx: Context) -> str:
    _status_event(ctx)
    key = _interval_key(ctx)
    if not key.writable:
        raise Skipped(f"the profile's {_INTERVAL_KEY} key is read-only")
    old_ms = await _read_interval(ctx, key, "TEL-3")
    _note_interval(ctx, ctx.probe.now(), old_ms)
    new_ms = TEST_INTERVAL_MS if old_ms != TEST_INTERVAL_MS else 2 * TEST_INTERVAL_MS
    write = await _write_interval(ctx, key, new_ms, "TEL-3")
    problem = _write_problem(write, key)
    if problem is not None:
        raise Failed(f"the WRITE of {_INTERVAL_KEY}={new_ms}: {problem}", write.records)
    assert write.answer is not None
    acked = write.answer.t
    _note_interval(ctx, acked, new_ms)
    try:
        statuses, missing = await _collect(ctx, acked, new_ms / 1000, INTERVALS + 1)
    finally:  # the device as it was found, whatever was seen
        restore = await _write_interval(ctx, key, old_ms, "TEL-3")
        _note_interval(ctx, restore.sent.t, old_ms)
    was = f" (it was {old_ms} ms)"
    if missing is not None:
        raise Failed(f"after the WRITE_ACK of {_INTERVAL_KEY}={new_ms} ms{was} at "
                     f"{_ms(acked)}: {missing}", [*write.records, *statuses[-3:]])
    verdict = _judge(statuses, new_ms / 1000, f"after the WRITE of {_INTERVAL_KEY}={new_ms} "
                     f"ms{was}: ", write.records)
    problem = _write_problem(restore, key)
    if problem is not None:
        raise Failed(f"the STATUS period followed the WRITE, but restoring {_INTERVAL_KEY} to "
                     f"{old_ms} ms: {problem}", restore.records)
    return (f"{_INTERVAL_KEY} {old_ms} -> {new_ms} ms: the first STATUS "
            f"{_ms(statuses[0].t - acked)} after WRITE_ACK, then {verdict}; restored")


def log_problems(payload: bytes) -> list[str]:
    """What is wrong with a LOG payload (spec section 3: level u8 0-4, UTF-8 text)."""
    if not payload:
        return ["it has no level byte"]
    problems = []
    if payload[0] > LogLevel.ERROR:
        problems.append(f"level {payload[0]}, but levels are 0 (debug) to 4 (error)")
    try:
        payload[1:].decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"its text {payload[1:][:24]!r} is not UTF-8 ({exc.reason} at byte "
                        f"{exc.start})")
    return problems


@check("TEL-4", budget_s=1, passive=True)
async def log_well_formed(ctx: Context) -> str:
    logs = ctx.probe.received_once(Command.LOG)
    if not logs:
        raise Skipped("the device sent no LOG frame during the run, so none could be checked")
    bad = []
    for record in logs:
        assert record.frame is not None
        problems = log_problems(record.frame.payload)
        if problems:
            bad.append((record, problems))
    if bad:
        record, problems = bad[0]
        raise Failed(f"{len(bad)} of {len(logs)} LOG frames are malformed; the first, at "
                     f"{_ms(record.t)}: {'; '.join(problems)}", [r for r, _ in bad[:4]])
    levels = sorted({LogLevel(r.frame.payload[0]).name.lower() for r in logs if r.frame})
    frames = "1 LOG frame" if len(logs) == 1 else f"{len(logs)} LOG frames"
    return f"{frames}, level {', '.join(levels)}, UTF-8 text"
