"""The gateway-level actions of the fabric (``{p}/{gw}/requests``): ``list_devices``,
``trace`` (the last frames of a device, hex and decoded, both directions) and ``reload``.

Each gives an ``ActionResult``, the answer's status and payload or error; the request
server has already checked the envelope and the allow list, and publishes the answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.app import Gateway, ReloadReport, UnknownDevice
from gateway.errors import GatewayError, ReloadBusy
from gateway.frames.describe import describe


@dataclass(frozen=True)
class ActionResult:
    """What an action answers: ``ok`` with a payload, or an error word with (code, text)."""

    status: str
    payload: dict[str, Any] | None = None
    error: tuple[Any, str] | None = None

    @classmethod
    def failed(cls, status: str, text: str) -> ActionResult:
        """An error answer whose code is its status word."""
        return cls(status, error=(status, text))


class GatewayActions:
    """The bodies of the gateway-level actions, over the running gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        #: set by ``gateway.reload.Reloader`` (through the bridge): re-read the
        #: configuration file and apply it; None when there is no file to reload
        self.reloader: Callable[[], Awaitable[ReloadReport]] | None = None

    def list_devices(self, payload: dict[str, Any]) -> ActionResult:
        """Every device with its state and what it said of itself."""
        devices = {name: {"state": str(s.state), **s.facts}
                   for name, s in self.gateway.devices.items()}
        return ActionResult("ok", payload={"devices": devices})

    def trace(self, payload: dict[str, Any]) -> ActionResult:
        """The last frames of ``payload["device"]``, both directions, hex and decoded."""
        try:
            session = self.gateway.device(str(payload.get("device")))
        except UnknownDevice as exc:
            return ActionResult.failed("unknown_device", str(exc))
        frames = [{"t": t, "dir": direction, "hex": frame.encode().hex(" "),
                   **describe(frame, session.profile)}
                  for direction, t, frame in session.trace]
        return ActionResult("ok", payload={"device": session.device_id, "frames": frames})

    async def reload(self, payload: dict[str, Any]) -> ActionResult:
        """Re-read the configuration file and apply it; the report of what changed."""
        if self.reloader is None:
            return ActionResult.failed("invalid", "this gateway was not started from a "
                                       "configuration file: there is nothing to reload")
        try:
            report = await self.reloader()
        except ReloadBusy as exc:
            return ActionResult.failed("busy", str(exc))
        except GatewayError as exc:  # the file does not load or validate: nothing changed
            return ActionResult.failed("invalid", str(exc))
        return ActionResult("ok", payload=asdict(report))
