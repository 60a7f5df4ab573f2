"""Sans-IO codecs of the serial wire: frames, the deframer, commands and device profiles.

Nothing here imports asyncio or touches a port; drivers and the simulator feed it bytes.
"""

from gateway.frames.commands import (
    COMMANDS,
    Command,
    CommandSpec,
    NackCode,
    command_name,
    decode_payload,
    encode_payload,
    is_response_to,
    response_id,
)
from gateway.frames.deframer import DEFAULT_INTER_FRAME_TIMEOUT, Deframer, DeframerStats
from gateway.frames.profiles import DeviceProfile, KeySpec, Layout, ProfileRegistry
from gateway.frames.wire import MAX_FRAME, MAX_PAYLOAD, MCP_FRAME, Frame, decode_frame, encode_frame

__all__ = [
    "COMMANDS",
    "DEFAULT_INTER_FRAME_TIMEOUT",
    "MAX_FRAME",
    "MAX_PAYLOAD",
    "MCP_FRAME",
    "Command",
    "CommandSpec",
    "Deframer",
    "DeframerStats",
    "DeviceProfile",
    "Frame",
    "KeySpec",
    "Layout",
    "NackCode",
    "ProfileRegistry",
    "command_name",
    "decode_frame",
    "decode_payload",
    "encode_frame",
    "encode_payload",
    "is_response_to",
    "response_id",
]
