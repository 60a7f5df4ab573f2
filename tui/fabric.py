"""The dashboard's one MQTT connection: subscriptions into ``FabricState``, and requests
(MQTT 5 Response Topic + Correlation Data) answered by futures."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from gateway.bridge.envelope import new_message_id, request_body
from gateway.bridge.mqtt import BrokerSettings, Message, MqttConnection
from gateway.bridge.topics import Topics
from tui.state import FabricState


def shown_url(broker: BrokerSettings) -> str:
    """The broker URL to show: scheme, user, host and port; never a password (a URL may
    carry one in its user part, and the settings may hold one)."""
    parts = urlsplit(broker.url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: the connection says so; show what is there
        port = ""
    user = broker.username or parts.username
    return f"{parts.scheme}://{f'{user}@' if user else ''}{host}{port}"


class Fabric:
    """``await fabric.start()``; ``await fabric.request(gw, dev, action, payload)``."""

    def __init__(self, broker: BrokerSettings, state: FabricState,
                 gateway: str | None = None) -> None:
        self.state = state
        self.gateway = gateway
        self.protocol = broker.protocol
        #: the broker URL as shown (no password)
        self.url = shown_url(broker)
        self.me = f"mcp-dashboard-{os.getpid()}-{new_message_id()[-6:]}"
        self.reply_topic = f"mcp-dashboard/{self.me}"
        self.conn = MqttConnection(replace(broker, client_id=self.me),
                                   on_connect=self._on_connect, on_message=self._on_message)
        self._pending: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None

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
        self._task = asyncio.get_running_loop().create_task(self.conn.run(), name="fabric")

    async def stop(self) -> None:
        """Disconnect."""
        await self.conn.disconnect()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _on_connect(self) -> None:
        self.conn.subscribe([*self.state.subscriptions(self.gateway), self.reply_topic])

    def _on_message(self, message: Message) -> None:
        if message.topic == self.reply_topic:
            try:
                response = json.loads(message.payload)
            except ValueError:
                return
            correlation = message.correlation_data  # MQTT 5; 3.1.1: in the envelope
            if correlation is None and isinstance(response, dict):
                correlation = str(response.get("correlation_id", "")).encode()
            future = self._pending.pop(correlation or b"", None)
            if future is not None and not future.done():
                future.set_result(response if isinstance(response, dict) else {
                    "status": "invalid", "error": {"message": "the response is not an object"}})
            return
        self.state.apply(message.topic, message.payload)

    async def request(self, gateway: str, device: str | None, action: str,
                      payload: dict[str, Any] | None = None,
                      wait_s: float = 10.0) -> dict[str, Any]:
        """Send a request; the response envelope, or a made-up one saying what went wrong
        (``not_connected``, ``no_response``)."""
        if not self.conn.connected:
            return {"status": "not_connected",
                    "error": {"message": f"not connected to the broker {self.last_error}"}}
        topic = Topics(self.state.prefix, gateway).requests_of(device)
        correlation = new_message_id().encode()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = future
        v311 = self.protocol == 3
        body = request_body(action, payload or {}, self.me,
                            reply_to=self.reply_topic if v311 else None,
                            correlation_id=correlation.decode() if v311 else None)
        self.conn.publish(topic, body, correlation_data=correlation,
                          response_topic=self.reply_topic)
        try:
            async with asyncio.timeout(wait_s):
                return await future
        except TimeoutError:
            return {"status": "no_response",
                    "error": {"message": f"no response within {wait_s:g} s"}}
        finally:
            self._pending.pop(correlation, None)
