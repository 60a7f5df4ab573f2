"""One device: registration, liveness, decoding its frames into events, its requests, counters.

The session does no I/O of its own: a port runner attaches an open ``SerialLink`` and
detaches it when the port goes away. Frames arrive through ``on_frames`` (a callback that
never awaits); events leave through the ``emit`` callback, in arrival order.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.drivers.serial import SerialLink
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    LinkClosed,
    NodeIdsExhausted,
    ValueEncodingError,
)
from gateway.frames import (
    COMMANDS,
    Command,
    DeviceProfile,
    Frame,
    KeySpec,
    NackCode,
    command_name,
    decode_payload,
    encode_payload,
)
from gateway.frames.commands import DEVICE_REQUESTS, RESPONSE_BIT, Direction
from gateway.frames.framing import framing_class
from gateway.logs import Recurring
from gateway.nodeids import NodeIdStore
from gateway.transactions import (
    CircuitBreaker,
    Priority,
    RequestOutcome,
    Status,
    Transactions,
)

log = logging.getLogger(__name__)

SILENT_HEARTBEATS = 3
TRACE_FRAMES = 64
#: the link-layer counters a device's stats carry, where its framing has a link layer
LINK_COUNTERS = ("link_retransmits", "link_fast_retransmits", "link_lost", "link_duplicates",
                 "link_gaps_skipped", "link_nacks_in", "link_nacks_out", "link_restarts")
BUILTIN_ACTIONS = ("read", "write", "raw", "ping")


class DeviceState(enum.StrEnum):
    """Where a device is in its life."""

    CONNECTING = "connecting"
    UNREGISTERED = "unregistered"
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class StateChange:
    """A device changed state (the fabric's device status)."""

    device_id: str
    state: DeviceState
    reason: str
    since: float
    facts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TelemetryEvent:
    """An unsolicited frame, decoded by the device profile."""

    device_id: str
    name: str
    fields: dict[str, Any]
    cmd_id: int
    payload: bytes
    received_at: float


@dataclass(frozen=True, slots=True)
class DeviceRenamed:
    """A device of a glob port took its ``uid-<hex>`` id after HELLO (or gave it back)."""

    device_id: str
    old_id: str


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A checked request (``DeviceSession.prepare``): the frame to send and how to read
    its answer."""

    action: str
    frame: Frame
    decode: Callable[[Frame], Any]
    #: the profile key of a read or write (None for other actions)
    key: KeySpec | None = None


DeviceEvent = StateChange | TelemetryEvent | DeviceRenamed
EventSink = Callable[[DeviceEvent], None]
#: asks the gateway for a device id; the gateway renames the session if it may
IdClaim = Callable[["DeviceSession", str], None]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Per-port behaviour of a session."""

    profile: DeviceProfile
    heartbeat_s: float = 5.0
    request_timeout_s: float = 2.0
    retries: int = 3
    max_queue: int = 64
    #: requests in flight at once (more than 1 only where responses carry a request seq)
    max_in_flight: int = 1
    circuit_threshold: int = 5
    circuit_reset_s: float = 30.0
    #: the configured port this device is on (for access control)
    port_name: str = ""
    #: a device of a glob port: named ``uid-<hex>`` once it says HELLO
    id_from_uid: bool = False
    #: the port's frame profile ("mcp" or "ms720"), shown in the device's facts
    frames: str = "mcp"
    #: HELLOs a port may send at once, and how many a second after that (a token bucket):
    #: a device (or noise) sending HELLOs in a loop costs at most this many node id
    #: look-ups, status changes and table writes; the rest are answered NACK 3 (busy)
    hello_burst: int = 10
    hello_per_s: float = 2.0


@dataclass
class _Totals:
    """Counters of links that are gone, so totals survive reconnects."""

    #: the framing's counters (``Framing.counters()``), summed over the links gone
    line: dict[str, int]
    tx_frames: int = 0
    tx_bytes: int = 0


class DeviceSession:
    """A device on one port. ``run()`` owns its loops; ``attach``/``detach`` follow the port."""

    def __init__(
        self,
        device_id: str,
        port: str,
        settings: SessionSettings,
        node_ids: NodeIdStore,
        emit: EventSink,
        *,
        claim_id: IdClaim | None = None,
    ) -> None:
        self.device_id = device_id
        #: the id from the port's path, before (or without) a ``uid-`` id
        self.path_id = device_id
        self._claim_id = claim_id
        self.reason = "starting"
        self.port = port
        self.settings = settings
        self.profile = settings.profile
        self._node_ids = node_ids
        self._emit = emit
        self.state = DeviceState.CONNECTING
        self.since = time.time()
        self.hello: dict[str, Any] = {}
        self.node_id: int | None = None
        self.last_seen: float | None = None
        self.decode_errors = 0
        self.link: SerialLink | None = None
        # Zero for every counter a line of this profile has, before one has opened.
        self._totals = _Totals(dict.fromkeys(framing_class(settings.frames)().counters(), 0))
        #: the last frames both ways, for the fabric's ``trace`` request
        self.trace: deque[tuple[str, float, Frame]] = deque(maxlen=TRACE_FRAMES)
        self._last_heard = 0.0
        self._last_ping = 0.0
        self._liveness_pings = 0
        self._loop = asyncio.get_running_loop()
        self._hello_tokens = float(settings.hello_burst)
        self._hello_refilled = self._loop.time()
        #: conditions a device can repeat many times a second: logged once, then counted;
        #: they have no natural end (they begin again after a quiet summary interval)
        self._bad_hello = Recurring(log, "")
        self._hello_refused = Recurring(log, "")
        self._frame_failed = Recurring(log, "", level=logging.ERROR)
        self._name_recurring()
        self.transactions = Transactions(
            self._send_request,
            max_queue=settings.max_queue,
            max_in_flight=settings.max_in_flight,
            breaker=CircuitBreaker(settings.circuit_threshold, settings.circuit_reset_s),
        )

    # ------------------------------------------------------------------ lifetime

    async def run(self) -> None:
        """The request worker and the liveness check, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.transactions.run(), name=f"{self.device_id}-requests")
            tasks.create_task(self._liveness(), name=f"{self.device_id}-liveness")

    def attach(self, link: SerialLink) -> None:
        """The port is open: frames flow from now on."""
        self.link = link
        self._last_heard = self._loop.time()
        self._last_ping = 0.0
        self._liveness_pings = 0
        self._set_state(DeviceState.UNREGISTERED, "port_open")

    def detach(self, reason: str) -> None:
        """The port is gone (``port_gone``, ``port_error``) or closed (``gateway_stopped``)."""
        link, self.link = self.link, None
        if link is not None:
            totals = self._totals
            line = totals.line
            for name, value in link.framing.counters().items():
                line[name] = line.get(name, 0) + value
            totals.tx_frames += link.tx_frames
            totals.tx_bytes += link.tx_bytes
        self.transactions.fail_all(Status.OFFLINE)
        if self.state is not DeviceState.OFFLINE:
            self._set_state(DeviceState.OFFLINE, reason)

    def retire(self, reason: str) -> None:
        """The device leaves the gateway (its port is removed or reconfigured): requests end
        ``offline``, and the device goes offline with ``reason`` even if it was offline
        already, so the fabric hears why (a removed device's status is then cleared)."""
        self.transactions.fail_all(Status.OFFLINE)
        if self.state is not DeviceState.OFFLINE or self.reason != reason:
            self._set_state(DeviceState.OFFLINE, reason, again=True)

    def mark_unavailable(self, reason: str) -> None:
        """The port could not be opened: offline (once), requests end ``offline``."""
        self.transactions.fail_all(Status.OFFLINE)
        if self.state is not DeviceState.OFFLINE:
            self._set_state(DeviceState.OFFLINE, reason)

    # ------------------------------------------------------------------ state

    @property
    def facts(self) -> dict[str, Any]:
        """What is known of the device (for its status message)."""
        facts: dict[str, Any] = {"port": self.port, "profile": self.profile.name,
                                 "frames": self.settings.frames}
        if self.node_id is not None:
            facts["node_id"] = self.node_id
        for key in ("uid", "fw", "model", "caps"):
            if key in self.hello:
                facts[key] = self.hello[key]
        return facts

    def _set_state(self, state: DeviceState, reason: str, *, again: bool = False) -> None:
        if state is self.state and reason != "registered" and not again:
            return
        self.state = state
        self.reason = reason
        self.since = time.time()
        facts = self.facts
        # The one log line of a state change (the service does not log them again).
        log.info("%s is %s (%s) %s", self.device_id, state, reason,
                 json.dumps(facts, default=str))
        self._emit(StateChange(self.device_id, state, reason, self.since, facts))

    def rename(self, device_id: str) -> None:
        """Take another id (the gateway's decision); subscribers see ``DeviceRenamed`` and
        then the current state under the new id."""
        old, self.device_id = self.device_id, device_id
        self._name_recurring()
        log.info("%s is now %s", old, device_id)
        self._emit(DeviceRenamed(device_id, old))
        self._emit(StateChange(device_id, self.state, self.reason, self.since, self.facts))

    def _name_recurring(self) -> None:
        name = self.device_id
        self._bad_hello.what = f"{name}: bad HELLO (answered NACK 2)"
        self._hello_refused.what = f"{name}: HELLO refused (answered NACK 3, busy)"
        self._frame_failed.what = f"{name}: frame handler failed"

    # ------------------------------------------------------------------ frames in

    def on_frames(self, frames: list[Frame]) -> None:
        """Handle received frames (called by the link; never awaits)."""
        now = self._loop.time()
        self._last_heard = now
        self.last_seen = wall = time.time()
        if self.state is DeviceState.OFFLINE and self.link is not None:
            # Heard again after a heartbeat timeout: online with its node id, unless the
            # full table gave that id to another uid meanwhile (then it must say HELLO).
            if self.node_id is not None and \
                    self._node_ids.lookup(self.hello.get("uid", "")) != self.node_id:  # fmt: skip
                self.node_id = None
            back = DeviceState.ONLINE if self.node_id is not None else DeviceState.UNREGISTERED
            self._set_state(back, "heard_again")
        self.trace.extend(("rx", wall, frame) for frame in frames)
        for frame in frames:
            # Inline (no call per frame): the hot path. One frame's failure never costs
            # the frames beside it.
            try:
                cmd = frame.cmd_id
                if cmd == Command.HELLO:
                    self._on_hello(frame)
                elif cmd == Command.PING:
                    if self.state is DeviceState.UNREGISTERED:
                        # A device that pings thinks it is registered (the gateway restarted, or
                        # its HELLO_ACK was lost): NACK 5 tells it to say HELLO again.
                        self._reply(Frame(Command.NACK, bytes([cmd, NackCode.NOT_REGISTERED]),
                                          frame.request_seq))
                    else:
                        self._reply(Frame(Command.PONG, b"", frame.request_seq))
                elif cmd & RESPONSE_BIT or cmd == Command.NACK:
                    self._on_response(frame)
                elif cmd in self.profile.events or cmd == Command.LOG or (cmd not in COMMANDS \
                        and cmd not in DEVICE_REQUESTS):  # fmt: skip
                    self._on_event(frame, wall)
                else:
                    # A gateway-to-device request (READ, WRITE, 0x30-0x6F...) sent by the device.
                    self._reply(Frame(Command.NACK, bytes([cmd, NackCode.UNKNOWN_COMMAND]),
                                      frame.request_seq))
            except Exception as exc:
                if not self._frame_failed.active:
                    log.exception("%s: handling %s failed", self.device_id,
                                  command_name(frame.cmd_id))
                self._frame_failed.occurred(f"{command_name(frame.cmd_id)}: {exc!r}")

    def _on_hello(self, frame: Frame) -> None:
        try:
            hello = decode_payload(Command.HELLO, frame.payload)
        except GatewayError as exc:
            self._bad_hello.occurred(str(exc))
            self._nack(frame, NackCode.BAD_PAYLOAD)
            return
        if not self._take_hello_token():
            self._hello_refused.occurred(
                f"more than {self.settings.hello_burst} at once or "
                f"{self.settings.hello_per_s:g}/s (uid {hello['uid']})")
            self._nack(frame, NackCode.BUSY)
            return
        try:
            node_id = self._node_ids.get(hello["uid"])
        except NodeIdsExhausted as exc:
            self._hello_refused.occurred(str(exc))
            self._nack(frame, NackCode.BUSY)
            return
        self.hello, self.node_id = hello, node_id
        if self.settings.id_from_uid and self._claim_id is not None:
            self._claim_id(self, f"uid-{hello['uid']}")
        # HELLO_ACK carries whole seconds; sub-second heartbeats (tests) round up to 1.
        ack = {"node_id": self.node_id, "heartbeat_s": max(1, round(self.settings.heartbeat_s))}
        self._reply(Frame(Command.HELLO_ACK, encode_payload(Command.HELLO_ACK, ack),
                          frame.request_seq))
        self._set_state(DeviceState.ONLINE, "registered")

    def _take_hello_token(self) -> bool:
        """The HELLO rate limit (a token bucket, O(1)): True if this HELLO may go on."""
        now = self._loop.time()
        settings = self.settings
        self._hello_tokens = min(float(settings.hello_burst), self._hello_tokens
                                 + (now - self._hello_refilled) * settings.hello_per_s)
        self._hello_refilled = now
        if self._hello_tokens < 1.0:
            return False
        self._hello_tokens -= 1.0
        return True

    def _nack(self, frame: Frame, code: NackCode) -> None:
        self._reply(Frame(Command.NACK, bytes([frame.cmd_id, code]), frame.request_seq))

    def _on_response(self, frame: Frame) -> None:
        if frame.cmd_id == Command.PONG and self._liveness_pings and \
                not self.transactions.expects(frame):  # fmt: skip
            self._liveness_pings -= 1
            return
        self.transactions.on_response(frame)

    def _on_event(self, frame: Frame, received_at: float) -> None:
        cmd = frame.cmd_id
        name = self.profile.event_name(cmd)
        try:
            if cmd in self.profile.events:
                fields = self.profile.events[cmd].layout.decode(frame.payload, what=name)
            elif cmd == Command.LOG:
                fields = decode_payload(cmd, frame.payload)
            else:
                fields = {"cmd_id": cmd, "raw_hex": frame.payload.hex()}
        except GatewayError as exc:
            # Never drop data: pass the raw bytes on with what was wrong.
            self.decode_errors += 1
            fields = {"cmd_id": cmd, "raw_hex": frame.payload.hex(), "error": str(exc)}
        self._emit(TelemetryEvent(self.device_id, name, fields, cmd, frame.payload, received_at))

    # ------------------------------------------------------------------ frames out

    def _reply(self, frame: Frame) -> None:
        if self.link is not None and self.link.send_nowait(frame):
            self.trace.append(("tx", time.time(), frame))

    async def _send_request(self, frame: Frame) -> int | None:
        link = self.link
        if link is None:
            raise LinkClosed(f"{self.device_id} has no open port")
        seq = await link.send(frame)
        self.trace.append(("tx", time.time(), frame))
        return seq

    async def _liveness(self) -> None:
        heartbeat = self.settings.heartbeat_s
        while True:
            await asyncio.sleep(heartbeat / 4)
            if self.link is None or self.state is DeviceState.OFFLINE:
                continue
            now = self._loop.time()
            silence = now - self._last_heard
            if silence >= SILENT_HEARTBEATS * heartbeat:
                self.transactions.fail_all(Status.OFFLINE)
                self._set_state(DeviceState.OFFLINE, "heartbeat_timeout")
            elif silence >= heartbeat and now - self._last_ping >= heartbeat:
                self._last_ping = now
                self._liveness_pings = min(self._liveness_pings + 1, SILENT_HEARTBEATS)
                self._reply(Frame(Command.PING))

    # ------------------------------------------------------------------ requests

    async def request(
        self,
        action: str,
        args: dict[str, Any] | None = None,
        *,
        priority: Priority | str = Priority.MEDIUM,
        ttl: float = 30.0,
        timeout: float | None = None,  # noqa: ASYNC109 - the fabric's per-try timeout
        retries: int | None = None,
    ) -> RequestOutcome:
        """Carry out ``action`` (read/write/raw/ping or a profile command) on the device.

        Raises ``InvalidRequest`` for an unknown action, key or command or a value that
        cannot be encoded; every other result is a typed ``RequestOutcome``.
        """
        if isinstance(priority, str):
            try:
                priority = Priority[priority.upper()]
            except KeyError:
                raise InvalidRequest(
                    f"priority {priority!r} is not one of high, medium, low") from None
        return await self.send(self.prepare(action, args or {}), priority=priority, ttl=ttl,
                               timeout=timeout, retries=retries)

    async def send(
        self,
        prepared: PreparedRequest,
        *,
        priority: Priority = Priority.MEDIUM,
        ttl: float = 30.0,
        timeout: float | None = None,  # noqa: ASYNC109 - the fabric's per-try timeout
        retries: int | None = None,
    ) -> RequestOutcome:
        """Carry out a request ``prepare`` checked; a typed ``RequestOutcome``, never raises."""
        frame, decode, action = prepared.frame, prepared.decode, prepared.action
        started = self._loop.time()
        if self.state in (DeviceState.OFFLINE, DeviceState.CONNECTING) or self.link is None:
            return RequestOutcome(Status.OFFLINE)
        outcome = await self.transactions.request(
            frame,
            priority=priority,
            ttl=ttl,
            timeout=self.settings.request_timeout_s if timeout is None else timeout,
            retries=self.settings.retries if retries is None else retries,
        )
        latency = self._loop.time() - started
        if outcome.status is Status.OK and outcome.response is not None:
            if outcome.response.cmd_id == Command.WRITE_ACK and action == "write":
                code = outcome.response.payload[2] if len(outcome.response.payload) > 2 else 0
                if code:
                    return _replace(outcome, Status.NACK, latency, nack_code=code)
            try:
                value = decode(outcome.response)
            except GatewayError as exc:
                self.decode_errors += 1
                value = {"raw_hex": outcome.response.payload.hex(), "error": str(exc)}
            return _replace(outcome, Status.OK, latency, value=value)
        return _replace(outcome, outcome.status, latency)

    def prepare(self, action: str, args: dict[str, Any]) -> PreparedRequest:
        """Check a request against the profile and build its frame: ``InvalidRequest`` for
        an unknown action, key or command, or a value that cannot be encoded."""
        if action in ("read", "write"):
            return self._prepare_key(action, args)
        if action == "ping":
            return PreparedRequest(action, Frame(Command.PING), lambda frame: {})
        if action == "raw":
            frame, decode = self._build_raw(args)
            return PreparedRequest(action, frame, decode)
        try:
            spec = self.profile.command(action)
        except KeyError:
            known = [*BUILTIN_ACTIONS, *(c.name for c in self.profile.commands.values())]
            raise InvalidRequest(
                f"unknown action {action!r}; known actions: {', '.join(known)}") from None
        try:
            payload = spec.request.encode(args, what=action)
        except GatewayError as exc:
            raise InvalidRequest(str(exc)) from None
        return PreparedRequest(action, Frame(spec.cmd_id, payload), lambda frame: spec.response
                               .decode(frame.payload, what=action))

    def _prepare_key(self, action: str, args: dict[str, Any]) -> PreparedRequest:
        """A read or write: both answer the key's value (a write's, as the device holds it)."""
        if "key" not in args:
            raise InvalidRequest(f"{action} needs a key")
        try:
            key = self.profile.key(args["key"])
        except KeyError as exc:
            raise InvalidRequest(exc.args[0]) from None
        head = key.id.to_bytes(2, "little")
        if action == "read":
            return PreparedRequest(action, Frame(Command.READ, head),
                                   lambda frame: key.decode(frame.payload[2:]), key)
        if "value" not in args:
            raise InvalidRequest(f"write of {key.name} needs a value")
        try:
            value = key.encode(args["value"])
        except (ValueEncodingError, GatewayError) as exc:
            raise InvalidRequest(str(exc)) from None
        written = key.decode(value)  # what a read would answer now (scaled, rounded)
        return PreparedRequest(action, Frame(Command.WRITE, head + value),
                               lambda frame: written, key)

    @staticmethod
    def _build_raw(args: dict[str, Any]) -> tuple[Frame, Callable[[Frame], Any]]:
        cmd_id = args.get("cmd_id")
        if isinstance(cmd_id, bool) or not isinstance(cmd_id, int) or not 0 <= cmd_id < 0x7F \
                or cmd_id & RESPONSE_BIT:  # fmt: skip
            raise InvalidRequest(f"raw cmd_id {cmd_id!r} is not a request command (0..126)")
        spec = COMMANDS.get(cmd_id)
        if spec is not None and spec.direction is Direction.DEVICE_TO_GATEWAY:
            raise InvalidRequest(f"raw cmd_id {cmd_id} ({command_name(cmd_id)}) is not a request "
                                 "a gateway sends")
        try:
            data = bytes.fromhex(str(args.get("data_hex", "")))
        except ValueError:
            raise InvalidRequest(f"data_hex {args.get('data_hex')!r} is not hex") from None
        if len(data) > 256:
            raise InvalidRequest(f"data_hex is {len(data)} bytes; a payload holds at most 256")
        return Frame(cmd_id, data), lambda frame: {
            "cmd_id": frame.cmd_id, "data_hex": frame.payload.hex()}

    # ------------------------------------------------------------------ counters

    def counters(self) -> dict[str, Any]:
        """rx/tx frames and bytes, errors, timeouts, retries, late responses, queue depth."""
        totals = self._totals
        link = self.link
        line = dict(totals.line)
        if link is not None:
            for name, value in link.framing.counters().items():
                line[name] = line.get(name, 0) + value
        tx = self.transactions.counters
        return {
            "state": str(self.state),
            "rx_frames": line.get("frames", 0),
            "rx_bytes": line.get("bytes_in", 0),
            "tx_frames": totals.tx_frames + (link.tx_frames if link else 0),
            "tx_bytes": totals.tx_bytes + (link.tx_bytes if link else 0),
            "checksum_errors": line.get("checksum_errors", 0),
            "discarded_bytes": line.get("discarded_bytes", 0),
            "oversize_lengths": line.get("oversize_lengths", 0),
            "stale_frames": line.get("stale_frames", 0),
            "decode_errors": self.decode_errors,
            "timeouts": tx.timeouts,
            "retries": tx.retries,
            "late_responses": tx.late_responses,
            "unmatched_responses": tx.unmatched_responses,
            "queue_depth": self.transactions.queue_depth,
            "last_seen": self.last_seen,
            # The link layer's (retransmissions, frames given up, duplicates, gaps), where
            # the framing has one.
            **{name: line[name] for name in LINK_COUNTERS if name in line},
        }


def _replace(
    outcome: RequestOutcome,
    status: Status,
    latency: float,
    *,
    nack_code: int | None = None,
    value: Any = None,
) -> RequestOutcome:
    return RequestOutcome(
        status,
        outcome.response,
        nack_code if nack_code is not None else outcome.nack_code,
        outcome.tries,
        latency,
        value,
    )
