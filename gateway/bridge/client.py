"""An MQTT client of the fabric that asks gateways and waits for their answers: the one
request path of ``mcp-gateway request`` and of the dashboard.

A request carries its reply address both ways the spec allows (fabric.md, "Envelope"):
MQTT 5's Response Topic and Correlation Data, and, on MQTT 3.1.1, the envelope's
``reply_to`` and ``correlation_id``. The answer is matched by its correlation and waited
for with a deadline. A one-shot client (``fail_fast``) also gives up as soon as no answer
can come: the broker refused it or dropped it, or the gateway's retained status says it is
offline or is not there at all.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from gateway.bridge.envelope import new_message_id, request_body
from gateway.bridge.mqtt import BrokerSettings, Message, MqttConnection
from gateway.bridge.topics import Topics
from gateway.errors import GatewayError

#: after the SUBACK, how long the watched gateway's retained status may take to arrive
STATUS_GRACE_S = 1.0

Response = dict[str, Any]


class RequestFailed(GatewayError):
    """No answer can come: the broker refused the connection or lost it, or the gateway is
    not there. The message says which broker and why."""


class NotConnected(RequestFailed):
    """A request while the connection is down (a long-lived client does not wait for it)."""

    def __init__(self, last_error: str) -> None:
        super().__init__(f"not connected to the broker {last_error}")
        #: why the last connection attempt failed ("" if none did)
        self.last_error = last_error


class NoResponse(RequestFailed):
    """No answer within the request's deadline."""

    def __init__(self, topic: str, wait_s: float, last_error: str) -> None:
        why = f" ({last_error})" if last_error else ""
        super().__init__(f"no response on {topic} within {wait_s:g} s{why}")
        self.topic = topic
        self.wait_s = wait_s
        self.last_error = last_error


class RequestClient:
    """``async with RequestClient(broker, prefix) as client: await client.request(...)``.

    ``name`` makes the client id (``NAME-PID-RANDOM``) and the reply topic
    (``NAME/CLIENT_ID``, what the shipped broker ACL grants). ``subscriptions`` and
    ``on_message``: the caller's own topics, subscribed with the reply topic on every
    connection, and where their messages go.

    ``fail_fast`` (a one-shot client, the ``request`` command): a request waits for the
    first connection and fails at once when a connection attempt fails or the connection
    is lost. Otherwise (the dashboard) the connection is kept up across losses and a
    request while it is down raises ``NotConnected`` at once.

    ``gateway``: the retained status of this gateway is subscribed with the reply topic;
    a request to it fails at once when the status says ``offline`` or cannot be read, or
    when none has come ``STATUS_GRACE_S`` after the SUBACK: waiting out the deadline
    would only hide that nobody will answer.
    """

    def __init__(self, broker: BrokerSettings, prefix: str = "mcp/v1", *,
                 name: str = "mcp-request", subscriptions: Sequence[str] = (),
                 on_message: Callable[[Message], None] | None = None,
                 gateway: str | None = None, fail_fast: bool = False) -> None:
        self.broker = broker
        self.prefix = prefix
        self.client_id = f"{name}-{os.getpid()}-{new_message_id()[-8:]}"
        self.reply_topic = f"{name}/{self.client_id}"
        self._subscriptions = list(subscriptions)
        self._on_other = on_message
        self._gateway = gateway
        self._status_topic = Topics(prefix, gateway).status if gateway is not None else None
        self._fail_fast = fail_fast
        self._v311 = broker.protocol == 3
        self._loop = asyncio.get_running_loop()
        #: correlation -> (the gateway asked, the answer)
        self._pending: dict[bytes, tuple[str, asyncio.Future[Response]]] = {}
        #: a one-shot client's reason no answer can come (kept: it stays true)
        self._failure: RequestFailed | None = None
        self._gateway_failure: RequestFailed | None = None
        #: set on the first connection, or when a one-shot client fails before it
        self._settled = asyncio.Event()
        self._status_seen = False
        self._no_status: asyncio.TimerHandle | None = None
        self.conn = MqttConnection(replace(broker, client_id=self.client_id),
                                   on_connect=self._on_connect, on_message=self._on_message,
                                   on_disconnect=self._on_disconnect, on_error=self._on_error,
                                   on_subscribed=self._on_subscribed)
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifetime

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self.conn.connected

    @property
    def reconnects(self) -> int:
        """Connections made again after a loss."""
        return self.conn.reconnects

    @property
    def last_error(self) -> str:
        """Why the last connection attempt failed, if it did."""
        return self.conn.last_error

    def start(self) -> None:
        """Connect (and keep reconnecting) in the background."""
        self._task = self._loop.create_task(self.conn.run(), name=f"mqtt-{self.client_id}")

    async def stop(self) -> None:
        """Disconnect (a clean DISCONNECT once what is queued went out) and stop."""
        if self._no_status is not None:
            self._no_status.cancel()
        await self.conn.disconnect()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> RequestClient:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ requests

    async def request(self, gateway: str, device: str | None, action: str,
                      payload: dict[str, Any] | None = None, *,
                      device_timeout_s: float | None = None,
                      wait_s: float = 10.0) -> Response:
        """Send one request (``device`` None: to the gateway itself) and return the response
        envelope. ``device_timeout_s``: the envelope's ``timeout`` (the device's per-try
        timeout); ``wait_s``: the deadline for the answer (for a one-shot client,
        connecting included).

        Raises ``NoResponse`` after ``wait_s``, ``NotConnected``, or (one-shot)
        ``RequestFailed`` saying why no answer can come."""
        topic = Topics(self.prefix, gateway).requests_of(device)
        correlation = new_message_id().encode()
        answer: asyncio.Future[Response] = self._loop.create_future()
        self._pending[correlation] = (gateway, answer)  # before the publish: none is missed
        try:
            async with asyncio.timeout(wait_s):
                if self._fail_fast:
                    await self._settled.wait()
                    self._raise_failure(gateway)
                elif not self.conn.connected:
                    raise NotConnected(self.last_error)
                v311 = self._v311  # no properties: the envelope carries the reply address
                body = request_body(action, payload or {}, self.client_id,
                                    timeout=device_timeout_s,
                                    reply_to=self.reply_topic if v311 else None,
                                    correlation_id=correlation.decode() if v311 else None)
                self.conn.publish(topic, body, correlation_data=correlation,
                                  response_topic=self.reply_topic)
                return await answer
        except TimeoutError:
            raise NoResponse(topic, wait_s, self.last_error) from None
        finally:
            self._pending.pop(correlation, None)

    def _raise_failure(self, gateway: str) -> None:
        if self._failure is not None:
            raise self._failure
        if gateway == self._gateway and self._gateway_failure is not None:
            raise self._gateway_failure

    def _fail(self, failure: RequestFailed, gateway: str | None = None) -> None:
        """No answer can come (to ``gateway``'s requests, or to any): every waiting request
        of the kind fails now, and so does every later one."""
        if gateway is None:
            self._failure = self._failure or failure
        else:
            self._gateway_failure = self._gateway_failure or failure
        self._settled.set()
        for asked, answer in self._pending.values():
            if (gateway is None or asked == gateway) and not answer.done():
                answer.set_exception(failure)

    # ------------------------------------------------------------------ connection hooks

    def _on_connect(self) -> None:
        # One SUBSCRIBE for all: its SUBACK comes before any answer to a request sent after.
        status = [self._status_topic] if self._status_topic is not None else []
        self.conn.subscribe([*self._subscriptions, self.reply_topic, *status])
        self._settled.set()

    def _on_error(self, message: str) -> None:
        # One-shot: fails once every node of the cluster was tried (one: at once).
        conn = self.conn
        if self._fail_fast and conn.failed_attempts >= len(conn.nodes):
            self._fail(RequestFailed(message if len(conn.nodes) == 1 else
                                     f"no broker node answered: {conn.node_errors()}"))

    def _on_disconnect(self) -> None:
        if self._fail_fast:
            self._fail(RequestFailed(f"lost the connection to {self.conn.url} before an "
                                     "answer came"))

    def _on_subscribed(self) -> None:
        # A retained status comes right after the SUBACK, if there is one.
        if self._status_topic is None or self._status_seen or self._no_status is not None:
            return
        self._no_status = self._loop.call_later(STATUS_GRACE_S, self._status_missing)

    def _status_missing(self) -> None:
        if not self._status_seen:
            self._fail(RequestFailed(
                f"no gateway {self._gateway!r} on {self.conn.url}: no retained status on "
                f"{self._status_topic} (is it running, with this gateway id and topic "
                "prefix?)"), self._gateway)

    def _on_message(self, message: Message) -> None:
        if message.topic == self.reply_topic:
            self._on_response(message)
            return
        if message.topic == self._status_topic:
            self._on_status(message)
        if self._on_other is not None:
            self._on_other(message)

    def _on_status(self, message: Message) -> None:
        # The gateway's retained status says whether anyone will answer: "offline" (its will
        # or its clean stop), cleared, or unreadable means no. Any other state ("online",
        # "degraded": its queue cannot be written, it still serves) answers.
        self._status_seen = True
        try:
            state = json.loads(message.payload).get("state") if message.payload else None
        except (ValueError, AttributeError):
            state = None
        if state == "offline" or not isinstance(state, str):
            said = message.payload.decode("utf-8", "replace") or "(cleared)"
            what = f"is {state}" if isinstance(state, str) else "has no readable status"
            self._fail(RequestFailed(f"gateway {self._gateway!r} on {self.conn.url} {what}: "
                                     f"{message.topic} says {said}"), self._gateway)

    def _on_response(self, message: Message) -> None:
        try:
            response = json.loads(message.payload)
        except ValueError:
            return
        correlation = message.correlation_data  # MQTT 5; on 3.1.1 it is in the envelope
        if correlation is None and isinstance(response, dict):
            correlation = str(response.get("correlation_id", "")).encode()
        entry = self._pending.get(correlation or b"")
        if entry is not None and not entry[1].done():
            entry[1].set_result(response if isinstance(response, dict) else {
                "status": "invalid", "error": {"message": "the response is not an object"}})
