"""The help screen: what the keys do."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# Key lines fit the narrowest box (80 columns less the frame); each paragraph of prose is
# one line, so it wraps to whatever width the box has instead of breaking where the
# source happened to.
HELP = """\
[b]mcp-gateway dashboard[/b]: every gateway and device on the broker, live.

[b]Overview[/b]
  /         filter devices by id, gateway, state, profile or model;
            keys are text there: enter keeps it, escape clears it
  escape    clear the filter
  s         sort: device, gateway, state, rx/s, errors (the arrow
            in the column header shows which)
  enter     open the highlighted device
  c         command the highlighted device
  t         light / dark theme
  ?         this help
  q         quit

[b]Device[/b]
  c         command it (read, write, ping, raw, profile commands)
  escape    back

The top line is the health: the broker's URL (for mosquitto_sub beside the dashboard) \
and connection (the dashboard reconnects by itself), each gateway's state, uptime, queued \
and dropped events, and how many devices are online.

A device whose gateway is offline (its last will after a crash, or a clean stop) shows \
[b]stale[/b]: its own retained status no longer holds, whatever it says.

Values come from the gateways' status, stats and event topics; the dashboard never talks \
to a gateway process directly.
"""


class HelpScreen(ModalScreen[None]):
    """``?`` opens it; escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(HELP)
