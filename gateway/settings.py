"""The runtime's groups of settings, each declared once: the object a layer runs with.

Each group is a frozen dataclass whose fields are declared with ``setting()``: the default
(in the runtime's unit), the TOML key (flat, as ``../shared/spec/config.md`` names it), the
bounds or choices, the unit and a one-line doc. ``parse_group`` reads a TOML table into the
group, converting units (``link_retransmit_ms`` -> ``LinkSettings.retransmit_s``) and
reporting every bad value with its key path; ``toml_table`` writes a group back as TOML.
``gateway.config`` adds what a table cannot say alone (files, URLs, rules across groups);
the layers below (drivers, framing, session, transactions, bridge) take the groups as they
are. A leaf module: it imports nothing from the gateway but its errors.

Why not msgspec or pydantic: ``msgspec.convert`` stops at the first error, and the
configuration reports every error at once; pydantic's messages are not ours (each would be
translated back) and it is a compiled dependency more on an edge box. The layer here is a
field's metadata and one loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from gateway.errors import GatewayError

#: the metadata key of a declared setting, and of how a reload treats a field
SETTING = "setting"
RELOAD = "reload"
#: the metadata of a plain field (not a TOML setting of its own) that a reload changes in
#: place, or keeps until a restart (``reload_fields``)
LIVE = MappingProxyType({RELOAD: "live"})
RESTART = MappingProxyType({RELOAD: "restart"})

#: reports one bad value: (key path, the value, what is wrong and expected)
Report = Callable[[str, Any, str], None]

Group = TypeVar("Group")
#: how a value is checked: a number in bounds, one of some choices, true or false, a
#: non-empty string, or "raw": passed as it is (``gateway.config`` checks it)
Kind = Literal["number", "choice", "bool", "text", "raw"]


@dataclass(frozen=True, slots=True)
class Setting:
    """How one field is written in TOML and what it may be."""

    #: one line for operators (docs/configuration.md says it at length)
    doc: str
    #: the TOML key; None: not in the configuration file (a runtime knob with its default)
    key: str | None
    kind: Kind
    #: the unit of the value in the file (the runtime's may differ: see ``scale``)
    unit: str = ""
    #: numbers: the bounds, in the file's unit
    minimum: float | None = None
    maximum: float | None = None
    #: numbers: whole numbers only
    integer: bool = False
    choices: tuple[Any, ...] | None = None
    #: choices: what the value is not ("is not a parity; ...")
    noun: str = ""
    #: choices: the expected values as the error says them (default "one of a, b, c")
    expected: str = ""
    #: the TOML value is this many times the runtime's (1000: ms in TOML, s at runtime)
    scale: float = 1
    #: the default as the docs show it, where that is not the TOML form of ``default``
    shown: str = ""


def setting(default: Any, doc: str, *, key: str | None = "", kind: Kind | None = None,
            unit: str = "", minimum: float | None = None, maximum: float | None = None,
            choices: tuple[Any, ...] | None = None, noun: str = "", expected: str = "",
            scale: float = 1, shown: str = "", reload: str = "", secret: bool = False) -> Any:
    """A dataclass field declared as a setting (``key=""``: the field's own name; ``None``:
    not a configuration key). The kind follows from what is given: choices (or a noun, for
    choices the caller supplies at parse time), a bool default, bounds, else text.
    ``reload``: "live" or "restart", for the reload (see ``reload_fields``); ``secret``: left
    out of the repr, so out of logs."""
    if kind is None:
        kind = ("choice" if choices is not None or noun else
                "bool" if isinstance(default, bool) else
                "number" if minimum is not None else "text")
    integer = kind == "number" and isinstance(default, int) and not isinstance(default, bool)
    metadata: dict[str, Any] = {SETTING: Setting(
        doc, key, kind, unit, minimum, maximum, integer, choices, noun, expected, scale,
        shown)}
    if reload:
        metadata[RELOAD] = reload
    return field(default=default, metadata=metadata, repr=not secret)


def reload_fields(cls: type, how: str) -> tuple[str, ...]:
    """The fields of ``cls`` a reload treats as ``how``: "live" (changed in place) or
    "restart" (kept until a restart, and reported)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(RELOAD) == how)


def declared(cls: type) -> Iterator[tuple[str, Setting]]:
    """(field name, declaration) of each configuration key of a group, in order."""
    for f in dataclasses.fields(cls):
        declaration = f.metadata.get(SETTING)
        if declaration is not None and declaration.key is not None:
            yield f.name, _keyed(declaration, f.name)


def _keyed(declaration: Setting, name: str) -> Setting:
    return declaration if declaration.key else dataclasses.replace(declaration, key=name)


def default_of(cls: type, name: str) -> Any:
    """The declared default of a field."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def keys_of(cls: type) -> tuple[str, ...]:
    """The TOML keys of a group, in order."""
    return tuple(declaration.key for _, declaration in declared(cls))  # type: ignore[misc]


def parse_group(cls: type[Group], table: Mapping[str, Any], path: str, report: Report, *,
                adjust: Mapping[str, Mapping[str, Any]] | None = None) -> Group:
    """The group ``cls`` from a TOML table (see ``parse_values``)."""
    return cls(**parse_values(cls, table, path, report, adjust=adjust))


def parse_values(cls: type, table: Mapping[str, Any], path: str, report: Report, *,
                 adjust: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The declared settings of ``cls``, by field name, from a TOML table (its keys may
    share the table with others'; unknown keys are the caller's to report). Each bad value
    is reported as ``path.key`` and its default used instead, so every error is found in
    one pass.

    ``adjust``: per field, what the caller knows better than the declaration (the choices
    of a registry, a bound or default that depends on another group): Setting fields, and
    ``default``.
    """
    values: dict[str, Any] = {}
    for name, declared_as in declared(cls):
        changes = dict((adjust or {}).get(name, {}))
        default = changes.pop("default", default_of(cls, name))
        declaration = dataclasses.replace(declared_as, **changes) if changes else declared_as
        key = declaration.key
        assert key is not None
        if key not in table:
            values[name] = default
            continue
        value = table[key]
        wrong = _problem(declaration, value)
        if wrong:
            report(f"{path}.{key}" if path else key, value, wrong)
            values[name] = default
        elif declaration.scale != 1:
            values[name] = value / declaration.scale
        else:
            values[name] = value
    return values


def _problem(declaration: Setting, value: Any) -> str | None:
    """Why ``value`` is not valid for ``declaration`` (None: it is)."""
    kind = declaration.kind
    if kind == "bool":
        return None if isinstance(value, bool) else "is not true or false"
    if kind == "text":
        return None if isinstance(value, str) and value else "is not a non-empty string"
    if kind == "choice":
        choices = declaration.choices or ()
        boolean = isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)
        if value in choices and not boolean:
            return None
        expected = declaration.expected or f"one of {', '.join(map(str, choices))}"
        return f"is not {declaration.noun}; expected {expected}"
    if kind == "number":
        low, high = declaration.minimum, declaration.maximum
        number = int if declaration.integer else (int, float)
        if not isinstance(value, bool) and isinstance(value, number) \
                and (low is None or low <= value) and (high is None or value <= high):
            return None
        what = "a whole number" if declaration.integer else "a number"
        return f"is not valid; expected {what} from {low} to {high}"
    return None  # raw: the caller checks it


def nested_groups(cls: type) -> tuple[type, ...]:
    """The groups a dataclass holds (fields whose default is a group)."""
    return tuple(f.default_factory for f in dataclasses.fields(cls)  # type: ignore[misc]
                 if dataclasses.is_dataclass(f.default_factory))


def table_keys(cls: type) -> tuple[str, ...]:
    """Every TOML key of a table that ``toml_table`` writes from ``cls``: its plain fields,
    its settings, and its groups' keys flattened into it, in order."""
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        declaration = f.metadata.get(SETTING)
        if dataclasses.is_dataclass(f.default_factory):
            keys += table_keys(f.default_factory)  # type: ignore[arg-type]
        elif declaration is None:
            keys.append(f.name)
        elif declaration.key is not None:
            keys.append(declaration.key or f.name)
    return tuple(keys)


def toml_table(group: Any) -> dict[str, Any]:
    """A group (or a dataclass holding groups) as TOML: its keys with their values in the
    file's units, nested groups flattened into it, None left out. Parsing it gives the group
    back."""
    table: dict[str, Any] = {}
    for f in dataclasses.fields(group):
        value = getattr(group, f.name)
        declaration = f.metadata.get(SETTING)
        if dataclasses.is_dataclass(value):
            table.update(toml_table(value))
        elif declaration is None:
            if value is not None:
                table[f.name] = list(value) if isinstance(value, tuple) else value
        elif declaration.key is not None and value is not None:
            table[declaration.key or f.name] = in_file_units(value, declaration.scale)
    return table


def in_file_units(value: Any, scale: float) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if scale == 1:
        return value
    shown = round(value * scale, 6)  # 0.15 s is 150 ms, not 150.00000000000003
    if shown / scale != value:
        return value * scale
    return int(shown) if shown.is_integer() else shown


def shown_default(cls: type, name: str) -> str:
    """A setting's default as the docs show it (``5``, ``"none"``, ``false``)."""
    declaration = _keyed(next(f.metadata[SETTING] for f in dataclasses.fields(cls)
                              if f.name == name), name)
    if declaration.shown:
        return declaration.shown
    value = default_of(cls, name)
    if value is None:
        return "none"
    value = in_file_units(value, declaration.scale)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------- the port

STANDARD_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800,
                      500000, 576000, 921600, 1000000, 1500000, 2000000, 3000000)


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """How to open a port. Defaults: 115200 8N1, no flow control, exclusive open."""

    baudrate: int = setting(115200, "line speed", unit="baud", choices=STANDARD_BAUDRATES,
                            noun="a standard baud rate")
    bytesize: int = setting(8, "data bits", choices=(5, 6, 7, 8), noun="a byte size",
                            expected="5, 6, 7 or 8")
    parity: str = setting("none", "parity", choices=("none", "even", "odd", "mark", "space"),
                          noun="a parity", expected="none, even, odd, mark or space")
    stopbits: float = setting(1, "stop bits (1.5 only with bytesize = 5)", choices=(1, 1.5, 2),
                              noun="a stop bit count", expected="1, 1.5 or 2")
    rtscts: bool = setting(False, "RTS/CTS hardware flow control")
    exclusive: bool = setting(True, "lock the port so no other program can open it")
    read_size: int = setting(65536, "bytes per read; pyserial-asyncio's 1 KiB default is "
                             "too small at high frame rates", key=None, unit="bytes")
    write_high_water: int = setting(16384, "writes past this many buffered bytes wait (send) "
                                    "or are refused (send_nowait)", key=None, unit="bytes")
    inter_frame_timeout: float | None = setting(
        None, "an incomplete frame older than this is dropped; None: the spec's 100 ms, or "
        "longer where the baud rate needs it", key="inter_frame_timeout_ms", unit="ms",
        minimum=1, maximum=60_000, scale=1000,
        shown="100 ms, or two 261-byte frames' airtime at slow baud rates")

    def frame_timeout(self) -> float:
        """The inter-frame timeout: 100 ms, or two maximum frames' airtime at slow bauds."""
        if self.inter_frame_timeout is not None:
            return self.inter_frame_timeout
        bits_per_byte = 1 + self.bytesize + (self.parity != "none") + self.stopbits
        return max(0.1, 2 * 261 * bits_per_byte / self.baudrate)


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """The frame profile of a line and its link layer's knobs."""

    #: the frame profile: its choices are the framing registry's, given at parse time
    frames: str = setting("mcp", "the frame profile on the line (a name in the framing "
                          "registry)", noun="a supported frame profile")
    retransmit_s: float = setting(0.2, "ms720: resend a frame not acknowledged after this "
                                  "long", key="link_retransmit_ms", unit="ms", minimum=1,
                                  maximum=60_000, scale=1000)
    retries: int = setting(3, "ms720: resends before a frame is given up",
                           key="link_retries", minimum=0, maximum=50)
    window: int = setting(128, "ms720: a frame goes out only if its seq is less than this "
                          "many past the oldest unacknowledged one", key="link_window",
                          unit="frames", minimum=1, maximum=512)


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """A device session's liveness and request defaults, and its bounds on HELLO floods."""

    heartbeat_s: float = setting(5.0, "told to the device in HELLO_ACK; PING after one "
                                 "silent heartbeat, offline after three", unit="s",
                                 minimum=0.1, maximum=3600)
    request_timeout_s: float = setting(2.0, "how long each try of a request waits for the "
                                       "answer", unit="s", minimum=0.01, maximum=600)
    retries: int = setting(3, "tries after the first", minimum=0, maximum=10)
    #: a device (or noise) sending HELLOs in a loop costs at most this many node id
    #: look-ups, status changes and table writes; the rest are answered NACK 3 (busy)
    hello_burst: int = setting(10, "HELLOs a port may send at once (a token bucket)",
                               key=None)
    hello_per_s: float = setting(2.0, "HELLOs a second a port may send after its burst",
                                 key=None, unit="1/s")


@dataclass(frozen=True, slots=True)
class TransactionSettings:
    """A device's request queue, its requests in flight and its circuit breaker."""

    max_queue: int = setting(64, "requests that may wait for the device; more are answered "
                             "busy", minimum=1, maximum=100_000)
    #: more than 1 only where responses carry a request seq: the frame profile's rule
    #: (``gateway.config``) gives its most and its default
    max_in_flight: int = setting(1, "requests sent to the device at once", minimum=1,
                                 shown="1 on `mcp`, 16 on `ms720`")
    circuit_threshold: int = setting(5, "tries in a row without an answer after which "
                                     "requests fail at once", minimum=1, maximum=1000)
    circuit_reset_s: float = setting(30.0, "after this long, one request is let through as a "
                                     "probe", unit="s", minimum=0.01, maximum=86400)


# ---------------------------------------------------------------------------- the bridge

class BrokerUrlError(GatewayError):
    """A broker URL that is not mqtt://host[:port] or mqtts://host[:port]."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """``[broker]``: where the fabric is and how to connect (what ``MqttConnection`` takes)."""

    #: ``gateway.config`` checks the URL (scheme, host, port)
    url: str = setting("mqtt://127.0.0.1:1883", "mqtt://host[:port] or mqtts://host[:port]",
                       kind="raw")
    #: a broker cluster's nodes, tried in turn (``gateway.config`` fills it from ``url`` when
    #: only that is given, and sets ``url`` to the first node)
    urls: tuple[str, ...] = setting((), "broker cluster nodes, tried in turn (instead of url)",
                                    kind="raw", shown="`[url]`")
    protocol: int = setting(5, "MQTT 5, or 3 for MQTT 3.1.1", choices=(5, 3),
                            noun="an MQTT version", expected="5 or 3 (MQTT 3.1.1)",
                            shown="`5` (`3` with `embedded = true`)")
    embedded: bool = setting(False, "start an in-process broker (amqtt) at url")
    client_id: str = setting("", "the MQTT client id", shown='"mcp-gateway-{gateway_id}"')
    username: str | None = setting(None, "the MQTT user name")
    #: read from password_file or password_env, never written in the configuration
    password: str | None = setting(None, "the password", key=None, secret=True)
    password_file: str | None = setting(None, "a file holding the password")
    password_env: str | None = setting(None, "an environment variable holding the password")
    ca_file: str | None = setting(None, "the CA bundle that verifies the broker (mqtts://)")
    cert_file: str | None = setting(None, "a client certificate (mqtts://)")
    key_file: str | None = setting(None, "the client certificate's key (mqtts://)")
    tls_insecure: bool = setting(False, "skip certificate and host name verification")
    keepalive: int = setting(30, "MQTT keepalive", key=None, unit="s")
    window: int = setting(1000, "unacknowledged QoS 1 publishes in flight", key=None)

    @property
    def nodes(self) -> tuple[str, ...]:
        """The URLs to connect to, in the order they are tried: ``urls``, else ``url``."""
        return self.urls or (self.url,)

    def endpoint(self, url: str | None = None) -> tuple[str, int, bool]:
        """(host, port, tls) of ``url`` (default: ``self.url``)."""
        url = self.url if url is None else url
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BrokerUrlError(f"broker url {url!r}: expected mqtt://host[:port] or "
                                 "mqtts://host[:port]")
        tls = parts.scheme == "mqtts"
        return parts.hostname, parts.port or (8883 if tls else 1883), tls


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """``[queue]``: the on-disk event queue's bounds."""

    max_messages: int = setting(100_000, "the most events it holds; the oldest are dropped",
                                minimum=1, maximum=100_000_000)
    max_bytes: int = setting(64 * 1024 * 1024, "the most bytes of event bodies it holds",
                             unit="bytes", minimum=1024, maximum=1 << 40)
    #: 0: every batch is written in the loop turn that sends it. More: writes wait up to this
    #: long, and events the broker acknowledges meanwhile are never written (less disk work
    #: and CPU; a crash of the gateway can lose the events of the last ``commit_delay_s``).
    commit_delay_s: float = setting(0.0, "how long writes wait for the broker's "
                                    "acknowledgements", key="commit_delay_ms", unit="ms",
                                    minimum=0, maximum=1000, scale=1000)


@dataclass(frozen=True, slots=True)
class HomeAssistantSettings:
    """``[homeassistant]``: MQTT discovery, so Home Assistant shows every device by itself."""

    enabled: bool = setting(False, "publish Home Assistant discovery configs")
    discovery_prefix: str = setting("homeassistant", "Home Assistant's discovery prefix "
                                    "(its MQTT integration's setting)")


@dataclass(frozen=True, slots=True)
class SparkplugSettings:
    """``[sparkplug]``: the gateway as a Sparkplug B edge node, beside the native fabric."""

    enabled: bool = setting(False, "run a Sparkplug B edge node")
    group_id: str = setting("mcp", "the Sparkplug group id of this edge node")
    #: None: the gateway id
    edge_node_id: str | None = setting(None, "the edge node id", shown="the gateway id")
    #: None: BIRTH as soon as connected
    primary_host_id: str | None = setting(None, "the primary host application whose STATE "
                                          "the node waits for before its BIRTH",
                                          shown="none")
