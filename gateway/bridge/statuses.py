"""The fabric's retained statuses: the gateway's (online, or degraded while its queue cannot
be written) and each device's, published afresh on every connection.

A device id that leaves the gateway (removed from the configuration, given up by a rename)
has its retained status cleared: its last status first (``offline``, ``removed``), then,
once the broker has acknowledged that, an empty retained message. Statuses are never sent
again by paho on a new connection: this module publishes them anew, so the broker always
holds the latest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from gateway import __version__
from gateway.bridge.envelope import encode_json
from gateway.bridge.mqtt import MqttConnection
from gateway.bridge.topics import Topics
from gateway.session import DeviceRenamed, StateChange


def offline_body(instance: str, started_at: float) -> bytes:
    """The gateway's ``offline`` status (its clean stop, and its will), naming its run: a
    gateway watching its own status topic tells another run's from its own."""
    return json.dumps({"state": "offline", "instance": instance,
                       "started_at": started_at}).encode()


class RetainedStatuses:
    """What the broker keeps for the gateway and its devices; ``take`` a device's state
    change, ``connected`` on every connection, ``acked`` for PUBACKs of non-event mids."""

    def __init__(self, mqtt: MqttConnection, topics: Topics, *,
                 on_forget: Callable[[str], None], instance: str,
                 started_at: float | None = None) -> None:
        self.mqtt = mqtt
        self.topics = topics
        #: this run of the gateway: random, in every gateway status (claim.py)
        self.instance = instance
        self.started_at = time.time() if started_at is None else started_at
        #: called when a device id leaves the gateway: nothing of it is republished or kept
        self._on_forget = on_forget
        self._statuses: dict[str, bytes] = {}
        #: ids whose retained status is to be cleared (a device removed from the
        #: configuration, an id given up by a rename): the status to publish first and have
        #: acknowledged (offline, removed), or None once only the clear is left
        self._retiring: dict[str, bytes | None] = {}
        #: unacknowledged publishes of that: mid -> (device id, what was published)
        self._retire_mids: dict[int, tuple[str, bytes | None]] = {}
        #: why the gateway says degraded (the queue's last write error), None while it does not
        self._degraded: str | None = None
        self._degraded_since: float | None = None

    # ------------------------------------------------------------------ devices

    def take(self, event: StateChange | DeviceRenamed) -> int | None:
        """Publish what a device's state change means on the fabric; returns the mid of a
        status publish the stop waits for (None if there is none, or not connected)."""
        if isinstance(event, DeviceRenamed):
            # The old id is gone: clear its retained status (now, or on the next connect).
            self._forget(event.old_id)
            self._retiring[event.old_id] = None
            self._retire(event.old_id)
            return None
        if event.state == "connecting":
            return None
        body = encode_json({"state": event.state, "reason": event.reason,
                            "since": event.since, **event.facts})
        if event.state == "offline" and event.reason == "removed":
            # Offline (removed) first; cleared once the broker has acknowledged that.
            self._forget(event.device_id)
            self._retiring[event.device_id] = body
            self._retire(event.device_id)
            return None
        self._statuses[event.device_id] = body
        self._retiring.pop(event.device_id, None)
        return self.mqtt.publish(self.topics.device_status(event.device_id), body,
                                 retain=True, resend=False)

    def _forget(self, device_id: str) -> None:
        self._statuses.pop(device_id, None)
        self._on_forget(device_id)

    def _retire(self, device_id: str) -> None:
        """Publish the next step of clearing a device id's retained status: its last status
        if still unacknowledged, else the clear (an empty retained message). Not connected:
        the next connection does it."""
        pending = self._retiring[device_id]
        mid = self.mqtt.publish(self.topics.device_status(device_id), pending or b"",
                                retain=True, resend=False)
        if mid is not None:
            self._retire_mids[mid] = (device_id, pending)

    @property
    def retiring(self) -> tuple[str, ...]:
        """Ids whose retained status is still to be cleared."""
        return tuple(self._retiring)

    def acked(self, mid: int) -> None:
        """A PUBACK that is not an event's: the next step of a retiring id, if it was one."""
        retiring = self._retire_mids.pop(mid, None)
        if retiring is None:
            return
        device_id, published = retiring
        if device_id not in self._retiring or self._retiring[device_id] is not published:
            return  # the id came back (or retires anew) since: that publish is history
        if published is None:
            del self._retiring[device_id]  # cleared
        else:
            self._retiring[device_id] = None
            self._retire(device_id)

    # ------------------------------------------------------------------ the gateway

    @property
    def spool_error(self) -> str | None:
        """The queue's last write error while the gateway says degraded, else None."""
        return self._degraded

    def degraded(self, reason: str) -> None:
        """The queue cannot be written: the gateway says degraded (published on entering;
        ``reason`` is kept up to date for the stats and the next connection)."""
        entering = self._degraded is None
        self._degraded = reason
        if entering:
            self._degraded_since = time.time()
            self._publish_gateway()

    def recovered(self) -> None:
        """The queue is written again: the gateway says online."""
        self._degraded = None
        self._degraded_since = None
        self._publish_gateway()

    def gateway_body(self) -> bytes:
        """The gateway's retained status: online, or degraded while the queue cannot be
        written (still serving: consumers treat anything but offline as up)."""
        body: dict[str, Any] = {"state": "online", "version": __version__,
                                "started_at": self.started_at, "instance": self.instance}
        if self._degraded is not None:
            body.update(state="degraded", reason="spool_error", error=self._degraded,
                        since=self._degraded_since)
        return json.dumps(body).encode()

    def _publish_gateway(self) -> None:
        self.mqtt.publish(self.topics.status, self.gateway_body(), retain=True, resend=False)

    def offline(self) -> int | None:
        """The gateway stops cleanly: its status says offline; the mid to wait for."""
        return self.mqtt.publish(self.topics.status, offline_body(self.instance,
                                                                  self.started_at),
                                 retain=True)

    # ------------------------------------------------------------------ connections

    def republish(self) -> None:
        """Every status afresh on this connection: another run of a gateway with this id
        published over them (claim.py), and this run is the one that stays."""
        self._publish_gateway()
        for device_id, body in self._statuses.items():
            self.mqtt.publish(self.topics.device_status(device_id), body, retain=True,
                              resend=False)

    def connected(self) -> None:
        """A new connection: every status afresh (none is sent again by paho), and the
        clearing of retiring ids from their current step."""
        mqtt = self.mqtt
        self._publish_gateway()
        for device_id, body in self._statuses.items():
            mqtt.publish(self.topics.device_status(device_id), body, retain=True, resend=False)
        self._retire_mids.clear()
        for device_id in self._retiring:
            self._retire(device_id)
