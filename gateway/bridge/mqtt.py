"""An MQTT connection on paho-mqtt, driven by the asyncio loop (no thread, no task per message).

paho's socket callbacks register the socket with the loop, as aiomqtt 2.x does; the loop
calls ``loop_read``/``loop_write`` when the socket is ready and ``loop_misc`` every second.
The connection reconnects by itself with backoff, to the next of a cluster's nodes
(``BrokerSettings.nodes``) each time. Callbacks never await and never raise into paho: they
resolve futures or call the owner's plain-function hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.settings import BrokerSettings, BrokerUrlError

__all__ = ["BrokerSettings", "BrokerUrlError", "Message", "MqttConnection"]

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 10.0
#: a connection that got its SUBACK, or lasted this long, was a working one: the backoff
#: starts over after it. One the broker closes sooner (a node that accepts the CONNECT and
#: then fails the session: RabbitMQ whose subscription queue is on a node that is down)
#: counts as a failed attempt, so a broker in that state is not retried four times a
#: second forever.
STABLE_S = 10.0
_RECV_SIZE = 65536
_CLOSE_FLUSH_S = 0.5
#: reads from the broker pause while this many bytes wait to be sent to it, and resume below
#: the second figure: a broker that takes our publishes slower than it sends us messages (a
#: request flood) must not grow the gateway's memory; TCP tells it to slow down instead
TX_HOLD_BYTES = 1024 * 1024
TX_RESUME_BYTES = 256 * 1024
#: packets handled per readable-socket callback: the loop's other work (serial reads, the
#: requests taken in) gets its turn between, however fast the broker sends
READ_BUDGET = 256
#: responses awaiting their PUBACK at most (their bytes are kept to send them again); beyond,
#: a response goes at QoS 0: under a flood, memory stays bounded and packet ids never run out
MAX_RESPONSES_UNACKED = 4096
_PUBACK_OK = ReasonCode(PacketTypes.PUBACK)
_U16 = struct.Struct("!H")
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)


class _Client(paho.Client):
    """paho's client with buffered socket I/O and a lean QoS 1 publish for events.

    paho 2.x reads every packet with two or three ``recv`` calls (type byte, length
    bytes, body) and writes every packet with its own ``send``: at 20,000 publishes a
    second that is ~80,000 system calls. Here reads take up to 64 KiB at once and serve
    paho from the buffer, and writes collect until the connection flushes them once per
    loop turn (``flush``); a close flushes first, so a DISCONNECT is never lost.

    ``publish_lean`` writes a QoS 1 PUBLISH (no properties, not retained) straight into
    the send buffer without paho's per-message objects (a message, its info and a
    condition variable: ~8 us); its PUBACK goes to ``on_lean_ack(mid, reason)``. paho
    does not keep these messages for a resend: the caller does (the bridge's spool
    sends again whatever was unacknowledged when a connection ends). PUBACKs with no
    reason code skip paho's reason-code and properties objects. Overrides paho's private
    ``_sock_recv``, ``_sock_send``, ``_sock_close`` and ``_handle_pubackcomp`` and uses
    ``_mid_generate``, stable through paho 2.x (pinned < 3).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rx = b""
        self._rx_pos = 0
        self.tx = bytearray()
        self._lean: set[int] = set()
        self._lean_properties = b"\x00" if self._protocol == paho.MQTTv5 else b""
        self.on_lean_ack: Callable[[int, int], None] = lambda mid, reason: None

    def publish_lean(self, topic: bytes, payload: bytes,
                     properties: bytes | None = None, *, qos: int = 1) -> int | None:
        """Queue a QoS 1 (or 0) PUBLISH; returns its mid (0 for QoS 0), None when there is
        no connection. ``properties``: MQTT 5 properties, encoded with their length (none
        by default)."""
        if self._sock is None:
            return None
        if properties is None:
            properties = self._lean_properties
        tx = self.tx
        if qos == 0:
            remaining = 2 + len(topic) + len(properties) + len(payload)
            tx.append(0x30)  # PUBLISH, QoS 0: no packet id, no PUBACK
        else:
            remaining = 4 + len(topic) + len(properties) + len(payload)
            tx.append(0x32)  # PUBLISH, QoS 1
        while remaining > 0x7F:
            tx.append(remaining & 0x7F | 0x80)
            remaining >>= 7
        tx.append(remaining)
        tx += _U16.pack(len(topic))
        tx += topic
        if qos == 0:
            tx += properties
            tx += payload
            return 0
        mid = self._mid_generate()
        tx += _U16.pack(mid)
        tx += properties
        tx += payload
        self._lean.add(mid)
        return mid

    def lean_properties(self, correlation_data: bytes | None) -> bytes:
        """The encoded properties of a lean publish carrying Correlation Data (MQTT 5;
        3.1.1 has none)."""
        if self._protocol != paho.MQTTv5 or correlation_data is None:
            return self._lean_properties
        data = b"\x09" + _U16.pack(len(correlation_data)) + correlation_data
        length = bytearray()
        remaining = len(data)
        while remaining > 0x7F:
            length.append(remaining & 0x7F | 0x80)
            remaining >>= 7
        length.append(remaining)
        return bytes(length) + data

    @property
    def buffered(self) -> bool:
        """Bytes received but not yet handed to paho."""
        return self._rx_pos < len(self._rx)

    def _sock_recv(self, bufsize: int) -> bytes:
        rx, pos = self._rx, self._rx_pos
        if pos >= len(rx):
            rx = super()._sock_recv(_RECV_SIZE)
            if rx and isinstance(self._sock, ssl.SSLSocket):
                rx = self._recv_rest(rx)
            if len(rx) <= bufsize:  # also b"": the broker closed the connection
                self._rx, self._rx_pos = b"", 0
                return rx
            pos = 0
        self._rx, self._rx_pos = rx, pos + bufsize
        return rx[pos:pos + bufsize]

    def _recv_rest(self, first: bytes) -> bytes:
        """TLS hands over one record per ``recv`` (Mosquitto sends each PUBACK in a record
        of its own): take the rest of what has arrived too, so one read handles every
        packet waiting, as over plain TCP, not one per loop turn."""
        chunks, size = [first], len(first)
        while size < _RECV_SIZE:
            try:
                more = super()._sock_recv(_RECV_SIZE - size)
            except OSError:  # nothing more now (BlockingIOError); a real error: next read
                break
            if not more:
                break  # the broker closed the connection: the next read says so
            chunks.append(more)
            size += len(more)
        return b"".join(chunks) if len(chunks) > 1 else first

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._sock is None:
            raise ConnectionError("self._sock is None")
        self.tx += buf
        return len(buf)

    def flush(self) -> bool:
        """Send what paho wrote; True if all of it went (else wait for the socket)."""
        tx, sock = self.tx, self._sock
        if not tx or sock is None:
            return True
        try:
            sent = sock.send(tx)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            sent = 0
        except OSError:
            tx.clear()  # the connection is gone; the next read says so and paho reconnects
            return True
        del tx[:sent]
        return not tx

    def _sock_close(self) -> None:
        sock = self._sock
        if sock is not None and self.tx:
            with contextlib.suppress(OSError, ValueError):
                sock.settimeout(_CLOSE_FLUSH_S)
                sock.sendall(self.tx)
        self.tx.clear()
        self._lean.clear()
        self._rx, self._rx_pos = b"", 0
        super()._sock_close()

    def _handle_pubackcomp(self, cmd: Any) -> paho.MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) < 2:
            return super()._handle_pubackcomp(cmd)
        mid = packet[0] << 8 | packet[1]
        if mid in self._lean:
            self._lean.discard(mid)
            self.on_lean_ack(mid, packet[2] if len(packet) > 2 else 0)
            return paho.MQTTErrorCode.MQTT_ERR_SUCCESS
        if len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_OK, _NO_PROPERTIES)
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS


@dataclass(frozen=True, slots=True)
class Message:
    """A received message (topic, body, and the MQTT 5 reply address if any)."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None


class MqttConnection:
    """One client connection, kept up until ``stop``. Hooks are plain functions."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        will: tuple[str, bytes] | None = None,
        on_connect: Callable[[], None] = lambda: None,
        on_disconnect: Callable[[], None] = lambda: None,
        on_message: Callable[[Message], None] = lambda message: None,
        on_ack: Callable[[int, int], None] = lambda mid, reason: None,
        on_error: Callable[[str], None] = lambda message: None,
        on_subscribed: Callable[[], None] = lambda: None,
        on_connecting: Callable[[], None] = lambda: None,
        start_node: int = 0,
    ) -> None:
        self.settings = settings
        #: the broker nodes, tried in turn: a lost connection or a failed attempt moves on to
        #: the next (a node that is down is not tried again before the others)
        self.nodes = settings.nodes
        self._endpoints = [settings.endpoint(url) for url in self.nodes]
        self._node = start_node % len(self.nodes)
        #: the node of the last accepted connection (None before the first)
        self._connected_node: int | None = None
        #: connections accepted by another node than the one before
        self.failovers = 0
        #: the last connection error of each node (logged once until it changes)
        self._node_errors: dict[int, str] = {}
        #: connection attempts that failed since the last accepted one
        self.failed_attempts = 0
        self._connected_at = 0.0
        #: the last connection worked (see ``STABLE_S``); this one got a SUBACK granting a
        #: filter
        self._worked = False
        self._granted = False
        self._stable: asyncio.TimerHandle | None = None
        self.host, self.port, self.tls = self._endpoints[self._node]
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_message = on_message
        self.on_ack = on_ack
        #: a connection attempt failed (refused, not authorized, TLS...): its one-line reason
        self.on_error = on_error
        #: the broker acknowledged the last ``subscribe`` (its retained messages follow)
        self.on_subscribed = on_subscribed
        #: called before every connection attempt (e.g. to ``set_will`` anew: Sparkplug's
        #: NDEATH carries the bdSeq of the connection it is the will of)
        self.on_connecting = on_connecting
        self.connected = False
        self._closing = False
        self.reconnects = 0
        self.last_error = ""
        #: the broker's Receive Maximum (MQTT 5), None for 3.1.1 or before a connection
        self.receive_maximum: int | None = None
        #: True once the broker acknowledged the last ``subscribe`` on this connection
        self.subscribed = False
        #: mids of unacknowledged publishes that must not be sent again on a new connection
        self._no_resend: set[int] = set()
        #: unacknowledged responses (``publish_response``): mid -> (topic, body, properties)
        self._responses: dict[int, tuple[bytes, bytes, bytes]] = {}
        self._flush_soon: asyncio.Handle | None = None
        #: reads paused because too much waits to be sent (``TX_HOLD_BYTES``)
        self.reads_held = False
        #: responses sent at QoS 0 because ``MAX_RESPONSES_UNACKED`` awaited their PUBACKs
        self.responses_qos0 = 0
        self._read_soon: asyncio.Handle | None = None
        self._loop = asyncio.get_running_loop()
        self._lost: asyncio.Future[None] | None = None
        self._connected_future: asyncio.Future[bool] | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._loop_thread = threading.get_ident()
        self._client = self._make_client(will)

    @property
    def url(self) -> str:
        """The node connected to, or tried next."""
        return self.nodes[self._node]

    @property
    def node_index(self) -> int:
        """Where ``url`` is in ``nodes`` (a new connection may start there: ``start_node``)."""
        return self._node

    def _short_lived(self) -> str:
        return f"{self.url} closed the connection after accepting it, before it worked"

    def node_errors(self) -> str:
        """Why the nodes could not be connected to: the last error of each, in order."""
        return "; ".join(self._node_errors[i] for i in sorted(self._node_errors))

    def _next_node(self) -> None:
        self._node = (self._node + 1) % len(self.nodes)
        self.host, self.port, self.tls = self._endpoints[self._node]

    @property
    def is_v5(self) -> bool:
        """True for MQTT 5 (else 3.1.1)."""
        return self.settings.protocol == 5

    def _make_client(self, will: tuple[str, bytes] | None) -> paho.Client:
        settings = self.settings
        client = _Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=paho.MQTTv5 if self.is_v5 else paho.MQTTv311,
            reconnect_on_failure=False,
        )
        # The owner keeps its own window of unacknowledged publishes: paho's limit rescans
        # every queued message on each PUBACK (O(window) per ack), so it is switched off.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if self.tls:
            context = ssl.create_default_context(cafile=settings.ca_file)
            if settings.cert_file:
                context.load_cert_chain(settings.cert_file, settings.key_file)
            if settings.tls_insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client.tls_set_context(context)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_lean_ack = self._on_lean_ack
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    # ------------------------------------------------------------------ lifetime

    async def run(self) -> None:
        """Connect, stay connected, reconnect with backoff and jitter, until cancelled."""
        delay = BACKOFF_MIN_S
        rng = random.Random()
        first = True
        try:
            while True:
                if await self._connect_once():
                    if not first:
                        self.reconnects += 1
                    first = False
                    assert self._lost is not None
                    await self._lost
                    if self._closing:
                        return  # ``disconnect``: no reconnecting
                    if self._worked:
                        delay = BACKOFF_MIN_S
                self._next_node()
                await asyncio.sleep(delay * rng.uniform(0.8, 1.2))
                delay = min(delay * 2, BACKOFF_MAX_S)
        finally:
            self._closing = True
            self._stop_misc()
            with contextlib.suppress(Exception):
                self._client.disconnect()
                self._drop_socket()
            # From here paho must not call back into a loop that may be closing.
            client = self._client
            client.on_socket_open = client.on_socket_close = None
            client.on_socket_register_write = client.on_socket_unregister_write = None

    def set_will(self, topic: str, body: bytes, *, qos: int = 1, retain: bool = True) -> None:
        """The will of the next connection (the current one keeps the one it was made with)."""
        self._client.will_set(topic, body, qos=qos, retain=retain)

    async def _connect_once(self) -> bool:
        self.on_connecting()
        self._lost = self._loop.create_future()
        self._connected_future = self._loop.create_future()
        try:
            # A TCP (and TLS) connect blocks: done in a worker thread, then the loop drives it.
            await self._loop.run_in_executor(None, self._blocking_connect)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._note_error(f"cannot connect to {self.url}: {exc}")
            return False
        self._schedule_misc()
        try:
            async with asyncio.timeout(self.settings.keepalive):
                accepted = await self._connected_future
        except TimeoutError:
            self._note_error(f"{self.url} did not answer CONNECT")
            self._client.disconnect()
            self._drop_socket()
            return False
        return accepted

    def _blocking_connect(self) -> None:
        if self.is_v5:
            self._client.connect(self.host, self.port, self.settings.keepalive, clean_start=True)
        else:
            self._client.connect(self.host, self.port, self.settings.keepalive)

    def _note_error(self, message: str) -> None:
        # Once per node and reason: a cluster that is down is not a warning per attempt.
        loud = message != self._node_errors.get(self._node)
        (log.warning if loud else log.debug)("%s", message)
        self._node_errors[self._node] = message
        self.last_error = message
        self.failed_attempts += 1
        try:
            self.on_error(message)
        except Exception:
            log.exception("on_error hook failed")

    async def disconnect(self) -> None:
        """Say DISCONNECT (so the broker does not publish the will) after sending what is
        queued, and wait (a moment at most) until it has gone out and the socket is closed."""
        self._closing = True
        lost = self._lost
        if not self.connected or lost is None:
            return
        self._client.disconnect()
        # paho writes the DISCONNECT when the loop finds the socket writable: returning
        # before that (and cancelling ``run``) left it unsent, and the broker published
        # the will, a second "offline" after the one the owner published.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_FLUSH_S):
                await asyncio.shield(lost)

    # ------------------------------------------------------------------ publish/subscribe

    def publish(self, topic: str, body: bytes, *, qos: int = 1, retain: bool = False,
                correlation_data: bytes | None = None,
                response_topic: str | None = None, resend: bool = True) -> int | None:
        """Queue a publish; returns its mid (for ``on_ack``), None when not connected.
        ``correlation_data`` and ``response_topic`` are MQTT 5 properties (else ignored).

        A QoS 1 publish still unacknowledged when the connection is lost is sent again on
        the next one (at least once), unless ``resend`` is False: for a state the owner
        publishes afresh on every connection (a retained status), where the old copy would
        come after the new one and undo it."""
        if not self.connected:
            return None
        properties = None
        if (correlation_data is not None or response_topic is not None) and self.is_v5:
            properties = Properties(PacketTypes.PUBLISH)
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
            if response_topic is not None:
                properties.ResponseTopic = response_topic
        info = self._client.publish(topic, body, qos=qos, retain=retain, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return None
        if not resend and qos > 0:
            self._no_resend.add(info.mid)
        return info.mid

    def publish_event(self, topic: bytes, body: bytes) -> int | None:
        """Queue a QoS 1 publish on the hot path (see ``_Client.publish_lean``); it goes out
        at the next ``flush``. Returns its mid, None when not connected."""
        if not self.connected:
            return None
        return self._client.publish_lean(topic, body)

    def publish_qos0(self, topic: bytes, body: bytes) -> bool:
        """Queue a QoS 0 publish (not retained, no properties) without paho's per-message
        objects (``_Client.publish_lean``: ~20 us less per message); it goes out within
        this loop turn. False when not connected."""
        if not self.connected or self._client.publish_lean(topic, body, qos=0) is None:
            return False
        if self._flush_soon is None:
            self._flush_soon = self._loop.call_soon(self._flush_responses)
        return True

    def publish_response(self, topic: str, body: bytes,
                         correlation_data: bytes | None = None) -> int | None:
        """Queue a response (QoS 1, not retained) without paho's per-message objects (~7 KB
        each with MQTT 5 properties: a flood's answers waiting for their PUBACKs took
        hundreds of MB). Kept as bytes until acknowledged and sent again on the next
        connection if this one ends first (while ``MAX_RESPONSES_UNACKED`` wait, at QoS 0
        instead); it goes out within this loop turn. Returns its mid (0 for QoS 0), None
        when not connected."""
        if not self.connected:
            return None
        client = self._client
        entry = (topic.encode("utf-8"), body, client.lean_properties(correlation_data))
        if len(self._responses) >= MAX_RESPONSES_UNACKED:
            self.responses_qos0 += 1
            mid = client.publish_lean(*entry, qos=0)
        else:
            mid = client.publish_lean(*entry)
            if mid is not None:
                self._responses[mid] = entry
        if mid is None:
            return None
        if self._flush_soon is None:
            self._flush_soon = self._loop.call_soon(self._flush_responses)
        return mid

    def _flush_responses(self) -> None:
        self._flush_soon = None
        self.flush()

    def flush(self) -> None:
        """Send what is queued now; the rest when the socket has room."""
        client = self._client
        if not client.flush():
            sock = client.socket()
            if sock is not None:
                self._loop.add_writer(sock, self._write)
                if len(client.tx) > TX_HOLD_BYTES:
                    self._hold_reads(True)
        elif self.reads_held:
            self._hold_reads(False)

    def _hold_reads(self, hold: bool) -> None:
        """Stop (or resume) reading from the broker; only ever while a send waits."""
        sock = self._client.socket()
        if hold == self.reads_held or sock is None:
            return
        self.reads_held = hold
        if hold:
            log.debug("%d bytes wait to be sent to %s: reads paused", len(self._client.tx),
                      self.url)
            self._loop.remove_reader(sock)
        else:
            self._loop.add_reader(sock, self._read)
            self._read_later()  # what was read already but not handled yet

    def subscribe(self, topics: list[str]) -> None:
        """Subscribe (QoS 1) to topic filters; ``subscribed`` turns True on the SUBACK."""
        if topics:
            self.subscribed = False
            self._client.subscribe([(t, 1) for t in topics])

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        future = self._connected_future
        if reason.is_failure:
            self._note_error(f"{self.url} refused the connection: {reason}")
            if future is not None and not future.done():
                future.set_result(False)
            return
        self.connected = True
        self.last_error = ""
        self.failed_attempts = 0
        self._connected_at = self._loop.time()
        # The node's last error is forgotten once the connection proves to work.
        self._granted = False
        self._stable = self._loop.call_later(STABLE_S, self._node_errors.clear)
        # MQTT 5: the broker says how many QoS 1/2 publishes it takes unacknowledged
        # (Mosquitto's default is 20); absent means 65,535. 3.1.1 has no such limit.
        self.receive_maximum = (getattr(properties, "ReceiveMaximum", 65535)
                                if self.is_v5 else None)
        if self._connected_node is not None and self._connected_node != self._node:
            self.failovers += 1
            log.warning("connected to %s, failing over from %s (failover %d)", self.url,
                        self.nodes[self._connected_node], self.failovers)
        else:
            flapping = self._node_errors.get(self._node, "").startswith(self._short_lived())
            (log.debug if flapping else log.info)("connected to %s", self.url)
        self._connected_node = self._node
        self._drop_stale_publishes()
        if future is not None and not future.done():
            future.set_result(True)
        try:
            self.on_connect()
        except Exception:
            log.exception("on_connect hook failed")
        # Responses the last connection left unacknowledged go again (QoS 1: at least once).
        pending = list(self._responses.values())
        self._responses.clear()
        for entry in pending:
            mid = self._client.publish_lean(*entry)
            if mid is not None:
                self._responses[mid] = entry
        if pending:
            self.flush()

    def _drop_stale_publishes(self) -> None:
        """Forget the unacknowledged ``resend=False`` publishes of the last connection: paho
        would send them again right after ``on_connect``, behind the owner's fresh ones."""
        if not self._no_resend:
            return
        client = self._client
        with client._out_message_mutex:  # paho's own lock of its unacknowledged messages
            for mid in self._no_resend:
                client._out_messages.pop(mid, None)
        self._no_resend.clear()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        was = self.connected
        self._worked = was and (self._granted or
                                self._loop.time() - self._connected_at >= STABLE_S)
        self.connected = False
        self.subscribed = False
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._connected_future is not None and not self._connected_future.done():
            # Closed before CONNACK: a TLS client certificate the broker refused, a broker
            # shutting down, a protocol it does not speak...
            self._note_error(f"{self.url} closed the connection before accepting "
                             f"it ({reason})")
            self._connected_future.set_result(False)
        if self._stable is not None:
            self._stable.cancel()
            self._stable = None
        if was and not self._closing and not self._worked:
            self._note_error(f"{self._short_lived()} ({reason})")
        elif was:
            (log.info if self._closing else log.warning)(
                "disconnected from %s: %s", self.url, reason)
        if was:
            try:
                self.on_disconnect()
            except Exception:
                log.exception("on_disconnect hook failed")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        response_topic = correlation = None
        properties = getattr(message, "properties", None)
        if properties is not None:
            response_topic = getattr(properties, "ResponseTopic", None)
            correlation = getattr(properties, "CorrelationData", None)
        try:
            self.on_message(Message(message.topic, bytes(message.payload), response_topic,
                                    correlation))
        except Exception:
            log.exception("message handler failed for %s", message.topic)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self.subscribed = True
        if any(getattr(reason, "value", reason) < 0x80 for reason in reasons):
            # The connection works (a filter was granted): the next outage of any node is
            # news again, and a loss of this connection is no failed attempt.
            self._granted = True
            self._node_errors.clear()
        try:
            self.on_subscribed()
        except Exception:
            log.exception("on_subscribed hook failed")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self._no_resend.discard(mid)
        self._on_lean_ack(mid, getattr(reason, "value", 0))

    def _on_lean_ack(self, mid: int, reason: int) -> None:
        self._responses.pop(mid, None)
        try:
            self.on_ack(mid, reason)
        except Exception:
            log.exception("ack handler failed")

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the loop: paho calls some of these from the connect thread."""
        if self._loop.is_closed():
            return  # paho's destructor, after the loop is gone
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on: a small PUBLISH would wait for the ACK of the one before.
        with contextlib.suppress(OSError, AttributeError):
            raw = getattr(sock, "socket", sock)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reads_held = False
        self._in_loop(self._loop.add_reader, sock, self._read)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_fd, sock)

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._in_loop(self._loop.add_writer, sock, self._write)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_writer, sock)

    def _remove_fd(self, sock: Any) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _remove_writer(self, sock: Any) -> None:
        if self._client.tx:
            return  # paho's queue is empty, but its bytes still wait for the socket
        with contextlib.suppress(Exception):
            self._loop.remove_writer(sock)

    def _read(self) -> None:
        self._read_soon = None
        client = self._client
        if self.reads_held or client.socket() is None:
            return
        client.loop_read()
        budget = READ_BUDGET
        while client.buffered and client.socket() is not None:
            budget -= 1
            if budget <= 0 or len(client.tx) > TX_HOLD_BYTES:
                # Enough for one turn (or too much to send): the rest of what was read
                # waits in the buffer, and nothing more is read until it is handled.
                self.flush()
                self._read_later()
                return
            client.loop_read()

    def _read_later(self) -> None:
        """Handle the rest of the read buffer in a later loop turn (the socket may have
        nothing more to say, so its reader would not be called)."""
        if self._read_soon is None and self._client.buffered and not self.reads_held:
            self._read_soon = self._loop.call_soon(self._read)

    def _write(self) -> None:
        # paho hands its queued packets to the client's buffer, which goes out in one send;
        # the writer stays registered until paho's queue and the buffer are both empty.
        client = self._client
        client.loop_write()
        sock = client.socket()
        if sock is None:
            return
        if not client.flush():
            self._loop.add_writer(sock, self._write)
        elif not client.want_write():
            self._remove_writer(sock)
        if self.reads_held and len(client.tx) < TX_RESUME_BYTES:
            self._hold_reads(False)

    def _drop_socket(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            self._remove_fd(sock)

    def _schedule_misc(self) -> None:
        self._stop_misc()
        self._misc = self._loop.call_later(1.0, self._run_misc)

    def _run_misc(self) -> None:
        self._client.loop_misc()
        if self._client.socket() is not None:
            self._misc = self._loop.call_later(1.0, self._run_misc)
        elif self._lost is not None and not self._lost.done():
            self.connected = False
            self._lost.set_result(None)

    def _stop_misc(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
