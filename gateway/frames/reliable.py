"""The `ms720` frame profile as a ``Framing``: its reliable link (spec section 4), for both
ends of a line: the gateway's serial driver and the simulated firmware. Sans-IO: time comes
from the clock it is given (and ``expire(now)``), bytes leave through ``data_to_send()``.

Bytes in -> ``Ms720Deframer`` -> link frames. Every control/data frame received is
acknowledged (ACK with its seq), and delivered once and in seq order: duplicates are
dropped by seq, frames that overtook a lost one wait until it is sent again (or until the
sender must have given up on it, then the gap is skipped and counted: ``expire`` delivers
them). A frame whose CRC failed with a readable header is answered by NACK. Every frame
sent waits for its ACK and is sent again after ``retransmit_s``, up to ``retries`` times: at
once on a NACK, and after ``FAST_RETRANSMIT`` ACKs of frames sent after it (it, or its ACK,
was lost: waiting 200 ms would stall a busy line). Seqs are u32 and wrap; a seq far from
the expected one (the other end restarted with a new first seq) starts the order over.

A sliding window: a frame goes out only less than ``window`` seqs past the oldest one not
yet acknowledged (so the receiver never holds more than that behind a gap); later sends
wait in a backlog, in order. ``can_send`` is True while a send would go out at once, so a
fast sender waits for the line instead of overrunning it.

Responses carry the request's seq after their cmd_id (spec section 4). This layer adds and
strips it, so the layers above speak plain frames: every control/data frame delivered
carries ``request_seq`` (a request's own seq, or for a response the seq it answers), and
a response sent is tagged with its ``request_seq``. Pipelined requests are matched by it.

Timers are due times, not callbacks: each unacknowledged frame's retransmission (in a heap,
entries of acknowledged frames left to fall out lazily, so an ACK costs no search) and one
for the oldest gap; ``deadline`` is the earliest of them and the deframer's.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from gateway.frames.deframer import DEFAULT_INTER_FRAME_TIMEOUT, DeframerStats
from gateway.frames.ms720 import (
    SEQ_MODULUS,
    LinkFrame,
    Ms720Deframer,
    MsgType,
    carries_request_seq,
    carrying,
    encode_bare,
)
from gateway.frames.wire import Frame
from gateway.settings import LinkSettings

log = logging.getLogger(__name__)

RETRANSMIT_S = 0.2
RETRIES = 3
#: a frame may go out at most this many seqs past the oldest unacknowledged one
SEND_WINDOW = 128
#: ACKs of later frames after which an unacknowledged frame is sent again at once
FAST_RETRANSMIT = 3
#: seqs this far behind the next expected one are duplicates; further away either side,
#: the sender has restarted (or gone on past seqs it gave up on)
WINDOW = 1024
#: the largest send window: a sender this far past a seq has given up on it
MAX_SEND_WINDOW = 512
#: a sequence's first good frame may follow this many NACKed ones that come again
START_LOOKBACK = 8

_STATS = DeframerStats.__slots__


@dataclass(slots=True)
class LinkCounters:
    """What the link layer did."""

    sent: int = 0
    retransmits: int = 0
    lost: int = 0
    acks_in: int = 0
    acks_out: int = 0
    nacks_in: int = 0
    nacks_out: int = 0
    duplicates: int = 0
    #: frames held back because they overtook a lost one
    reordered: int = 0
    #: seqs given up on (the sender ran out of retransmissions)
    gaps_skipped: int = 0
    restarts: int = 0
    #: sends that waited in the backlog because the window was full
    window_waits: int = 0
    #: retransmissions before the timer, because later frames were acknowledged
    fast_retransmits: int = 0


_LINK = tuple(f.name for f in fields(LinkCounters))


@dataclass(slots=True)
class _Pending:
    """A frame sent and not yet acknowledged."""

    wire: bytes
    #: when it is sent again (its entry in the heap of due times)
    due: float
    #: when it was last transmitted, as a count of transmissions
    order: int
    tries: int = 0
    #: ACKs of frames transmitted after it since then
    passed: int = 0


class Ms720Framing:
    """``Framing`` for `ms720` lines: ``feed(bytes) -> [Frame]``, ``send(Frame) -> seq``,
    ``expire(now)`` at ``deadline``; the wire bytes come out of ``data_to_send()``."""

    name: ClassVar[str] = "ms720"
    pipelined: ClassVar[bool] = True
    default_in_flight: ClassVar[int] = 16
    max_in_flight: ClassVar[int] = 64
    retransmits: ClassVar[bool] = True

    def __init__(self, link: LinkSettings | None = None, *,
                 timeout: float = DEFAULT_INTER_FRAME_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic,
                 first_seq: int | None = None,
                 retransmit_s: float | None = None, retries: int | None = None,
                 window: int | None = None) -> None:
        link = link or LinkSettings()
        retransmit_s = link.retransmit_s if retransmit_s is None else retransmit_s
        retries = link.retries if retries is None else retries
        window = link.window if window is None else window
        if not 1 <= window <= MAX_SEND_WINDOW:
            raise ValueError(f"window must be 1..{MAX_SEND_WINDOW}, got {window}")
        self.retransmit_s = retransmit_s
        self.retries = retries
        self.window = window
        self._clock = clock
        # Expiry by the caller's timer only (expire at deadline), as for mcp.
        self.deframer = Ms720Deframer(timeout=timeout, clock=clock, expire_on_feed=False)
        self.restart_clock: Callable[[], None] = self.deframer.restart_clock
        self.link_counters = LinkCounters()
        self._out: list[bytes] = []
        self._next_seq = (1 if first_seq is None else first_seq) % SEQ_MODULUS
        #: unacknowledged frames by seq, in the order they were first sent
        self._pending: dict[int, _Pending] = {}
        #: (due, seq) of every retransmission timer; entries whose frame is gone (or whose
        #: due moved) are stale and skipped
        self._dues: list[tuple[float, int]] = []
        self._order = 0  # transmissions so far, retransmissions included
        self._backlog: deque[tuple[int, bytes]] = deque()
        self._expected: int | None = None
        #: the newest seq received of the current sequence
        self._newest = 0
        #: frames that overtook a missing one: seq -> (frame, arrival time), in arrival order
        self._held: dict[int, tuple[LinkFrame, float]] = {}
        #: the last seqs NACKed: a sequence may start at one of them (see _start_of)
        self._nacked: deque[int] = deque(maxlen=START_LOOKBACK)
        self._gap_due: float | None = None
        #: how long a gap waits for its frame: the sender's every retransmission, and one more
        self.gap_s = retransmit_s * (retries + 2)

    @property
    def stats(self) -> DeframerStats:
        """The deframer's counters (bytes, frames, CRC errors...)."""
        return self.deframer.stats

    @property
    def in_flight(self) -> int:
        """Frames sent and not yet acknowledged."""
        return len(self._pending)

    @property
    def backlog(self) -> int:
        """Frames waiting for room in the window."""
        return len(self._backlog)

    @property
    def buffered(self) -> int:
        """Bytes of a partial frame held."""
        return self.deframer.buffered

    @property
    def can_send(self) -> bool:
        """True while a send would go out at once (no backlog, the window open)."""
        return not self._backlog and self._window_open(self._next_seq)

    def data_to_send(self) -> list[bytes]:
        """The writes made since the last call, in order: each frame (or retransmission)
        on its own, and each read's ACKs and NACKs back to back in one."""
        out, self._out = self._out, []
        return out

    def counters(self) -> dict[str, int]:
        """The deframer's counters and the link's, as ``link_<name>``."""
        stats, link = self.deframer.stats, self.link_counters
        out = {name: getattr(stats, name) for name in _STATS}
        out.update({f"link_{name}": getattr(link, name) for name in _LINK})
        return out

    @property
    def deadline(self) -> float | None:
        """The earliest of: a partial frame going stale, a retransmission, the gap timer."""
        times = [t for t in (self.deframer.deadline, self._gap_due, self._next_retry())
                 if t is not None]
        return min(times) if times else None

    def _next_retry(self) -> float | None:
        """When the next retransmission is due; the timers of frames acknowledged (or sent
        again) since are dropped from the heap on the way."""
        dues, pending = self._dues, self._pending
        while dues:
            due, seq = dues[0]
            entry = pending.get(seq)
            if entry is not None and entry.due == due:
                return due
            heapq.heappop(dues)
        return None

    # ------------------------------------------------------------------ in

    def feed(self, data: bytes) -> list[Frame]:
        """Bytes from the line; the new frames for the layer above."""
        return self._take(self.deframer.feed(data))

    def expire(self, now: float) -> list[Frame]:
        """Run what is due at ``now``, in time order: a stale partial frame is dropped (and
        frames found behind it taken), frames are sent again or given up, a gap whose frames
        can no longer come is skipped; the frames that delivers."""
        frames = self._take(self.deframer.expire(now)) if self.deframer.buffered else []
        while True:
            retry_at = self._next_retry()
            gap_at = self._gap_due
            if gap_at is not None and gap_at <= now and (retry_at is None or gap_at <= retry_at):
                frames += self._gap_expired(now)
            elif retry_at is not None and retry_at <= now:
                self._retry(heapq.heappop(self._dues)[1], now)
            else:
                return frames

    def watch(self, data: bytes) -> list[dict[str, Any]]:
        """Bytes from a line only listened to (nothing acknowledged, nothing held): every
        link frame as it comes, duplicates included: ``{"frame": Frame, "seq": n,
        "msg_type": t}``, or ``{"link": "ack"|"nack", "seq": n}``; each with its ``wire``
        bytes."""
        return self._watched(self.deframer.feed(data))

    def watch_expire(self, now: float) -> list[dict[str, Any]]:
        """A listener's ``expire``: the frames found behind a stale partial frame (nothing
        is sent, so nothing else is due)."""
        return self._watched(self.deframer.expire(now))

    def _watched(self, links: list[LinkFrame]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for link in links:
            if link.msg_type in (MsgType.ACK, MsgType.NACK):
                out.append({"link": "ack" if link.msg_type == MsgType.ACK else "nack",
                            "seq": link.seq, "wire": link.encode()})
            elif link.payload:
                out.append({"frame": link.frame, "seq": link.seq, "msg_type": link.msg_type,
                            "wire": link.encode()})
        self.deframer.bad_seqs.clear()  # a listener answers nothing
        return out

    def _take(self, links: list[LinkFrame]) -> list[Frame]:
        # Link-level answers to everything read go out in one write.
        counters = self.link_counters
        bad = self.deframer.bad_seqs
        answers = encode_bare(MsgType.NACK, bad) if bad else b""
        counters.nacks_out += len(bad)
        self._nacked.extend(bad)
        bad.clear()
        frames: list[Frame] = []
        to_ack: list[int] = []
        acked = False
        for link in links:
            kind = link.msg_type
            if kind == MsgType.ACK:
                acked |= self._acked(link.seq)
            elif kind == MsgType.NACK:
                counters.nacks_in += 1
                self._resend_now(link.seq)
            elif kind in (MsgType.DATA, MsgType.CONTROL) and link.payload:
                to_ack.append(link.seq)
                frames += self._in_order(link)
        if to_ack:
            counters.acks_out += len(to_ack)
            answers += encode_bare(MsgType.ACK, to_ack)
        if answers:
            self._out.append(answers)
        if acked:
            self._pump()
        return frames

    def _in_order(self, link: LinkFrame) -> list[Frame]:
        seq = link.seq
        if self._expected is None:
            self._expected, self._newest = self._start_of(seq), seq
        ahead = (seq - self._expected) % SEQ_MODULUS
        if ahead >= SEQ_MODULUS - WINDOW or seq in self._held:
            self.link_counters.duplicates += 1
            return []
        frames: list[Frame] = []
        if ahead >= WINDOW:
            if self._held and (seq - self._newest) % SEQ_MODULUS < WINDOW:
                # Next to the newest frame held: the sender went on past seqs it gave up on
                # (its window, at most MAX_SEND_WINDOW, slides past them). Whatever is
                # missing a whole WINDOW before this frame will never come.
                frames = self._give_up_before((seq - WINDOW + 1) % SEQ_MODULUS)
            else:  # far from everything: the other end restarted with a new sequence
                self.link_counters.restarts += 1
                self._held.clear()
                self._expected = self._start_of(seq)
            ahead = (seq - self._expected) % SEQ_MODULUS
        if (seq - self._newest) % SEQ_MODULUS < WINDOW:
            self._newest = seq
        if ahead:
            self.link_counters.reordered += 1
            now = self._clock()
            self._held[seq] = (link, now)
            if self._gap_due is None:
                self._gap_due = now + self.gap_s
            return frames
        frames.append(link.frame)
        self._expected = (seq + 1) % SEQ_MODULUS
        return frames + self._drain()

    def _start_of(self, seq: int) -> int:
        """Where a sequence whose first good frame is ``seq`` starts: at a frame just before
        it that failed its CRC (NACKed, so it comes again), else at ``seq``."""
        behind = [(seq - bad) % SEQ_MODULUS for bad in self._nacked]
        behind = [d for d in behind if 0 < d <= START_LOOKBACK]
        return (seq - max(behind)) % SEQ_MODULUS if behind else seq

    def _drain(self) -> list[Frame]:
        """Deliver held frames from the expected seq on, while they follow one another."""
        out = []
        expected, held = self._expected, self._held
        assert expected is not None
        while expected in held:
            out.append(held.pop(expected)[0].frame)
            expected = (expected + 1) % SEQ_MODULUS
        self._expected = expected
        if not held:
            self._gap_due = None
        return out

    def _give_up_before(self, bound: int) -> list[Frame]:
        """Seqs before ``bound`` still missing will never come: deliver the frames held
        before it, in order, count the missing ones as skipped, and go on from ``bound``."""
        expected = self._expected
        assert expected is not None
        span = (bound - expected) % SEQ_MODULUS
        below = sorted((s for s in self._held if (s - expected) % SEQ_MODULUS < span),
                       key=lambda s: (s - expected) % SEQ_MODULUS)
        self.link_counters.gaps_skipped += span - len(below)
        frames = [self._held.pop(s)[0].frame for s in below]
        self._expected = bound
        return frames + self._drain()

    def _gap_expired(self, now: float) -> list[Frame]:
        """A seq missing before a frame held for ``gap_s`` has had every retransmission its
        sender would make (it was sent before that frame): give up on those seqs."""
        self._gap_due = None
        held, expected = self._held, self._expected
        if not held or expected is None:
            return []
        cutoff = now - self.gap_s
        bound = None
        for seq, (_, arrived) in held.items():  # in arrival order
            if arrived > cutoff:
                break
            if bound is None or (seq - expected) % SEQ_MODULUS > (bound - expected) % SEQ_MODULUS:
                bound = seq
        frames = self._give_up_before(bound) if bound is not None else []
        if held:
            self._gap_due = next(iter(held.values()))[1] + self.gap_s
        return frames

    def _acked(self, seq: int) -> bool:
        self.link_counters.acks_in += 1
        acked = self._pending.pop(seq, None)
        if acked is None:
            return False
        # Its timer entry in the heap is now stale: skipped when it comes up.
        # Frames sent before this one and still unacknowledged were lost, or their ACK was:
        # after FAST_RETRANSMIT such ACKs, send them again without waiting for the timer.
        again = []
        for older, entry in self._pending.items():
            if (seq - older) % SEQ_MODULUS >= WINDOW:
                break  # sent after the acknowledged one (the dict is in send order)
            if entry.order < acked.order:
                entry.passed += 1
                if entry.passed == FAST_RETRANSMIT:
                    again.append(older)
        if again:
            now = self._clock()
            for older in again:
                self.link_counters.fast_retransmits += 1
                self._resend_now(older, now)
        return True

    # ------------------------------------------------------------------ out

    def send(self, frame: Frame, msg_type: int = MsgType.DATA) -> int:
        """Send a frame reliably (now, or after the backlog when the window is full);
        returns its seq. A response is tagged with its ``request_seq`` (0 if it has none)."""
        seq = self._next_seq
        self._next_seq = (seq + 1) % SEQ_MODULUS
        if frame.request_seq is None and carries_request_seq(frame.cmd_id):
            log.debug("ms720: response %r has no request seq: tagged 0", frame)
        wire = carrying(frame, seq, msg_type).encode()
        self.link_counters.sent += 1
        if self._backlog or not self._window_open(seq):
            self.link_counters.window_waits += 1
            self._backlog.append((seq, wire))
        else:
            self._transmit(seq, wire, self._clock())
        return seq

    def _window_open(self, seq: int) -> bool:
        """True if ``seq`` may go out: less than ``window`` past the oldest unacknowledged
        frame (so the other end never sees a frame further ahead than it can hold)."""
        pending = self._pending
        return not pending or (seq - next(iter(pending))) % SEQ_MODULUS < self.window

    def _transmit(self, seq: int, wire: bytes, now: float) -> None:
        self._out.append(wire)
        self._order += 1
        due = now + self.retransmit_s
        self._pending[seq] = _Pending(wire, due, self._order)
        heapq.heappush(self._dues, (due, seq))

    def _pump(self, now: float | None = None) -> None:
        """Send from the backlog while the window is open."""
        backlog = self._backlog
        if backlog and self._window_open(backlog[0][0]):
            now = self._clock() if now is None else now
            while backlog and self._window_open(backlog[0][0]):
                self._transmit(*backlog.popleft(), now)

    def _retry(self, seq: int, now: float) -> None:
        entry = self._pending.get(seq)
        if entry is None:
            return
        if entry.tries >= self.retries:
            del self._pending[seq]
            self.link_counters.lost += 1
            log.debug("ms720: seq %d not acknowledged after %d retransmissions", seq, entry.tries)
            self._pump(now)
            return
        self.link_counters.retransmits += 1
        self._out.append(entry.wire)
        self._order += 1
        entry.tries += 1
        entry.order = self._order
        entry.passed = 0
        entry.due = now + self.retransmit_s
        heapq.heappush(self._dues, (entry.due, seq))

    def _resend_now(self, seq: int, now: float | None = None) -> None:
        if seq in self._pending:
            self._retry(seq, self._clock() if now is None else now)

    def close(self) -> None:
        """The line is gone: frames not yet acknowledged or sent are given up."""
        self._pending.clear()
        self._dues.clear()
        self._backlog.clear()
        self._out.clear()
        self._gap_due = None
