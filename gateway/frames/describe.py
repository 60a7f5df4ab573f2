"""A frame as a person reads it: its command name and its payload decoded with the device's
profile, as a JSON-ready dict.

Shared by the fabric's ``trace`` action and the ``monitor`` field tool, so both show a frame
alike; anything that does not decode is shown as hex with the reason, never an exception.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.frames.commands import COMMANDS, Command, command_name, decode_payload
from gateway.frames.profiles import DeviceProfile
from gateway.frames.wire import Frame


def describe(frame: Frame, profile: DeviceProfile | None) -> dict[str, Any]:
    """A frame as a JSON-ready dict: command name and decoded fields (or raw hex)."""
    out: dict[str, Any] = {"cmd": command_name(frame.cmd_id), "cmd_id": frame.cmd_id}
    try:
        if profile is not None and frame.cmd_id in profile.events:
            event = profile.events[frame.cmd_id]
            out["cmd"] = event.name.upper()
            out["fields"] = event.layout.decode(frame.payload, what=event.name)
        elif frame.cmd_id in COMMANDS and COMMANDS[frame.cmd_id].payload is not None:
            fields = decode_payload(frame.cmd_id, frame.payload)
            if profile is not None and frame.cmd_id == Command.READ_RESP:
                key = profile.keys.get(fields["key"])
                fields["value"] = key.decode(fields["value"]) if key else fields["value"].hex()
            out["fields"] = {k: v.hex() if isinstance(v, bytes) else v for k, v in fields.items()}
        else:
            out["raw_hex"] = frame.payload.hex()
    except (GatewayError, KeyError) as exc:
        out["raw_hex"] = frame.payload.hex()
        out["error"] = str(exc)
    return out
