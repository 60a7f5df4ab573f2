"""The overview's device table: one row per device, redrawn only where something changed."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.widgets import DataTable

from gateway.frames.framing import DEFAULT_FRAMES
from tui.state import SORTS, STALE, DeviceView

STATE_STYLES = {"online": "bold green", "unregistered": "yellow", "offline": "bold red",
                "connecting": "cyan", STALE: "magenta"}


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: ``width`` None fits the content; the narrower the table, the more
    columns go, highest ``drop`` first (0: never dropped)."""

    key: str
    label: str
    width: int | None
    drop: int


COLUMNS = (
    Column("device", "device", None, 0),
    Column("gateway", "gateway", None, 5),
    Column("state", "state", len("unregistered"), 0),  # the longest state word
    Column("profile", "profile", None, 7),
    Column("model", "model / fw", None, 6),
    Column("rx", "rx/s", 7, 1),  # widths leave room for the sort arrow
    Column("errors", "errors", 8, 2),
    Column("retries", "retries", 7, 8),
    Column("queue", "queue", 5, 9),
    Column("seen", "last seen", 9, 3),
)
#: room taken per column by cell padding, and by the vertical scrollbar
_PADDING = 2
_SCROLLBAR = 2
#: widths assumed for content-sized columns when choosing which columns fit
_CONTENT_WIDTHS = {"device": 20, "gateway": 8, "profile": 10, "model": 16}
ARROWS = {False: "▲", True: "▼"}  # ascending, descending


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


def cell(device: DeviceView, column: str, now: float) -> object:
    """The text of one cell of a device's row."""
    facts, stats = device.facts, device.stats
    if column == "device":
        return device.device_id
    if column == "gateway":
        return device.gateway_id
    if column == "state":
        return Text(device.shown_state, style=STATE_STYLES.get(device.shown_state, ""))
    if column == "profile":
        return profile_cell(facts)
    if column == "model":
        return " ".join(str(facts[k]) for k in ("model", "fw") if facts.get(k)) or "-"
    if column == "rx":
        return "-" if device.rx_fps is None else f"{device.rx_fps:.1f}"
    if column == "errors":
        return str(device.errors)
    if column == "retries":
        return str(stats.get("retries", 0))
    if column == "queue":
        return str(stats.get("queue_depth", 0))
    return ago(device.last_seen, now)


def profile_cell(facts: dict[str, object]) -> str:
    """The device profile, and the frame profile where it is not the default."""
    profile = str(facts.get("profile", "-"))
    frames = facts.get("frames")
    return f"{profile} ({frames})" if frames and frames != DEFAULT_FRAMES else profile


def columns_for(width: int) -> tuple[Column, ...]:
    """The columns that fit ``width`` cells, in table order: the least useful go first."""
    chosen = list(COLUMNS)

    def needed() -> int:
        return _SCROLLBAR + sum((c.width or max(_CONTENT_WIDTHS.get(c.key, 0), len(c.label)))
                                + _PADDING for c in chosen)

    while needed() > width and any(c.drop for c in chosen):
        chosen.remove(max(chosen, key=lambda c: c.drop))
    return tuple(chosen)


def header(column: Column, sort: str) -> Text:
    """A column's label, with the sort arrow on the sorted column."""
    if column.key != sort:
        return Text(column.label)
    return Text(f"{column.label} {ARROWS[SORTS[sort]]}", style="bold")


def row_key(device: DeviceView) -> str:
    """A DataTable row key for a device."""
    return f"{device.gateway_id}\x1f{device.device_id}"


class DeviceTable(DataTable):
    """``show(rows, changed, now, sort)``: rebuild when the rows, their order, the sort or
    the columns that fit changed, else update the changed rows' cells (and "last seen")
    in place."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._order: list[str] = []
        self._shown: dict[str, tuple[object, ...]] = {}
        self._columns: tuple[Column, ...] = ()
        self._sort = ""
        #: the last rows shown, to lay them out again when the width changes
        self._rows: list[DeviceView] = []
        self._now = 0.0

    @property
    def shown_columns(self) -> tuple[str, ...]:
        """The keys of the columns on screen."""
        return tuple(c.key for c in self._columns)

    def show(self, rows: list[DeviceView], changed: set[tuple[str, str]],
             now: float | None = None, sort: str = "device") -> None:
        """Bring the table up to date with ``rows``, sorted by ``sort``."""
        now = time.time() if now is None else now
        self._rows, self._now = rows, now
        columns = columns_for(self.size.width) if self.size.width else COLUMNS
        order = [row_key(d) for d in rows]
        selected = self._selected_key()
        if columns != self._columns or sort != self._sort:
            self._set_columns(columns, sort)
        if order != self._order:
            self._rebuild(rows, order, now, selected)
            return
        # Only cells whose text changed are touched: most events change nothing visible;
        # "last seen" moves with the clock.
        keys = self.shown_columns
        seen = keys.index("seen") if "seen" in keys else None
        for device in rows:
            key = row_key(device)
            before = self._shown[key]
            row = before
            if device.key in changed:
                row = self._cells(device, now)
            elif seen is not None:
                row = (*before[:seen], cell(device, "seen", now), *before[seen + 1:])
            if row != before:
                for column, old, new in zip(keys, before, row, strict=True):
                    if old != new:
                        self.update_cell(key, column, new, update_width=True)
                self._shown[key] = row

    def on_resize(self, event: events.Resize) -> None:
        if columns_for(event.size.width) != self._columns and self._columns:
            self.show(self._rows, set(), self._now, self._sort)

    def _cells(self, device: DeviceView, now: float) -> tuple[object, ...]:
        return tuple(cell(device, c.key, now) for c in self._columns)

    def _set_columns(self, columns: tuple[Column, ...], sort: str) -> None:
        self.clear(columns=True)
        for column in columns:
            self.add_column(header(column, sort), key=column.key, width=column.width)
        self._columns, self._sort = columns, sort
        self._order = []  # forces the rows to be added again

    def _rebuild(self, rows: list[DeviceView], order: list[str], now: float,
                 selected: str | None) -> None:
        self.clear()
        self._shown = {}
        for device, key in zip(rows, order, strict=True):
            row = self._shown[key] = self._cells(device, now)
            self.add_row(*row, key=key)
        self._order = order
        if selected in order:
            self.move_cursor(row=order.index(selected), animate=False)

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
