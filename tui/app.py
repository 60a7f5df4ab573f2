"""The dashboard app: the fabric's state, its MQTT connection, and the screens.

The MQTT connection feeds ``FabricState``; the overview is painted when it is mounted,
then a 4 Hz timer redraws what changed. No screen reads MQTT, and no message redraws
anything by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual import events, on
from textual.app import App
from textual.binding import Binding

from gateway.bridge.mqtt import BrokerSettings
from tui import screenshot
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
        self.state = FabricState(prefix, clock)
        #: a URL alone connects anonymously with ``protocol``
        self._broker = broker if isinstance(broker, BrokerSettings) else BrokerSettings(
            url=broker, protocol=protocol)
        self._gateway = gateway
        #: the broker connection (made when the app starts: it needs the running loop)
        self.fabric: Fabric
        self._connect = connect
        self.overview = OverviewScreen()

    async def on_mount(self) -> None:
        self.fabric = Fabric(self._broker, self.state, self._gateway)
        if self._connect:
            self.fabric.start()
        # The overview paints its first frame when its widgets are mounted (on_mount).
        await self.push_screen(self.overview)
        self.set_interval(REDRAW_S, self.redraw)

    def redraw(self, now: float | None = None) -> None:
        """Redraw the overview from what changed (the other screens redraw themselves)."""
        if not self.overview.ready:
            return  # not composed yet (a loaded machine): the changes wait for its first frame
        changed, _ = self.state.take_changes()
        self.overview.redraw(changed, self.clock() if now is None else now)

    def action_help(self) -> None:
        """The help screen."""
        self.push_screen(HelpScreen())

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None,
                           time_format: str | None = None) -> str | None:
        """The palette's Screenshot: saved where it can be (see ``tui.screenshot``)."""
        directory = path or str(screenshot.screenshot_directory())
        return super().deliver_screenshot(filename, directory, time_format)

    @on(events.DeliveryComplete)
    def _screenshot_saved(self, event: events.DeliveryComplete) -> None:
        if event.name == "screenshot":
            event.prevent_default()  # instead of Textual's notification
            self.notify(screenshot.saved_text(event.path), title="Screenshot")

    @on(events.DeliveryFailed)
    def _screenshot_failed(self, event: events.DeliveryFailed) -> None:
        if event.name == "screenshot":
            event.prevent_default()  # Textual's says only "Failed to save screenshot"
            self.notify(screenshot.failed_text(event.exception), title="Screenshot",
                        severity="error")

    async def on_unmount(self) -> None:
        await self.fabric.stop()
