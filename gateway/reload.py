"""Re-reads the configuration file and applies it to the running gateway and bridge.

The one path for every reload: the fabric's ``reload`` request and SIGHUP. A file that does
not load or validate changes nothing: its errors are returned, all of them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.app import Gateway, ReloadReport
from gateway.bridge.bridge import Bridge
from gateway.config import GatewayConfig, load_config
from gateway.errors import ReloadBusy
from gateway.settings import reload_fields

#: gateway-wide settings the bridge takes at once (``Bridge.apply``): a reload that changes
#: them lists them under ``updated``, beside the ports whose access rules changed (declared
#: ``live`` on ``GatewayConfig``)
LIVE_SETTINGS = reload_fields(GatewayConfig, "live")


class Reloader:
    """``await reloader.reload()``: read ``path``, validate it, apply it."""

    def __init__(self, path: Path, gateway: Gateway, bridge: Bridge | None = None) -> None:
        self.path = Path(path)
        self.gateway = gateway
        self.bridge = bridge
        self._lock = asyncio.Lock()
        if bridge is not None:
            bridge.reloader = self.reload

    async def reload(self) -> ReloadReport:
        """Apply the file as it is now; ``ConfigError``/``ProfileError`` change nothing."""
        if self._lock.locked():
            raise ReloadBusy("a reload is already running")
        async with self._lock:
            config = load_config(self.path)
            before = self.gateway.config
            report = await self.gateway.apply(config)
            if self.bridge is not None:
                self.bridge.apply(self.gateway.config)
                report.updated += [key for key in LIVE_SETTINGS
                                   if getattr(before, key) != getattr(self.gateway.config, key)]
            return report
