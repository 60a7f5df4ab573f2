"""One device: its facts, its latest telemetry with units and sparklines, its log."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, RichLog, Sparkline, Static

from gateway.errors import GatewayError
from gateway.frames import Command, ProfileRegistry
from gateway.frames.profiles import DeviceProfile

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


def facts_text(device: DeviceView) -> str:
    """The status line and HELLO facts."""
    facts = ", ".join(f"{k}: {json.dumps(v) if isinstance(v, list) else v}"
                      for k, v in device.facts.items())
    return (f"[b]{device.device_id}[/b] on {device.gateway_id}: {device.state} "
            f"({device.reason})\n{facts or 'no facts yet'}")


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
        self.query_one("#facts", Static).update(facts_text(device))
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
        if names != self._fields:
            box.remove_children()
            for name in names:
                box.mount(Horizontal(Static(classes="field-label", id=f"label-{name}"),
                                     Sparkline([], id=f"spark-{name}"), classes="field"))
            self._fields = names
            self.call_after_refresh(self._show_telemetry, device)
            return
        unit = units(device)
        for name in names:
            value: Any = device.telemetry[name]
            text = f"{name}: {value}" + (f" {unit[name]}" if name in unit else "")
            self.query_one(f"#label-{name}", Static).update(text)
            points = device.history.get(name)
            if points:
                self.query_one(f"#spark-{name}", Sparkline).data = [v for _, v in points]

    def action_command(self) -> None:
        """Open the command form for this device."""
        from tui.command import CommandScreen  # noqa: PLC0415 - screens import each other

        self.app.push_screen(CommandScreen(self.key))
