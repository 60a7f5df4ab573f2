"""One device: its facts, its latest telemetry with units and sparklines, its log."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, RichLog, Sparkline, Static

from gateway.errors import GatewayError
from gateway.frames import Command, ProfileRegistry
from gateway.frames.profiles import DeviceProfile
from tui.device_table import ago

if TYPE_CHECKING:
    from tui.state import DeviceView

_PROFILES = ProfileRegistry()


def profile_of(device: DeviceView) -> DeviceProfile | None:
    """The device's profile by the name in its status (built-in profiles only)."""
    try:
        return _PROFILES.get(str(device.facts.get("profile", "")))
    except GatewayError:
        return None


def units(device: DeviceView) -> dict[str, str]:
    """Field name -> unit, from the profile's STATUS layout."""
    profile = profile_of(device)
    event = profile.events.get(Command.STATUS) if profile else None
    if event is None:
        return {}
    return {f.name: f.unit for f in event.layout.fields if f.unit}


def facts_text(device: DeviceView, now: float) -> str:
    """The status line and HELLO facts; for a device whose gateway is offline, since when,
    and what its last status said."""
    facts = ", ".join(f"{k}: {json.dumps(v) if isinstance(v, list) else v}"
                      for k, v in device.facts.items())
    status = f"{device.state} ({device.reason})"
    since = device.gateway_offline_since
    if device.shown_state != device.state and since is not None:
        status = (f"{device.shown_state}: gateway offline since "
                  f"{time.strftime('%H:%M:%S', time.localtime(since))} "
                  f"({ago(since, now)}); its last status said {status}")
    return (f"[b]{device.device_id}[/b] on {device.gateway_id}: {status}\n"
            f"{facts or 'no facts yet'}")


def number(value: float) -> str:
    """A scale value: no trailing zeros, at most 2 decimals."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def scale_text(values: list[float], unit: str = "") -> str:
    """The sparkline's scale, top and bottom: max and min (3300 over 3290 mV is no
    full-scale drop, whatever the bars look like)."""
    if not values:
        return ""
    suffix = f" {unit}" if unit else ""
    return f"{number(max(values))}{suffix}\n\n{number(min(values))}{suffix}"


class DeviceScreen(Screen):
    """Enter on a row opens it; escape goes back."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("c", "command", "Command"),
    ]

    def __init__(self, key: tuple[str, str]) -> None:
        super().__init__()
        self.key = key
        self._fields: list[str] = []
        self._log_lines = 0

    @property
    def device(self) -> DeviceView | None:
        """The device, or None once it is gone from the fabric."""
        return self.app.state.devices.get(self.key)  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        yield Static(id="facts")
        yield VerticalScroll(id="telemetry")
        yield RichLog(id="log", wrap=True, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_view()
        self.set_interval(0.5, self.refresh_view)

    def refresh_view(self) -> None:
        """Redraw from the state (twice a second)."""
        device = self.device
        if device is None:
            self.query_one("#facts", Static).update(f"{self.key[1]}: gone from the fabric")
            return
        self.query_one("#facts", Static).update(
            facts_text(device, self.app.clock()))  # type: ignore[attr-defined]
        self._show_telemetry(device)
        log = self.query_one("#log", RichLog)
        lines = list(device.log)
        new = lines[self._log_lines:] if len(lines) >= self._log_lines else lines
        for line in new:
            log.write(line)
        self._log_lines = len(lines)

    def _show_telemetry(self, device: DeviceView) -> None:
        box = self.query_one("#telemetry", VerticalScroll)
        names = list(device.telemetry)
        unit = units(device)
        if names != self._fields:
            # Built with their content: the first frame shows the values, not empty rows.
            box.remove_children()
            for name in names:
                label, values = self._field(device, name, unit)
                box.mount(Horizontal(
                    Static(label, classes="field-label", id=f"label-{name}"),
                    Sparkline(values, id=f"spark-{name}"),
                    Static(scale_text(values, unit.get(name, "")), classes="field-scale",
                           id=f"scale-{name}"),
                    classes="field"))
            self._fields = names
            return
        for name in names:
            label, values = self._field(device, name, unit)
            self.query_one(f"#label-{name}", Static).update(label)
            if values:
                self.query_one(f"#spark-{name}", Sparkline).data = values
                self.query_one(f"#scale-{name}", Static).update(
                    scale_text(values, unit.get(name, "")))

    @staticmethod
    def _field(device: DeviceView, name: str, unit: dict[str, str]) -> tuple[str, list[float]]:
        """A telemetry field's label and its history."""
        value: Any = device.telemetry[name]
        label = f"{name}: {value}" + (f" {unit[name]}" if name in unit else "")
        return label, [v for _, v in device.history.get(name, ())]

    def action_command(self) -> None:
        """Open the command form for this device."""
        from tui.command import CommandScreen  # noqa: PLC0415 - screens import each other

        self.app.push_screen(CommandScreen(self.key))
