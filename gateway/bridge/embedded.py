"""An in-process MQTT broker (amqtt) for the demo and for trying things with nothing installed.

amqtt speaks MQTT 3.1.1 only and tops out near 4-6k QoS 1 messages/s: production uses a
real broker (Mosquitto on the box, or a cluster); see the README.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from gateway.errors import GatewayError


class EmbeddedBrokerError(GatewayError):
    """The embedded broker cannot start (bad URL, port in use...)."""


#: the embedded broker listens on loopback only (it has no authentication and no TLS)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def url_problem(url: str) -> str | None:
    """Why the embedded broker cannot listen at ``url`` (None: it can)."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or parts.hostname not in LOOPBACK_HOSTS:
        return "is not for the embedded broker: it listens on loopback without TLS; " \
            "expected mqtt://127.0.0.1:PORT"
    return None


class EmbeddedBroker:
    """``async with EmbeddedBroker("mqtt://127.0.0.1:1883"):`` runs amqtt on that address."""

    def __init__(self, url: str) -> None:
        problem = url_problem(url)
        if problem:
            raise EmbeddedBrokerError(f"{url!r} {problem}")
        parts = urlsplit(url)
        self.url = url
        self.bind = f"{parts.hostname}:{parts.port or 1883}"
        self._broker = None

    async def __aenter__(self) -> EmbeddedBroker:
        from amqtt.broker import Broker  # noqa: PLC0415 - only the demo pays for importing it

        # While starting, amqtt logs its failure with a traceback: it is raised below, once.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self._broker = Broker({
            "listeners": {"default": {"type": "tcp", "bind": self.bind}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                        {"allow_anonymous": True}},
        })
        try:
            await self._broker.start()
        except Exception as exc:
            raise EmbeddedBrokerError(f"the embedded broker cannot listen on {self.bind}: {exc}") \
                from exc
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
