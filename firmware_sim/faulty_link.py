"""The simulated firmware's ms720 link with its named link breaks (``firmware_sim.breaks``):
the gateway's own ``Ms720Framing``, each break one override at the place the link does
that job, so a conformant device runs the very code the gateway does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.frames.framing import Framing, framing_for
from gateway.frames.ms720 import OVERHEAD, SEQ_MODULUS, LinkFrame, MsgType, carries_request_seq
from gateway.frames.reliable import Ms720Framing
from gateway.frames.wire import Frame
from gateway.settings import LinkSettings

#: the breaks this framing implements
LINK_BREAKS = frozenset({"no-link-ack", "no-retransmit", "retransmit-forever",
                         "duplicate-delivery", "wrong-request-seq", "seq-skips",
                         "wrap-rejected", "no-pipelining"})
#: retransmissions of the firmware that does not stop at the configured number
FOREVER_RETRIES = 10
#: the firmware that takes one request at a time holds it this long at most
ONE_REQUEST_HOLD_S = 0.5


def sim_framing(broken: Callable[[str], bool], link: LinkSettings, *,
                clock: Callable[[], float] = time.monotonic,
                first_seq: int | None = None) -> Framing:
    """The simulated device's framing: the gateway's own, or on ms720 with a link break
    on, ``FaultyMs720Framing``."""
    if link.frames == Ms720Framing.name and any(broken(name) for name in LINK_BREAKS):
        return FaultyMs720Framing(broken, link, clock=clock, first_seq=first_seq)
    return framing_for(link, clock=clock, first_seq=first_seq)


class FaultyMs720Framing(Ms720Framing):
    """``Ms720Framing`` with the link breaks ``broken`` says are on."""

    def __init__(self, broken: Callable[[str], bool], link: LinkSettings, *,
                 clock: Callable[[], float] = time.monotonic,
                 first_seq: int | None = None) -> None:
        super().__init__(link, clock=clock, first_seq=first_seq)
        self.broken = broken
        if broken("no-retransmit"):
            self.retries = 0
        elif broken("retransmit-forever"):
            self.retries = FOREVER_RETRIES
        #: wrap-rejected: the highest seq received, compared as a plain number
        self._top_seq: int | None = None
        #: no-pipelining: the request being handled (its seq, since when), and the seq of
        #: its answer once sent
        self._holding: tuple[int | None, float] | None = None
        self._held_answer: int | None = None

    # ------------------------------------------------------------------ out

    def send(self, frame: Frame, msg_type: int = MsgType.DATA) -> int:
        answers = frame.request_seq
        if (self.broken("wrong-request-seq") and answers is not None
                and carries_request_seq(frame.cmd_id)):
            frame = frame._replace(request_seq=(answers + 1) % SEQ_MODULUS)
        seq = super().send(frame, msg_type)
        if self.broken("seq-skips"):
            self._next_seq = (self._next_seq + 1) % SEQ_MODULUS
        holding = self._holding
        if holding is not None and carries_request_seq(frame.cmd_id) and answers == holding[0]:
            self._held_answer = seq
        return seq

    def data_to_send(self) -> list[bytes]:
        out = super().data_to_send()
        if not self.broken("no-link-ack"):
            return out
        kept = []
        for chunk in out:
            if chunk[4:6] == b"\0\0":  # a read's link answers: bare frames back to back
                bare = (chunk[i:i + OVERHEAD] for i in range(0, len(chunk), OVERHEAD))
                kept.append(b"".join(f for f in bare if f[6] != MsgType.ACK))
            else:
                kept.append(chunk)
        return [chunk for chunk in kept if chunk]

    # ------------------------------------------------------------------ in

    def _in_order(self, link: LinkFrame) -> list[Frame]:
        if self.broken("wrap-rejected"):
            # Seqs compared as plain numbers: after 0xFFFFFFFF every frame looks old.
            if self._top_seq is not None and link.seq <= self._top_seq:
                self.link_counters.duplicates += 1
                return []
            self._top_seq = link.seq
        duplicates = self.link_counters.duplicates
        frames = super()._in_order(link)
        if self.broken("duplicate-delivery") and self.link_counters.duplicates > duplicates:
            return [link.frame]
        return frames

    def _take(self, links: list[LinkFrame]) -> list[Frame]:
        frames = super()._take(links)
        if not self.broken("no-pipelining"):
            return frames
        now = self._clock()
        kept = []
        for frame in frames:
            if not carries_request_seq(frame.cmd_id):  # a request
                holding = self._holding
                if holding is not None and now - holding[1] < ONE_REQUEST_HOLD_S:
                    continue  # busy with the one before: dropped (it was acknowledged)
                self._holding, self._held_answer = (frame.request_seq, now), None
            kept.append(frame)
        return kept

    def _acked(self, seq: int) -> bool:
        if self._held_answer is not None and seq == self._held_answer:
            self._holding = self._held_answer = None  # its answer is through: the next one
        return super()._acked(seq)
