"""The fabric's topic names (``../shared/spec/fabric.md``), built in one place."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import ID_PATTERN


@dataclass(frozen=True, slots=True)
class Topics:
    """Topics of one gateway under a prefix."""

    prefix: str
    gateway_id: str

    @property
    def base(self) -> str:
        """``{p}/{gw}``."""
        return f"{self.prefix}/{self.gateway_id}"

    @property
    def status(self) -> str:
        """The gateway's retained status (and its MQTT will)."""
        return f"{self.base}/status"

    @property
    def stats(self) -> str:
        """Counters every 5 s, retained."""
        return f"{self.base}/stats"

    @property
    def gateway_requests(self) -> str:
        """Gateway-level requests (list_devices, reload, trace)."""
        return f"{self.base}/requests"

    @property
    def device_requests_filter(self) -> str:
        """Subscription filter for every device's requests."""
        return f"{self.base}/devices/+/requests"

    def requests_of(self, device_id: str | None) -> str:
        """Where a request goes: a device's topic, or the gateway's for ``None``."""
        if device_id is None:
            return self.gateway_requests
        return f"{self.base}/devices/{device_id}/requests"

    def device_status(self, device_id: str) -> str:
        """A device's retained availability."""
        return f"{self.base}/devices/{device_id}/status"

    def device_set(self, device_id: str, key: str) -> str:
        """A plain-value write of one key (Home Assistant's ``number``/``text`` commands):
        the body is the value itself (``500``, ``kitchen``), not an envelope."""
        return f"{self.base}/devices/{device_id}/set/{key}"

    def device_press(self, device_id: str, action: str) -> str:
        """A plain command without arguments (a Home Assistant ``button``: ``ping``, or a
        profile command whose request is empty); any body."""
        return f"{self.base}/devices/{device_id}/press/{action}"

    @property
    def plain_command_filters(self) -> list[str]:
        """Subscription filters of every device's plain-value commands."""
        return [f"{self.base}/devices/+/set/+", f"{self.base}/devices/+/press/+"]

    def plain_command_of(self, topic: str) -> tuple[str, str, str] | None:
        """(device id, "set" or "press", key or action) of a plain-value command topic."""
        head = f"{self.base}/devices/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) == 3 and parts[1] in ("set", "press") and ID_PATTERN.fullmatch(parts[0]) \
                and parts[2]:  # fmt: skip
            return parts[0], parts[1], parts[2]
        return None

    def device_event(self, device_id: str, name: str) -> str:
        """A device's events of one kind."""
        return f"{self.base}/devices/{device_id}/events/{name}"

    def reply_refusal(self, topic: str) -> str | None:
        """Why the gateway must not publish a response on ``topic``, or None if it may.

        Never inside any gateway's namespace (``{p}/+/status``, ``{p}/+/stats``,
        ``{p}/+/devices/#``, ``{p}/+/requests``) nor on a ``$`` topic: the gateway's
        credentials may write there, so a response would let any client forge a gateway's
        status or a device's events (a confused deputy)."""
        if topic.startswith("$"):
            return "it is a $ topic"
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return None  # the usual case, decided without splitting
        levels = topic[len(head):].split("/")
        # levels[0] is any gateway id ("+" matches every level, the empty one too)
        if len(levels) == 2 and levels[1] in ("status", "stats", "requests"):
            return f"it is inside a gateway's namespace ({self.prefix}/+/{levels[1]})"
        if len(levels) >= 2 and levels[1] == "devices":
            return f"it is inside a gateway's namespace ({self.prefix}/+/devices/#)"
        return None

    def device_of_request_topic(self, topic: str) -> str | None:
        """The device id of a ``.../devices/{dev}/requests`` topic, None for other topics."""
        head = f"{self.base}/devices/"
        if topic.startswith(head) and topic.endswith("/requests"):
            device_id = topic[len(head) : -len("/requests")]
            if ID_PATTERN.fullmatch(device_id):
                return device_id
        return None


def valid_reply_topic(topic: str) -> bool:
    """A topic a response can be published to: UTF-8, non-empty, no wildcards, not too long.
    (Whether the gateway may publish there is ``Topics.reply_refusal``.)"""
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: a \ud800 escape in the JSON
        return False
    return 0 < size <= 1024 and "#" not in topic and "+" not in topic and "\x00" not in topic
