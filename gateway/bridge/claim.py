"""One gateway per ``gateway_id`` on a broker: the check before the gateway connects, and the
watch of its own status topic while it runs.

Two gateways with the same id would publish each other's statuses and events and answer each
other's requests; with the default client id (``mcp-gateway-{gateway_id}``) they would also
take each other's session over and over. So:

- ``probe`` (before the gateway's own connection, on a connection of its own with a unique
  client id) reads the retained ``{p}/{gw}/status``. Nothing, or ``offline``: go on at once.
  A status that says the gateway is up: ask it ``list_devices`` on ``{p}/{gw}/requests``
  for ``ANSWER_S``; any answer means a live gateway holds the id (``GatewayIdInUse``); none
  means the status is a dead run's whose will has not fired yet (a host that lost power, a
  frozen process): go on, and forgive that instance its stale statuses (``ProbeResult``).
- ``ClaimWatch`` (on the gateway's own connection) judges every status on that topic that
  is not its own: another instance saying it is up means a second gateway with this id;
  the one that started later (tie: the greater instance) stops with ``GatewayIdInUse``, the
  other publishes its statuses afresh. Another instance's ``offline`` while this one runs
  (its clean stop, its late will) is answered with this gateway's statuses too; found on the
  topic right after a reconnection, it means someone took this gateway's session (a second
  gateway with the same client id: Mosquitto then fires the will of the session it closes),
  and is judged as a live claim.

``judge`` is the decision, a pure function.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.bridge.envelope import new_message_id, request_body
from gateway.bridge.mqtt import BrokerSettings, Message, MqttConnection
from gateway.bridge.topics import Topics
from gateway.errors import GatewayIdInUse
from gateway.logs import Recurring

log = logging.getLogger(__name__)

#: how long a gateway whose retained status says it is up has to answer the probe
ANSWER_S = 3.0
#: how long the probe may take to connect and read the retained status; past it (or when
#: the broker cannot be reached) the gateway starts: its own connection retries as ever
CONNECT_S = 5.0


def new_instance() -> str:
    """A random id of this run of the gateway (16 hex digits), in its statuses."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Claimant:
    """A run of a gateway as its status tells it."""

    instance: str
    started_at: float
    state: str = "online"
    version: str = ""

    @property
    def up(self) -> bool:
        """Anything but ``offline`` is a gateway that is up (fabric.md)."""
        return self.state != "offline"

    def later_than(self, other: Claimant) -> bool:
        """This run started after ``other`` (the same instant: the greater instance id)."""
        return (self.started_at, self.instance) > (other.started_at, other.instance)

    def describe(self) -> str:
        """For the refusal: when it started, its version and instance."""
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started_at))
        return (f"a gateway started at {started} (version {self.version or '?'}, instance "
                f"{self.instance or '?'})")


def parse_status(payload: bytes) -> Claimant | None:
    """The gateway status body as a ``Claimant``; None when cleared or not a status (a status
    of a version without ``instance`` has instance ``""``)."""
    try:
        body = json.loads(payload) if payload else None
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("state"), str):
        return None
    started_at = body.get("started_at")
    instance = body.get("instance")
    version = body.get("version")
    return Claimant(instance=instance if isinstance(instance, str) else "",
                    started_at=float(started_at) if isinstance(started_at, int | float)
                    and not isinstance(started_at, bool) else 0.0,
                    state=body["state"], version=version if isinstance(version, str) else "")


class Verdict(enum.Enum):
    """What this gateway does about a status seen on its own status topic."""

    IGNORE = "ignore"
    #: publish this gateway's statuses afresh (the broker must keep this run's)
    REPUBLISH = "republish"
    #: another run holds the id and started first: this one stops
    YIELD = "yield"


def judge(ours: Claimant, theirs: Claimant | None, *, before_own: bool, reconnected: bool,
          forgiven: bool, new_node: bool = False) -> Verdict:
    """The decision about one message on this gateway's status topic.

    ``before_own``: it came after (re)subscribing and before this connection's own status
    came back, so it is what the broker held (the retained status) rather than news.
    ``reconnected``: this is not the first connection of the run. ``forgiven``: the probe
    found this instance dead, and this is the first status of that kind from it (its stale
    retained status, or its will firing late). ``new_node``: a reconnection to a node of a
    cluster this run was not connected to before.
    """
    if theirs is None:
        # Cleared or garbled: held before ours comes, nothing to say; news: say ours again.
        return Verdict.IGNORE if before_own else Verdict.REPUBLISH
    if theirs.instance == ours.instance and theirs.instance:
        return Verdict.IGNORE
    if forgiven:
        return Verdict.IGNORE if before_own else Verdict.REPUBLISH
    if before_own and new_node:
        # A cluster that keeps retained messages per node (RabbitMQ 3.x) holds there what
        # an older run left, up or not: no claim, and this run's status follows.
        return Verdict.IGNORE
    if not theirs.instance or theirs.started_at <= 0:
        # No run named (a version without instances, a hand-made message): nothing to
        # weigh this run against, and no reason to stop; the broker must hold ours.
        return Verdict.IGNORE if before_own and not reconnected else Verdict.REPUBLISH
    if theirs.up:
        return Verdict.YIELD if ours.later_than(theirs) else Verdict.REPUBLISH
    if before_own and not reconnected:
        return Verdict.IGNORE  # the last run's offline (or its will): ours follows
    if before_own:
        # Held when this gateway reconnects: another run published on this topic while
        # this one was away (with the same client id, its will fired when this run took
        # the session back). A live claim.
        return Verdict.YIELD if ours.later_than(theirs) else Verdict.REPUBLISH
    return Verdict.REPUBLISH  # another run's stop or will, now: the broker must hold ours


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What the probe found: the instance of a status that said up but did not answer."""

    dead: Claimant | None = None
    #: seconds the probe took
    took_s: float = 0.0


async def probe(settings: BrokerSettings, topics: Topics, *, answer_s: float = ANSWER_S,
                connect_s: float = CONNECT_S) -> ProbeResult:
    """Before the gateway's own connection: raise ``GatewayIdInUse`` when a live gateway holds
    ``topics.gateway_id`` on the broker; else return (at once when no status says it is up).
    """
    return await _Probe(settings, topics, answer_s=answer_s, connect_s=connect_s).run()


class _Probe:
    """One probe: its own connection (a unique client id, no will), the held status read,
    the question asked if it says up."""

    def __init__(self, settings: BrokerSettings, topics: Topics, *, answer_s: float,
                 connect_s: float) -> None:
        self.settings = settings
        self.topics = topics
        self.answer_s = answer_s
        self.connect_s = connect_s
        self.client_id = f"{settings.client_id or 'mcp-gateway'}-claim-{new_message_id()[-8:]}"
        # Under mcp-reply/<client id>/: the topics the shipped ACL lets any client answer on.
        self.reply_topic = f"mcp-reply/{self.client_id}/claim"
        self.marker_topic = f"mcp-reply/{self.client_id}/marker"
        self.correlation = new_message_id().encode()
        self.v311 = settings.protocol == 3
        #: the latest status seen on the topic
        self.status: Claimant | None = None
        #: what the broker held on the topic has come (or cannot: ``unreachable``)
        self.held_read = asyncio.Event()
        #: an answer came, or the status went offline, or the broker cannot be reached
        self.settled = asyncio.Event()
        self.answered = False
        self.unreachable = ""
        self._marker_mid: int | None = None
        self.conn = MqttConnection(replace(settings, client_id=self.client_id),
                                   on_connect=self._on_connect, on_subscribed=self._on_subscribed,
                                   on_ack=self._on_ack, on_error=self._on_error,
                                   on_message=self._on_message)

    async def run(self) -> ProbeResult:
        """Connect, read, ask if need be, disconnect; the verdict."""
        began = time.monotonic()
        async with asyncio.TaskGroup() as group:
            task = group.create_task(self.conn.run(), name="claim-probe")
            try:
                status = await self._ask()
            finally:
                await self.conn.disconnect()
                task.cancel()
        took = time.monotonic() - began
        gateway_id, url = self.topics.gateway_id, self.conn.url
        if self.unreachable or not self.held_read.is_set():
            log.info("could not check whether gateway_id %r is free on %s (%s); starting",
                     gateway_id, url,
                     self.unreachable or f"no answer within {self.connect_s:g} s")
            return ProbeResult(took_s=took)
        if status is None:
            return ProbeResult(took_s=took)  # no status, or offline: nobody holds the id
        if self.answered:
            raise GatewayIdInUse(gateway_id, url, status.describe())
        if self.status is not None and self.status.up:
            log.info("gateway_id %r: %s says it is up (%s) but nothing answered within %g s: "
                     "taken as a dead run whose will has not fired yet; starting",
                     gateway_id, self.topics.status, status.describe(), self.answer_s)
        else:
            log.info("gateway_id %r: %s said it was up (%s), then offline: starting",
                     gateway_id, self.topics.status, status.describe())
        return ProbeResult(dead=status, took_s=took)

    async def _ask(self) -> Claimant | None:
        """Read the held status; if it says up, ask the gateway and wait for an answer (or
        for its offline). Returns the status that said up (None if none did)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.connect_s):
                await self.held_read.wait()
        status = self.status
        if self.unreachable or not self.held_read.is_set() or status is None or not status.up:
            return None
        v311 = self.v311
        body = request_body("list_devices", {}, self.client_id,
                            reply_to=self.reply_topic if v311 else None,
                            correlation_id=self.correlation.decode() if v311 else None)
        self.conn.publish(self.topics.gateway_requests, body, correlation_data=self.correlation,
                          response_topic=self.reply_topic)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.answer_s):
                await self.settled.wait()
        return status

    # ------------------------------------------------------------------ connection hooks

    def _on_connect(self) -> None:
        self.conn.subscribe([self.topics.status, self.reply_topic])

    def _on_subscribed(self) -> None:
        # The broker handles one connection's packets in order: once this publish is
        # acknowledged, the retained status (sent with the SUBACK) has come, or there is none.
        self._marker_mid = self.conn.publish(self.marker_topic, b"", qos=1)
        if self._marker_mid is None:
            self.held_read.set()

    def _on_ack(self, mid: int, reason: int) -> None:
        if mid == self._marker_mid:
            self.held_read.set()

    def _on_error(self, message: str) -> None:
        conn = self.conn
        if conn.failed_attempts < len(conn.nodes):
            return  # a cluster's next node is tried
        self.unreachable = message if len(conn.nodes) == 1 else conn.node_errors()
        self.held_read.set()
        self.settled.set()

    def _on_message(self, message: Message) -> None:
        if message.topic == self.topics.status:
            self.status = parse_status(message.payload)
            if self.status is None or not self.status.up:
                self.settled.set()  # its will fired (or it stopped) meanwhile
        elif message.topic == self.reply_topic:
            if self.v311:
                try:
                    said = json.loads(message.payload).get("correlation_id")
                except (ValueError, AttributeError):
                    return
                if said != self.correlation.decode():
                    return
            elif message.correlation_data != self.correlation:
                return
            self.answered = True
            self.settled.set()


class ClaimWatch:
    """Judges every message on the gateway's own status topic (see ``judge``):
    ``connected`` on every connection before the gateway's own status is published,
    ``on_message`` for each; ``republish`` and ``lost`` are what it does about them."""

    def __init__(self, topics: Topics, url: Callable[[], str], ours: Claimant, *,
                 republish: Callable[[], None], lost: Callable[[GatewayIdInUse], None],
                 dead: Claimant | None = None) -> None:
        self.topics = topics
        self.url = url
        self.ours = ours
        self._republish = republish
        self._lost = lost
        #: the instance the probe found dead, and which of its statuses (up, offline) are
        #: still forgiven once
        self._dead = dead.instance if dead is not None else None
        self._forgivable = {True, False} if dead is not None else set()
        self._connections = 0
        #: the broker nodes this run has been connected to, and whether this connection's
        #: node is one it had not been on before
        self._nodes: set[str] = set()
        self._new_node = False
        self._before_own = True
        self._yielded = False
        self._other = Recurring(log, f"gateway_id {topics.gateway_id!r}: something else "
                                "was published on its status topic; this gateway says its "
                                "statuses again")

    def connected(self) -> None:
        """A connection: the next messages, until this gateway's own status comes back, are
        what the broker held."""
        self._connections += 1
        self._before_own = True
        node = self.url()
        self._new_node = node not in self._nodes
        self._nodes.add(node)

    def on_message(self, message: Message) -> None:
        """A message on the gateway's status topic (the connection's callback: never raises)."""
        theirs = parse_status(message.payload)
        if theirs is not None and theirs.instance == self.ours.instance:
            self._before_own = False
            return
        forgiven = (theirs is not None and theirs.instance == self._dead
                    and theirs.up in self._forgivable)
        if forgiven:
            assert theirs is not None
            self._forgivable.discard(theirs.up)
        reconnected = self._connections > 1
        verdict = judge(self.ours, theirs, before_own=self._before_own, reconnected=reconnected,
                        forgiven=forgiven, new_node=reconnected and self._new_node)
        if verdict is Verdict.IGNORE:
            return
        assert theirs is not None or verdict is Verdict.REPUBLISH
        if theirs is not None and not theirs.up and self._before_own and reconnected:
            log.warning("gateway_id %r: while this gateway was away from %s, another run "
                        "published on %s (%s); most likely a second gateway with the same "
                        "gateway_id and client id took this one's session over (the broker "
                        "closes the older connection and fires its will)",
                        self.topics.gateway_id, self.url(), self.topics.status, theirs.describe())
        if verdict is Verdict.REPUBLISH:
            self._other.occurred(theirs.describe() if theirs is not None else
                                 f"{message.payload[:80]!r}")
            self._republish()
        elif not self._yielded:
            assert theirs is not None
            self._yielded = True
            self._lost(GatewayIdInUse(self.topics.gateway_id, self.url(), theirs.describe(),
                                      while_running=True))
