"""Serves the fabric's requests: a bounded intake, the checks (envelope, device, allow lists,
rate limits), then the device send or the gateway action (``gateway.bridge.actions``), and
exactly one answer on a reply topic the gateway may publish to.

The MQTT callback only appends to the intake (or, when it is full, answers ``busy`` at
once: no task, nothing kept). One serving loop empties the intake in slices, so a flood
never keeps the devices' events off the loop for long; a request becomes a task only when it
must wait (for its device, for a reload), and those tasks count against the same bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.app import Gateway, UnknownDevice
from gateway.bridge.actions import ActionResult, GatewayActions
from gateway.bridge.envelope import (
    InvalidEnvelope,
    RequestEnvelope,
    parse_request,
    response_body,
    salvage_reply,
)
from gateway.bridge.mqtt import Message, MqttConnection
from gateway.bridge.topics import Topics, valid_reply_topic
from gateway.config import GATEWAY_ACTIONS, GatewayConfig, PortConfig
from gateway.errors import InvalidRequest
from gateway.frames.requests import PreparedRequest
from gateway.logs import Recurring
from gateway.session import DeviceSession
from gateway.transactions import Status

log = logging.getLogger(__name__)

#: requests taken in and not answered yet, whether still unparsed in the intake or waiting
#: in a task (for a device, or a reload); beyond it a request is answered ``busy`` at once
MAX_WAITING = 1024
#: request bodies waiting unparsed in the intake, bytes (a request bigger than this alone is
#: still taken when the intake is empty)
MAX_INTAKE_BYTES = 4 * 1024 * 1024
#: requests served per loop turn before the serving loop lets the rest of the gateway run
_SLICE = 128

#: an integration's request is answered to a function: ``done(status, payload, error)``
Done = Callable[[str, dict[str, Any], tuple[Any, str] | None], None]
#: where an answer goes: (topic, MQTT 5 correlation data), (None, None): nowhere asked, or
#: an integration's ``Done``
Address = tuple[str | None, bytes | None] | Done
#: a plain-value command's body is at most this long (a number, a short text)
MAX_PLAIN_BYTES = 1024


class TokenBucket:
    """``rate`` requests per second, bursts up to two seconds' worth."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = max(1.0, 2 * rate)
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        """True if a request may go now."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def allowed(port: PortConfig, action: str, key: str | None) -> bool:
    """Does the port's ``allow`` list permit ``action`` (on the key named ``key``)?

    Entries are action names (``read``, ``write``, ``raw``, ``ping``, profile commands) or
    ``action:key`` to allow one key only (``write:interval_ms``).
    """
    if action in port.allow:
        return True
    return key is not None and f"{action}:{key}" in port.allow


class RequestServer:
    """``take`` is the MQTT message hook; ``run`` the serving loop (a bridge task)."""

    def __init__(self, gateway: Gateway, config: GatewayConfig, topics: Topics,
                 mqtt: MqttConnection, actions: GatewayActions) -> None:
        self.gateway = gateway
        self.config = config
        self.topics = topics
        self.mqtt = mqtt
        #: the gateway-level actions' bodies (``{p}/{gw}/requests``)
        self.actions = actions
        #: requests received, invalid ones, ones answered busy because the intake was
        #: full, and ones neither carried out nor answered for their reply topic
        self.received = 0
        self.invalid = 0
        self.busy = 0
        self.withheld = 0
        #: plain-value commands (``set``/``press`` topics) taken, and those not carried out
        self.plain = 0
        self.plain_failed = 0
        self._loop = asyncio.get_running_loop()
        self._intake: deque[tuple[Message, float]] = deque()
        self._intake_bytes = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ports = {p.name: p for p in config.ports}
        self._buckets: dict[str, TokenBucket] = {}
        self._full = Recurring(log, f"request intake full ({MAX_WAITING} requests or "
                               f"{MAX_INTAKE_BYTES // 1024} KiB waiting): answering busy")
        self._refused = Recurring(log, "request not carried out and not answered: its reply "
                                  "topic is one the gateway never publishes a response to")
        self._bad = Recurring(log, "invalid request", level=logging.INFO)
        self._plain_bad = Recurring(log, "plain-value command not carried out")

    # ------------------------------------------------------------------ intake

    @property
    def waiting(self) -> int:
        """Requests taken in and not answered yet (in the intake, or in a task)."""
        return len(self._intake) + len(self._tasks)

    def take(self, message: Message) -> None:
        """A request arrived (the MQTT callback): queued for the serving loop, or, beyond
        the bound, answered ``busy`` here and forgotten."""
        self.received += 1
        now = self._loop.time()
        size = len(message.payload)
        if self.waiting >= MAX_WAITING or (
                self._intake and self._intake_bytes + size > MAX_INTAKE_BYTES):
            self._refuse(message, now)
            return
        self._intake.append((message, now))
        self._intake_bytes += size
        self._wake.set()

    def _refuse(self, message: Message, received_at: float) -> None:
        # Only what the answer needs is read (a bounded scan, not a parse): a flood costs
        # no more per request than it must, and nothing of it stays.
        request = salvage_reply(message.payload)
        address = self._address(message, request)
        if self._withhold(message.topic, address):
            return
        self.busy += 1
        self._full.occurred(f"{self.waiting} waiting")
        self._answer(address, request, "busy", received_at, error=(
            "busy", "the gateway has too many requests waiting; try again later"))

    async def run(self) -> None:
        """Serve the intake, a slice per loop turn, until cancelled."""
        intake = self._intake
        while True:
            await self._wake.wait()
            self._wake.clear()
            served = 0
            while intake:
                message, received_at = intake.popleft()
                self._intake_bytes -= len(message.payload)
                try:
                    self._serve(message, received_at)
                except Exception:
                    # A bug in serving one request must not stop the serving of the rest.
                    log.exception("serving a request on %s failed", message.topic)
                served += 1
                if served % _SLICE == 0:
                    await asyncio.sleep(0)
            self._maybe_over()

    def _maybe_over(self) -> None:
        # Over once half the room is free again, not at the first free place: a flood keeps
        # the intake at its bound, and each refusal after an "over" would log anew.
        if self._full.active and self.waiting <= MAX_WAITING // 2:
            self._full.ended(f"{self.busy} answered busy in all")

    async def close(self) -> None:
        """Cancel the requests still waiting (the bridge is stopping)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def apply(self, config: GatewayConfig) -> None:
        """A reloaded configuration: allow lists and rate limits change at once."""
        self.config = config
        self._ports = {p.name: p for p in config.ports}
        self._buckets.clear()

    def forget(self, device_id: str) -> None:
        """A device id left the gateway."""
        self._buckets.pop(device_id, None)

    def counters(self) -> dict[str, int]:
        """The request counters of ``{p}/{gw}/stats`` (under ``mqtt``)."""
        return {"requests": self.received, "invalid_requests": self.invalid,
                "requests_busy": self.busy, "requests_withheld": self.withheld,
                "plain_commands": self.plain, "plain_commands_failed": self.plain_failed}

    def submit(self, device_id: str, action: str, payload: dict[str, Any], *, via: str,
               done: Done) -> None:
        """A request of an integration (a Sparkplug DCMD): the fabric's checks (profile,
        the port's ``allow`` list, its rate limit), answered to ``done(status, payload,
        error)`` (a response's status word, payload and ``(code, message)``) instead of a
        topic; ``via`` is its source."""
        request = RequestEnvelope(action=action, payload=dict(payload), source=via)
        self._serve_device_id(device_id, request, done, self._loop.time())

    # ------------------------------------------------------------------ serving

    def _serve(self, message: Message, started: float) -> None:
        plain = self.topics.plain_command_of(message.topic)
        if plain is not None:
            self._serve_plain(message, *plain, started)
            return
        try:
            request = parse_request(message.payload, max_bytes=self.config.max_request_bytes)
        except InvalidEnvelope as exc:
            request = exc.reply or RequestEnvelope()
            address = self._address(message, request)
            if self._withhold(message.topic, address):
                return
            self.invalid += 1
            self._bad.occurred(f"on {message.topic}: {exc.message}")
            self._answer(address, request, "invalid", started,
                         error=("invalid", exc.message))
            return
        address = self._address(message, request)
        if self._withhold(message.topic, address):
            return
        if message.topic == self.topics.gateway_requests:
            self._serve_gateway(request, address, started)
        else:
            self._serve_device(message.topic, request, address, started)

    def _serve_plain(self, message: Message, device_id: str, kind: str, name: str,
                     started: float) -> None:
        """A plain-value command (Home Assistant's): ``set/KEY`` writes the body's value to
        the key, ``press/ACTION`` runs an action without arguments; then the same path as a
        request without a reply topic. What is not carried out is logged and counted."""
        self.plain += 1
        topic = message.topic

        def done(status: str, payload: dict[str, Any], error: tuple[Any, str] | None) -> None:
            if status != "ok":
                self.plain_failed += 1
                self._plain_bad.occurred(f"{topic}: {status}: {error[1] if error else ''}")

        if kind == "press":
            request = RequestEnvelope(action=name, payload={}, source="plain")
        else:
            try:
                value = self._plain_value(device_id, name, message.payload)
            except InvalidRequest as exc:
                self.invalid += 1
                done("invalid", {}, ("invalid", str(exc)))
                return
            request = RequestEnvelope(action="write", payload={"key": name, "value": value},
                                      source="plain")
        self._serve_device_id(device_id, request, done, started)

    def _plain_value(self, device_id: str, key_name: str, body: bytes) -> Any:
        """The value a plain-value command's body means for the key's type."""
        if len(body) > MAX_PLAIN_BYTES:
            raise InvalidRequest(f"the value is {len(body)} bytes; the limit is "
                                 f"{MAX_PLAIN_BYTES}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"the value is not UTF-8: {exc.reason}") from None
        try:
            profile = self.gateway.device(device_id).profile
        except UnknownDevice:
            return text  # answered unknown_device on the request path
        try:
            spec = profile.key(key_name).field
        except KeyError as exc:
            raise InvalidRequest(exc.args[0]) from None
        return plain_value(spec.type, spec.scale, text)

    def _serve_device(self, topic: str, request: RequestEnvelope, address: Address,
                      started: float) -> None:
        device_id = self.topics.device_of_request_topic(topic)
        self._serve_device_id(device_id or "", request, address, started)

    def _serve_device_id(self, device_id: str, request: RequestEnvelope, address: Address,
                         started: float) -> None:
        try:
            session = self.gateway.device(device_id)
        except UnknownDevice as exc:
            self._answer(address, request, "unknown_device", started,
                         error=("unknown_device", str(exc)))
            return
        try:
            # Unknown actions, keys and bad values are invalid whatever the allow list says.
            prepared = session.profile.request_for(request.action, request.payload)
        except InvalidRequest as exc:
            self.invalid += 1
            self._answer(address, request, "invalid", started,
                         error=("invalid", str(exc)))
            return
        port = self._ports.get(session.settings.port_name)
        key = prepared.key
        if port is None or not allowed(port, request.action, key):
            on_key = f" on key {key!r}" if key is not None else ""
            allow = ", ".join(port.allow) if port else "-"
            self._answer(address, request, "forbidden", started, error=(
                "forbidden", f"action {request.action!r}{on_key} is not allowed on "
                f"{device_id}; allowed: {allow}"))
            return
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = self._buckets[device_id] = TokenBucket(port.rate_limit, self._loop.time)
        if not bucket.take():
            self._answer(address, request, "busy", started, error=(
                "busy", f"rate limit of {port.rate_limit:g} requests/s for {device_id} exceeded"))
            return
        request.payload = {}  # prepared already: not kept while the request waits
        self._spawn(self._send(session, prepared, request, address, started))

    async def _send(self, session: DeviceSession, prepared: PreparedRequest,
                    request: RequestEnvelope, address: Address, started: float) -> None:
        outcome = await session.send(prepared, priority=request.priority, ttl=request.ttl,
                                     timeout=request.timeout)
        device_id = session.device_id
        if outcome.status is Status.OK:
            # A read and a write answer alike: the key, its value (a write's, as written)
            # and its unit; every other action's value is already a dict.
            payload = outcome.value
            if outcome.key is not None:
                payload = {"key": outcome.key, "value": outcome.value}
                if outcome.unit:
                    payload["unit"] = outcome.unit
            self._answer(address, request, "ok", started, payload=payload)
            return
        code: Any = outcome.nack_code if outcome.status is Status.NACK else str(outcome.status)
        text = {
            Status.NACK: f"the device refused: NACK code {outcome.nack_code}",
            Status.TIMEOUT: f"no answer after {outcome.tries} tries",
            Status.EXPIRED: f"waited longer than its ttl of {request.ttl:g} s",
            Status.OFFLINE: f"{device_id} is offline",
            Status.BUSY: f"{device_id}'s request queue is full",
            Status.CIRCUIT_OPEN: f"{device_id} failed repeatedly; requests fail fast for a while",
        }.get(outcome.status, str(outcome.status))
        self._answer(address, request, str(outcome.status), started, error=(code, text))

    def _serve_gateway(self, request: RequestEnvelope, address: Address,
                       started: float) -> None:
        action = request.action
        # Unknown is invalid before not allowed is forbidden, as for devices.
        if action not in GATEWAY_ACTIONS:
            self.invalid += 1
            self._answer(address, request, "invalid", started, error=(
                "invalid", f"unknown gateway action {action!r}; known: "
                f"{', '.join(GATEWAY_ACTIONS)}"))
            return
        if action not in self.config.gateway_allow:
            allow = ", ".join(self.config.gateway_allow) or "none"
            self._answer(address, request, "forbidden", started, error=(
                "forbidden", f"gateway action {action!r} is not allowed on "
                f"{self.config.gateway_id} (gateway_allow: {allow})"))
            return
        actions = self.actions
        if action == "reload":  # it waits for the reload: a task, counted in ``waiting``
            self._spawn(self._answer_later(actions.reload, request, address, started))
            return
        serve = actions.list_devices if action == "list_devices" else actions.trace
        self._answer_result(address, request, started, serve(request.payload))

    async def _answer_later(self, action: Callable[[dict[str, Any]], Awaitable[ActionResult]],
                            request: RequestEnvelope, address: Address, started: float) -> None:
        self._answer_result(address, request, started, await action(request.payload))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A request that must wait: a task, counted in ``waiting`` until it has answered."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._maybe_over()
        if not task.cancelled() and task.exception() is not None:
            log.error("a request failed", exc_info=task.exception())

    # ------------------------------------------------------------------ answers

    @staticmethod
    def _address(message: Message, request: RequestEnvelope) -> Address:
        # MQTT 5's Response Topic takes precedence over the envelope's reply_to (3.1.1).
        if message.response_topic and valid_reply_topic(message.response_topic):
            return message.response_topic, message.correlation_data
        return request.reply_to, None

    def _withhold(self, request_topic: str, address: Address) -> bool:
        """True (counted, logged) if the reply topic is one the gateway never publishes to:
        such a request is neither carried out nor answered."""
        if callable(address):
            return False
        reply_to = address[0]
        why = self.topics.reply_refusal(reply_to) if reply_to is not None else None
        if why is None:
            return False
        self.withheld += 1
        self._refused.occurred(f"a request on {request_topic} asked for its answer on "
                               f"{reply_to!r}: {why}")
        return True

    def _answer_result(self, address: Address, request: RequestEnvelope, started: float,
                       result: ActionResult) -> None:
        self._answer(address, request, result.status, started, payload=result.payload,
                     error=result.error)

    def _answer(self, address: Address, request: RequestEnvelope,
                status: str, started: float, *, payload: dict[str, Any] | None = None,
                error: tuple[Any, str] | None = None) -> None:
        if callable(address):  # an integration's request
            try:
                address(status, payload or {}, error)
            except Exception:
                log.exception("an integration's answer to %s failed", request.action)
            return
        reply_to, correlation = address
        if reply_to is None:
            return  # carried out and counted; nobody asked for an answer
        if self.topics.reply_refusal(reply_to) is not None:
            return  # the last guard: never published there, whoever calls
        body = response_body(request, self.config.gateway_id, status, payload=payload,
                             error=error, latency_ms=(self._loop.time() - started) * 1000)
        self.mqtt.publish_response(reply_to, body, correlation)


_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


def plain_value(kind: str, scale: float | None, text: str) -> Any:
    """A plain-value command's text as a value of a field type (``InvalidRequest`` if it is
    not one): numbers as Home Assistant sends them (``250``, ``21.5``), ON/OFF for bool,
    text as it is."""
    if kind == "utf8":
        return text
    word = text.strip()
    if kind == "bool":
        if word.lower() in _TRUE:
            return True
        if word.lower() in _FALSE:
            return False
        raise InvalidRequest(f"{word!r} is not on or off")
    if kind == "bytes":
        try:
            return bytes.fromhex(word)
        except ValueError:
            raise InvalidRequest(f"{word!r} is not hex bytes") from None
    whole = kind.startswith(("u", "i")) and scale is None
    if whole:
        try:
            return int(word)  # exact, however large
        except ValueError:
            pass  # "250.0" (Home Assistant's number sends floats) is whole too
    try:
        number = float(word)
    except ValueError:
        raise InvalidRequest(f"{word!r} is not a number") from None
    if not math.isfinite(number):
        raise InvalidRequest(f"{word!r} is not a finite number")
    if whole:
        if not number.is_integer():
            raise InvalidRequest(f"{word!r} is not a whole number")
        return int(number)
    return number
