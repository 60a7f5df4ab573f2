"""Requests to one device: a priority queue, ``max_in_flight`` in flight, timeouts, retries,
a circuit breaker.

Sans-IO apart from the ``send`` coroutine it is given, which returns the frame's ms720 seq
(or None). Frames on the `mcp` profile carry no sequence number, so one request is in
flight and responses are matched by ``cmd | 0x80`` (and the key, for READ/WRITE) or a NACK
of the command. A response to a send that was given up on must never be taken for the
answer to a later request: every send is remembered for ``late_window`` seconds, a
response is matched to the oldest remembered send it can answer, and a new request whose
answer could be confused with such a pending one waits until that window has passed.

On `ms720` every response carries the seq of the request it answers (``Frame.request_seq``),
so requests are pipelined (up to ``max_in_flight`` at once) and matched by that seq alone.
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

from gateway.errors import InvalidRequest, LinkClosed
from gateway.frames import Command, Frame
from gateway.frames.commands import RESPONSE_BIT
from gateway.settings import SessionSettings, TransactionSettings

log = logging.getLogger(__name__)

#: how long a request may wait to be sent, unless its caller says (the fabric's ``ttl``)
DEFAULT_TTL_S = 30.0
#: a request's per-try timeout and retries unless its caller says: the session's declared ones
_SESSION = SessionSettings()
#: the declared defaults (``gateway.settings``), for a ``Transactions`` built without a port
_DEFAULTS = TransactionSettings()


class Priority(enum.StrEnum):
    """Order in a device's queue: high before medium before low, FIFO within a level.

    The members are the fabric's words, so a parsed envelope holds the ``Priority`` itself.
    """

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Its place in the queue's order (0 first)."""
        return _RANKS[self]

    @classmethod
    def parse(cls, word: Priority | str) -> Priority:
        """The priority a word names: the one place a priority is checked.
        ``InvalidRequest`` for anything but high, medium or low."""
        try:
            return cls(word)
        except ValueError:
            raise InvalidRequest(
                f"priority {word!r} is not one of high, medium, low") from None


_RANKS = {Priority.HIGH: 0, Priority.MEDIUM: 1, Priority.LOW: 2}


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
    #: from queued to ended (measured here only)
    latency_s: float = 0.0
    #: the decoded answer (filled in by the device session, from the prepared request)
    value: Any = None
    #: the profile key the answer is about (a read or write), by name, and its unit
    key: str | None = None
    unit: str | None = None

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
    #: the frame's ms720 seq, once sent (None on mcp)
    seq: int | None = None


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

    def __init__(self, threshold: int, reset_s: float) -> None:
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
    """The request queue and the requests in flight of one device."""

    def __init__(
        self,
        send: Callable[[Frame], Awaitable[int | None]],
        settings: TransactionSettings = _DEFAULTS,
        *,
        breaker: CircuitBreaker | None = None,
        late_window_factor: float = 2.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if settings.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {settings.max_in_flight}")
        self._send = send
        self.max_queue = settings.max_queue
        self.max_in_flight = settings.max_in_flight
        self.breaker = breaker or CircuitBreaker(settings.circuit_threshold,
                                                 settings.circuit_reset_s)
        self.late_window_factor = late_window_factor
        self.counters = TransactionCounters()
        self._clock = clock or asyncio.get_running_loop().time
        self._heap: list[tuple[int, int, _Request]] = []
        self._order = itertools.count()
        #: set when a request is queued or one in flight ends
        self._wake = asyncio.Event()
        self._sends: deque[_Send] = deque()
        self._by_seq: dict[int, _Send] = {}
        #: the link tags responses with the request seq (ms720): match by seq only
        self._seq_link = False
        self._send_answered = asyncio.Event()
        self._in_flight: set[_Request] = set()
        #: the most requests that were in flight at once
        self.peak_in_flight = 0

    @property
    def queue_depth(self) -> int:
        """Requests waiting, plus those in flight."""
        return len(self._heap) + len(self._in_flight)

    @property
    def in_flight(self) -> int:
        """Requests sent (or being sent) and not yet ended."""
        return len(self._in_flight)

    # ------------------------------------------------------------------ callers

    async def request(
        self,
        frame: Frame,
        *,
        priority: Priority = Priority.MEDIUM,
        ttl: float = DEFAULT_TTL_S,
        timeout: float = _SESSION.request_timeout_s,  # noqa: ASYNC109 - a per-try timeout
        retries: int = _SESSION.retries,
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
        heapq.heappush(self._heap, (priority.rank, next(self._order), request))
        self._wake.set()
        try:
            outcome = await future
        finally:
            if not future.done():
                future.cancel()  # the worker skips cancelled requests
        return outcome

    def fail_all(self, status: Status = Status.OFFLINE) -> None:
        """End every queued and in-flight request with ``status`` (the port went away)."""
        now = self._clock()
        for request in list(self._in_flight):
            self._finish(request, status, now)
        while self._heap:
            _, _, request = heapq.heappop(self._heap)
            self._finish(request, status, now)

    # ------------------------------------------------------------------ frames in

    def expects(self, frame: Frame) -> bool:
        """True if ``frame`` could answer a send this manager still remembers."""
        return self._match(frame) is not None

    def _match(self, frame: Frame) -> _Send | None:
        seq = frame.request_seq
        if seq is not None:
            send = self._by_seq.get(seq)
            return send if send is not None and send.signature.answered_by(frame) else None
        if self._seq_link:
            return None  # a response without the seq it must carry
        return next((s for s in self._sends if s.signature.answered_by(frame)), None)

    def on_response(self, frame: Frame) -> bool:
        """Offer a received response-type frame; True if it answered or was a late answer."""
        now = self._clock()
        self._forget_old(now)
        send = self._match(frame)
        if send is None:
            # Nobody waits for it: later than every window, or to a request never sent.
            self.counters.late_responses += 1
            self.counters.unmatched_responses += 1
            return False
        self._sends.remove(send)
        if send.seq is not None:
            del self._by_seq[send.seq]
        self._send_answered.set()
        owner = send.owner
        if owner in self._in_flight and not owner.future.done():
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

    # ------------------------------------------------------------------ the worker

    async def run(self) -> None:
        """Send queued requests, up to ``max_in_flight`` at once, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            while True:
                request = await self._next()
                self._in_flight.add(request)
                self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))
                tasks.create_task(self._carry_out(request))

    async def _next(self) -> _Request:
        """The next request to send, once there is room for it."""
        while True:
            # A circuit that is not closed lets one request (the probe) through at a time.
            closed = self.breaker.state(self._clock()) == "closed"
            limit = self.max_in_flight if closed else 1
            if self._heap and len(self._in_flight) < limit:
                _, _, request = heapq.heappop(self._heap)
                if not request.future.done():  # else withdrawn by its caller
                    return request
                continue
            self._wake.clear()
            await self._wake.wait()

    async def _carry_out(self, request: _Request) -> None:
        try:
            await self._attempts(request)
        finally:
            self._in_flight.discard(request)
            self._wake.set()

    async def _attempts(self, request: _Request) -> None:
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
                seq = await self._send(request.frame)
            except LinkClosed:
                self._sends.remove(send)
                self._finish(request, Status.OFFLINE, self._clock())
                return
            if seq is not None:  # set before anything else runs: no answer came in between
                send.seq = seq
                self._by_seq[seq] = send
                self._seq_link = True
            self.counters.sent += 1
            # asyncio.wait neither raises if the caller withdraws nor cancels the future.
            done, _ = await asyncio.wait({request.future}, timeout=request.timeout)
            if done:
                return
            self.counters.timeouts += 1
            self.breaker.record_timeout(self._clock())
        self._finish(request, Status.TIMEOUT, self._clock())

    async def _wait_for_confusable_sends(self, request: _Request) -> None:
        """Wait while an earlier unanswered send could have its answer taken for this one's
        (never on a link whose responses carry the request seq)."""
        while not self._seq_link:
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
            for seq in [q for q, s in self._by_seq.items() if s.forget_at <= now]:
                del self._by_seq[seq]

    def _finish(
        self,
        request: _Request,
        status: Status,
        now: float,
        response: Frame | None = None,
        nack_code: int | None = None,
    ) -> None:
        if request in self._in_flight:
            # The caller may look at queue_depth as soon as it resumes.
            self._in_flight.discard(request)
            self._wake.set()
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
