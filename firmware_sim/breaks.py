"""Named faults that break one rule of the serial spec each, so the conformance kit's own
tests prove every check can fail (``Faults(breaks={"wrong-pong"})``, ``mcp-sim --break``).

Each names the rule it breaks and what the firmware then does wrong; ``also`` lists the
rules that may fail with it because they rest on the same behaviour. The simulated device
asks ``Faults.broken(name)`` at the one place that behaviour lives.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Break:
    name: str
    #: the rule id (gateway.conformance.rules) this breaks
    rule: str
    what: str
    #: rules that may fail with it (they rest on the same behaviour)
    also: tuple[str, ...] = ()
    #: the frame profile it needs (None: either)
    frames: str | None = None


BREAKS: dict[str, Break] = {b.name: b for b in (
    # registration
    Break("no-hello", "REG-1", "never sends HELLO",
          also=("REG-2", "REG-3", "REG-4", "REG-5", "REG-6", "LIV-2")),
    Break("hello-once", "REG-2", "sends HELLO once at start-up, never again until a reboot",
          also=("REG-6", "LIV-2")),
    Break("bad-hello", "REG-3", "sends HELLO with proto 2 and a 40-byte model"),
    Break("hello-after-ack", "REG-4", "goes on sending HELLO every second after HELLO_ACK"),
    Break("ignores-heartbeat", "REG-5", "keeps its own 5 s heartbeat whatever HELLO_ACK says",
          also=("LIV-2", "REG-6")),
    Break("ignores-nack5", "REG-6", "does not register again after NACK 5 to its PING"),
    Break("new-uid", "REG-6", "registers again with another uid after NACK 5"),
    # liveness
    Break("wrong-pong", "LIV-1", "answers PING with a PONG that carries 4 payload bytes"),
    Break("slow-pong", "LIV-1", "answers PING after 400 ms"),
    Break("stops-heartbeat", "LIV-2", "sends two PINGs after registering, then no more"),
    # framing
    Break("bad-checksum", "FRM-1", "sends every other STATUS frame with a wrong checksum "
          "(ms720: CRC)", also=("TEL-2",)),
    # (mcp only: on ms720 the kit's frames lost while it is deaf leave gaps in its seqs
    # that hold every later frame back, which no one rule owns)
    Break("no-resync", "FRM-2", "after bytes that are no frame, ignores everything it "
          "receives for 1 s", also=("FRM-3", "FRM-4"), frames="mcp"),
    Break("acts-on-bad-checksum", "FRM-3", "acts on frames whose checksum (ms720: CRC) is "
          "wrong", also=("LNK-4",)),
    Break("no-frame-timeout", "FRM-4", "never drops a partial frame (no inter-frame "
          "timeout)"),
    Break("whole-writes-only", "FRM-5", "drops a read that ends inside a frame"),
    # requests
    Break("wrong-read-key", "REQ-1", "answers READ with another key (key ^ 0x8000)",
          also=("REQ-2", "REQ-3")),  # both read a key before and after writing it
    Break("write-not-stored", "REQ-2", "acknowledges a WRITE but keeps the old value",
          also=("TEL-3",)),
    Break("readonly-writable", "REQ-3", "stores a WRITE to a read-only key and answers 0"),
    Break("unknown-key-answered", "REQ-4", "answers READ of an unknown key with a READ_RESP "
          "of four zero bytes"),
    Break("no-unknown-nack", "REQ-5", "ignores commands it does not know"),
    Break("no-bad-payload-nack", "REQ-6", "ignores a READ or WRITE with a malformed payload"),
    Break("wrong-command-layout", "REQ-7", "answers device-specific commands one byte short"),
    Break("double-answer", "REQ-8", "answers every READ twice", frames="mcp"),
    # telemetry
    Break("short-status", "TEL-1", "sends STATUS one byte short"),
    Break("fast-status", "TEL-2", "sends STATUS at 0.6 x interval_ms", also=("TEL-3",)),
    Break("ignores-interval-write", "TEL-3", "stores a WRITE of interval_ms but keeps its "
          "STATUS period"),
    Break("bad-log", "TEL-4", "sends LOG frames with level 9 and text that is not UTF-8"),
    # the ms720 link
    Break("no-link-ack", "LNK-1", "never sends ACK frames", frames="ms720",
          also=("LNK-3",)),
    Break("no-retransmit", "LNK-2", "sends an unacknowledged frame once only",
          frames="ms720"),
    Break("retransmit-forever", "LNK-2", "sends an unacknowledged frame again 10 times",
          frames="ms720"),
    Break("duplicate-delivery", "LNK-3", "acts on a duplicate (same seq) again",
          frames="ms720"),
    Break("wrong-request-seq", "LNK-5", "tags responses with the request's seq + 1",
          frames="ms720", also=("LIV-1", "REQ-1", "REQ-2", "REQ-3", "REQ-4", "REQ-5",
                                "REQ-6", "REQ-7", "TEL-3", "LNK-3", "LNK-4", "LNK-7",
                                "LNK-8", "REG-6")),
    Break("seq-skips", "LNK-6", "its seq goes up by two per frame", frames="ms720"),
    Break("wrap-rejected", "LNK-7", "ignores frames whose seq wrapped past 0xFFFFFFFF (seqs "
          "compared as plain numbers: they look like duplicates, acknowledged and dropped)",
          frames="ms720", also=("LNK-8",)),
    Break("no-pipelining", "LNK-8", "takes one request at a time: one that arrives before "
          "the answer to the one before is acknowledged (within 0.5 s) is acknowledged but "
          "never answered", frames="ms720"),
)}


def check_breaks(names: frozenset[str]) -> None:
    """``ValueError`` naming a break that does not exist."""
    unknown = sorted(names - BREAKS.keys())
    if unknown:
        raise ValueError(f"unknown break {', '.join(unknown)}; expected one of "
                         f"{', '.join(BREAKS)}")
