"""The dashboard's one MQTT connection: the fabric's topics into ``FabricState``, and the
command form's requests, through the fabric's one request client
(``gateway.bridge.client.RequestClient``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gateway.bridge.client import NoResponse, NotConnected, RequestClient, Response
from gateway.bridge.mqtt import BrokerSettings, Message
from tui.state import FabricState


def shown_url(broker: BrokerSettings, url: str | None = None) -> str:
    """The broker URL to show (``url``, one of a cluster's nodes; default ``broker.url``):
    scheme, user, host and port; never a password (a URL may carry one in its user part,
    and the settings may hold one)."""
    parts = urlsplit(broker.url if url is None else url)
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
    """``fabric.start()``; ``await fabric.request(gw, dev, action, payload)``; ``await
    fabric.stop()``. Messages of the fabric's topics go to ``state``; the connection is
    kept up across losses (the health line says when it is down)."""

    def __init__(self, broker: BrokerSettings, state: FabricState,
                 gateway: str | None = None) -> None:
        self.state = state
        self.gateway = gateway
        self._broker = broker
        self.client = RequestClient(broker, state.prefix, name="mcp-dashboard",
                                    subscriptions=state.subscriptions(gateway),
                                    on_message=self._on_message)

    @property
    def url(self) -> str:
        """The broker node connected to, or tried next, as shown (no password)."""
        return shown_url(self._broker, self.client.conn.url)

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self.client.connected

    @property
    def reconnects(self) -> int:
        """Connections made again after a loss."""
        return self.client.reconnects

    @property
    def last_error(self) -> str:
        """Why the last connection attempt failed, if it did."""
        return self.client.last_error

    def start(self) -> None:
        """Connect (and keep reconnecting) in the background."""
        self.client.start()

    async def stop(self) -> None:
        """Disconnect."""
        await self.client.stop()

    def _on_message(self, message: Message) -> None:
        self.state.apply(message.topic, message.payload)

    async def request(self, gateway: str, device: str | None, action: str,
                      payload: dict[str, Any] | None = None,
                      wait_s: float = 10.0) -> Response:
        """Send a request; the response envelope, or a made-up one saying what went wrong
        (``not_connected``, ``no_response``): the command form shows either the same way."""
        try:
            return await self.client.request(gateway, device, action, payload, wait_s=wait_s)
        except NotConnected as exc:
            return {"status": "not_connected",
                    "error": {"message": f"not connected to the broker {exc.last_error}"}}
        except NoResponse:
            return {"status": "no_response",
                    "error": {"message": f"no response within {wait_s:g} s"}}
