"""Requests to one device: a priority queue, one in flight, timeouts, retries, a circuit breaker.

Sans-IO apart from the ``send`` coroutine it is given. Frames on the `mcp` profile carry no
sequence number, so responses are matched by ``cmd | 0x80`` (and the key, for READ/WRITE) or
a NACK of the command. A response to a send that was given up on must never be taken for
the answer to a later request: every send is remembered for ``late_window`` seconds, a
response is matched to the oldest remembered send it can answer, and a new request whose
answer could be confused with such a pending one waits until that window has passed.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import LinkClosed
from gateway.frames import Command, Frame
from gateway.frames.commands import RESPONSE_BIT

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    """Order in a device's queue: high before medium before low, FIFO within a level."""

    HIGH = 0
    MEDIUM = 1
    LOW = 2


class Status(enum.StrEnum):
    """How a request ended (the fabric's response status words)."""

    OK = "ok"
    NACK = "nack"
    TIMEOUT = "timeout"
    EXPIRED = "expired"
    OFFLINE = "offline"
    BUSY = "busy"
    CIRCUIT_OPEN = "circuit_open"


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """The typed result of a request."""

    status: Status
    response: Frame | None = None
    nack_code: int | None = None
    tries: int = 0
    latency_s: float = 0.0
    #: the decoded answer (filled in by the device session)
    value: Any = None

    @property
    def ok(self) -> bool:
        """True for status ``ok``."""
        return self.status is Status.OK


@dataclass(frozen=True, slots=True)
class Signature:
    """What answers a request: its cmd's response (with the same key, if any) or its NACK."""

    cmd_id: int
    key: int | None = None

    @classmethod
    def of(cls, frame: Frame) -> Signature:
        """The signature of a request frame (READ and WRITE carry the key first)."""
        if frame.cmd_id in (Command.READ, Command.WRITE) and len(frame.payload) >= 2:
            return cls(frame.cmd_id, int.from_bytes(frame.payload[:2], "little"))
        return cls(frame.cmd_id)

    def answered_by(self, frame: Frame) -> bool:
        """True if ``frame`` can be the answer to a request with this signature."""
        if frame.cmd_id == Command.NACK:
            return len(frame.payload) >= 1 and frame.payload[0] == self.cmd_id
        if frame.cmd_id != self.cmd_id | RESPONSE_BIT:
            return False
        return self.key is None or frame.payload[:2] == self.key.to_bytes(2, "little")

    def overlaps(self, other: Signature) -> bool:
        """True if one frame could answer both."""
        return self.cmd_id == other.cmd_id and (
            self.key is None or other.key is None or self.key == other.key
        )


@dataclass(eq=False)
class _Request:
    frame: Frame
    signature: Signature
    priority: Priority
    ttl: float
    timeout: float
    retries: int
    queued_at: float
    future: asyncio.Future[RequestOutcome]
    tries: int = 0


@dataclass(eq=False, slots=True)
class _Send:
    signature: Signature
    sent_at: float
    forget_at: float
    owner: _Request


@dataclass
class TransactionCounters:
    """Per-device request counters."""

    requests: int = 0
    sent: int = 0
    timeouts: int = 0
    retries: int = 0
    #: responses discarded because no request waits for them (any more)
    late_responses: int = 0
    #: of those, the ones that match no remembered send at all
    unmatched_responses: int = 0
    expired: int = 0
    busy: int = 0
    circuit_open: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class CircuitBreaker:
    """Opens after ``threshold`` consecutive timeouts; after ``reset_s``, one probe may try."""

    def __init__(self, threshold: int = 5, reset_s: float = 30.0) -> None:
        self.threshold = threshold
        self.reset_s = reset_s
        self.consecutive_timeouts = 0
        self.open_until: float | None = None

    def state(self, now: float) -> str:
        """``closed``, ``open`` (fail fast) or ``half_open`` (the next request is a probe)."""
        if self.open_until is None:
            return "closed"
        return "half_open" if now >= self.open_until else "open"

    def record_timeout(self, now: float) -> None:
        """A try got no answer; a failed probe opens the circuit again."""
        self.consecutive_timeouts += 1
        if self.open_until is not None or self.consecutive_timeouts >= self.threshold:
            self.open_until = now + self.reset_s

    def record_answer(self) -> None:
        """The device answered (ok or NACK): close."""
        self.consecutive_timeouts = 0
        self.open_until = None


class Transactions:
    """The request queue and the one request in flight of one device."""

    def __init__(
        self,
        send: Callable[[Frame], Awaitable[None]],
        *,
        max_queue: int = 64,
        breaker: CircuitBreaker | None = None,
        late_window_factor: float = 2.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._send = send
        self.max_queue = max_queue
        self.breaker = breaker or CircuitBreaker()
        self.late_window_factor = late_window_factor
        self.counters = TransactionCounters()
        self._clock = clock or asyncio.get_running_loop().time
        self._heap: list[tuple[int, int, _Request]] = []
        self._order = itertools.count()
        self._queued = asyncio.Event()
        self._sends: deque[_Send] = deque()
        self._send_answered = asyncio.Event()
        self._in_flight: _Request | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting, plus the one in flight."""
        return len(self._heap) + (self._in_flight is not None)

    # ------------------------------------------------------------------ callers

    async def request(
        self,
        frame: Frame,
        *,
        priority: Priority = Priority.MEDIUM,
        ttl: float = 30.0,
        timeout: float = 2.0,  # noqa: ASYNC109 - a per-try timeout, not the call's
        retries: int = 3,
    ) -> RequestOutcome:
        """Queue ``frame`` and wait for its outcome. Cancelling the caller withdraws it."""
        now = self._clock()
        self.counters.requests += 1
        if self.breaker.state(now) == "open":
            return self._count(RequestOutcome(Status.CIRCUIT_OPEN))
        if len(self._heap) >= self.max_queue:
            return self._count(RequestOutcome(Status.BUSY))
        future: asyncio.Future[RequestOutcome] = asyncio.get_running_loop().create_future()
        request = _Request(frame, Signature.of(frame), priority, ttl, timeout, retries, now, future)
        heapq.heappush(self._heap, (priority, next(self._order), request))
        self._queued.set()
        try:
            outcome = await future
        finally:
            if not future.done():
                future.cancel()  # the worker skips cancelled requests
        return outcome

    def fail_all(self, status: Status = Status.OFFLINE) -> None:
        """End every queued and in-flight request with ``status`` (the port went away)."""
        now = self._clock()
        if self._in_flight is not None:
            self._finish(self._in_flight, status, now)
        while self._heap:
            _, _, request = heapq.heappop(self._heap)
            self._finish(request, status, now)

    # ------------------------------------------------------------------ frames in

    def expects(self, frame: Frame) -> bool:
        """True if ``frame`` could answer a send this manager still remembers."""
        return any(send.signature.answered_by(frame) for send in self._sends)

    def on_response(self, frame: Frame) -> bool:
        """Offer a received response-type frame; True if it answered or was a late answer."""
        now = self._clock()
        self._forget_old(now)
        for send in self._sends:
            if send.signature.answered_by(frame):
                self._sends.remove(send)
                self._send_answered.set()
                owner = send.owner
                if owner is self._in_flight and not owner.future.done():
                    if frame.cmd_id == Command.NACK:
                        code = frame.payload[1] if len(frame.payload) > 1 else None
                        self._finish(owner, Status.NACK, now, frame, code)
                    else:
                        self._finish(owner, Status.OK, now, frame)
                    self.breaker.record_answer()
                else:
                    self.counters.late_responses += 1
                    log.debug("late response discarded: %r", frame)
                return True
        # Nobody waits for it: a response later than every window, or to a request never sent.
        self.counters.late_responses += 1
        self.counters.unmatched_responses += 1
        return False

    # ------------------------------------------------------------------ the worker

    async def run(self) -> None:
        """Send queued requests one at a time until cancelled."""
        while True:
            while not self._heap:
                self._queued.clear()
                await self._queued.wait()
            _, _, request = heapq.heappop(self._heap)
            if request.future.done():
                continue  # withdrawn by its caller
            self._in_flight = request
            try:
                await self._carry_out(request)
            finally:
                self._in_flight = None

    async def _carry_out(self, request: _Request) -> None:
        now = self._clock()
        if now - request.queued_at > request.ttl:
            self.counters.expired += 1
            self._finish(request, Status.EXPIRED, now)
            return
        state = self.breaker.state(now)
        if state == "open":
            self._finish(request, Status.CIRCUIT_OPEN, now)
            return
        await self._wait_for_confusable_sends(request)
        # Half-open: this request is the probe, with a single try (one request is in flight).
        tries = 1 if state == "half_open" else 1 + request.retries
        for attempt in range(tries):
            if request.future.done():
                return
            if attempt:
                self.counters.retries += 1
            sent_at = self._clock()
            send = _Send(request.signature, sent_at,
                         sent_at + self.late_window_factor * request.timeout, request)
            self._sends.append(send)  # registered before the write: the answer may be quick
            request.tries += 1
            try:
                await self._send(request.frame)
            except LinkClosed:
                self._sends.remove(send)
                self._finish(request, Status.OFFLINE, self._clock())
                return
            self.counters.sent += 1
            # asyncio.wait neither raises if the caller withdraws nor cancels the future.
            done, _ = await asyncio.wait({request.future}, timeout=request.timeout)
            if done:
                return
            self.counters.timeouts += 1
            self.breaker.record_timeout(self._clock())
        self._finish(request, Status.TIMEOUT, self._clock())

    async def _wait_for_confusable_sends(self, request: _Request) -> None:
        """Wait while an earlier unanswered send could have its answer taken for this one's."""
        while True:
            now = self._clock()
            self._forget_old(now)
            pending = [s for s in self._sends if s.signature.overlaps(request.signature)]
            if not pending:
                return
            self._send_answered.clear()
            wait = min(s.forget_at for s in pending) - now
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    await self._send_answered.wait()
            except TimeoutError:
                pass

    def _forget_old(self, now: float) -> None:
        # Windows differ per request, so old sends are not only at the front.
        if any(s.forget_at <= now for s in self._sends):
            self._sends = deque(s for s in self._sends if s.forget_at > now)

    def _finish(
        self,
        request: _Request,
        status: Status,
        now: float,
        response: Frame | None = None,
        nack_code: int | None = None,
    ) -> None:
        if request is self._in_flight:
            self._in_flight = None  # the caller may look at queue_depth as soon as it resumes
        if request.future.done():
            return
        latency = now - request.queued_at
        outcome = RequestOutcome(status, response, nack_code, request.tries, latency)
        request.future.set_result(self._count(outcome))

    def _count(self, outcome: RequestOutcome) -> RequestOutcome:
        counters = self.counters
        counters.outcomes[outcome.status] = counters.outcomes.get(outcome.status, 0) + 1
        if outcome.status is Status.BUSY:
            counters.busy += 1
        elif outcome.status is Status.CIRCUIT_OPEN:
            counters.circuit_open += 1
        return outcome
