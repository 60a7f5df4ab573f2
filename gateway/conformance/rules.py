"""The device-facing rules of the serial spec the conformance kit checks, one row each.

Pure data: an id (``REG-1``), the group it belongs to, a one-line statement and the spec
section. The checks (``gateway.conformance.checks``) implement one rule each; the device
guide (``docs/device-guide.md``) quotes every row, and a test keeps the three in step.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEC = "shared/spec/serial-frames.md"

#: the groups in the order they run and are reported (``ms720``: its rules apply to ms720
#: lines only)
GROUPS: tuple[str, ...] = ("registration", "liveness", "framing", "requests", "telemetry",
                           "ms720")

#: the heartbeat the kit gives in HELLO_ACK: short, so a run is short, and unlike the
#: usual defaults (5 s) so a device that ignores it shows
KIT_HEARTBEAT_S = 2
#: how long a device may take to answer a request (a frame or two at 9600 baud, plus
#: firmware time); LIV-1's bound, and the wait for every answer the kit expects
ANSWER_BOUND_S = 0.25
#: how long the kit waits before it calls a request unanswered
REQUEST_TIMEOUT_S = 1.0
#: STATUS period tolerance: the median interval within 10 % (and at least 50 ms) of
#: interval_ms, and no interval over twice it
INTERVAL_TOLERANCE = 0.10
INTERVAL_SLACK_S = 0.05


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of the spec a device must keep."""

    id: str
    group: str
    statement: str
    #: where the spec says it (section number and title)
    section: str
    #: the only frame profile it applies to (None: every one)
    frames: str | None = None


def _rules(*rows: tuple[str, ...]) -> dict[str, Rule]:
    out = {}
    for row in rows:
        rule = Rule(*row)
        if rule.group == "ms720":
            rule = Rule(*row, frames="ms720")
        out[rule.id] = rule
    return out


RULES: dict[str, Rule] = _rules(
    # --- registration (section 3, "Registration")
    ("REG-1", "registration", "Sends HELLO at start-up (or after a reboot the kit asks for)",
     "3 Registration"),
    ("REG-2", "registration", "Repeats HELLO about every second (0.5-1.5 s) until HELLO_ACK",
     "3 Registration"),
    ("REG-3", "registration", "HELLO is well-formed: proto 1, 8-byte uid, fw major.minor.patch, "
     "ASCII model of at most 32 bytes, ASCII caps", "3 Commands (HELLO)"),
    ("REG-4", "registration", "Stops sending HELLO once it has a HELLO_ACK", "3 Registration"),
    ("REG-5", "registration", "Uses the heartbeat_s of HELLO_ACK: PINGs every heartbeat_s",
     "3 Registration"),
    ("REG-6", "registration", "NACK 5 (not registered) to its PING makes it send HELLO again, "
     "with the same uid", "3 Registration; NACK codes"),
    # --- liveness (section 3)
    ("LIV-1", "liveness", f"Answers PING (empty or with uptime_s) with an empty PONG within "
     f"{int(ANSWER_BOUND_S * 1000)} ms", "2 Request/response; 3 Commands (PING, PONG)"),
    ("LIV-2", "liveness", "Keeps its heartbeat: while registered, never more than 1.5 x "
     "heartbeat_s without a PING", "3 Registration"),
    # --- framing (section 1; section 4 on ms720)
    ("FRM-1", "framing", "Every frame it sends has the header, a length within bounds and a "
     "correct checksum (ms720: sync, length, CRC-16)", "1 Frame profile mcp; 4 ms720"),
    ("FRM-2", "framing", "Ignores garbage bytes and answers the next good request",
     "1 Receiving a byte stream"),
    ("FRM-3", "framing", "Does not act on a frame with a bad checksum, and answers the next "
     "good request", "1 Receiving a byte stream"),
    ("FRM-4", "framing", "Drops a truncated frame after the inter-frame timeout (100 ms) and "
     "answers the next good request", "1 Receiving a byte stream"),
    ("FRM-5", "framing", "Understands a frame split across writes (byte by byte, and in two "
     "parts)", "1 Receiving a byte stream"),
    # --- requests (sections 2 and 3)
    ("REQ-1", "requests", "READ of each key of the profile answers READ_RESP with that key and "
     "a value of the key's type within its bounds", "3 Commands (READ, READ_RESP); profile"),
    ("REQ-2", "requests", "WRITE of a valid value to each read-write key answers WRITE_ACK "
     "status 0, and the value reads back", "3 Commands (WRITE, WRITE_ACK); profile"),
    ("REQ-3", "requests", "WRITE to a read-only key answers WRITE_ACK with status 6 (denied)",
     "3 Commands (WRITE_ACK); NACK codes"),
    ("REQ-4", "requests", "READ or WRITE of a key the profile does not have answers code 2 "
     "(bad payload)", "3 NACK codes"),
    ("REQ-5", "requests", "An unknown command answers NACK with code 1 (unknown command)",
     "2 Request/response; 3 NACK codes"),
    ("REQ-6", "requests", "A READ or WRITE with a malformed payload answers NACK with code 2 "
     "(bad payload)", "3 NACK codes"),
    ("REQ-7", "requests", "Each device-specific command of the profile answers cmd | 0x80 "
     "with its declared response layout", "3 Commands (0x30-0x6F); profile"),
    ("REQ-8", "requests", "On mcp, one answer per request: never a second one, never one "
     "nobody asked for (the gateway keeps one request in flight)", "2 Request/response",
     "mcp"),
    # --- telemetry (section 3 and the profile)
    ("TEL-1", "telemetry", "Every STATUS payload decodes by the profile's layout",
     "3 Commands (STATUS); profile"),
    ("TEL-2", "telemetry", "STATUS arrives every interval_ms (median within 10 % or 50 ms, "
     "no interval over twice it)", "3 env-sensor example; profile"),
    ("TEL-3", "telemetry", "A WRITE of interval_ms changes the STATUS period at once",
     "3 env-sensor example; profile"),
    ("TEL-4", "telemetry", "LOG frames are well-formed: level 0-4, UTF-8 text",
     "3 Commands (LOG)"),
    # --- the ms720 link (section 4)
    ("LNK-1", "ms720", "Acknowledges every data and control frame with an ACK of its seq",
     "4 Frame profile ms720"),
    ("LNK-2", "ms720", "Sends an unacknowledged frame again after about 200 ms (150-400 ms), "
     "at most the configured number of times", "4 Frame profile ms720"),
    ("LNK-3", "ms720", "A duplicate (same seq) is acknowledged again but delivered once",
     "4 Frame profile ms720"),
    ("LNK-4", "ms720", "A frame with a bad CRC is NACKed or ignored, never acted on",
     "4 Frame profile ms720"),
    ("LNK-5", "ms720", "A response carries the seq of its request in the 4 bytes after its "
     "cmd_id", "4 Frame profile ms720"),
    ("LNK-6", "ms720", "Its seq goes up by one for each new frame, wrapping at 2^32",
     "4 Frame profile ms720"),
    ("LNK-7", "ms720", "Accepts the kit's seq wrapping from 0xFFFFFFFF to 0",
     "4 Frame profile ms720"),
    ("LNK-8", "ms720", "Several requests in flight are all answered", "4 Frame profile ms720"),
)


def applies(rule: Rule, frames: str) -> bool:
    """The rule holds on a line of frame profile ``frames``."""
    return rule.frames is None or rule.frames == frames


def select(only: list[str] | None, frames: str) -> list[Rule]:
    """The rules a run checks on a ``frames`` line: all that apply, or those ``only`` names
    (groups or rule ids, any case); ``ValueError`` for a word that is neither, or a rule
    of another frame profile."""
    if not only:
        return [r for r in RULES.values() if applies(r, frames)]
    picked: set[str] = set()
    for word in only:
        if word.lower() in GROUPS:
            group = [r for r in RULES.values() if r.group == word.lower()]
            if not any(applies(r, frames) for r in group):
                raise ValueError(f"--only {word}: the {word.lower()} group checks the "
                                 f"{group[0].frames} link: give --frames {group[0].frames}")
            picked.update(r.id for r in group if applies(r, frames))
        elif word.upper() in RULES:
            rule = RULES[word.upper()]
            if not applies(rule, frames):
                raise ValueError(f"--only {word}: {rule.id} is a rule of {rule.frames} lines "
                                 f"(give --frames {rule.frames})")
            picked.add(rule.id)
        else:
            raise ValueError(f"--only {word}: not a group ({', '.join(GROUPS)}) nor a rule id "
                             f"(REG-1 ... {list(RULES)[-1]})")
    return [r for r in RULES.values() if r.id in picked]
