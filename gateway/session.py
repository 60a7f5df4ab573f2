"""One device: registration, liveness, decoding its frames into events, its requests, counters.

The session does no I/O of its own: a port runner attaches an open line (``Line``: a
``SerialLink``, or a ``MemoryLink`` in tests) and detaches it when the port goes away.
Frames arrive through ``on_frames`` (a callback that never awaits); events leave through
the ``emit`` callback, in arrival order.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.drivers.framed import Line
from gateway.errors import GatewayError, LinkClosed, NodeIdsExhausted
from gateway.frames import (
    COMMANDS,
    Command,
    DeviceProfile,
    Frame,
    NackCode,
    command_name,
    decode_payload,
    encode_payload,
)
from gateway.frames.commands import DEVICE_REQUESTS, RESPONSE_BIT
from gateway.frames.framing import DEFAULT_FRAMES, framing_class
from gateway.frames.requests import PreparedRequest
from gateway.logs import Recurring
from gateway.nodeids import NodeIdStore
from gateway.settings import SessionSettings, TransactionSettings
from gateway.transactions import (
    DEFAULT_TTL_S,
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


DeviceEvent = StateChange | TelemetryEvent | DeviceRenamed
EventSink = Callable[[DeviceEvent], None]
#: asks the gateway for a device id; the gateway renames the session if it may
IdClaim = Callable[["DeviceSession", str], None]


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """What a session runs with: its port's parsed groups, its profile, and which port."""

    profile: DeviceProfile
    session: SessionSettings = field(default_factory=SessionSettings)
    transactions: TransactionSettings = field(default_factory=TransactionSettings)
    #: the configured port this device is on (for access control)
    port_name: str = ""
    #: a device of a glob port: named ``uid-<hex>`` once it says HELLO
    id_from_uid: bool = False
    #: the port's frame profile (a name in the framing registry), shown in the device's facts
    frames: str = DEFAULT_FRAMES


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
        settings: DeviceSettings,
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
        self.link: Line | None = None
        # Zero for every counter a line of this profile has, before one has opened.
        self._totals = _Totals(dict.fromkeys(framing_class(settings.frames)().counters(), 0))
        #: the last frames both ways, for the fabric's ``trace`` request
        self.trace: deque[tuple[str, float, Frame]] = deque(maxlen=TRACE_FRAMES)
        self._last_heard = 0.0
        self._last_ping = 0.0
        self._liveness_pings = 0
        self._loop = asyncio.get_running_loop()
        self._hello_tokens = float(settings.session.hello_burst)
        self._hello_refilled = self._loop.time()
        #: conditions a device can repeat many times a second: logged once, then counted;
        #: they have no natural end (they begin again after a quiet summary interval)
        self._bad_hello = Recurring(log, "")
        self._hello_refused = Recurring(log, "")
        self._frame_failed = Recurring(log, "", level=logging.ERROR)
        self._name_recurring()
        self.transactions = Transactions(self._send_request, settings.transactions)

    # ------------------------------------------------------------------ lifetime

    async def run(self) -> None:
        """The request worker and the liveness check, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.transactions.run(), name=f"{self.device_id}-requests")
            tasks.create_task(self._liveness(), name=f"{self.device_id}-liveness")

    def attach(self, link: Line) -> None:
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
                f"more than {self.settings.session.hello_burst} at once or "
                f"{self.settings.session.hello_per_s:g}/s (uid {hello['uid']})")
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
        ack = {"node_id": self.node_id,
               "heartbeat_s": max(1, round(self.settings.session.heartbeat_s))}
        self._reply(Frame(Command.HELLO_ACK, encode_payload(Command.HELLO_ACK, ack),
                          frame.request_seq))
        self._set_state(DeviceState.ONLINE, "registered")

    def _take_hello_token(self) -> bool:
        """The HELLO rate limit (a token bucket, O(1)): True if this HELLO may go on."""
        now = self._loop.time()
        settings = self.settings.session
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
        heartbeat = self.settings.session.heartbeat_s
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
        ttl: float = DEFAULT_TTL_S,
        timeout: float | None = None,  # noqa: ASYNC109 - the fabric's per-try timeout
        retries: int | None = None,
    ) -> RequestOutcome:
        """Carry out ``action`` (read/write/raw/ping or a profile command) on the device.

        Raises ``InvalidRequest`` for an unknown action, key or command, a value that
        cannot be encoded or an unknown priority; every other result is a typed
        ``RequestOutcome``.
        """
        priority = Priority.parse(priority)
        return await self.send(self.profile.request_for(action, args or {}),
                               priority=priority, ttl=ttl, timeout=timeout, retries=retries)

    async def send(
        self,
        prepared: PreparedRequest,
        *,
        priority: Priority = Priority.MEDIUM,
        ttl: float = DEFAULT_TTL_S,
        timeout: float | None = None,  # noqa: ASYNC109 - the fabric's per-try timeout
        retries: int | None = None,
    ) -> RequestOutcome:
        """Carry out a request the profile built (``profile.request_for``): a typed
        ``RequestOutcome`` carrying the answer's key, value and unit; never raises."""
        about = {"key": prepared.key, "unit": prepared.unit}
        if self.state in (DeviceState.OFFLINE, DeviceState.CONNECTING) or self.link is None:
            return RequestOutcome(Status.OFFLINE, **about)
        outcome = await self.transactions.request(
            prepared.frame,
            priority=priority,
            ttl=ttl,
            timeout=self.settings.session.request_timeout_s if timeout is None else timeout,
            retries=self.settings.session.retries if retries is None else retries,
        )
        if outcome.status is not Status.OK or outcome.response is None:
            return replace(outcome, **about)
        answer = prepared.answer(outcome.response)
        if answer.refused:
            return replace(outcome, status=Status.NACK, nack_code=answer.refused, **about)
        if answer.error is not None:
            self.decode_errors += 1
        return replace(outcome, value=answer.value, **about)

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

