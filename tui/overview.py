"""The overview: health line, filter, and the device table."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from tui.device_table import DeviceTable, ago
from tui.state import SORTS, FabricState, GatewayView

#: up to this many gateways the health line describes each; beyond, it counts the ones up
#: and names only those that are not (a fleet's line must fit the screen's top)
GATEWAYS_DESCRIBED = 3


def gateway_text(gw: GatewayView, now: float) -> str:
    """One gateway in the health line: its state, for how long, its queue."""
    text = f"{gw.gateway_id} {gw.state}"
    if gw.state not in ("online", "offline") and gw.reason:
        text += f" ({gw.reason})"  # degraded: still serving, but say why
    if gw.offline_since is not None:
        # Its last stats (uptime, queue) are from before it went away: not shown.
        text += f" for {ago(gw.offline_since, now).removesuffix(' ago')}"
    else:
        if gw.uptime_s is not None:
            text += f" up {ago(now - gw.uptime_s, now).removesuffix(' ago')}"
        if gw.mqtt:
            text += (f" queued {gw.mqtt.get('spooled', 0)} "
                     f"dropped {gw.mqtt.get('dropped', 0)}")
    return text


def fleet_text(gateways: list[GatewayView], now: float) -> str:
    """Many gateways in the health line: how many are online, their queues summed, and
    each one that is not online, described."""
    online = [gw for gw in gateways if gw.state == "online"]
    text = f"{len(gateways)} gateways, {len(online)} online"
    queued = sum(int(gw.mqtt.get("spooled", 0) or 0) for gw in online)
    dropped = sum(int(gw.mqtt.get("dropped", 0) or 0) for gw in online)
    if any(gw.mqtt for gw in online):
        text += f" (queued {queued} dropped {dropped})"
    others = [gateway_text(gw, now) for gw in gateways if gw.state != "online"]
    return "; ".join([text, *others])


def health_text(state: FabricState, connected: bool, reconnects: int, last_error: str, *,
                now: float, url: str = "") -> str:
    """The top line: broker (its URL, for ``mosquitto_sub`` beside the dashboard),
    gateways, devices."""
    broker = f"broker {url}".rstrip()
    broker += " connected" if connected else f" NOT connected {last_error}".rstrip()
    if reconnects:
        broker += f" ({reconnects} reconnects)"
    views = sorted(state.gateways.values(), key=lambda g: g.gateway_id)
    if len(views) > GATEWAYS_DESCRIBED:
        gateways = fleet_text(views, now)
    else:
        gateways = "; ".join(gateway_text(gw, now) for gw in views) or "no gateway seen yet"
    online, stale, total = state.counts()
    devices = f"{online}/{total} devices online" + (f", {stale} stale" if stale else "")
    return f"{broker} | {gateways} | {devices}"


class OverviewScreen(Screen):
    """The first screen. Keys never change meaning mid-word: ``/`` opens the filter (where
    every key is text), ``enter`` keeps it, ``escape`` clears it."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("c", "command", "Command"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        #: one of ``state.SORTS``
        self.sort = "device"
        #: its widgets are there (set on mount): redraws before that would find none
        self.ready = False

    def compose(self) -> ComposeResult:
        yield Static(id="health")
        yield Input(placeholder="filter devices: enter keeps it, escape clears it",
                    id="filter")
        yield DeviceTable(id="devices")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DeviceTable).focus()
        self.ready = True
        # The first frame shows what is known now, not a blank screen until the timer fires.
        self.app.redraw()  # type: ignore[attr-defined]

    def redraw(self, changed: set[tuple[str, str]], now: float) -> None:
        """Bring the health line and the table up to date (called by the app's timer)."""
        app: Any = self.app
        fabric = app.fabric
        try:
            health = self.query_one("#health", Static)
        except NoMatches:
            return  # the app is closing: its timer fired after this screen's widgets went
        health.update(health_text(app.state, fabric.connected, fabric.reconnects,
                                  fabric.last_error, now=now, url=fabric.url))
        health.set_class(not fabric.connected, "down")
        text = self.query_one("#filter", Input).value
        rows = app.state.rows(text, self.sort)
        self.query_one(DeviceTable).show(rows, changed, now, self.sort)

    @property
    def filter_text(self) -> str:
        """The filter in effect ("" for none)."""
        return self.query_one("#filter", Input).value

    def on_input_changed(self) -> None:
        self.app.call_later(self.app.redraw)  # type: ignore[attr-defined]

    def on_input_submitted(self) -> None:
        # Kept: the input stays in sight while it filters, so the table says why it is short.
        filter_input = self.query_one("#filter", Input)
        filter_input.set_class(bool(filter_input.value.strip()), "open")
        self.query_one(DeviceTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        selected = self.query_one(DeviceTable).selected()
        if selected is not None:
            from tui.detail import DeviceScreen  # noqa: PLC0415 - screens import each other

            self.app.push_screen(DeviceScreen(selected))

    def action_filter(self) -> None:
        """Open the filter: what is typed next is text, not keys."""
        filter_input = self.query_one("#filter", Input)
        filter_input.add_class("open")
        filter_input.focus()

    def action_clear_filter(self) -> None:
        """Empty and close the filter and go back to the table."""
        filter_input = self.query_one("#filter", Input)
        filter_input.value = ""
        filter_input.remove_class("open")
        self.query_one(DeviceTable).focus()

    def action_sort(self) -> None:
        """The next sort order (shown by the arrow in the column header)."""
        sorts = list(SORTS)
        self.sort = sorts[(sorts.index(self.sort) + 1) % len(sorts)]
        self.notify(f"sorted by {self.sort}", timeout=1.5)
        self.app.call_later(self.app.redraw)  # type: ignore[attr-defined]

    def action_command(self) -> None:
        """Command the highlighted device."""
        selected = self.query_one(DeviceTable).selected()
        if selected is not None:
            from tui.command import CommandScreen  # noqa: PLC0415

            self.app.push_screen(CommandScreen(selected))
