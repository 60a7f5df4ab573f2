"""The overview: health line, filter, and the device table."""

from __future__ import annotations

from typing import Any

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from tui.device_table import DeviceTable, ago
from tui.state import FabricState

SORTS = ("device", "gateway", "state", "rx", "errors")


def health_text(state: FabricState, connected: bool, reconnects: int, last_error: str,
                now: float) -> str:
    """The top line: broker, gateways, devices."""
    broker = "broker connected" if connected else f"broker NOT connected {last_error}".strip()
    if reconnects:
        broker += f" ({reconnects} reconnects)"
    gateways = []
    for gw in sorted(state.gateways.values(), key=lambda g: g.gateway_id):
        text = f"{gw.gateway_id} {gw.state}"
        if gw.uptime_s is not None:
            text += f" up {ago(now - gw.uptime_s, now).removesuffix(' ago')}"
        if gw.mqtt:
            text += f" queued {gw.mqtt.get('spooled', 0)} dropped {gw.mqtt.get('dropped', 0)}"
        gateways.append(text)
    online = sum(1 for d in state.devices.values() if d.state == "online")
    return (f"{broker} | {'; '.join(gateways) or 'no gateway seen yet'} | "
            f"{online}/{len(state.devices)} devices online")


class OverviewScreen(Screen):
    """The first screen."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("c", "command", "Command"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort = "device"
        self._shown_filter: str | None = None
        self._shown_sort: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="health")
        yield Input(placeholder="filter: type to narrow the devices", id="filter")
        yield DeviceTable(id="devices")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DeviceTable).focus()

    def redraw(self, changed: set[tuple[str, str]], now: float) -> None:
        """Bring the health line and the table up to date (called by the app's timer)."""
        app: Any = self.app
        fabric = app.fabric
        health = self.query_one("#health", Static)
        health.update(health_text(app.state, fabric.connected, fabric.reconnects,
                                  fabric.last_error, now))
        health.set_class(not fabric.connected, "down")
        text = self.query_one("#filter", Input).value
        rows = app.state.rows(text, self.sort)
        self.query_one(DeviceTable).show(rows, changed, now)

    def on_key(self, event: events.Key) -> None:
        # Typing anywhere on the overview goes to the filter.
        filter_input = self.query_one("#filter", Input)
        if event.is_printable and event.character and not filter_input.has_focus \
                and event.character not in "s?qtc/":  # fmt: skip
            filter_input.value += event.character
            event.stop()

    def on_input_changed(self) -> None:
        self.app.call_later(self.app.redraw)  # type: ignore[attr-defined]

    def on_input_submitted(self) -> None:
        self.query_one(DeviceTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        selected = self.query_one(DeviceTable).selected()
        if selected is not None:
            from tui.detail import DeviceScreen  # noqa: PLC0415 - screens import each other

            self.app.push_screen(DeviceScreen(selected))

    def action_filter(self) -> None:
        """Focus the filter."""
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        """Empty the filter and go back to the table."""
        self.query_one("#filter", Input).value = ""
        self.query_one(DeviceTable).focus()

    def action_sort(self) -> None:
        """The next sort order."""
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.notify(f"sorted by {self.sort}", timeout=1.5)
        self.app.call_later(self.app.redraw)  # type: ignore[attr-defined]

    def action_command(self) -> None:
        """Command the highlighted device."""
        selected = self.query_one(DeviceTable).selected()
        if selected is not None:
            from tui.command import CommandScreen  # noqa: PLC0415

            self.app.push_screen(CommandScreen(selected))
