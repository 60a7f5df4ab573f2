"""The ms720 reliable link's rules, two ends wired back to back (no port): order, duplicates,
gaps, wrap, restarts, retransmission, NACK, and the request seq in responses.

The link is sans-IO: each test owns its clock and runs the link's timers with
``expire(now)``, so a timeline is exact and takes no time."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.frames import Frame
from gateway.frames.ms720 import SEQ_MODULUS, LinkFrame, MsgType
from gateway.frames.reliable import Ms720Framing


class Clock:
    """The test's time: it moves only when the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Wire:
    """Collects what one end writes; the test decides what reaches the other end."""

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self.link: Ms720Framing | None = None

    @property
    def out(self) -> list[bytes]:
        """The writes so far (taken from the link's ``data_to_send``)."""
        if self.link is not None:
            self._out += self.link.data_to_send()
        return self._out

    def take(self) -> list[bytes]:
        out = self.out
        self._out = []
        return out


def reliable_link(wire: Wire, *, clock: Clock | None = None, **knobs: float) -> Ms720Framing:
    """An ms720 link whose writes ``wire`` collects."""
    link = Ms720Framing(clock=clock or Clock(), **knobs)  # type: ignore[arg-type]
    wire.link = link
    return link


def run_timers(link: Ms720Framing, clock: Clock, until: Callable[[], object] | None = None,
               step: float = 0.001, seconds: float = 60.0) -> list[Frame]:
    """Move the clock on by ``step`` and run the link's timers, until ``until()`` (None:
    until they deliver a frame); the frames the timers delivered (a timer that never fires
    fails the test)."""
    late: list[Frame] = []
    start = clock.now
    while not (until() if until is not None else late):
        assert clock.now - start < seconds, "the timer never fired"
        clock.now += step
        late += link.expire(clock.now)
    return late


def data(seq: int, cmd: int = 0x20, payload: bytes = b"\x01") -> bytes:
    return LinkFrame(MsgType.DATA, seq, bytes((cmd,)) + payload).encode()


def test_in_order_once_with_duplicates_and_reordering():
    wire = Wire()
    rx = reliable_link(wire)
    assert rx.feed(data(5, payload=b"a")) == [Frame(0x20, b"a", 5)]
    assert rx.feed(data(7, payload=b"c")) == []  # 6 is missing: 7 waits
    assert rx.feed(data(5, payload=b"a")) == []  # a duplicate
    assert rx.feed(data(6, payload=b"b")) == [Frame(0x20, b"b", 6), Frame(0x20, b"c", 7)]
    assert rx.link_counters.duplicates == 1
    assert rx.link_counters.reordered == 1
    acks = [LinkFrame(MsgType.ACK, s).encode() for s in (5, 7, 5, 6)]
    assert wire.take() == acks  # every frame acknowledged, duplicates too
    rx.feed(data(8) + data(9) + data(10))
    # ACKs of one read go out in one write
    assert wire.take() == [b"".join(LinkFrame(MsgType.ACK, s).encode() for s in (8, 9, 10))]


def test_a_gap_the_sender_gave_up_on_is_skipped():
    late: list[Frame] = []
    clock = Clock()
    rx = reliable_link(Wire(), clock=clock, retransmit_s=0.01, retries=1)
    rx.feed(data(1))
    assert rx.feed(data(3, payload=b"x")) == []
    late += run_timers(rx, clock)  # the held frame after the gap timeout
    assert late == [Frame(0x20, b"x", 3)]
    assert rx.link_counters.gaps_skipped == 1


def test_seqs_wrap_and_a_restarted_sender_starts_over():
    rx = reliable_link(Wire())
    top = SEQ_MODULUS - 1
    assert rx.feed(data(top - 1, payload=b"1")) == [Frame(0x20, b"1", top - 1)]
    assert rx.feed(data(0, payload=b"3")) == []  # after the wrap, before top
    assert rx.feed(data(top, payload=b"2")) == [Frame(0x20, b"2", top), Frame(0x20, b"3", 0)]
    assert rx.feed(data(123_456, payload=b"new")) == [Frame(0x20, b"new", 123_456)]  # rebooted
    assert rx.link_counters.restarts == 1


def test_unacknowledged_frames_are_sent_again_then_given_up():
    wire, clock = Wire(), Clock()
    tx = reliable_link(wire, clock=clock, retransmit_s=0.01, retries=2, first_seq=9)
    assert tx.send(Frame(0x20, b"z")) == 9
    run_timers(tx, clock, lambda: tx.link_counters.lost == 1)  # giving up
    sent = wire.take()
    assert sent == [data(9, payload=b"z")] * 3  # the frame, then 2 retransmissions
    assert tx.in_flight == 0
    tx.send(Frame(0x20, b"y"))
    tx.feed(LinkFrame(MsgType.ACK, 10).encode())
    assert tx.in_flight == 0
    assert tx.link_counters.acks_in == 1


def test_a_bad_crc_is_answered_with_nack_and_a_nack_resends_at_once():
    a_wire, b_wire = Wire(), Wire()
    a = reliable_link(a_wire, retransmit_s=10)
    b = reliable_link(b_wire)
    seq = a.send(Frame(0x20, b"hello"))
    corrupt = bytearray(a_wire.take()[0])
    corrupt[-1] ^= 0xFF
    assert b.feed(bytes(corrupt)) == []
    nack = b_wire.take()
    assert nack == [LinkFrame(MsgType.NACK, seq).encode()]
    a.feed(nack[0])
    resent = a_wire.take()  # at once, not after 10 s
    assert b.feed(resent[0]) == [Frame(0x20, b"hello", seq)]
    assert a.link_counters.retransmits == 1


def test_pipelined_responses_carry_each_request_seq():
    a_wire, b_wire = Wire(), Wire()
    gateway, device = reliable_link(a_wire), reliable_link(b_wire)
    seqs = [gateway.send(Frame(0x10, bytes((key, 0)))) for key in (1, 2, 3)]  # READ keys 1-3
    requests = device.feed(b"".join(a_wire.take()))
    assert [r.request_seq for r in requests] == seqs
    b_wire.take()  # the ACKs
    for request in reversed(requests):  # answered out of order
        device.send(Frame(0x90, request.payload + b"\xd2\x04\x00\x00", request.request_seq))
    wires = b_wire.take()
    assert wires[0][12:16] == seqs[2].to_bytes(4, "little")  # after msg header and cmd_id
    answers = gateway.feed(b"".join(wires))
    assert [(a.payload[:1], a.request_seq) for a in answers] == [
        (b"\x03", seqs[2]), (b"\x02", seqs[1]), (b"\x01", seqs[0])]
    assert answers[0] == Frame(0x90, b"\x03\x00\xd2\x04\x00\x00", seqs[2])  # tag stripped


def test_the_send_window_holds_frames_back_until_acks_make_room():
    wire = Wire()
    tx = reliable_link(wire, window=4, first_seq=100)
    seqs = [tx.send(Frame(0x20, bytes((i,)))) for i in range(10)]
    assert seqs == list(range(100, 110))
    assert len(wire.take()) == 4  # the window's worth went out
    assert (tx.in_flight, tx.backlog, tx.can_send) == (4, 6, False)
    tx.feed(LinkFrame(MsgType.ACK, 101).encode() + LinkFrame(MsgType.ACK, 100).encode())
    assert wire.take() == [data(104, payload=b"\x04"), data(105, payload=b"\x05")]  # in order
    assert (tx.in_flight, tx.backlog, tx.can_send) == (4, 4, False)
    tx.feed(b"".join(LinkFrame(MsgType.ACK, s).encode() for s in range(102, 106)))
    assert len(wire.take()) == 4
    assert (tx.in_flight, tx.backlog, tx.can_send) == (4, 0, False)
    tx.feed(LinkFrame(MsgType.ACK, 106).encode() + LinkFrame(MsgType.ACK, 107).encode())
    assert (tx.in_flight, tx.backlog, tx.can_send) == (2, 0, True)
    assert tx.link_counters.window_waits == 6


def test_a_frame_given_up_on_frees_its_place_in_the_window():
    wire, clock = Wire(), Clock()
    tx = reliable_link(wire, clock=clock, window=1, retransmit_s=0.01, retries=0, first_seq=1)
    tx.send(Frame(0x20, b"a"))
    tx.send(Frame(0x20, b"b"))
    assert wire.take() == [data(1, payload=b"a")]
    run_timers(tx, clock, lambda: wire.out)  # the backlog after the first frame was given up
    assert wire.take() == [data(2, payload=b"b")]
    assert tx.link_counters.lost == 1




def test_a_window_slides_from_the_oldest_unacknowledged_frame_and_fast_retransmits():
    wire = Wire()
    tx = reliable_link(wire, window=4, retransmit_s=10, first_seq=1)
    for i in range(1, 7):
        tx.send(Frame(0x20, bytes((i,))))
    assert wire.take() == [data(s, payload=bytes((s,))) for s in (1, 2, 3, 4)]
    tx.feed(LinkFrame(MsgType.ACK, 2).encode() + LinkFrame(MsgType.ACK, 3).encode())
    assert wire.take() == []  # 5 is 4 past 1, which is not acknowledged: it waits
    assert tx.link_counters.retransmits == 0
    tx.feed(LinkFrame(MsgType.ACK, 4).encode())  # a third later frame acknowledged
    assert wire.take() == [data(1, payload=b"\x01")]  # sent again now, not after 10 s
    assert tx.link_counters.fast_retransmits == 1
    tx.feed(LinkFrame(MsgType.ACK, 1).encode())
    assert wire.take() == [data(5, payload=b"\x05"), data(6, payload=b"\x06")]
    assert tx.can_send


def test_a_sender_going_on_past_a_frame_it_gave_up_on_is_not_taken_for_a_restart():
    # The sender's window slides past a frame it gave up on, so it may get further ahead
    # than the receiver's reorder window before the receiver's gap timer skips the gap.
    late: list[Frame] = []
    rx = reliable_link(Wire())
    assert rx.feed(data(1, payload=b"a")) == [Frame(0x20, b"a", 1)]
    # 2 is lost for good; 3 .. 1025 arrive and wait behind it (up to WINDOW - 1 ahead)
    held = b"".join(data(s, payload=s.to_bytes(2, "little")) for s in range(3, 1026))
    assert rx.feed(held) == []
    out = rx.feed(data(1026, payload=b"z"))  # WINDOW past the gap, next to the newest held
    assert [f.request_seq for f in out] == list(range(3, 1027))
    assert rx.link_counters.gaps_skipped == 1
    assert rx.link_counters.restarts == 0
    assert rx.feed(data(1027)) == [Frame(0x20, b"\x01", 1027)]
    late += rx.expire(0.0)  # no time has passed: no timer is due
    assert late == []


def test_a_gap_is_skipped_only_once_its_frames_can_no_longer_come():
    # gap_s = 2 s. Frames 3 and 5 overtake 2 and 4; 2 comes at 1.2 s. When the first gap's
    # timer fires (2 s), 4 has been missing only since 5 came (1 s): too young to skip.
    # (The test's clock is the scenario's timeline: every timer due by then runs.)
    late: list[Frame] = []
    clock = Clock()
    rx = reliable_link(Wire(), clock=clock, retransmit_s=0.4, retries=3)
    assert rx.gap_s == 2.0
    t0 = clock.now

    def at(t: float) -> None:
        nonlocal late
        clock.now = t0 + t
        late += rx.expire(clock.now)

    rx.feed(data(1))
    assert rx.feed(data(3)) == []
    at(1.0)
    assert rx.feed(data(5)) == []
    at(1.2)
    assert [f.request_seq for f in rx.feed(data(2))] == [2, 3]
    at(2.5)
    assert clock.now - t0 < 3.0, "the loop stalled past the scenario's slack"
    assert rx.link_counters.gaps_skipped == 0
    assert late == []
    assert [f.request_seq for f in rx.feed(data(4))] == [4, 5]
    # A gap left alone is skipped one gap_s after the frame behind it came.
    assert rx.feed(data(7)) == []
    late += run_timers(rx, clock, step=0.01, seconds=5)  # 7 after its gap
    assert [f.request_seq for f in late] == [7]
    assert rx.link_counters.gaps_skipped == 1


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_whatever_the_line_does_frames_come_out_in_order_and_at_most_once(data):
    """Frames lost, doubled and overtaking each other (within 8 places), across a seq wrap:
    the receiver delivers a subsequence of what was sent, in order, each once, and every
    frame from the first one it received up to the first lost one (a receiver knows where a
    sequence starts by its first frame: one before it that it never saw, and never NACKed,
    counts as already seen)."""
    count = data.draw(st.integers(1, 200), label="frames")
    first = data.draw(st.sampled_from([0, 7, SEQ_MODULUS - 50, SEQ_MODULUS - 1]), label="first")
    copies = data.draw(st.lists(st.integers(0, 2), min_size=count, max_size=count),
                       label="copies")
    arrivals = sorted(((i + data.draw(st.integers(0, 8)), n, i)
                       for i, c in enumerate(copies) for n in range(c)))

    def main() -> list[int]:
        rx = reliable_link(Wire(), retransmit_s=60)  # no timer fires during the test
        out = []
        for _, _, i in arrivals:
            out += rx.feed(data_frame((first + i) % SEQ_MODULUS, i))
        rx.close()
        return [f.request_seq for f in out]

    delivered = [(seq - first) % SEQ_MODULUS for seq in main()]
    assert delivered == sorted(set(delivered))
    assert set(delivered) <= {i for i, c in enumerate(copies) if c}
    if arrivals:
        start = arrivals[0][2]
        intact = copies.index(0, start) if 0 in copies[start:] else count
        assert set(range(start, intact)) <= set(delivered)


def test_a_sequence_starts_at_a_frame_that_failed_its_crc_just_before_the_first_good():
    rx = reliable_link(Wire())
    bad = bytearray(data(40, payload=b"first"))
    bad[-1] ^= 0xFF
    assert rx.feed(bytes(bad) + data(41, payload=b"second")) == []  # 41 waits for 40
    assert rx.feed(data(40, payload=b"first")) == [Frame(0x20, b"first", 40),
                                                   Frame(0x20, b"second", 41)]
    assert rx.link_counters.duplicates == 0


def data_frame(seq: int, i: int) -> bytes:
    return LinkFrame(MsgType.DATA, seq, b"\x20" + i.to_bytes(2, "little")).encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_bytes_never_break_the_link(chunks):
    link = reliable_link(Wire(), retransmit_s=60)
    for chunk in chunks:
        for frame in link.feed(chunk):
            assert isinstance(frame, Frame)
    link.close()
