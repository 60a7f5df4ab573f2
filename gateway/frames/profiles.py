"""Device profiles: the declarative layouts of STATUS, events, keys and device commands.

A profile is a TOML file (see ``builtin_profiles/env-sensor.toml``); loading it builds
Construct declarations for each layout, so a user adds a device without writing a parser.
Fixed-size numeric layouts also get a ``struct`` fast path, proven equal to the Construct
declaration in ``tests/test_profiles.py``. ``DeviceProfile.request_for`` turns an action and
its arguments into a request (``gateway/frames/requests.py``).
"""

from __future__ import annotations

import decimal
import functools
import math
import re
import struct
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from construct import (
    Construct,
    ConstructError,
    Flag,
    Float32l,
    Float64l,
    GreedyBytes,
    GreedyString,
    Int8sl,
    Int8ul,
    Int16sl,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64sl,
    Int64ul,
    Struct,
    Terminated,
)

from gateway.errors import PayloadError, ProfileError, UnknownProfile, ValueEncodingError
from gateway.frames.commands import COMMANDS, DEVICE_REQUESTS, Command, command_name
from gateway.frames.requests import BUILTIN_ACTIONS, PreparedRequest, request_for

#: type name -> (Construct, struct format char or None, integer range or None)
_TYPES: dict[str, tuple[Construct, str | None, tuple[int, int] | None]] = {
    "u8": (Int8ul, "B", (0, 2**8 - 1)),
    "u16": (Int16ul, "H", (0, 2**16 - 1)),
    "u32": (Int32ul, "I", (0, 2**32 - 1)),
    "u64": (Int64ul, "Q", (0, 2**64 - 1)),
    "i8": (Int8sl, "b", (-(2**7), 2**7 - 1)),
    "i16": (Int16sl, "h", (-(2**15), 2**15 - 1)),
    "i32": (Int32sl, "i", (-(2**31), 2**31 - 1)),
    "i64": (Int64sl, "q", (-(2**63), 2**63 - 1)),
    "f32": (Float32l, "f", None),
    "f64": (Float64l, "d", None),
    "bool": (Flag, "?", None),
    "utf8": (GreedyString("utf8"), None, None),
    "bytes": (GreedyBytes, None, None),
}
FIELD_TYPES = tuple(_TYPES)
_F32 = struct.Struct("<f")
_VARIABLE = ("utf8", "bytes")
_FIELD_KEYS = {"name", "type", "scale", "unit", "min", "max", "max_len", "description", "sim",
               "ha_device_class", "ha_state_class", "ha_icon"}
#: Home Assistant's sensor state classes (``ha_state_class``)
HA_STATE_CLASSES = ("measurement", "total", "total_increasing")
#: ``ha_icon``: an icon set and a name, as Home Assistant writes them (``mdi:thermometer``)
_HA_ICON = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*:[a-z0-9]+(-[a-z0-9]+)*")
#: ``ha_device_class``: Home Assistant's device classes are lower-case words with ``_``
_HA_DEVICE_CLASS = re.compile(r"[a-z][a-z0-9_]*")
_KEY_KEYS = _FIELD_KEYS | {"id", "access", "default"}
_EVENT_KEYS = {"id", "name", "fields", "description"}
_COMMAND_KEYS = {"id", "name", "request", "response", "description"}
_PROFILE_KEYS = {"name", "description", "events", "keys", "commands"}
_SIM_KEYS = {"start", "drift", "min", "max"}


@functools.cache
def _decimals(scale: float) -> int:
    """Decimal places of a scale as written (0.01 -> 2, 0.125 -> 3, 10 -> 0)."""
    exponent = decimal.Decimal(repr(scale)).normalize().as_tuple().exponent
    return max(0, -int(exponent))


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One named value in a layout or key: its wire type and how to show it."""

    name: str
    type: str
    scale: float | None = None
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    max_len: int | None = None
    description: str = ""
    #: simulator hint: "uptime" or {"start", "drift", "min", "max"}
    sim: str | dict[str, float] | None = None
    #: Home Assistant discovery overrides (None: derived from the unit and name where sure)
    ha_device_class: str | None = None
    ha_state_class: str | None = None
    ha_icon: str | None = None

    @property
    def decimals(self) -> int | None:
        """Decimal places of a scaled value (0.01 -> 2), None without a scale."""
        return None if self.scale is None else _decimals(self.scale)

    @property
    def real_range(self) -> tuple[Any, Any] | None:
        """The lowest and highest real value the wire type holds (scaled); None for floats
        and what is not an integer."""
        bounds = _TYPES[self.type][2]
        if bounds is None:
            return None
        return self.from_wire(bounds[0]), self.from_wire(bounds[1])

    @property
    def is_numeric(self) -> bool:
        """Integers and floats (not bool, text or bytes)."""
        return self.type not in _VARIABLE and self.type != "bool"

    def to_wire(self, value: Any) -> Any:
        """Check a real value and turn it into what the wire type holds (scaled integer...)."""
        kind = self.type
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueEncodingError(self.name, value, "is not a boolean")
            return value
        if kind in _VARIABLE:
            return self._check_variable(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueEncodingError(self.name, value, f"is not a number (type {kind})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueEncodingError(self.name, value, "is not a finite number")
        if self.min is not None and value < self.min:
            raise ValueEncodingError(self.name, value, f"is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ValueEncodingError(self.name, value, f"is above the maximum {self.max}")
        bounds = _TYPES[kind][2]
        if bounds is None:
            try:
                real = float(value)
                if kind == "f32":
                    _F32.pack(real)  # beyond f32's range: OverflowError, as for a huge int
            except OverflowError:
                raise ValueEncodingError(self.name, value, f"is out of range for {kind}") \
                    from None
            return real
        raw: int | None
        if self.scale is not None:
            try:
                raw = round(value / self.scale)
            except OverflowError:  # an int too big to divide as a float: out of range
                raw = None
        elif isinstance(value, float) and not value.is_integer():
            raise ValueEncodingError(self.name, value, f"is not a whole number (type {kind})")
        else:
            raw = int(value)
        low, high = bounds
        if raw is None or not low <= raw <= high:
            if self.scale is None:
                limits = f"{low}..{high}"
            else:
                limits = f"{self.from_wire(low)}..{self.from_wire(high)}"
            raise ValueEncodingError(self.name, value, f"is out of range {limits} for {kind}")
        return raw

    def _check_variable(self, value: Any) -> str | bytes:
        if self.type == "utf8":
            if not isinstance(value, str):
                raise ValueEncodingError(self.name, value, "is not a string")
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800" escape)
                raise ValueEncodingError(self.name, value, "is not UTF-8 text (it holds a "
                                         "lone surrogate)") from None
        else:
            if isinstance(value, str):
                try:
                    value = bytes.fromhex(value)
                except ValueError:
                    raise ValueEncodingError(self.name, value, "is not hex bytes") from None
            if not isinstance(value, bytes | bytearray):
                raise ValueEncodingError(self.name, value, "is not bytes or a hex string")
            value = bytes(value)
            size = len(value)
        if self.max_len is not None and size > self.max_len:
            raise ValueEncodingError(
                self.name, value, f"is {size} bytes long; the maximum is {self.max_len}"
            )
        return value

    def from_wire(self, raw: Any) -> Any:
        """The real value of a wire value (scaled, rounded to the scale's own decimals).

        ``bytes`` fields become hex strings, so decoded values are JSON-ready (and a hex
        string is what ``to_wire`` takes back).
        """
        if self.scale is None:
            return raw.hex() if self.type == "bytes" else raw
        return round(raw * self.scale, _decimals(self.scale))


@dataclass(frozen=True, slots=True)
class Layout:
    """An ordered list of fields: a STATUS/event/command payload or a key's value."""

    fields: tuple[FieldSpec, ...]
    construct: Construct
    #: the struct fast path for fixed-size numeric layouts, None otherwise
    fast: struct.Struct | None

    @classmethod
    def build(cls, fields: tuple[FieldSpec, ...]) -> Layout:
        """Declare the layout with Construct (the truth) and struct (the fast path)."""
        declaration = Struct(*(f.name / _TYPES[f.type][0] for f in fields), Terminated)
        chars = [_TYPES[f.type][1] for f in fields]
        fast = None if None in chars else struct.Struct("<" + "".join(chars))  # type: ignore[arg-type]
        return cls(fields, declaration, fast)

    @property
    def names(self) -> tuple[str, ...]:
        """Field names in wire order."""
        return tuple(f.name for f in self.fields)

    def decode(self, payload: bytes, what: str = "payload") -> dict[str, Any]:
        """Payload bytes to ``{field: real value}``; ``PayloadError`` on a bad payload."""
        fields = self.fields
        try:
            if self.fast is not None:
                raw = self.fast.unpack(payload)
            else:
                parsed = self.construct.parse(payload)
                raw = tuple(parsed[f.name] for f in fields)
        except (struct.error, ConstructError, UnicodeDecodeError) as exc:
            raise PayloadError(what, f"bad payload {payload.hex(' ') or '(empty)'}: {exc}") from exc
        return {f.name: f.from_wire(value) for f, value in zip(fields, raw, strict=True)}

    def encode(self, values: dict[str, Any], what: str = "payload") -> bytes:
        """``{field: real value}`` to payload bytes; names the missing or bad field."""
        missing = [f.name for f in self.fields if f.name not in values]
        extra = sorted(set(values) - set(self.names))
        if missing or extra:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unknown {', '.join(extra)}"] if extra else []
            raise PayloadError(what, "; ".join(parts))
        wire = [f.to_wire(values[f.name]) for f in self.fields]
        if self.fast is not None:
            return self.fast.pack(*wire)
        return self.construct.build(dict(zip(self.names, wire, strict=True)))


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A READ/WRITE key: its id, value type and access."""

    id: int
    field: FieldSpec
    writable: bool
    default: Any = None
    layout: Layout = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    @property
    def name(self) -> str:
        """The key's name."""
        return self.field.name

    def encode(self, value: Any) -> bytes:
        """A real value to the key's wire bytes (for WRITE and READ_RESP)."""
        return self.layout.encode({self.name: value}, what=self.name)

    def decode(self, data: bytes) -> Any:
        """The key's wire bytes to its real value."""
        return self.layout.decode(data, what=self.name)[self.name]


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An unsolicited frame the profile names (STATUS is ``status``)."""

    cmd_id: int
    name: str
    layout: Layout


@dataclass(frozen=True, slots=True)
class CommandDef:
    """A device-specific request (0x30-0x6F) and its response (``| 0x80``)."""

    cmd_id: int
    name: str
    request: Layout
    response: Layout


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """Everything the gateway knows about one kind of device."""

    name: str
    description: str
    events: dict[int, EventSpec]
    keys: dict[int, KeySpec]
    commands: dict[int, CommandDef]
    source: str = ""

    def key(self, key: int | str) -> KeySpec:
        """A key by id or name; ``KeyError`` with the known keys otherwise."""
        if isinstance(key, int) and not isinstance(key, bool):
            if key in self.keys:
                return self.keys[key]
        else:
            for spec in self.keys.values():
                if spec.name == key:
                    return spec
        known = ", ".join(f"{k.name} ({k.id})" for k in self.keys.values())
        raise KeyError(f"profile {self.name} has no key {key!r}; known keys: {known}")

    def request_for(self, action: str, args: Mapping[str, Any]) -> PreparedRequest:
        """The request ``action`` with ``args`` on this kind of device: its frame, what
        answers it, how to read the answer, and the key and unit the answer is about.
        ``InvalidRequest`` for an unknown action, key or command, or a value that cannot be
        encoded."""
        return request_for(self, action, args)

    def command(self, name: str) -> CommandDef:
        """A device-specific command by name; ``KeyError`` otherwise."""
        for spec in self.commands.values():
            if spec.name == name:
                return spec
        raise KeyError(f"profile {self.name} has no command {name!r}")

    def event_name(self, cmd_id: int) -> str:
        """The topic name of an unsolicited frame: the profile's, ``log``, or ``cmd-0xNN``."""
        if cmd_id in self.events:
            return self.events[cmd_id].name
        if cmd_id == Command.LOG:
            return "log"
        return command_name(cmd_id) if cmd_id not in COMMANDS else COMMANDS[cmd_id].name.lower()


# ---------------------------------------------------------------------------------------
# Loading and validation


class _Checker:
    """Validates one profile file, collecting errors with their key paths."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, reason: str) -> ProfileError:
        return ProfileError(self.source, path, reason)

    def table(self, value: Any, path: str, allowed: set[str], required: set[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a table, got {value!r}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(
                f"{path}.{unknown[0]}" if path else unknown[0],
                f"unknown key; expected one of {', '.join(sorted(allowed))}",
            )
        for name in sorted(required - set(value)):
            raise self.fail(f"{path}.{name}" if path else name, "is required")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected a non-empty string, got {value!r}")
        return value

    def number(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"expected a number, got {value!r}")
        return value

    def identifier(self, value: Any, path: str) -> str:
        name = self.string(value, path)
        if not name.replace("_", "a").replace("-", "a").isalnum() or not name.isascii():
            raise self.fail(path, f"{name!r} is not a name (letters, digits, _ and -)")
        return name

    def field_spec(self, raw: Any, path: str, allowed: set[str] = _FIELD_KEYS) -> FieldSpec:
        table = self.table(raw, path, allowed, {"name", "type"})
        name = self.identifier(table["name"], f"{path}.name")
        kind = table["type"]
        if kind not in _TYPES:
            raise self.fail(f"{path}.type", f"{kind!r} is not a type; expected one of "
                            f"{', '.join(FIELD_TYPES)}")
        scale = table.get("scale")
        if scale is not None:
            scale = self.number(scale, f"{path}.scale")
            if scale <= 0 or _TYPES[kind][2] is None:
                raise self.fail(f"{path}.scale", f"{scale!r}: scale needs an integer type "
                                "and a positive number")
        bounds = {k: self.number(table[k], f"{path}.{k}") for k in ("min", "max") if k in table}
        if bounds and not FieldSpec(name, kind).is_numeric:
            raise self.fail(f"{path}.min", f"min/max apply to numbers, not {kind}")
        max_len = table.get("max_len")
        if max_len is not None and (kind not in _VARIABLE or not isinstance(max_len, int)
                                    or max_len < 0):
            raise self.fail(f"{path}.max_len", f"{max_len!r}: max_len is a whole number of "
                            "bytes for utf8/bytes fields")
        return FieldSpec(
            name=name,
            type=kind,
            scale=scale,
            unit=table.get("unit"),
            min=bounds.get("min"),
            max=bounds.get("max"),
            max_len=max_len,
            description=table.get("description", ""),
            sim=self.sim_hint(table.get("sim"), f"{path}.sim"),
            **self.home_assistant(table, path),
        )

    def home_assistant(self, table: dict[str, Any], path: str) -> dict[str, str]:
        """The ``ha_*`` overrides of a field, checked."""
        found = {k: self.string(table[k], f"{path}.{k}")
                 for k in ("ha_device_class", "ha_state_class", "ha_icon") if k in table}
        device_class = found.get("ha_device_class")
        if device_class is not None and not _HA_DEVICE_CLASS.fullmatch(device_class):
            raise self.fail(f"{path}.ha_device_class", f"{device_class!r} is not a Home "
                            "Assistant device class (lower-case letters, digits and _)")
        state_class = found.get("ha_state_class")
        if state_class is not None and state_class not in HA_STATE_CLASSES:
            raise self.fail(f"{path}.ha_state_class", f"{state_class!r}: expected one of "
                            f"{', '.join(HA_STATE_CLASSES)}")
        icon = found.get("ha_icon")
        if icon is not None and not _HA_ICON.fullmatch(icon):
            raise self.fail(f"{path}.ha_icon", f"{icon!r} is not an icon; expected a set and "
                            "a name, like mdi:thermometer")
        return found

    def sim_hint(self, raw: Any, path: str) -> str | dict[str, float] | None:
        if raw is None or raw == "uptime":
            return raw
        table = self.table(raw, path, _SIM_KEYS, set())
        return {k: self.number(v, f"{path}.{k}") for k, v in table.items()}

    def layout(self, raw: Any, path: str) -> Layout:
        if not isinstance(raw, list):
            raise self.fail(path, f"expected a list of fields, got {raw!r}")
        fields = tuple(self.field_spec(item, f"{path}[{i}]") for i, item in enumerate(raw))
        names = [f.name for f in fields]
        for i, f in enumerate(fields):
            if names.index(f.name) != i:
                raise self.fail(f"{path}[{i}].name", f"{f.name!r} is used twice")
            if f.type in _VARIABLE and i != len(fields) - 1:
                raise self.fail(f"{path}[{i}].type", f"{f.type} takes the rest of the payload, "
                                "so it must be the last field")
        return Layout.build(fields)

    def cmd_id(self, raw: Any, path: str) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 0xFF:
            raise self.fail(path, f"{raw!r} is not a command id (0..255)")
        return raw


def parse_profile(data: dict[str, Any], source: str = "<profile>") -> DeviceProfile:
    """Build a profile from a parsed TOML table; ``ProfileError`` names the bad key path."""
    check = _Checker(source)
    top = check.table(data, "", _PROFILE_KEYS, {"name"})
    name = check.identifier(top["name"], "name")
    events: dict[int, EventSpec] = {}
    for i, raw in enumerate(top.get("events", [])):
        path = f"events[{i}]"
        table = check.table(raw, path, _EVENT_KEYS, {"id", "name", "fields"})
        cmd_id = check.cmd_id(table["id"], f"{path}.id")
        if (cmd_id in COMMANDS and cmd_id != Command.STATUS) or cmd_id in DEVICE_REQUESTS \
                or cmd_id in events or cmd_id & 0x80:
            raise check.fail(f"{path}.id", f"0x{cmd_id:02x} cannot be an event: it is taken "
                             "by a base command, a device command, or another event")
        events[cmd_id] = EventSpec(cmd_id, check.identifier(table["name"], f"{path}.name"),
                                   check.layout(table["fields"], f"{path}.fields"))
    keys: dict[int, KeySpec] = {}
    for i, raw in enumerate(top.get("keys", [])):
        path = f"keys[{i}]"
        table = check.table(raw, path, _KEY_KEYS, {"id", "name", "type"})
        key_id = table["id"]
        if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 <= key_id <= 0xFFFF:
            raise check.fail(f"{path}.id", f"{key_id!r} is not a key id (0..65535)")
        if key_id in keys or any(k.name == table["name"] for k in keys.values()):
            raise check.fail(path, f"key {table['name']!r} ({key_id}) is declared twice")
        access = table.get("access", "ro")
        if access not in ("ro", "rw"):
            raise check.fail(f"{path}.access", f"{access!r}: expected \"ro\" or \"rw\"")
        spec = check.field_spec({k: v for k, v in table.items()
                                 if k not in ("id", "access", "default")}, path)
        layout = Layout.build((spec,))
        default = table.get("default")
        key = KeySpec(key_id, spec, access == "rw", default, layout)
        if default is not None:
            try:
                key.encode(default)
            except (ValueEncodingError, PayloadError) as exc:
                raise check.fail(f"{path}.default", str(exc)) from None
        keys[key_id] = key
    commands: dict[int, CommandDef] = {}
    for i, raw in enumerate(top.get("commands", [])):
        path = f"commands[{i}]"
        table = check.table(raw, path, _COMMAND_KEYS, {"id", "name"})
        cmd_id = check.cmd_id(table["id"], f"{path}.id")
        if cmd_id not in DEVICE_REQUESTS or cmd_id in commands:
            raise check.fail(f"{path}.id", f"0x{cmd_id:02x}: device commands use 0x30-0x6F, "
                             "each once")
        cmd_name = check.identifier(table["name"], f"{path}.name")
        if cmd_name in BUILTIN_ACTIONS:
            raise check.fail(f"{path}.name", f"{cmd_name!r} is a built-in action")
        commands[cmd_id] = CommandDef(
            cmd_id,
            cmd_name,
            check.layout(table.get("request", []), f"{path}.request"),
            check.layout(table.get("response", []), f"{path}.response"),
        )
    return DeviceProfile(name, top.get("description", ""), events, keys, commands, source)


def load_profile_file(path: Path) -> DeviceProfile:
    """Read and validate one profile TOML file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(str(path), "", f"cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(str(path), "", f"not valid TOML: {exc}") from exc
    return parse_profile(data, str(path))


class ProfileRegistry:
    """The built-in profiles plus those in user directories (a user file overrides a built-in)."""

    def __init__(self, user_dirs: list[Path] | tuple[Path, ...] = ()) -> None:
        self._files: dict[str, Path | resources.abc.Traversable] = {}
        builtin = resources.files("gateway.frames") / "builtin_profiles"
        for entry in builtin.iterdir():
            if entry.name.endswith(".toml"):
                self._files[entry.name[:-5]] = entry
        for directory in user_dirs:
            if Path(directory).is_dir():
                for path in sorted(Path(directory).glob("*.toml")):
                    self._files[path.stem] = path
        self._loaded: dict[str, DeviceProfile] = {}

    def names(self) -> list[str]:
        """Every profile name this registry can load."""
        return sorted(self._files)

    def get(self, name: str) -> DeviceProfile:
        """Load (once) and return the named profile; ``UnknownProfile`` if there is none."""
        if name not in self._loaded:
            if name not in self._files:
                raise UnknownProfile(name, self.names())
            entry = self._files[name]
            if isinstance(entry, Path):
                profile = load_profile_file(entry)
            else:
                profile = parse_profile(tomllib.loads(entry.read_text("utf-8")), f"built-in {name}")
            if profile.name != name:
                raise ProfileError(profile.source, "name", f"{profile.name!r} does not match "
                                   f"the file name {name!r}")
            self._loaded[name] = profile
        return self._loaded[name]
