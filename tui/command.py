"""The command form: read/write/ping/raw or a profile command, with the keys of the device's
profile to pick from; shows the response's status, value and latency."""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from tui.detail import profile_of


def describe(response: dict[str, Any]) -> tuple[str, bool]:
    """The response in one or two plain lines, and whether it was ok."""
    status = str(response.get("status", "?"))
    latency = response.get("latency_ms")
    took = f" in {latency:g} ms" if isinstance(latency, int | float) else ""
    if status == "ok":
        payload = response.get("payload") or {}
        if isinstance(payload, dict) and "value" in payload:
            unit = f" {payload['unit']}" if payload.get("unit") else ""
            return f"ok{took}: {payload.get('key')} = {payload['value']}{unit}", True
        return f"ok{took}: {json.dumps(payload, ensure_ascii=False)}", True
    error = response.get("error") or {}
    return f"{status}{took}: {error.get('message', '')}", False


class CommandScreen(ModalScreen[None]):
    """``c`` on a device opens it; escape closes it."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Close")]

    def __init__(self, key: tuple[str, str]) -> None:
        super().__init__()
        self.key = key

    def compose(self) -> ComposeResult:
        device = self.app.state.devices.get(self.key)  # type: ignore[attr-defined]
        profile = profile_of(device) if device else None
        actions = ["read", "write", "ping", "raw"]
        if profile is not None:
            actions += [c.name for c in profile.commands.values()]
        keys = [(f"{k.name} ({k.field.unit or k.field.type}, {'rw' if k.writable else 'ro'})",
                 k.name)
                for k in (profile.keys.values() if profile else [])]
        # Two fields a row: the answer stays in sight on an 80x24 terminal.
        with Vertical():
            yield Label(f"Command {self.key[1]} on {self.key[0]}")
            with Horizontal(classes="row"):
                yield Select([(a, a) for a in actions], value="read", allow_blank=False,
                             id="action")
                yield Select(keys, prompt="key", id="key")
            with Horizontal(classes="row"):
                yield Input(placeholder="value (write), data_hex (raw) or JSON", id="value")
                yield Button("Send", variant="primary", id="send")
            yield Static("", id="result")

    def payload(self) -> dict[str, Any]:
        """The request payload from the form."""
        action = str(self.query_one("#action", Select).value)
        key = self.query_one("#key", Select).value
        text = self.query_one("#value", Input).value.strip()
        if text.startswith("{"):
            return json.loads(text)
        payload: dict[str, Any] = {}
        if action in ("read", "write") and key is not Select.NULL:
            payload["key"] = key
        if action == "write":
            try:
                payload["value"] = json.loads(text)
            except ValueError:
                payload["value"] = text
        elif action == "raw":
            payload = {"cmd_id": 0x30, "data_hex": text}
        return payload

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "send":
            self.send()

    def on_input_submitted(self) -> None:
        self.send()

    def send(self) -> None:
        """Send the request in a worker; the result appears when it comes."""
        result = self.query_one("#result", Static)
        try:
            payload = self.payload()
        except ValueError as exc:
            result.update(f"the payload is not valid JSON: {exc}")
            result.set_classes("failed")
            return
        action = str(self.query_one("#action", Select).value)
        result.update(f"sending {action} {json.dumps(payload)} ...")
        result.set_classes("")
        self.run_worker(self._send(action, payload), exclusive=True)

    async def _send(self, action: str, payload: dict[str, Any]) -> None:
        gateway, device_id = self.key
        app: Any = self.app
        response = await app.fabric.request(gateway, device_id, action, payload)
        text, ok = describe(response)
        result = self.query_one("#result", Static)
        result.update(text)
        result.set_classes("ok" if ok else "failed")
        device = app.state.devices.get(self.key)
        if device is not None:
            device.note(f"request {action} {json.dumps(payload)} -> {text}")
