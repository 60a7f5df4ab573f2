"""The request queue on its own: a peer coroutine plays the device (sans-IO, no port needed)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.errors import InvalidRequest
from gateway.frames import Command, Frame
from gateway.transactions import CircuitBreaker, Priority, Signature, Status, Transactions
from tests.harness import running_transactions, wait_for


class Peer:
    """Answers READs after ``delay`` unless ``silent``; records what it was sent."""

    def __init__(self) -> None:
        self.sent: list[Frame] = []
        self.delay = 0.0
        self.silent = False
        self.tx: Transactions | None = None

    async def send(self, frame: Frame) -> None:
        self.sent.append(frame)
        if not self.silent:
            answer = Frame(frame.cmd_id | 0x80, frame.payload[:2] + b"\x01")
            asyncio.get_running_loop().call_later(self.delay, self.tx.on_response, answer)


@contextlib.asynccontextmanager
async def running(peer: Peer, breaker: CircuitBreaker | None = None, **settings):
    async with running_transactions(peer.send, breaker, **settings) as tx:
        peer.tx = tx
        yield tx


def read(key: int) -> Frame:
    return Frame(Command.READ, key.to_bytes(2, "little"))


async def test_fifo_within_a_priority_level_and_high_first():
    peer = Peer()
    peer.delay = 0.02
    async with running(peer) as tx:
        first = asyncio.create_task(tx.request(read(0), priority=Priority.LOW))
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(tx.request(read(k), priority=p)) for k, p in
                 [(1, Priority.LOW), (2, Priority.MEDIUM), (3, Priority.HIGH), (4, Priority.LOW),
                  (5, Priority.HIGH), (6, Priority.MEDIUM)]]
        await asyncio.gather(first, *tasks)
        assert [int.from_bytes(f.payload, "little") for f in peer.sent] == [0, 3, 5, 2, 6, 1, 4]


async def test_a_full_queue_answers_busy():
    peer = Peer()
    peer.delay = 0.05
    async with running(peer, max_queue=2) as tx:
        in_flight = asyncio.create_task(tx.request(read(0)))
        await wait_for(lambda: tx.queue_depth == 1 and not tx._heap, what="it in flight")
        tasks = [asyncio.create_task(tx.request(read(k))) for k in range(1, 4)]
        outcomes = await asyncio.gather(in_flight, *tasks)
        statuses = [o.status for o in outcomes]
        assert statuses == [Status.OK, Status.OK, Status.OK, Status.BUSY]
        assert tx.counters.busy == 1


async def test_a_withdrawn_request_leaves_nothing_behind():
    peer = Peer()
    peer.delay = 0.05
    async with running(peer) as tx:
        first = asyncio.create_task(tx.request(read(1)))
        await asyncio.sleep(0)
        withdrawn = asyncio.create_task(tx.request(read(2)))
        await asyncio.sleep(0)
        withdrawn.cancel()
        assert (await first).status is Status.OK
        assert (await tx.request(read(3))).status is Status.OK
        assert [f.payload[0] for f in peer.sent] == [1, 3]
        assert tx.queue_depth == 0


async def test_a_failed_probe_opens_the_circuit_again():
    peer = Peer()
    peer.silent = True
    breaker = CircuitBreaker(threshold=2, reset_s=0.1)
    async with running(peer, breaker=breaker) as tx:
        outcome = await tx.request(read(1), timeout=0.02, retries=1)
        assert outcome.status is Status.TIMEOUT
        assert (await tx.request(read(1))).status is Status.CIRCUIT_OPEN
        loop = asyncio.get_running_loop()
        await asyncio.sleep(breaker.open_until - loop.time())  # the breaker's own clock
        probe = await tx.request(read(1), timeout=0.02, retries=3)
        assert probe.status is Status.TIMEOUT
        assert probe.tries == 1  # a probe gets one try
        assert (await tx.request(read(1))).status is Status.CIRCUIT_OPEN


def test_signatures_match_by_command_key_and_nack():
    sig = Signature.of(read(7))
    assert sig.answered_by(Frame(0x90, b"\x07\x00\x01"))
    assert not sig.answered_by(Frame(0x90, b"\x08\x00\x01"))
    assert sig.answered_by(Frame(0x7F, bytes([0x10, 2])))
    assert not sig.answered_by(Frame(0x7F, bytes([0x11, 2])))
    assert sig.overlaps(Signature(0x10))
    assert not sig.overlaps(Signature(0x10, 8))


@pytest.mark.parametrize("word", ["high", "medium", "low"])
def test_a_priority_is_its_fabric_word(word):
    assert Priority.parse(word) == word
    assert Priority.parse(Priority.parse(word)) is Priority(word)


@pytest.mark.parametrize("word", ["urgent", "HIGH", "", None, 0, ["high"]])
def test_any_other_priority_is_an_invalid_request_with_one_message(word):
    """The one place a priority is checked (the envelope and ``session.request`` use it)."""
    with pytest.raises(InvalidRequest) as caught:
        Priority.parse(word)
    assert str(caught.value) == f"priority {word!r} is not one of high, medium, low"


def test_priorities_rank_high_before_medium_before_low():
    assert sorted(Priority, key=lambda p: p.rank) == [Priority.HIGH, Priority.MEDIUM,
                                                      Priority.LOW]


class SeqPeer:
    """An ms720-like device: each send gets a seq; answers carry it, in reverse order of
    arrival once ``batch`` requests are in, each READ answered with its arrival number."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.waiting: list[tuple[Frame, int]] = []
        self.next_seq = 1000
        self.tx: Transactions | None = None

    async def send(self, frame: Frame) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self.waiting.append((frame, seq))
        if len(self.waiting) == self.batch:
            for number, (request, request_seq) in reversed(list(enumerate(self.waiting))):
                answer = Frame(request.cmd_id | 0x80, request.payload[:2] + bytes((number,)),
                               request_seq)
                asyncio.get_running_loop().call_soon(self.tx.on_response, answer)
            self.waiting.clear()
        return seq


async def test_pipelined_requests_are_matched_by_their_seq():
    peer = SeqPeer(batch=8)
    async with running(peer, max_in_flight=8) as tx:
        # Eight READs of the same key: only the seq tells their answers apart.
        outcomes = await asyncio.gather(*(tx.request(read(7), timeout=5) for _ in range(8)))
        assert [o.status for o in outcomes] == [Status.OK] * 8
        assert [o.response.payload[2] for o in outcomes] == list(range(8))
        assert tx.peak_in_flight == 8
        assert tx.counters.late_responses == 0


async def test_max_in_flight_is_never_exceeded():
    peer = SeqPeer(batch=3)
    async with running(peer, max_in_flight=3) as tx:
        outcomes = await asyncio.gather(*(tx.request(read(k), timeout=5) for k in range(12)))
        assert all(o.ok for o in outcomes)
        assert tx.peak_in_flight == 3
        assert tx.queue_depth == 0


async def test_on_a_seq_link_an_answer_without_its_seq_or_with_a_wrong_one_answers_nothing():
    peer = SeqPeer(batch=99)  # never answers by itself
    async with running(peer, max_in_flight=4) as tx:
        pending = asyncio.create_task(tx.request(read(1), timeout=0.3, retries=0))
        await wait_for(lambda: peer.waiting, what="the request sent")
        seq = peer.waiting[0][1]
        assert not tx.on_response(Frame(Command.READ_RESP, b"\x01\x00\x05"))  # no seq
        assert not tx.on_response(Frame(Command.READ_RESP, b"\x01\x00\x05", seq + 1))
        assert not tx.on_response(Frame(Command.WRITE_ACK, b"\x01\x00\x00", seq))  # wrong cmd
        assert (await pending).status is Status.TIMEOUT
        assert tx.counters.unmatched_responses == 3
