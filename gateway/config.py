"""The gateway's TOML configuration (``../shared/spec/config.md``), loaded and validated.

Every error names its key path, the bad value and what is expected; all errors are
reported at once; unknown keys are errors (they are usually typos).
"""

from __future__ import annotations

import difflib
import fnmatch
import glob
import importlib.util
import os
import re
import socket
import ssl
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.bridge.embedded import url_problem as embedded_url_problem
from gateway.errors import ConfigError, UnknownProfile
from gateway.frames import DeviceProfile, ProfileRegistry
from gateway.frames.framing import FRAMINGS
from gateway.frames.requests import BUILTIN_ACTIONS
from gateway.settings import (
    LIVE,
    RESTART,
    BrokerSettings,
    HomeAssistantSettings,
    LinkSettings,
    QueueSettings,
    SerialSettings,
    SessionSettings,
    SparkplugSettings,
    TransactionSettings,
    declared,
    in_file_units,
    keys_of,
    nested_groups,
    parse_group,
    parse_values,
    setting,
    table_keys,
    toml_table,
)

G = TypeVar("G")

ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: a character an id cannot hold (what is put in its place when one is made from a name)
ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
#: the actions every profile has (what ``request_for`` builds besides its commands)
ACTIONS = BUILTIN_ACTIONS
#: the actions whose requests name a key, so ``allow`` may grant them one key (``write:KEY``)
KEYED_ACTIONS = ("read", "write")
#: the actions of ``{p}/{gw}/requests``, and the ones ``gateway_allow`` allows by default
GATEWAY_ACTIONS = ("list_devices", "reload", "trace")
GATEWAY_ALLOW_DEFAULT = ("list_devices",)
#: what ``state_dir`` holds: each must be a file (or not there yet)
STATE_FILES = {"spool.db": "the event queue", "node_ids.json": "the uid -> node_id map",
               "sparkplug.json": "the Sparkplug birth/death sequence (bdSeq)"}
#: characters brokers refuse in MQTT strings (topics, client ids, user names): U+0000 is
#: forbidden by the MQTT spec, and Mosquitto closes the connection of a client sending any
#: other C0 or C1 control character too (the gateway would reconnect forever)
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: the longest string an MQTT packet can carry (a 16-bit length, in UTF-8 bytes)
MQTT_STRING_MAX = 65535
#: pyserial URL schemes whose URL is host:port (the port is required)
_HOST_PORT_SCHEMES = ("socket", "rfc2217")


@dataclass(frozen=True, slots=True)
class PortConfig:
    """One ``[[ports]]`` entry: which port and device, who may ask what of it, and its groups
    of settings (their keys are flat in the entry), each the object its layer runs with."""

    name: str
    path: str
    profile: str = "env-sensor"
    # In the order of docs/configuration.md's tables (the order check-config prints).
    serial: SerialSettings = field(default_factory=SerialSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    transactions: TransactionSettings = field(default_factory=TransactionSettings)
    allow: tuple[str, ...] = field(default=("read", "ping"), metadata=LIVE)
    #: requests per second the fabric may send this device (a token bucket, burst = 2 s)
    rate_limit: float = setting(20.0, "requests per second the fabric may send; more are "
                                "answered busy", unit="1/s", minimum=0.1, maximum=100_000,
                                reload="live")
    link: LinkSettings = field(default_factory=LinkSettings)

    @property
    def is_glob(self) -> bool:
        """True when ``path`` matches many devices (``*``, ``?`` or ``[``)."""
        return not self.is_url and any(c in self.path for c in "*?[")

    @property
    def is_url(self) -> bool:
        """True for pyserial URLs such as ``socket://host:port``."""
        return "://" in self.path


#: every key of a [[ports]] entry: the port's own, and its groups' (flat in the entry)
PORT_KEYS = table_keys(PortConfig)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole configuration."""

    gateway_id: str = field(metadata=RESTART)
    state_dir: Path = field(metadata=RESTART)
    topic_prefix: str = field(default="mcp/v1", metadata=RESTART)
    profiles_dir: Path | None = None
    ports: tuple[PortConfig, ...] = ()
    broker: BrokerSettings | None = field(default=None, metadata=RESTART)
    queue: QueueSettings = field(default_factory=QueueSettings, metadata=RESTART)
    homeassistant: HomeAssistantSettings = field(default_factory=HomeAssistantSettings,
                                                 metadata=RESTART)
    sparkplug: SparkplugSettings = field(default_factory=SparkplugSettings, metadata=RESTART)
    stats_interval_s: float = setting(5.0, "how often the stats are published", unit="s",
                                      minimum=0.1, maximum=3600, reload="live")
    #: after a wake-up with input, the loop takes no more input for this long once input
    #: comes this densely (``gateway.wakeups``): fewer wake-ups and larger disk writes, at
    #: the price of this much latency at most; 0: every input the moment it arrives
    linger_s: float = setting(0.0, "how long the gateway lingers after input before it "
                              "takes more", key="linger_ms", unit="ms", minimum=0,
                              maximum=100, scale=1000, reload="restart")
    max_request_bytes: int = setting(65536, "a larger request body is answered invalid",
                                     unit="bytes", minimum=64, maximum=1 << 24, reload="live")
    #: host:port of the Prometheus endpoint; None: off
    metrics_address: str | None = field(default=None, metadata=RESTART)
    #: DEBUG, INFO, WARNING or ERROR (``--log-level`` overrides it)
    log_level: str = "INFO"
    #: "text" (journald-friendly lines) or "json" (one object per line)
    log_format: str = "text"
    #: the gateway-level actions (``GATEWAY_ACTIONS``) the fabric may ask
    gateway_allow: tuple[str, ...] = field(default=GATEWAY_ALLOW_DEFAULT, metadata=LIVE)
    #: settings that work but are probably not what was meant (check-config prints them,
    #: run logs them); not part of the configuration itself
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def profiles(self) -> ProfileRegistry:
        """The built-in profiles plus those in ``profiles_dir``."""
        return ProfileRegistry([self.profiles_dir] if self.profiles_dir else [])


#: every class that declares settings of the file (the docs name each of their keys)
SETTING_GROUPS = (GatewayConfig, PortConfig, *nested_groups(PortConfig), BrokerSettings,
                  QueueSettings, HomeAssistantSettings, SparkplugSettings)
_TOP_KEYS = {"gateway_id", "state_dir", "topic_prefix", "profiles_dir", "broker", "queue", "ports",
             "homeassistant", "sparkplug",
             "max_request_bytes", "stats_interval_s", "metrics", "log_level", "log_format",
             "gateway_allow", "linger_ms"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


def _shown(value: Any) -> str:
    """A bad value as an error shows it: its repr, a long string cut short."""
    if isinstance(value, str) and len(value) > 80:
        return f"{value[:60]!r}… ({len(value)} characters)"
    return repr(value)


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.warnings: list[str] = []

    def add(self, path: str, value: Any, expected: str) -> None:
        self.items.append(f"{path}: {_shown(value)} {expected}")

    def warn(self, path: str, value: Any, why: str) -> None:
        """A setting that runs, but probably not as meant."""
        self.warnings.append(f"{path}: {_shown(value)} {why}")

    def missing(self, path: str, expected: str) -> None:
        """A required key that is not there (not a bad value: there is none)."""
        self.items.append(f"{path}: missing; expected {expected}")


# ---------------------------------------------------------------------------- frame profiles

#: the frame profiles a port may name: the framing registry's
FRAME_PROFILES = tuple(FRAMINGS)


def _frame_profile_rules(errors: _Errors, raw: dict[str, Any], path: str) -> tuple[
        LinkSettings, TransactionSettings]:
    """The groups whose rules depend on the frame profile, read from its framing: ``frames``
    is one of the registry's; ``max_in_flight`` defaults to the framing's
    ``default_in_flight``, is at most its ``max_in_flight`` (above 1 needs a framing whose
    responses carry the request's seq)."""
    link = parse_group(LinkSettings, raw, path, errors.add,
                       adjust={"frames": {"choices": FRAME_PROFILES}})
    framing = FRAMINGS.get(raw.get("frames", link.frames))
    transactions = parse_group(TransactionSettings, raw, path, errors.add, adjust={
        "max_in_flight": {"maximum": max(f.max_in_flight for f in FRAMINGS.values()),
                          "default": framing.default_in_flight if framing else 1}})
    if framing is not None and not framing.pipelined and transactions.max_in_flight > 1:
        pipelined = next(name for name, f in FRAMINGS.items() if f.pipelined)
        errors.add(f"{path}.max_in_flight", transactions.max_in_flight,
                   f"needs frames = \"{pipelined}\": {framing.name} frames carry no sequence "
                   "number, so at most one request may be in flight (spec section 2)")
    elif framing is not None and transactions.max_in_flight > framing.max_in_flight:
        errors.add(f"{path}.max_in_flight", transactions.max_in_flight,
                   f"is more than {framing.name} frames allow in flight; expected at most "
                   f"{framing.max_in_flight}")
    return link, transactions


# ---------------------------------------------------------------------------- ports

def _serial_rules(errors: _Errors, raw: dict[str, Any], path: str, serial: SerialSettings) -> None:
    """What the serial line's keys say together."""
    if serial.stopbits == 1.5 and serial.bytesize != 5:
        # POSIX has one "more stop bits" flag: a UART sends 1.5 with 5 data bits, else 2.
        bytesize = raw.get("bytesize", serial.bytesize)
        errors.add(f"{path}.stopbits", serial.stopbits, f"needs bytesize = 5: with {bytesize} "
                   "data bits a UART sends 2 stop bits instead; expected 1 or 2")


def _port(errors: _Errors, raw: Any, index: int, registry: ProfileRegistry) -> PortConfig | None:
    path = f"ports[{index}]"
    if not isinstance(raw, dict):
        errors.add(path, raw, "is not a table; expected [[ports]] entries")
        return None
    defaults = PortConfig(name="", path="")
    for key in sorted(set(raw) - set(PORT_KEYS)):
        errors.add(f"{path}.{key}", raw[key],
                   f"is an unknown key; expected one of {', '.join(PORT_KEYS)}")
    name = raw.get("name")
    id_rule = "a device id (1-64 of A-Z a-z 0-9 _ . -)"
    if "name" not in raw:
        errors.missing(f"{path}.name", id_rule)
    elif not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
        errors.add(f"{path}.name", name, f"is not a device id; expected {id_rule}")
    device_path = raw.get("path")
    port_rule = "a device path, a glob or socket://host:port"
    if "path" not in raw:
        errors.missing(f"{path}.path", port_rule)
    elif not isinstance(device_path, str) or not device_path:
        errors.add(f"{path}.path", device_path, f"is not a port; expected {port_rule}")
    else:
        wrong = _port_path_error(device_path)
        if wrong:
            errors.add(f"{path}.path", device_path, wrong)
    serial = parse_group(SerialSettings, raw, path, errors.add)
    _serial_rules(errors, raw, path, serial)
    link, transactions = _frame_profile_rules(errors, raw, path)
    profile = raw.get("profile", defaults.profile)
    device_profile: DeviceProfile | None = None
    try:
        device_profile = registry.get(profile)
    except UnknownProfile as exc:
        errors.add(f"{path}.profile", profile, f"is not a device profile; expected one of "
                   f"{', '.join(exc.known)}")
    except Exception as exc:  # a broken profile file: say which and why
        errors.add(f"{path}.profile", profile, f"cannot be loaded: {exc}")
    allow = raw.get("allow", list(defaults.allow))
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        errors.add(f"{path}.allow", allow, "is not a list of action names")
        allow = list(defaults.allow)
    elif device_profile is not None:  # without its profile, only the profile's error is said
        for number, entry in enumerate(allow):
            wrong = _allow_entry_error(entry, device_profile)
            if wrong:
                errors.add(f"{path}.allow[{number}]", entry, wrong)
    return PortConfig(
        name=name if isinstance(name, str) else "",
        path=device_path if isinstance(device_path, str) else "",
        profile=profile,
        allow=tuple(allow),
        **parse_values(PortConfig, raw, path, errors.add),  # the port's own: rate_limit
        serial=serial,
        link=link,
        session=parse_group(SessionSettings, raw, path, errors.add),
        transactions=transactions,
    )


def _allow_entry_error(entry: str, profile: DeviceProfile) -> str | None:
    """Why an ``allow`` entry grants nothing on a port of ``profile`` (None: it is valid).

    Valid: a base action, one of the profile's commands, or ``read:KEY``/``write:KEY`` with
    a key of the profile (by name or decimal id: what a request's ``key`` may be).
    """
    commands = [c.name for c in profile.commands.values()]
    key_names = [k.name for k in profile.keys.values()]
    if entry in ACTIONS or entry in commands:
        return None
    action, colon, key = entry.partition(":")
    keys_text = ", ".join(key_names) or "(none)"
    if colon:
        if action not in KEYED_ACTIONS:
            takes = "is not an action" if action not in (*ACTIONS, *commands) else \
                "takes no key"
            return (f"is not valid: {action!r} {takes}; expected ACTION:KEY with ACTION one "
                    f"of {', '.join(KEYED_ACTIONS)} (the actions that take a key)")
        named = next((k for k in profile.keys.values() if key in (k.name, str(k.id))), None)
        if named is not None and action == "write" and not named.writable:
            writable = ", ".join(k.name for k in profile.keys.values() if k.writable)
            return (f"is not valid: key {named.name!r} of profile {profile.name} is read-only; "
                    f"expected write:KEY with KEY one of {writable or '(none)'}")
        if named is not None:
            return None
        hint = _did_you_mean(key, key_names)
        return (f"is not valid: {key!r} is not a key of profile {profile.name}; expected "
                f"{action}:KEY with KEY one of {keys_text}{hint}")
    hint = _did_you_mean(entry, [*ACTIONS, *commands])
    return (f"is not an action of profile {profile.name}; expected one of the actions "
            f"{', '.join(ACTIONS)}, a command of the profile ({', '.join(commands) or 'none'}), "
            f"or read:KEY / write:KEY with KEY one of {keys_text}{hint}")


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _port_path_error(path: str) -> str | None:
    """Why a port's ``path`` cannot be opened as a port (None: it may be).

    A device that is not there is fine (it is waited for); one that is there must be a
    character device, and a URL must have a pyserial handler (and host:port for sockets).
    """
    if "://" in path:
        scheme = path.partition("://")[0]
        if not re.fullmatch(r"[a-z0-9]+", scheme) or importlib.util.find_spec(
                f"serial.urlhandler.protocol_{scheme}") is None:
            return ("is not a serial URL pyserial can open; expected a device path, a glob, "
                    "or socket://host:port (or rfc2217://, loop://, spy://)")
        if scheme in _HOST_PORT_SCHEMES:
            parts = urlsplit(path)
            try:
                port = parts.port
            except ValueError:
                port = 0
            if not parts.hostname or not port:
                return f"is not host:port; expected {scheme}://HOST:PORT with a port from 1 to " \
                    "65535"
        return None
    if not os.path.isabs(path):
        return ("is not an absolute path; expected a device path such as /dev/ttyUSB0 (a "
                "relative one depends on the working directory: / under systemd)")
    if any(c in path for c in "*?["):
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # not there (yet): the port waits for it
    if stat.S_ISDIR(mode):
        return ("is a directory; expected a serial device such as /dev/ttyUSB0, or a glob such "
                f"as {path.rstrip('/')}/*")
    if not stat.S_ISCHR(mode):
        return "is not a serial device (not a character device); expected one such as " \
            "/dev/ttyUSB0"
    return None


def _port_devices(port: PortConfig) -> set[str]:
    """The device paths a port opens now, as spelt and resolved (for finding two ports on
    one device); a glob gives the paths it matches at this moment."""
    if port.is_url:
        return {port.path.rstrip("/")}
    paths = glob.glob(port.path) if port.is_glob else [port.path]
    # Resolved only if there: a dangling link's old target may be another device's by now.
    return {os.path.normpath(path) for path in paths} | {
        os.path.realpath(path) for path in paths if os.path.exists(path)}


def _glob_matches(pattern: str, path: str) -> bool:
    """Would the glob ``pattern`` match ``path`` (level by level, as ``glob`` does)?"""
    levels = os.path.normpath(path).split("/")
    patterns = os.path.normpath(pattern).split("/")
    return len(levels) == len(patterns) and all(
        fnmatch.fnmatchcase(level, pat) for level, pat in zip(levels, patterns, strict=True))


def _same_device_errors(errors: _Errors, ports: list[tuple[int, PortConfig]]) -> None:
    """A device opened by two ports: the second finds it "in use by another program" (or,
    with exclusive = false, both read half of its bytes). Each later port is named with the
    earlier one."""
    earlier: list[tuple[int, PortConfig, set[str]]] = []
    for index, port in ports:
        if not port.path:
            continue
        devices = _port_devices(port)
        for other_index, other, other_devices in earlier:
            where = f"ports[{other_index}] ({other.name!r})"
            common = sorted(devices & other_devices)
            if port.is_glob and not other.is_glob and not other.is_url \
                    and _glob_matches(port.path, other.path):
                what = f"matches {other.path!r}, the path of {where}"
            elif other.is_glob and not port.is_glob and not port.is_url \
                    and _glob_matches(other.path, port.path):
                what = f"is matched by {other.path!r}, the glob of {where}"
            elif common:
                same = "the same device as" if not (port.is_glob or other.is_glob) else \
                    f"matching {common[0]!r}, as does"
                what = f"is {same} the path of {where}"
            else:
                continue
            errors.add(f"ports[{index}].path", port.path, f"{what}; expected each device on "
                       "one port only (the second port to open it would find it in use)")
            break
        earlier.append((index, port, devices))


def _topic_prefix_error(prefix: Any) -> str | None:
    """Why ``topic_prefix`` would make bad topics (None: it is fine)."""
    rule = ("expected topic levels separated by / such as \"mcp/v1\", without + or #, not "
            "starting with $, with no empty level")
    if not isinstance(prefix, str) or not prefix:
        return f"is not a topic prefix; {rule}"
    if "+" in prefix or "#" in prefix:
        return f"is not a topic prefix: + and # are wildcards, not topic characters; {rule}"
    if prefix.startswith("$"):
        return ("is not a topic prefix: topics starting with $ are the broker's own ($SYS), "
                f"where it refuses (or drops) what clients publish; {rule}")
    if "" in prefix.split("/"):
        return ("is not a topic prefix: it has an empty level (a / at its start or end, or "
                f"//), so every topic would too; {rule}")
    wrong = _mqtt_string_error(prefix)
    return f"is not a topic prefix: it {wrong}; {rule}" if wrong else None


def _mqtt_string_error(text: str) -> str | None:
    """Why a broker refuses ``text`` in a topic, client id or user name (None: it does not)."""
    control = _CONTROL_CHARACTER.search(text)
    if control:
        return (f"contains the control character U+{ord(control.group()):04X}, which brokers "
                "refuse (they close the connection)")
    size = len(text.encode("utf-8"))
    if size > MQTT_STRING_MAX:
        return f"is {size} bytes long; an MQTT string is at most {MQTT_STRING_MAX}"
    return None


_BROKER_URL_RULE = "expected mqtt://host[:port] or mqtts://host[:port]"


def _broker_url_error(url: Any) -> str | None:
    """Why ``broker.url`` cannot be connected to as given (None: it can be tried)."""
    if not isinstance(url, str):
        return f"is not a broker URL; {_BROKER_URL_RULE}"
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.netloc:
        return f"is not a broker URL; {_BROKER_URL_RULE}"
    if "@" in parts.netloc:
        return ("is not a broker URL: it holds a user name or password, which would not be "
                f"sent; {_BROKER_URL_RULE}, with broker.username and broker.password_file "
                "or broker.password_env")
    if parts.path not in ("", "/") or "?" in url or "#" in url:
        return f"is not a broker URL: MQTT has no paths, queries or fragments; {_BROKER_URL_RULE}"
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s\[\]:]+)(?::(\d*))?", parts.netloc)
    if match is None:
        return f"is not a broker URL: {parts.netloc!r} is not host[:port]; {_BROKER_URL_RULE}"
    port = match.group(2)
    if port is not None and not (port and 1 <= int(port) <= 65535):
        return (f"is not a broker URL: port {port or '(empty)'} is not a TCP port; "
                f"{_BROKER_URL_RULE} with a port from 1 to 65535")
    return None


_METRICS_RULE = ("expected \"host:port\" such as \"127.0.0.1:9108\", or a port number (on "
                 "127.0.0.1), with a port from 1 to 65535")


def _metrics_address(errors: _Errors, metrics: Any) -> str | None:
    """``[metrics]``: the endpoint's address as host:port (None: none, or an error)."""
    if not isinstance(metrics, dict):
        errors.add("metrics", metrics, "is not a table; expected [metrics] with address = "
                   "\"127.0.0.1:9108\"")
        return None
    for key in sorted(set(metrics) - {"address"}):
        errors.add(f"metrics.{key}", metrics[key], "is an unknown key; expected address")
    if "address" not in metrics:
        errors.missing("metrics.address", _METRICS_RULE)
        return None
    address = metrics["address"]
    if isinstance(address, int) and not isinstance(address, bool):
        if 1 <= address <= 65535:
            return f"127.0.0.1:{address}"  # a bare port: loopback only
        errors.add("metrics.address", address, f"is not a TCP port; {_METRICS_RULE}")
        return None
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[\w.-]*):(\d+)", address) \
        if isinstance(address, str) else None
    if match is None:
        errors.add("metrics.address", address, f"is not host:port; {_METRICS_RULE}")
        return None
    if not 1 <= int(match.group(2)) <= 65535:
        errors.add("metrics.address", address, f"has port {int(match.group(2))}, which is not "
                   f"a TCP port; {_METRICS_RULE}")
        return None
    return address


def _user() -> str:
    """Who check-config checks permissions as (they are the service user's at run)."""
    return f"uid {os.geteuid()}"


def _state_dir_errors(errors: _Errors, state_dir: str) -> None:
    """What ``run`` would find wrong with ``state_dir``, seen without changing anything:
    its type, its permissions (for the user running this), the files in it."""
    path = Path(state_dir)
    writable = f"writable by this user ({_user()}; run check-config as the service's user)"
    if path.exists():
        if not path.is_dir():
            errors.add("state_dir", state_dir, "is a file, not a directory; expected a "
                       "directory for spool.db and node_ids.json (or a path to create one at)")
        elif not os.access(path, os.W_OK | os.X_OK):
            errors.add("state_dir", state_dir, f"is not {writable}; expected a directory the "
                       "gateway may write (a read-only file system is not)")
        else:
            for name, what in STATE_FILES.items():
                file = path / name
                if file.exists() and not file.is_file():
                    errors.add(f"state_dir/{name}", str(file), f"is not a file; expected "
                               f"{what}'s file, or nothing yet: move it away")
                elif file.exists() and not os.access(file, os.R_OK | os.W_OK):
                    errors.add(f"state_dir/{name}", str(file), f"is not readable and {writable}"
                               f"; it is {what}")
        return
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        errors.add("state_dir", state_dir, f"cannot be created: {str(ancestor)!r} is a file, "
                   "not a directory; expected a directory path")
    elif not os.access(ancestor, os.W_OK | os.X_OK):
        errors.add("state_dir", state_dir, f"does not exist and cannot be created: "
                   f"{str(ancestor)!r} is not {writable}")


def parse_config(data: dict[str, Any], source: str = "<config>", *,
                 check_state_dir: bool = False) -> GatewayConfig:
    """Validate a parsed TOML document; ``ConfigError`` lists every problem.

    ``check_state_dir``: also check what ``run`` will find in ``state_dir`` (without
    creating anything), for ``check-config`` and ``run``; the clients that read the
    gateway's file for its broker settings (``request``, ``dashboard``) do not need it.
    """
    errors = _Errors()
    for key in sorted(set(data) - _TOP_KEYS):
        errors.add(key, data[key], "is an unknown key; expected one of "
                   + ", ".join(sorted(_TOP_KEYS)))
    gateway_id = data.get("gateway_id", socket.gethostname().split(".")[0])
    if not isinstance(gateway_id, str) or not ID_PATTERN.fullmatch(gateway_id):
        errors.add("gateway_id", gateway_id, "is not an id; expected 1-64 of A-Z a-z 0-9 _ . -")
    state_dir = data.get("state_dir", "/var/lib/mcp-gateway")
    if not isinstance(state_dir, str) or not state_dir:
        errors.add("state_dir", state_dir, "is not a directory path")
        state_dir = "."
    else:
        if not os.path.isabs(state_dir):
            errors.warn("state_dir", state_dir, "is relative: it is found from the working "
                        "directory, which is / under systemd")
        if check_state_dir:
            _state_dir_errors(errors, state_dir)
    profiles_dir = data.get("profiles_dir")
    profiles_rule = "expected a directory of device profiles (NAME.toml)"
    if profiles_dir is not None and (not isinstance(profiles_dir, str) or not profiles_dir):
        errors.add("profiles_dir", profiles_dir, f"is not a directory path; {profiles_rule}")
        profiles_dir = None
    elif profiles_dir is not None:
        wrong = ("does not exist" if not os.path.exists(profiles_dir) else
                 "is not a directory" if not os.path.isdir(profiles_dir) else
                 f"cannot be read by this user ({_user()})"
                 if not os.access(profiles_dir, os.R_OK | os.X_OK) else None)
        if wrong:
            errors.add("profiles_dir", profiles_dir, f"{wrong}; {profiles_rule}")
            profiles_dir = None  # the ports' profiles are looked up among the built-in ones
    topic_prefix = data.get("topic_prefix", "mcp/v1")
    wrong = _topic_prefix_error(topic_prefix)
    if wrong:
        errors.add("topic_prefix", topic_prefix, wrong)
    registry = ProfileRegistry([Path(profiles_dir)] if profiles_dir else [])
    raw_ports = data.get("ports", [])
    ports: list[PortConfig] = []
    indexed: list[tuple[int, PortConfig]] = []
    if not isinstance(raw_ports, list):
        errors.add("ports", raw_ports, "is not a list; expected [[ports]] tables")
        raw_ports = []
    for index, raw in enumerate(raw_ports):
        port = _port(errors, raw, index, registry)
        if port is None:
            continue
        if port.name and any(p.name == port.name for p in ports):
            errors.add(f"ports[{index}].name", port.name, "is used by an earlier port; names "
                       "are device ids and must be unique")
        ports.append(port)
        indexed.append((index, port))
    _same_device_errors(errors, indexed)
    broker = _broker(errors, data.get("broker"), gateway_id)
    queue = _table_group(errors, data, "queue", QueueSettings)
    homeassistant = _table_group(errors, data, "homeassistant", HomeAssistantSettings)
    wrong = _topic_prefix_error(homeassistant.discovery_prefix)
    if wrong:
        errors.add("homeassistant.discovery_prefix", homeassistant.discovery_prefix, wrong)
    sparkplug = _table_group(errors, data, "sparkplug", SparkplugSettings)
    for name in ("group_id", "edge_node_id", "primary_host_id"):
        _check_sparkplug_id(errors, f"sparkplug.{name}", getattr(sparkplug, name))
    numbers = parse_values(GatewayConfig, data, "", errors.add)  # the declared ones
    metrics = data.get("metrics")
    metrics_address = _metrics_address(errors, metrics) if metrics is not None else None
    log_level = data.get("log_level", "INFO")
    if not isinstance(log_level, str) or log_level.upper() not in LOG_LEVELS:
        errors.add("log_level", log_level, f"is not a log level; expected one of "
                   f"{', '.join(LOG_LEVELS)}")
        log_level = "INFO"
    log_format = data.get("log_format", "text")
    if log_format not in LOG_FORMATS:
        errors.add("log_format", log_format, "is not a log format; expected text or json")
        log_format = "text"
    gateway_allow = _gateway_allow(errors, data)
    if errors.items:
        raise ConfigError(errors.items, source)
    return GatewayConfig(
        gateway_id=gateway_id,
        state_dir=Path(state_dir),
        topic_prefix=topic_prefix,
        profiles_dir=Path(profiles_dir) if profiles_dir else None,
        ports=tuple(ports),
        broker=broker,
        queue=queue,
        homeassistant=homeassistant,
        sparkplug=sparkplug,
        **numbers,
        metrics_address=metrics_address,
        log_level=log_level.upper(),
        log_format=log_format,
        gateway_allow=gateway_allow,
        warnings=tuple(errors.warnings),
    )


def _table_group(errors: _Errors, data: dict[str, Any], name: str, cls: type[G]) -> G:
    """A top-level table of one settings group (``[queue]``, ``[sparkplug]``...): its
    unknown keys and bad values reported, defaults where it is absent or wrong."""
    raw = data.get(name, {})
    if not isinstance(raw, dict):
        errors.add(name, raw, "is not a table")
        return cls()
    known = keys_of(cls)
    for key in sorted(set(raw) - set(known)):
        errors.add(f"{name}.{key}", raw[key], "is an unknown key; expected "
                   f"{', '.join(known[:-1])} or {known[-1]}")
    return parse_group(cls, raw, name, errors.add)


def _check_sparkplug_id(errors: _Errors, path: str, value: str | None) -> None:
    """A Sparkplug group, edge node or host id: a topic level (no /, + or #), and one a
    broker takes (``_mqtt_string_error``)."""
    if value is None:
        return
    if any(c in value for c in "/+#"):
        errors.add(path, value, "is not a Sparkplug id; it must not contain /, + or #")
    elif wrong := _mqtt_string_error(value):
        errors.add(path, value, f"is not a Sparkplug id: it {wrong}")


def _gateway_allow(errors: _Errors, data: dict[str, Any]) -> tuple[str, ...]:
    """``gateway_allow``: a list of gateway actions (``GATEWAY_ACTIONS``)."""
    allow = data.get("gateway_allow", list(GATEWAY_ALLOW_DEFAULT))
    expected = f"expected a list of some of {', '.join(GATEWAY_ACTIONS)}"
    if not isinstance(allow, list):
        errors.add("gateway_allow", allow, f"is not a list; {expected}")
        return GATEWAY_ALLOW_DEFAULT
    for number, entry in enumerate(allow):
        if entry not in GATEWAY_ACTIONS:
            errors.add(f"gateway_allow[{number}]", entry, "is not a gateway action; expected "
                       f"one of {', '.join(GATEWAY_ACTIONS)}")
    return tuple(allow)


def effective(config: GatewayConfig) -> dict[str, Any]:
    """The configuration as a TOML document with every default filled in; ``parse_config``
    of it gives ``config`` back. The broker password is never in it (only where it is read
    from)."""
    doc: dict[str, Any] = {
        "gateway_id": config.gateway_id,
        "state_dir": str(config.state_dir),
        "topic_prefix": config.topic_prefix,
        "log_level": config.log_level,
        "log_format": config.log_format,
        "max_request_bytes": config.max_request_bytes,
        "stats_interval_s": config.stats_interval_s,
        "linger_ms": in_file_units(config.linger_s, 1000),
        "gateway_allow": list(config.gateway_allow),
    }
    if config.profiles_dir is not None:
        doc["profiles_dir"] = str(config.profiles_dir)
    if config.metrics_address is not None:
        doc["metrics"] = {"address": config.metrics_address}
    if config.broker is not None:
        broker = toml_table(config.broker)  # not the password: it has no key
        del broker["url" if config.broker.urls else "urls"]  # the one the file gave
        doc["broker"] = broker
    doc["queue"] = toml_table(config.queue)
    doc["homeassistant"] = toml_table(config.homeassistant)
    doc["sparkplug"] = toml_table(config.sparkplug)
    doc["ports"] = [toml_table(port) for port in config.ports]
    return doc


def readable_file(path: str) -> bool:
    """True for a regular file this process may read (a CA bundle, a certificate, a key)."""
    return Path(path).is_file() and os.access(path, os.R_OK)


def read_password_file(path: str) -> str:
    """The secret in a password file, without surrounding whitespace (the trailing newline
    editors add); ``OSError`` if it cannot be read."""
    return Path(path).read_text(encoding="utf-8").strip()


#: the most broker nodes ``urls`` may list (a cluster's, not a scan of a network)
MAX_BROKER_URLS = 16


def _broker_nodes(errors: _Errors, raw: dict[str, Any]) -> tuple[str, tuple[str, ...], bool]:
    """``url`` or ``urls`` of a ``[broker]`` table: (the first node's URL, every node's URL
    or () when only ``url`` is given, whether any is wrong). All nodes share one scheme, as
    the TLS settings apply to every one."""
    default = BrokerSettings().url
    if "urls" not in raw:
        url = raw.get("url", default)
        wrong = _broker_url_error(url)
        if wrong:
            errors.add("broker.url", url, wrong)
        return (url if isinstance(url, str) else default), (), wrong is not None
    urls = raw["urls"]
    if "url" in raw:
        errors.add("broker.url", raw["url"], "is given with broker.urls; expected one of them "
                   "(urls lists every node, url is a single broker)")
    if not isinstance(urls, list) or not urls:
        errors.add("broker.urls", urls, "is not a list of broker URLs; expected e.g. "
                   '["mqtts://a:8883", "mqtts://b:8883"]')
        return default, (), True
    if len(urls) > MAX_BROKER_URLS:
        errors.add("broker.urls", f"{len(urls)} URLs", f"lists too many nodes; expected at "
                   f"most {MAX_BROKER_URLS}")
    wrong = False
    for index, url in enumerate(urls):
        problem = _broker_url_error(url)
        if problem:
            errors.add(f"broker.urls[{index}]", url, problem)
            wrong = True
        elif urls.index(url) != index:
            errors.add(f"broker.urls[{index}]", url, f"is listed twice (also at "
                       f"broker.urls[{urls.index(url)}]); expected each node once")
    if wrong:
        return default, (), True
    schemes = sorted({urlsplit(url).scheme for url in urls})
    if len(schemes) > 1:
        errors.add("broker.urls", urls, "mixes mqtt:// and mqtts://; expected one scheme for "
                   "every node (the TLS settings apply to all of them)")
        return default, (), True
    return urls[0], tuple(urls), False


def _broker(errors: _Errors, raw: Any, gateway_id: Any) -> BrokerSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.add("broker", raw, "is not a table")
        return None
    broker_keys = sorted(keys_of(BrokerSettings))
    for key in sorted(set(raw) - set(broker_keys)):
        hint = ("; a password is never written in the config: use password_file or "
                "password_env" if key == "password" else "")
        errors.add(f"broker.{key}", "***" if key == "password" else raw[key],
                   f"is an unknown key; expected one of {', '.join(broker_keys)}{hint}")
    # The embedded broker (amqtt) speaks MQTT 3.1.1 only.
    embedded = raw.get("embedded") is True
    url, urls, wrong_url = _broker_nodes(errors, raw)
    parsed = parse_group(BrokerSettings, {k: v for k, v in raw.items() if k != "urls"},
                         "broker", errors.add,
                         adjust={"protocol": {"default": 3}} if embedded else None)
    if parsed.protocol == 5 and embedded:
        errors.add("broker.protocol", parsed.protocol, "cannot be used with embedded = true: "
                   "the embedded broker speaks MQTT 3.1.1 only (protocol = 3)")
    flags = {"embedded": parsed.embedded, "tls_insecure": parsed.tls_insecure}
    strings: dict[str, str | None] = {
        name: getattr(parsed, name) or None for name, declaration in declared(BrokerSettings)
        if declaration.kind == "text"}
    for key in ("client_id", "username"):
        wrong = _mqtt_string_error(strings[key]) if strings[key] else None
        if wrong:
            errors.add(f"broker.{key}", strings[key], wrong)
            strings[key] = None
    if embedded and urls:
        errors.add("broker.urls", list(urls), "cannot be used with embedded = true: the "
                   "embedded broker is one node, at broker.url")
    elif embedded and not wrong_url:
        wrong = embedded_url_problem(url)
        if wrong:
            errors.add("broker.url", url, f"{wrong} (broker.embedded = true)")
    for key in ("ca_file", "cert_file", "key_file"):
        if strings[key] and not readable_file(strings[key]):
            errors.add(f"broker.{key}", strings[key], "is not a readable file")
            strings[key] = None
    if not wrong_url and urlsplit(url).scheme == "mqtt":
        for key in ("ca_file", "cert_file", "key_file", "tls_insecure"):
            value = strings.get(key) or flags.get(key)
            if value:
                where = "broker.urls" if urls else "broker.url"
                errors.add(f"broker.{key}", value, f"is for TLS, and {where} "
                           f"{'are' if urls else 'is'} mqtt:// (no TLS), so it would be "
                           f"ignored; expected mqtts:// in {where}, or no {key}")
    elif not wrong_url:
        _tls_errors(errors, strings)
    password = None
    if strings["password_file"] and strings["password_env"]:
        errors.add("broker.password_env", strings["password_env"], "is given with "
                   "broker.password_file; expected one of them (the file would be used and "
                   "this ignored)")
    if strings["password_file"]:
        try:
            password = read_password_file(strings["password_file"])
        except OSError as exc:
            errors.add("broker.password_file", strings["password_file"],
                       f"cannot be read: {exc.strerror}")
    elif strings["password_env"]:
        password = os.environ.get(strings["password_env"])
        if password is None:
            errors.add("broker.password_env", strings["password_env"],
                       "names an environment variable that is not set")
    source = "password_file" if strings["password_file"] else "password_env"
    if password is not None and strings["username"] is None and "username" not in raw:
        errors.add(f"broker.{source}", strings[source], "needs broker.username: MQTT sends "
                   "a password only with a user name, so it would be ignored")
    elif password == "":
        errors.warn(f"broker.{source}", strings[source], "gives an empty password")
    return replace(
        parsed,
        url=url,
        urls=urls,
        client_id=strings["client_id"] or f"mcp-gateway-{gateway_id}",
        username=strings["username"],
        password=password,
        password_file=strings["password_file"],
        password_env=None if strings["password_file"] else strings["password_env"],
        ca_file=strings["ca_file"],
        cert_file=strings["cert_file"],
        key_file=strings["key_file"],
    )


class _EncryptedKey(Exception):
    """A key file asked for a passphrase (the gateway has none to give)."""


def _no_passphrase() -> str:
    raise _EncryptedKey


def _tls_errors(errors: _Errors, strings: dict[str, str | None]) -> None:
    """Load the CA bundle and the client certificate and key as the connection will (no
    connection is made): what would fail at every connection attempt fails here once."""
    ca_file, cert_file, key_file = strings["ca_file"], strings["cert_file"], strings["key_file"]
    if ca_file:
        try:
            ssl.create_default_context(cafile=ca_file)
        except ssl.SSLError as exc:
            errors.add("broker.ca_file", ca_file, f"is not a CA bundle ({exc.reason or exc}); "
                       "expected PEM certificates")
    if key_file and not cert_file:
        errors.add("broker.key_file", key_file, "needs broker.cert_file, the client "
                   "certificate it is the key of")
    elif cert_file:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
        except _EncryptedKey:
            errors.add("broker.key_file" if key_file else "broker.cert_file",
                       key_file or cert_file, "is an encrypted key, and the gateway has no "
                       "passphrase to give; expected an unencrypted key (openssl pkey -in "
                       "KEY -out PLAIN), readable by the service's user only")
        except ssl.SSLError as exc:
            # OpenSSL says only "PEM lib" (no reason) for a file without a certificate or key.
            why = f" ({exc.reason})" if exc.reason else ""
            if key_file:
                errors.add("broker.key_file", key_file, f"does not load as the key of "
                           f"broker.cert_file {cert_file!r}{why}; expected PEM files: the "
                           "certificate, and its private key")
            else:
                errors.add("broker.cert_file", cert_file, f"does not load as a certificate "
                           f"with its key{why}; expected broker.key_file with the key, or the "
                           "PEM certificate and key both in this file")


def load_config(path: Path, *, check_state_dir: bool = False) -> GatewayConfig:
    """Read and validate a configuration file (``check_state_dir``: as ``parse_config``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"], str(path)) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from exc
    return parse_config(data, str(path), check_state_dir=check_state_dir)
