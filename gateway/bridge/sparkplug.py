"""The gateway as a Sparkplug B edge node (Sparkplug 3.0), beside the native fabric.

One connection of its own (client id ``{client_id}-sparkplug``) whose will is the NDEATH of
that connection's ``bdSeq``; ``bdSeq`` is incremented before every CONNECT and kept in
``state_dir/sparkplug.json``. Once connected (and, with a primary host configured, once that
host's STATE says online) the node publishes NBIRTH (seq 0) and a DBIRTH per online device,
then DDATA for every event the publisher hands it, DDEATH when a device goes; every message
QoS 0, not retained, ``seq`` +1 mod 256 each. Metrics come from the device profiles: every
field of every event (``status/temperature_c``) and every key (``keys/interval_ms``), with an
alias per metric that stays the same for the life of the process.

Commands: NCMD ``Node Control/Rebirth`` = true -> a new NBIRTH (same bdSeq) and every DBIRTH;
DCMD on a writable key's metric -> a write through the fabric's request path (``submit``: its
allow list and rate limit), whose answer is published as DDATA; anything else is refused and
logged (once, then counted).

The publisher owns the event stream and its queue: it hands events to ``take`` only while
``ready``, and after a (re)birth first those that waited, as historical. No second queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from gateway.app import Gateway, UnknownDevice
from gateway.bridge.mqtt import BrokerSettings, Message, MqttConnection
from gateway.bridge.requests import Done
from gateway.bridge.sparkplug_payload import (
    DataType,
    DecodeError,
    MetricSpec,
    decode_payload,
    encode_payload,
    metric_value,
)
from gateway.bridge.spool import SpooledEvent
from gateway.config import GatewayConfig
from gateway.frames.profiles import DeviceProfile, FieldSpec
from gateway.logs import Recurring
from gateway.session import DeviceRenamed, DeviceState, StateChange
from gateway.statefiles import aside_path, write_atomically

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
STATE_FILE = "sparkplug.json"
_FILE_VERSION = 1
#: the profile's field types -> Sparkplug datatypes (a scaled integer is a Double)
DATATYPES: dict[str, DataType] = {
    "u8": DataType.UINT8, "u16": DataType.UINT16, "u32": DataType.UINT32,
    "u64": DataType.UINT64, "i8": DataType.INT8, "i16": DataType.INT16,
    "i32": DataType.INT32, "i64": DataType.INT64, "f32": DataType.FLOAT,
    "f64": DataType.DOUBLE, "bool": DataType.BOOLEAN, "utf8": DataType.STRING,
    "bytes": DataType.BYTES,
}


class Submit(Protocol):
    """The fabric's request path (allow list, rate limit, the device's queue)."""

    def __call__(self, device_id: str, action: str, payload: dict[str, Any], *, via: str,
                 done: Done) -> None:
        """Carry out ``action`` on the device; ``done(status, payload, error)`` once."""


def datatype_of(spec: FieldSpec) -> DataType:
    """The Sparkplug datatype of a profile field (scaled integers are real numbers)."""
    if spec.scale is not None:
        return DataType.DOUBLE
    return DATATYPES[spec.type]


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric of a device's DBIRTH: its name, alias, datatype and what it is."""

    name: str
    alias: int
    datatype: DataType
    unit: str | None = None
    #: the key's name for ``keys/...`` metrics (None for event fields and facts)
    key: str | None = None
    writable: bool = False


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class BdSeqFile:
    """The birth/death sequence kept across restarts: ``{"version": 1, "bdSeq": N}``.

    A file that cannot be read as one is moved aside (``aside_path``) with a warning and the
    count starts again; a write the disk refuses is logged (once, then counted) and the node
    goes on with the number it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_failed = Recurring(log, f"Sparkplug bdSeq file {path} cannot be written "
                                       "(the node goes on; after a restart bdSeq may repeat)")
        #: the bdSeq of the last CONNECT (None: never connected from this state dir)
        self.last: int | None = self._load()

    def _load(self) -> int | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("Sparkplug bdSeq file %s cannot be read (%s); bdSeq starts at 0",
                        self.path, exc)
            return None
        try:
            data = json.loads(text)
            value = data["bdSeq"]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
                raise ValueError(f"bdSeq {value!r} is not 0..255")
        except (ValueError, TypeError, KeyError) as exc:
            aside = aside_path(self.path)
            with contextlib.suppress(OSError):
                self.path.replace(aside)
            log.warning("Sparkplug bdSeq file %s is corrupt (%s); moved to %s, bdSeq starts "
                        "at 0", self.path, exc, aside)
            return None
        return value

    def next(self) -> int:
        """The bdSeq of a new CONNECT (0 first, then +1 mod 256), written before it is used."""
        value = 0 if self.last is None else (self.last + 1) % 256
        self.last = value
        try:
            self._write(value)
        except OSError as exc:
            self._write_failed.occurred(str(exc))
        else:
            self._write_failed.ended("written")
        return value

    def _write(self, value: int) -> None:
        write_atomically(self.path, json.dumps({"version": _FILE_VERSION, "bdSeq": value}) + "\n")


class _Event(msgspec.Struct):
    """The part of the native event envelope the node reads."""

    action: str
    timestamp: float
    payload: dict[str, Any]


_decode_event = msgspec.json.Decoder(_Event).decode


class SparkplugNode:
    """The edge node: ``run`` is its loop (a bridge task), ``stop`` its clean end; the
    publisher calls ``take`` and ``device_changed``."""

    def __init__(self, gateway: Gateway, config: GatewayConfig, broker: BrokerSettings, *,
                 submit: Submit, stats: Callable[[], dict[str, Any]],
                 on_change: Callable[[], None],
                 on_failure: Callable[[str, BaseException], None]) -> None:
        settings = config.sparkplug
        self.gateway = gateway
        self.group_id = settings.group_id
        self.node_id = settings.edge_node_id or config.gateway_id
        self.primary_host_id = settings.primary_host_id
        self._submit = submit
        self._stats = stats
        self._on_change = on_change
        self._on_failure = on_failure
        self.broker = dataclasses.replace(broker, client_id=f"{broker.client_id}-sparkplug")
        self.bdseq_file = BdSeqFile(config.state_dir / STATE_FILE)
        self.bdseq = 0
        self.seq = 0
        base = f"{NAMESPACE}/{self.group_id}"
        self._base = base
        self.ncmd_topic = f"{base}/NCMD/{self.node_id}"
        self.dcmd_filter = f"{base}/DCMD/{self.node_id}/+"
        self.state_topic = (None if self.primary_host_id is None
                            else f"{NAMESPACE}/STATE/{self.primary_host_id}")
        #: (device id or "" for the node, metric name) -> alias, for the life of the process
        self._aliases: dict[tuple[str, str], int] = {}
        #: the devices online, as ``device_changed`` said (their facts)
        self._online: dict[str, dict[str, Any]] = {}
        #: the devices with a DBIRTH in this session -> their metrics by name
        self._born: dict[str, dict[str, MetricDef]] = {}
        #: the last known value of each device metric: (value, timestamp ms)
        self._values: dict[str, dict[str, tuple[Any, int]]] = {}
        self._birthed = False
        self._host_online = False
        #: the timestamp of the last STATE message of the primary host
        self._host_timestamp = -1
        self._ready = False
        self._stopping = False
        self._restart = asyncio.Event()
        #: messages sent, by type (NDEATH: the ones the node sent itself, not the will)
        self.messages: dict[str, int] = dict.fromkeys(
            ("NBIRTH", "DBIRTH", "DDATA", "DDEATH", "NDEATH"), 0)
        #: messages received, by type
        self.received: dict[str, int] = dict.fromkeys(("NCMD", "DCMD", "STATE"), 0)
        self.skipped_events = 0
        self.historical_events = 0
        self.rebirths = 0
        self.commands_refused = 0
        self.writes_failed = 0
        self._bad_command = Recurring(log, "Sparkplug: a command was refused")
        self._write_failed = Recurring(log, "Sparkplug: a DCMD write failed")
        self._bad_value = Recurring(log, "Sparkplug: an event value does not fit its "
                                    "metric's datatype (event skipped)")
        self._bad_state = Recurring(log, f"Sparkplug: the STATE of {self.primary_host_id} "
                                    "is not {\"online\": bool, \"timestamp\": ms}")
        self.mqtt = self._connection()

    def _connection(self, start_node: int = 0) -> MqttConnection:
        return MqttConnection(self.broker, on_connect=self._connected,
                              on_disconnect=self._disconnected, on_message=self._message,
                              on_connecting=self._connecting, start_node=start_node)

    # ------------------------------------------------------------------ public

    @property
    def ready(self) -> bool:
        """Connected, the primary host online (if one is configured), NBIRTH and the DBIRTHs
        published: events may be handed to ``take``."""
        return self._ready

    def counters(self) -> dict[str, Any]:
        """For the stats (under ``sparkplug``)."""
        return {
            "ready": self._ready,
            "connected": self.mqtt.connected,
            "messages": dict(self.messages),
            "received": dict(self.received),
            "skipped_events": self.skipped_events,
            "historical_events": self.historical_events,
            "rebirths": self.rebirths,
            "commands_refused": self.commands_refused,
            "writes_failed": self.writes_failed,
            "bdSeq": self.bdseq,
            "seq": self.seq,
            "devices_born": len(self._born),
        }

    async def run(self) -> None:
        """Keep the node's connection up until cancelled; an offline STATE of the primary
        host ends the session and a new connection starts it again (the specification)."""
        while not self._stopping:
            self._restart.clear()
            connection = asyncio.create_task(self.mqtt.run(), name="sparkplug-mqtt")
            restart = asyncio.create_task(self._restart.wait(), name="sparkplug-restart")
            try:
                await asyncio.wait({connection, restart}, return_when=asyncio.FIRST_COMPLETED)
                if connection.done():
                    connection.result()  # its failure, if any, stops the bridge
                    if self._stopping:
                        return  # ``stop`` disconnected it
                    raise RuntimeError("the Sparkplug connection ended by itself")
                self._publish_ndeath()
                await self.mqtt.disconnect()
            finally:
                restart.cancel()
                connection.cancel()
                # gather, not a suppressed await: a cancellation of this task goes through
                await asyncio.gather(connection, restart, return_exceptions=True)
            self._session_over()
            # the next session starts on the node this one was on (a cluster's node that
            # works), not on the first
            self.mqtt = self._connection(self.mqtt.node_index)

    async def stop(self) -> None:
        """A clean stop: NDEATH (this connection's bdSeq), then DISCONNECT."""
        self._stopping = True
        self._publish_ndeath()
        self._session_over()
        await self.mqtt.disconnect()

    def take(self, row: SpooledEvent, historical: bool) -> None:
        """One queued event: DDATA of its metrics (all historical if ``historical``).
        Skipped and counted if its device is not born or its event is not in the profile."""
        device_id = row.topic.rsplit("/", 3)[-3]
        metrics = self._born.get(device_id)
        if metrics is None or not self._ready:
            self.skipped_events += 1
            return
        event = _decode_event(row.body)
        stamp = _ms(event.timestamp)
        specs = []
        seen = []
        for field, value in event.payload.items():
            name = f"{event.action}/{field}"
            metric = metrics.get(name)
            if metric is None:
                continue  # not in its profile (a log event, a field of another version)
            seen.append((name, value))
            specs.append(MetricSpec(value, metric.datatype, alias=metric.alias,
                                    timestamp_ms=stamp, historical=historical,
                                    with_datatype=False))
        if not specs:
            self.skipped_events += 1
            return
        try:
            self._publish_device("DDATA", device_id, specs)
        except ValueError as exc:  # a value its datatype cannot hold: nothing was sent
            self.skipped_events += 1
            self._bad_value.occurred(f"{row.topic}: {exc}")
            return
        # the device's latest values, for its next DBIRTH (only values that encode)
        values = self._values.setdefault(device_id, {})
        for name, value in seen:
            values[name] = (value, stamp)
        if historical:
            self.historical_events += 1

    def device_changed(self, event: StateChange | DeviceRenamed) -> None:
        """A device's state changed (in order): DBIRTH on online, DDEATH otherwise, and the
        DDEATH of the old id on a rename."""
        if isinstance(event, DeviceRenamed):
            self._online.pop(event.old_id, None)
            self._values.pop(event.old_id, None)
            self._device_death(event.old_id)
            return
        device_id = event.device_id
        if event.state is DeviceState.ONLINE:
            self._online[device_id] = event.facts
            if self._birthed:
                self._device_birth(device_id)
        else:
            self._online.pop(device_id, None)
            self._device_death(device_id)

    # ------------------------------------------------------------------ connection hooks

    def _connecting(self) -> None:
        """Before every CONNECT: the next bdSeq, on disk, and its NDEATH as the will."""
        self.bdseq = self.bdseq_file.next()
        self.mqtt.set_will(self._topic("NDEATH"), self._ndeath_body(), qos=1, retain=False)

    def _connected(self) -> None:
        topics = [self.ncmd_topic, self.dcmd_filter]
        if self.state_topic is not None:
            topics.append(self.state_topic)
        self.mqtt.subscribe(topics)
        if self.state_topic is None:
            self._birth()
        # else: the host's retained STATE comes after the SUBACK; BIRTH when it says online

    def _disconnected(self) -> None:
        self._session_over()

    def _session_over(self) -> None:
        """No Sparkplug session: nothing is born; the next one begins with NBIRTH."""
        self._birthed = False
        self._host_online = False
        self._born.clear()
        self._set_ready(False)

    def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            self._ready = ready
            self._on_change()

    # ------------------------------------------------------------------ births and deaths

    def _topic(self, kind: str, device_id: str | None = None) -> str:
        topic = f"{self._base}/{kind}/{self.node_id}"
        return topic if device_id is None else f"{topic}/{device_id}"

    def _alias(self, owner: str, name: str) -> int:
        key = (owner, name)
        alias = self._aliases.get(key)
        if alias is None:
            alias = self._aliases[key] = len(self._aliases) + 1
        return alias

    def _ndeath_body(self) -> bytes:
        return encode_payload([MetricSpec(self.bdseq, DataType.INT64, name=BDSEQ)],
                              timestamp_ms=_ms(time.time()), seq=None)

    def _publish_ndeath(self) -> None:
        if self.mqtt.connected:
            self.mqtt.publish(self._topic("NDEATH"), self._ndeath_body(), qos=1, retain=False,
                              resend=False)
            self.messages["NDEATH"] += 1

    def _birth(self) -> None:
        """NBIRTH (seq 0, this connection's bdSeq), then a DBIRTH per online device."""
        if not self.mqtt.connected or self._stopping:
            return
        now = _ms(time.time())
        metrics = [MetricSpec(self.bdseq, DataType.INT64, name=BDSEQ,
                              alias=self._alias("", BDSEQ), timestamp_ms=now),
                   # no alias for Rebirth (the specification)
                   MetricSpec(False, DataType.BOOLEAN, name=REBIRTH, timestamp_ms=now)]
        for name, value in _flatten(self._stats(), "Gateway"):
            if isinstance(value, bool):
                kind = DataType.BOOLEAN
            elif isinstance(value, int):
                kind = DataType.UINT64 if value >= 0 else DataType.INT64
            else:
                kind = DataType.DOUBLE
            metrics.append(MetricSpec(value, kind, name=name, alias=self._alias("", name),
                                      timestamp_ms=now))
        self.seq = 0
        # Every message of a session goes the same (lean) way, so they leave in order.
        self.mqtt.publish_qos0(self._topic("NBIRTH").encode(),
                               encode_payload(metrics, timestamp_ms=now, seq=0))
        self.messages["NBIRTH"] += 1
        self._birthed = True
        self._born.clear()
        for device_id in list(self._online):
            self._device_birth(device_id)
        self._set_ready(True)

    def _device_metrics(self, device_id: str, profile: DeviceProfile) -> dict[str, MetricDef]:
        metrics: dict[str, MetricDef] = {}
        for event in profile.events.values():
            for spec in event.layout.fields:
                name = f"{event.name}/{spec.name}"
                metrics[name] = MetricDef(name, self._alias(device_id, name), datatype_of(spec),
                                          spec.unit)
        for key in profile.keys.values():
            name = f"keys/{key.name}"
            metrics[name] = MetricDef(name, self._alias(device_id, name),
                                      datatype_of(key.field), key.field.unit, key.name,
                                      key.writable)
        return metrics

    def _device_birth(self, device_id: str) -> None:
        if not self._birthed or not self.mqtt.connected:
            return
        try:
            profile = self.gateway.device(device_id).profile
        except UnknownDevice:
            return  # gone again before its birth (a removed port)
        metrics = self._device_metrics(device_id, profile)
        self._born[device_id] = metrics
        try:
            self._publish_device("DBIRTH", device_id,
                                 self._birth_specs(device_id, metrics, known=True))
        except ValueError as exc:
            # A value kept from before does not fit its metric now (a reload changed the
            # profile): born with every value unknown instead, never not born.
            self._bad_value.occurred(f"DBIRTH of {device_id}: {exc}; its values are null")
            self._values.pop(device_id, None)
            self._publish_device("DBIRTH", device_id,
                                 self._birth_specs(device_id, metrics, known=False))

    def _birth_specs(self, device_id: str, metrics: dict[str, MetricDef], *,
                     known: bool) -> list[MetricSpec]:
        """A DBIRTH's metrics: each with its last known value (``known``) or null."""
        now = _ms(time.time())
        values = self._values.get(device_id, {}) if known else {}
        specs = []
        for metric in metrics.values():
            value, stamp = values.get(metric.name, (None, now))
            properties: tuple[tuple[str, DataType, Any], ...] = ()
            if metric.unit:
                properties += (("engUnit", DataType.STRING, metric.unit),)
            if metric.key is not None:
                properties += (("writable", DataType.BOOLEAN, metric.writable),)
            specs.append(MetricSpec(value, metric.datatype, name=metric.name,
                                    alias=metric.alias, timestamp_ms=stamp,
                                    properties=properties))
        for fact, value in sorted(self._online.get(device_id, {}).items()):
            name = f"Properties/{fact}"
            text = value if isinstance(value, str) else json.dumps(value)
            specs.append(MetricSpec(text, DataType.STRING, name=name,
                                    alias=self._alias(device_id, name), timestamp_ms=now))
        return specs

    def _device_death(self, device_id: str) -> None:
        if self._born.pop(device_id, None) is None:
            return
        self._publish_device("DDEATH", device_id, [])

    def _publish_device(self, kind: str, device_id: str, specs: list[MetricSpec]) -> None:
        """DBIRTH, DDATA or DDEATH with the next seq; ``ValueError`` (nothing sent, seq
        unchanged) if a value does not fit its datatype."""
        seq = (self.seq + 1) % 256
        body = encode_payload(specs, timestamp_ms=_ms(time.time()), seq=seq)
        self.seq = seq
        self.mqtt.publish_qos0(self._topic(kind, device_id).encode(), body)
        self.messages[kind] += 1

    # ------------------------------------------------------------------ commands

    def _message(self, message: Message) -> None:
        topic = message.topic
        if topic == self.state_topic:
            self.received["STATE"] += 1
            self._host_state(message.payload)
            return
        if topic == self.ncmd_topic:
            self.received["NCMD"] += 1
            self._node_command(message.payload)
            return
        prefix = f"{self._base}/DCMD/{self.node_id}/"
        if topic.startswith(prefix):
            self.received["DCMD"] += 1
            self._device_command(topic[len(prefix):], message.payload)

    def _refuse(self, detail: str) -> None:
        self.commands_refused += 1
        self._bad_command.occurred(detail)

    def _host_state(self, body: bytes) -> None:
        try:
            state = json.loads(body)
            online, stamp = state["online"], state["timestamp"]
            if not isinstance(online, bool) or isinstance(stamp, bool) \
                    or not isinstance(stamp, int | float):
                raise TypeError("wrong types")
        except (ValueError, TypeError, KeyError) as exc:
            self._bad_state.occurred(f"{body[:80]!r}: {exc}")
            return
        if stamp < self._host_timestamp:
            return  # older than the one it replaces (the specification says to ignore it)
        self._host_timestamp = stamp
        if online:
            if not self._host_online:
                log.info("Sparkplug: primary host %s is online", self.primary_host_id)
            self._host_online = True
            if not self._birthed:
                self._birth()
        elif self._host_online or self._birthed:
            log.warning("Sparkplug: primary host %s is offline: the node ends its session and "
                        "connects again", self.primary_host_id)
            self._host_online = False
            self._set_ready(False)  # nothing more is handed to a session that is ending
            self._restart.set()

    def _node_command(self, body: bytes) -> None:
        try:
            payload = decode_payload(body)
        except DecodeError as exc:
            self._refuse(f"NCMD is not a Sparkplug B payload ({exc}): {body[:40].hex()}")
            return
        for metric in payload.metrics:  # type: ignore[attr-defined]
            if metric.name == REBIRTH:
                try:
                    rebirth = metric_value(metric, DataType.BOOLEAN)
                except ValueError as exc:
                    self._refuse(f"NCMD {REBIRTH}: {exc}")
                    continue
                if rebirth and self._birthed:  # (else the session's BIRTH is still to come)
                    self.rebirths += 1
                    log.info("Sparkplug: rebirth requested")
                    self._birth()
                continue
            self._refuse(f"NCMD on {metric.name or metric.alias!r}: the node takes only "
                         f"{REBIRTH}")

    def _device_command(self, device_id: str, body: bytes) -> None:
        metrics = self._born.get(device_id)
        if metrics is None:
            self._refuse(f"DCMD for {device_id!r}, which is not born")
            return
        try:
            payload = decode_payload(body)
        except DecodeError as exc:
            self._refuse(f"DCMD for {device_id} is not a Sparkplug B payload ({exc})")
            return
        by_alias = {m.alias: m for m in metrics.values()}
        for received in payload.metrics:  # type: ignore[attr-defined]
            if received.name:
                metric = metrics.get(received.name)
            else:
                metric = by_alias.get(received.alias) if received.HasField("alias") else None
            what = received.name or f"alias {received.alias}"
            if metric is None:
                self._refuse(f"DCMD for {device_id}: no metric {what}")
                continue
            if metric.key is None or not metric.writable:
                self._refuse(f"DCMD for {device_id}: {metric.name} is not a writable key")
                continue
            try:
                value = metric_value(received, metric.datatype)
            except ValueError as exc:
                self._refuse(f"DCMD for {device_id}: {metric.name}: {exc}")
                continue
            if value is None:
                self._refuse(f"DCMD for {device_id}: {metric.name}: a null value")
                continue
            self._write(device_id, metric, value)

    def _write(self, device_id: str, metric: MetricDef, value: Any) -> None:
        def done(status: str, payload: dict[str, Any], error: tuple[Any, str] | None) -> None:
            try:
                self._written(device_id, metric, value, status=status, payload=payload,
                              error=error)
            except Exception as exc:
                self._on_failure("sparkplug-write-answer", exc)

        self._submit(device_id, "write", {"key": metric.key, "value": value},
                     via="sparkplug", done=done)

    def _written(self, device_id: str, metric: MetricDef, value: Any, *, status: str,
                 payload: dict[str, Any], error: tuple[Any, str] | None) -> None:
        if status == "ok":
            self._key_value(device_id, metric, payload.get("value", value))
            return
        self.writes_failed += 1
        self._write_failed.occurred(f"{device_id} {metric.name} = {value!r}: {status}"
                                    f"{f' {error}' if error else ''}")
        if status == "nack":
            def done(status: str, payload: dict[str, Any],
                     error: tuple[Any, str] | None) -> None:
                try:
                    if status == "ok":
                        self._key_value(device_id, metric, payload.get("value"))
                except Exception as exc:
                    self._on_failure("sparkplug-read-answer", exc)

            self._submit(device_id, "read", {"key": metric.key}, via="sparkplug", done=done)
            return
        known = self._values.get(device_id, {}).get(metric.name)
        if known is not None:
            self._key_value(device_id, metric, known[0], known[1])

    def _key_value(self, device_id: str, metric: MetricDef, value: Any,
                   stamp: int | None = None) -> None:
        """A key's value as the device has it: DDATA (if its device is still born)."""
        stamp = _ms(time.time()) if stamp is None else stamp
        if self._ready and device_id in self._born:
            try:
                self._publish_device("DDATA", device_id, [MetricSpec(
                    value, metric.datatype, alias=metric.alias, timestamp_ms=stamp,
                    with_datatype=False)])
            except ValueError as exc:  # not a value of its datatype: nothing was sent
                self._bad_value.occurred(f"{metric.name} of {device_id}: {exc}")
                return
        self._values.setdefault(device_id, {})[metric.name] = (value, stamp)


def _flatten(stats: dict[str, Any], prefix: str) -> list[tuple[str, int | float | bool]]:
    """The numeric entries of a nested dict as ``prefix/a/b`` names."""
    out: list[tuple[str, int | float | bool]] = []
    for key, value in stats.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, name))
        elif isinstance(value, bool | float) or (
                isinstance(value, int) and -(2**63) <= value < 2**64):  # what UInt64/Int64 hold
            out.append((name, value))
    return out
