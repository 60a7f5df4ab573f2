"""Liveness (spec section 3): PING is answered by PONG in time; the heartbeat is kept."""

from __future__ import annotations

import itertools

from gateway.conformance.checks import Failed, Skipped, check
from gateway.conformance.rules import ANSWER_BOUND_S, REQUEST_TIMEOUT_S
from gateway.conformance.runner import Context
from gateway.frames import Command, encode_payload
from gateway.frames.commands import command_name

#: PINGs LIV-1 sends: empty and with uptime_s, three of each
_PINGS = 6


@check("LIV-1", budget_s=_PINGS * REQUEST_TIMEOUT_S + 2)
async def pong_in_time(ctx: Context) -> str:
    slowest = 0.0
    with_uptime = encode_payload(Command.PING, {"uptime_s": 86_400})
    for i in range(_PINGS):
        payload = b"" if i % 2 == 0 else with_uptime
        reply = await ctx.probe.request(Command.PING, payload, within=REQUEST_TIMEOUT_S,
                                        who="LIV-1")
        kind = "an empty PING" if not payload else "a PING with uptime_s"
        answer = reply.answer
        if answer is None:
            raise Failed(f"no answer to {kind} within {REQUEST_TIMEOUT_S:g} s", reply.records)
        assert answer.frame is not None
        assert reply.latency is not None
        if answer.cmd_id != Command.PONG:
            raise Failed(f"{kind} was answered by {command_name(answer.frame.cmd_id)}, "
                         "not PONG", reply.records)
        if answer.frame.payload:
            raise Failed(f"the PONG to {kind} carries {len(answer.frame.payload)} payload "
                         "bytes; a PONG is empty", reply.records)
        if reply.latency > ANSWER_BOUND_S:
            raise Failed(f"the PONG to {kind} came after {reply.latency * 1000:.0f} ms; the "
                         f"bound is {ANSWER_BOUND_S * 1000:.0f} ms", reply.records)
        slowest = max(slowest, reply.latency)
    return f"{_PINGS} PONGs, the slowest in {slowest * 1000:.1f} ms"


@check("LIV-2", budget_s=12, passive=True)
async def heartbeat_kept(ctx: Context) -> str:
    start = ctx.facts.registered_at
    if start is None:
        raise Skipped("the device did not register (no HELLO), so it has no heartbeat")
    heartbeat = ctx.facts.heartbeat_s
    watched = ctx.probe.now() - start
    if watched < 4 * heartbeat:  # a short run (--only): watch long enough to see three
        await ctx.probe.quiet(4 * heartbeat - watched)
    end = ctx.probe.now()
    pings = ctx.probe.received_once(Command.PING, start)
    times = [start, *(p.t for p in pings), end]
    gap, at = max((b - a, i) for i, (a, b) in enumerate(itertools.pairwise(times)))
    if gap > 1.5 * heartbeat:
        before = "registration" if at == 0 else f"the PING at {times[at] * 1000:.0f} ms"
        after = "the end of the run" if at == len(times) - 2 else "the next"
        shown = [p for p in pings if abs(p.t - times[at]) < 1e-9 or abs(p.t - times[at + 1]) < 1e-9]
        raise Failed(f"{gap:.1f} s without a PING (from {before} to {after}); the heartbeat "
                     f"is {heartbeat} s, so a PING is due every {heartbeat} s", shown)
    return f"{len(pings)} PINGs over {end - start:.1f} s, the longest gap {gap:.2f} s"
