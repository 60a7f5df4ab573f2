"""The gateway's error hierarchy: every error a caller may want to handle, in one place."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class FrameError(GatewayError):
    """A byte string is not a valid frame of its profile."""


class TruncatedFrame(FrameError):
    """Fewer bytes than the frame's header or length field asks for."""

    def __init__(self, needed: int, got: int) -> None:
        super().__init__(f"truncated frame: needs {needed} bytes, got {got}")
        self.needed = needed
        self.got = got


class BadHeader(FrameError):
    """The first byte(s) are not the profile's header or sync word."""

    def __init__(self, expected: bytes, got: bytes) -> None:
        super().__init__(f"bad header: expected {expected.hex(' ')}, got {got.hex(' ')}")
        self.expected = expected
        self.got = got


class OversizeLength(FrameError):
    """The length field is above the profile's maximum."""

    def __init__(self, length: int, maximum: int) -> None:
        super().__init__(f"payload length {length} exceeds the maximum of {maximum}")
        self.length = length
        self.maximum = maximum


class ChecksumMismatch(FrameError):
    """The frame's checksum (XOR or CRC) does not match its bytes."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"checksum mismatch: computed 0x{expected:02x}, frame says 0x{got:02x}")
        self.expected = expected
        self.got = got


class TrailingBytes(FrameError):
    """Bytes follow a complete frame where exactly one frame was expected."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} trailing byte(s) after a complete frame")
        self.count = count


class PayloadError(GatewayError):
    """A command payload does not match its declared layout (decode or encode)."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"{command}: {reason}")
        self.command = command
        self.reason = reason


class ProfileError(GatewayError):
    """A device profile file is invalid; names the file and the key path."""

    def __init__(self, source: str, key_path: str, reason: str) -> None:
        where = f"{source}: {key_path}" if key_path else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.key_path = key_path
        self.reason = reason


class UnknownProfile(GatewayError):
    """No built-in or user profile has this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown device profile {name!r}; known profiles: {', '.join(known)}")
        self.name = name
        self.known = known


class ValueEncodingError(GatewayError):
    """A value cannot be encoded for a profile key or field (type, range, length)."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"{key}: {value!r} {reason}")
        self.key = key
        self.value = value
        self.reason = reason


class ConfigError(GatewayError):
    """One or more configuration errors, each naming its key path, bad value and expectation."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        head = f"{source}: " if source else ""
        super().__init__(head + ("; ".join(errors) if len(errors) == 1 else
                                 f"{len(errors)} errors:\n  " + "\n  ".join(errors)))
        self.errors = errors
        self.source = source


class StartupError(GatewayError):
    """``run`` cannot start with a setting that passed validation: the state directory cannot
    be written, the metrics address cannot be listened on... Names the config key (exit 2)."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"cannot start: {key}: {value!r} {reason}")
        self.key = key
        self.value = value
        self.reason = reason


class MetricsUnavailable(GatewayError):
    """The Prometheus endpoint cannot listen on its address (in use, not this host's...)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot serve metrics on {address}: {reason}")
        self.address = address
        self.reason = reason


class InvalidRequest(GatewayError):
    """A request names an unknown action, key or command, or a value that cannot be encoded."""


class LinkClosed(GatewayError):
    """The port went away while a frame was being written."""


class ReloadBusy(GatewayError):
    """A configuration reload is already running."""


class NodeIdsExhausted(GatewayError):
    """Every node id (1..65535) belongs to a device that is online now: a new uid gets none."""

    def __init__(self, uid: str, capacity: int) -> None:
        super().__init__(f"no node id for uid {uid}: all {capacity} node ids belong to devices "
                         "online now")
        self.uid = uid
        self.capacity = capacity


class SpoolError(GatewayError):
    """The on-disk event queue (``spool.db``) cannot be used as asked; names the file."""

    def __init__(self, path: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class SpoolWriteFailed(SpoolError):
    """A write to the event queue failed (the disk is full, an I/O error, read-only): nothing
    of it was written, everything stays staged in memory for the next attempt."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason, f"cannot write the event queue {path}: {reason}")


class SpoolUnavailable(SpoolError):
    """The event queue cannot be opened for a reason other than a corrupt file (permissions,
    another process holding it): moving it aside would not help, so the gateway does not start."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason, f"cannot open the event queue {path}: {reason} (check "
                         "that state_dir is a writable directory and that no other gateway "
                         "uses it)")


class BridgeTaskFailed(GatewayError):
    """A loop or callback of the bridge raised: the gateway stops (exit 1) rather than stall."""

    def __init__(self, where: str, cause: BaseException) -> None:
        super().__init__(f"{where} failed: {cause!r}")
        self.where = where
        self.cause = cause


class GatewayIdInUse(GatewayError):
    """Another live gateway holds this ``gateway_id`` on the broker: this one does not run
    (exit 2) rather than mix its topics with the other's. ``holder`` says who it is; found
    ``while_running``: it publishes there too and started first."""

    def __init__(self, gateway_id: str, url: str, holder: str, *,
                 while_running: bool = False) -> None:
        does = ("publishes there too and started first, so this one stops" if while_running
                else "answers there")
        super().__init__(f"gateway_id {gateway_id!r} is in use on {url}: {holder} {does}; "
                         "give this gateway another gateway_id")
        self.gateway_id = gateway_id
        self.url = url
        self.holder = holder
        self.while_running = while_running
