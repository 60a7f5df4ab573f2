"""The help screen: what the keys do."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]mcp-gateway dashboard[/b]: every gateway and device on the broker, live.

[b]Overview[/b]
  type or /   filter devices (id, gateway, state, profile, model)
  escape      clear the filter
  s           sort by: device, gateway, state, rx/s, errors
  enter       open the highlighted device
  c           command the highlighted device
  t           light / dark theme
  ?           this help
  q           quit

[b]Device[/b]
  c           command it (read, write, ping, raw, profile commands)
  escape      back

The top line is the health: the broker connection (the dashboard reconnects by
itself), each gateway's state, uptime, queued and dropped events. Values come from
the gateways' status, stats and event topics; the dashboard never talks to a
gateway process directly.
"""


class HelpScreen(ModalScreen[None]):
    """``?`` opens it; escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(HELP)
