"""The dashboard app: the fabric's state, its MQTT connection, and the screens.

The MQTT connection feeds ``FabricState``; a 4 Hz timer redraws what changed. No screen
reads MQTT, and no message redraws anything by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.app import App
from textual.binding import Binding

from gateway.bridge.mqtt import BrokerSettings
from tui.fabric import Fabric
from tui.help import HelpScreen
from tui.overview import OverviewScreen
from tui.state import FabricState

REDRAW_S = 0.25


class DashboardApp(App[None]):
    """``DashboardApp(url_or_broker_settings, gateway=None, prefix="mcp/v1").run()``."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "mcp-gateway dashboard"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("t", "toggle_dark", "Theme"),
    ]

    def __init__(self, broker: str | BrokerSettings, gateway: str | None = None,
                 prefix: str = "mcp/v1", *, protocol: int = 5, connect: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        #: wall-clock time for "last seen" (a fixed one makes screenshots repeatable)
        self.clock = clock
        self.state = FabricState(prefix)
        #: a URL alone connects anonymously with ``protocol``
        self._broker = broker if isinstance(broker, BrokerSettings) else BrokerSettings(
            url=broker, protocol=protocol)
        self._gateway = gateway
        #: the broker connection (made when the app starts: it needs the running loop)
        self.fabric: Fabric
        self._connect = connect
        self.overview = OverviewScreen()

    def on_mount(self) -> None:
        self.fabric = Fabric(self._broker, self.state, self._gateway)
        if self._connect:
            self.fabric.start()
        self.push_screen(self.overview)
        self.set_interval(REDRAW_S, self.redraw)

    def redraw(self, now: float | None = None) -> None:
        """Redraw the overview from what changed (the other screens redraw themselves)."""
        changed, _ = self.state.take_changes()
        self.overview.redraw(changed, self.clock() if now is None else now)

    def action_help(self) -> None:
        """The help screen."""
        self.push_screen(HelpScreen())

    async def on_unmount(self) -> None:
        await self.fabric.stop()
