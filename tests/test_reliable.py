"""The ms720 reliable link's rules, two ends wired back to back (no port): order, duplicates,
gaps, wrap, restarts, retransmission, NACK, and the request seq in responses."""

from __future__ import annotations

import asyncio

from gateway.drivers.reliable import ReliableLink
from gateway.frames import Frame
from gateway.frames.ms720 import SEQ_MODULUS, LinkFrame, MsgType
from tests.harness import wait_for


class Wire:
    """Collects what one end writes; the test decides what reaches the other end."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.out.append(data)

    def take(self) -> list[bytes]:
        out, self.out = self.out, []
        return out


def data(seq: int, cmd: int = 0x20, payload: bytes = b"\x01") -> bytes:
    return LinkFrame(MsgType.DATA, seq, bytes((cmd,)) + payload).encode()


async def test_in_order_once_with_duplicates_and_reordering():
    wire, late = Wire(), []
    rx = ReliableLink(wire, deliver_late=late.extend)
    assert rx.feed(data(5, payload=b"a")) == [Frame(0x20, b"a")]
    assert rx.feed(data(7, payload=b"c")) == []  # 6 is missing: 7 waits
    assert rx.feed(data(5, payload=b"a")) == []  # a duplicate
    assert rx.feed(data(6, payload=b"b")) == [Frame(0x20, b"b"), Frame(0x20, b"c")]
    assert rx.counters.duplicates == 1
    assert rx.counters.reordered == 1
    acks = [LinkFrame(MsgType.ACK, s).encode() for s in (5, 7, 5, 6)]
    assert wire.take() == acks  # every frame acknowledged, duplicates too


async def test_a_gap_the_sender_gave_up_on_is_skipped():
    late: list[Frame] = []
    rx = ReliableLink(Wire(), deliver_late=late.extend, retransmit_s=0.01, retries=1)
    rx.feed(data(1))
    assert rx.feed(data(3, payload=b"x")) == []
    await wait_for(lambda: late, what="the held frame after the gap timeout")
    assert late == [Frame(0x20, b"x")]
    assert rx.counters.gaps_skipped == 1


async def test_seqs_wrap_and_a_restarted_sender_starts_over():
    rx = ReliableLink(Wire())
    top = SEQ_MODULUS - 1
    assert rx.feed(data(top - 1, payload=b"1")) == [Frame(0x20, b"1")]
    assert rx.feed(data(0, payload=b"3")) == []  # after the wrap, before top
    assert rx.feed(data(top, payload=b"2")) == [Frame(0x20, b"2"), Frame(0x20, b"3")]
    assert rx.feed(data(123_456, payload=b"new")) == [Frame(0x20, b"new")]  # rebooted
    assert rx.counters.restarts == 1


async def test_unacknowledged_frames_are_sent_again_then_given_up():
    wire = Wire()
    tx = ReliableLink(wire, retransmit_s=0.01, retries=2, first_seq=9)
    assert tx.send(Frame(0x20, b"z")) == 9
    await wait_for(lambda: tx.counters.lost == 1, what="giving up")
    sent = wire.take()
    assert sent == [data(9, payload=b"z")] * 3  # the frame, then 2 retransmissions
    assert tx.in_flight == 0
    tx.send(Frame(0x20, b"y"))
    tx.feed(LinkFrame(MsgType.ACK, 10).encode())
    assert tx.in_flight == 0
    assert tx.counters.acks_in == 1


async def test_a_bad_crc_is_answered_with_nack_and_a_nack_resends_at_once():
    a_wire, b_wire = Wire(), Wire()
    a = ReliableLink(a_wire, retransmit_s=10)
    b = ReliableLink(b_wire)
    seq = a.send(Frame(0x20, b"hello"))
    corrupt = bytearray(a_wire.take()[0])
    corrupt[-1] ^= 0xFF
    assert b.feed(bytes(corrupt)) == []
    nack = b_wire.take()
    assert nack == [LinkFrame(MsgType.NACK, seq).encode()]
    a.feed(nack[0])
    resent = a_wire.take()  # at once, not after 10 s
    assert b.feed(resent[0]) == [Frame(0x20, b"hello")]
    assert a.counters.retransmits == 1


async def test_responses_carry_the_request_seq():
    a_wire, b_wire = Wire(), Wire()
    gateway, device = ReliableLink(a_wire), ReliableLink(b_wire)
    seq = gateway.send(Frame(0x10, b"\x01\x00"))  # READ key 1
    assert device.feed(a_wire.take()[0]) == [Frame(0x10, b"\x01\x00")]
    b_wire.take()  # the ACK
    device.send(Frame(0x90, b"\x01\x00\xd2\x04\x00\x00"))  # READ_RESP
    wire = b_wire.take()[0]
    assert wire[12:16] == seq.to_bytes(4, "little")  # after msg header and cmd_id
    assert gateway.feed(wire) == [Frame(0x90, b"\x01\x00\xd2\x04\x00\x00")]
    assert gateway.last_response_to == seq
    await asyncio.sleep(0)
