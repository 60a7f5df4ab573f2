"""The overview's device table: one row per device, redrawn only where something changed."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import DataTable

from tui.state import DeviceView

STATE_STYLES = {"online": "bold green", "unregistered": "yellow", "offline": "bold red",
                "connecting": "cyan"}
COLUMNS = (("device", "device"), ("gateway", "gateway"), ("state", "state"),
           ("profile", "profile"), ("model", "model / fw"), ("rx", "rx/s"),
           ("errors", "errors"), ("retries", "retries"), ("queue", "queue"),
           ("seen", "last seen"))


def ago(when: float | None, now: float) -> str:
    """``3s ago``, ``2m ago``; ``-`` if never."""
    if not when:
        return "-"
    seconds = max(0.0, now - when)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def cells(device: DeviceView, now: float) -> tuple[object, ...]:
    """The row of a device, in ``COLUMNS`` order."""
    facts, stats = device.facts, device.stats
    model = " ".join(str(facts[k]) for k in ("model", "fw") if facts.get(k)) or "-"
    return (
        device.device_id,
        device.gateway_id,
        Text(device.state, style=STATE_STYLES.get(device.state, "")),
        profile_cell(facts),
        model,
        f"{float(stats.get('rx_fps', 0) or 0):.1f}",
        str(device.errors),
        str(stats.get("retries", 0)),
        str(stats.get("queue_depth", 0)),
        ago(device.last_seen, now),
    )


def profile_cell(facts: dict[str, object]) -> str:
    """The device profile, and the frame profile where it is not the default ``mcp``."""
    profile = str(facts.get("profile", "-"))
    frames = facts.get("frames")
    return f"{profile} ({frames})" if frames and frames != "mcp" else profile


def row_key(device: DeviceView) -> str:
    """A DataTable row key for a device."""
    return f"{device.gateway_id}\x1f{device.device_id}"


class DeviceTable(DataTable):
    """``show(rows, changed)``: rebuild when the rows or their order changed, else update
    the changed rows' cells (and the "last seen" column) in place."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for key, label in COLUMNS:
            self.add_column(label, key=key)
        self._order: list[str] = []
        self._shown: dict[str, tuple[object, ...]] = {}

    def show(self, rows: list[DeviceView], changed: set[tuple[str, str]],
             now: float | None = None) -> None:
        """Bring the table up to date with ``rows``."""
        now = time.time() if now is None else now
        order = [row_key(d) for d in rows]
        if order != self._order:
            selected = self._selected_key()
            self.clear()
            self._shown = {}
            for device, key in zip(rows, order, strict=True):
                row = self._shown[key] = cells(device, now)
                self.add_row(*row, key=key)
            self._order = order
            if selected in order:
                self.move_cursor(row=order.index(selected), animate=False)
            return
        # Only cells whose text changed are touched: most events change nothing visible.
        for device in rows:
            key = row_key(device)
            before = self._shown[key]
            row = cells(device, now) if device.key in changed else (
                *before[:-1], ago(device.last_seen, now))
            if row != before:
                for (column, _), old, new in zip(COLUMNS, before, row, strict=True):
                    if old != new:
                        self.update_cell(key, column, new)
                self._shown[key] = row

    def _selected_key(self) -> str | None:
        if not self._order or self.cursor_row is None or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def selected(self) -> tuple[str, str] | None:
        """(gateway, device) of the highlighted row."""
        key = self._selected_key()
        if key is None:
            return None
        gateway, device = key.split("\x1f", 1)
        return gateway, device
