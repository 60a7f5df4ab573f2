"""A conformance run: open the port, register the device as a gateway would, run the chosen
checks in the catalogue's order (active ones talking to the device, then passive ones over
the transcript), each within its budget, and hand back one ``Result`` per rule.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.conformance.checks import Check, Failed, Skipped, load
from gateway.conformance.probe import Probe, Record
from gateway.conformance.rules import GROUPS, KIT_HEARTBEAT_S, RULES, Rule, select
from gateway.errors import GatewayError
from gateway.frames import Command, DeviceProfile, decode_payload
from gateway.frames.framing import DEFAULT_FRAMES
from gateway.settings import LinkSettings, default_of

#: how long the kit waits for the first HELLO before it asks for a reboot
HELLO_TIMEOUT_S = 3.0
#: how long the operator has to reset the device when asked
REBOOT_TIMEOUT_S = 30.0
#: evidence lines kept per failed check when the check names none itself
EVIDENCE_LINES = 24

VERDICTS = ("pass", "fail", "skip")


@dataclass(frozen=True, slots=True)
class Options:
    """What a run checks, and how."""

    url: str
    profile: DeviceProfile
    frames: str = DEFAULT_FRAMES
    baudrate: int = 115200
    #: groups or rule ids; None: every group of the frame profile
    only: tuple[str, ...] | None = None
    #: ms720: retransmissions the device is configured for (LNK-2's upper bound)
    link_retries: int = default_of(LinkSettings, "retries")
    hello_timeout_s: float = HELLO_TIMEOUT_S
    reboot_timeout_s: float = REBOOT_TIMEOUT_S
    #: says a line to the operator (asks for a reset); None: nobody is there to ask
    ask_operator: Callable[[str], None] | None = None

    def rules(self) -> list[Rule]:
        """The rules this run checks; ``ValueError`` for a bad --only word."""
        return select(list(self.only) if self.only else None, self.frames)


@dataclass(slots=True)
class Facts:
    """What the run has learnt about the device, for the checks that come after."""

    #: the first HELLO seen (None: not yet, or none came)
    hello: Record | None = None
    hello_error: str | None = None
    #: HELLO_ACK sent: when (probe time), with which node id
    registered_at: float | None = None
    node_id: int | None = None
    heartbeat_s: int = KIT_HEARTBEAT_S
    #: interval_ms values in force: (since, ms), the first as read
    intervals: list[tuple[float, int]] = field(default_factory=list)

    @property
    def uid(self) -> str | None:
        if self.hello is None or self.hello.frame is None:
            return None
        try:
            return decode_payload(Command.HELLO, self.hello.frame.payload)["uid"]
        except GatewayError:
            return None


@dataclass(slots=True)
class Result:
    """One rule's verdict."""

    rule: Rule
    verdict: str
    #: why it failed or was skipped; for a pass, what was measured
    why: str = ""
    evidence: list[Record] = field(default_factory=list)
    duration_s: float = 0.0


class Context:
    """What a check works with: the probe, the profile, the options, the facts so far."""

    def __init__(self, probe: Probe, options: Options) -> None:
        self.probe = probe
        self.options = options
        self.profile = options.profile
        self.facts = Facts()
        self._hello_done = False
        self.rng = random.Random(0x5A)

    def is_hello(self, record: Record) -> bool:
        return record.cmd_id == Command.HELLO

    async def first_hello(self) -> Record:
        """The device's first HELLO (REG-1's wait, done once): waits ``hello_timeout_s``;
        then asks for a reboot (the profile's ``reboot`` command, else the operator) and
        waits again. ``Failed`` if none comes, for this and every later call."""
        if not self._hello_done:
            self._hello_done = True
            self.facts.hello, self.facts.hello_error = await self._wait_hello()
        if self.facts.hello is None:
            raise Failed(self.facts.hello_error or "no HELLO")
        return self.facts.hello

    async def _wait_hello(self) -> tuple[Record | None, str | None]:
        probe, options = self.probe, self.options
        hello = await probe.wait_for(self.is_hello, options.hello_timeout_s, after=0)
        if hello is not None:
            return hello, None
        waited = f"no HELLO in {options.hello_timeout_s:g} s"
        reboot = next((c for c in self.profile.commands.values() if c.name == "reboot"), None)
        if reboot is not None:
            mark = probe.mark()
            probe.send(reboot.cmd_id, reboot.request.encode({}, what=reboot.name),
                       note="the kit asks for a reboot")
            hello = await probe.wait_for(self.is_hello, options.hello_timeout_s, after=mark)
            if hello is not None:
                return hello, None
            return None, (f"{waited}, nor in {options.hello_timeout_s:g} s after the "
                          "profile's reboot command")
        if options.ask_operator is not None:
            mark = probe.mark()
            options.ask_operator(f"No HELLO from the device in {options.hello_timeout_s:g} s: "
                                 f"reset or power-cycle it now (waiting up to "
                                 f"{options.reboot_timeout_s:g} s)")
            hello = await probe.wait_for(self.is_hello, options.reboot_timeout_s, after=mark)
            if hello is not None:
                return hello, None
            return None, f"{waited}, nor in {options.reboot_timeout_s:g} s after a reset"
        return None, (f"{waited}; a device sends HELLO at start-up and every second until "
                      "HELLO_ACK (a device already registered can be made to reboot by a "
                      "profile command named `reboot`, or by the operator when the kit runs "
                      "on a terminal)")

    def register(self, hello: Record | None = None) -> float | None:
        """Answer HELLOs from now on (``hello``, default the first one, now): the device is
        registered with a node id and the kit's heartbeat. Returns when (probe time); None
        without a HELLO."""
        if self.facts.registered_at is not None:
            return self.facts.registered_at
        hello = hello or self.facts.hello
        if hello is None or hello.frame is None:
            return None
        self.facts.node_id = self.rng.randrange(0x100, 0xFFFF)
        self.probe.hello_ack = (self.facts.node_id, self.facts.heartbeat_s)
        self.probe.answer_hello(hello.frame)
        self.facts.registered_at = self.probe.now()
        return self.facts.registered_at

    async def ensure_registered(self) -> None:
        """Set-up for checks outside the registration group: the device registered, if it
        sends HELLO at all (a device that does not still works, known by its port)."""
        try:
            await self.first_hello()
        except Failed:
            return
        self.register()


async def _run_one(check: Check, rule: Rule, ctx: Context) -> Result:
    start = ctx.probe.now()
    first = len(ctx.probe.records)
    try:
        async with asyncio.timeout(check.budget_s):
            note = await check.fn(ctx)
        result = Result(rule, "pass", note or "")
    except Failed as failure:
        evidence = failure.evidence or ctx.probe.records[first:][-EVIDENCE_LINES:]
        result = Result(rule, "fail", failure.why, evidence)
    except Skipped as skip:
        result = Result(rule, "skip", skip.why)
    except TimeoutError:
        result = Result(rule, "fail", f"did not finish within its bound of "
                        f"{check.budget_s:g} s", ctx.probe.records[first:][-EVIDENCE_LINES:])
    if ctx.probe.lost is not False:
        result = Result(rule, "fail", f"the port went away during the check: "
                        f"{ctx.probe.lost or 'closed'}")
    result.duration_s = max(0.0, ctx.probe.now() - start)
    return result


async def run(options: Options) -> list[Result]:
    """Check the device on ``options.url``; one ``Result`` per selected rule, in catalogue
    order. ``PortBusy``/``PortUnavailable`` if the port cannot be had."""
    rules = options.rules()
    checks = load()
    missing = [r.id for r in rules if r.id not in checks]
    if missing:
        raise RuntimeError(f"rules without a check: {', '.join(missing)}")
    results: dict[str, Result] = {}
    async with Probe(options.url, frames=options.frames, profile=options.profile,
                     baudrate=options.baudrate) as probe:
        ctx = Context(probe, options)
        active = [r for r in rules if not checks[r.id].passive]
        passive = [r for r in rules if checks[r.id].passive]
        ordered = sorted(active, key=lambda r: GROUPS.index(r.group))
        for rule in ordered:
            if rule.group != "registration":
                await ctx.ensure_registered()
            results[rule.id] = await _run_one(checks[rule.id], rule, ctx)
        if not ordered:
            await ctx.ensure_registered()
        for rule in passive:
            results[rule.id] = await _run_one(checks[rule.id], rule, ctx)
    return [results[rule_id] for rule_id in RULES if rule_id in results]


def counts(results: list[Result]) -> dict[str, int]:
    """How many results have each verdict (pass, fail, skip)."""
    return {v: sum(1 for r in results if r.verdict == v) for v in VERDICTS}


def summary(results: list[Result]) -> str:
    """``N passed, N failed, N skipped``."""
    count = counts(results)
    return f"{count['pass']} passed, {count['fail']} failed, {count['skip']} skipped"
