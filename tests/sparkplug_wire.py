"""An independent Sparkplug B codec for the tests, from the protobuf wire format itself.

The gateway encodes with Google's protobuf runtime; these tests decode every message with
this: varints, fixed32/fixed64 and length-delimited records read by hand, and Tahu's field
numbers (``sparkplug_b.proto``). It also builds the NCMD/DCMD payloads the tests send, so the
gateway's decoder is fed bytes it did not make. Only what Sparkplug B payloads carry is read;
an unknown field is skipped by its wire type, as protobuf does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

#: datatype numbers (the specification's table)
INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64 = range(1, 9)
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = range(9, 16)
BYTES = 17
NAMES = {1: "Int8", 2: "Int16", 3: "Int32", 4: "Int64", 5: "UInt8", 6: "UInt16", 7: "UInt32",
         8: "UInt64", 9: "Float", 10: "Double", 11: "Boolean", 12: "String", 13: "DateTime",
         14: "Text", 15: "UUID", 17: "Bytes"}
_SIGNED_BITS = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A base-128 varint at ``pos``: (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def fields(data: bytes) -> list[tuple[int, int, Any]]:
    """Every (field number, wire type, raw value) of a message, in order: a varint as int,
    fixed32/fixed64 as their 4/8 bytes, length-delimited as bytes."""
    out = []
    pos = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        number, kind = tag >> 3, tag & 7
        if kind == VARINT:
            value, pos = read_varint(data, pos)
        elif kind == FIXED64:
            value, pos = data[pos:pos + 8], pos + 8
        elif kind == FIXED32:
            value, pos = data[pos:pos + 4], pos + 4
        elif kind == LENGTH:
            size, pos = read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise WireError(f"wire type {kind} (groups are not used by Sparkplug B)")
        if pos > len(data):
            raise WireError(f"field {number} runs past the end")
        out.append((number, kind, value))
    return out


@dataclass
class Property:
    type: int | None = None
    is_null: bool = False
    value: Any = None


@dataclass
class Metric:
    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    is_historical: bool = False
    is_transient: bool = False
    is_null: bool = False
    properties: dict[str, Property] = field(default_factory=dict)
    #: the field number the value came in (10 int_value ... 16 bytes_value), and its raw value
    value_field: int | None = None
    raw: Any = None

    def value(self, datatype: int | None = None) -> Any:
        """The value read as ``datatype`` (default: the metric's own): signed integers from
        two's complement, None when null."""
        kind = self.datatype if datatype is None else datatype
        if self.is_null:
            return None
        raw = self.raw
        if kind in _SIGNED_BITS:
            width = 32 if self.value_field == 10 else 64
            if raw >= 1 << (width - 1):
                raw -= 1 << width
        return raw


@dataclass
class Payload:
    timestamp: int | None = None
    seq: int | None = None
    uuid: str | None = None
    body: bytes | None = None
    metrics: list[Metric] = field(default_factory=list)

    def by_name(self) -> dict[str, Metric]:
        return {m.name: m for m in self.metrics if m.name is not None}


def _value(number: int, kind: int, raw: Any) -> Any:
    """A value field of a Metric (10..16) or PropertyValue (3..8)."""
    if kind == FIXED32:
        return struct.unpack("<f", raw)[0]
    if kind == FIXED64:
        return struct.unpack("<d", raw)[0]
    if number in (14, 7) and kind == VARINT:  # boolean_value (Metric 14, PropertyValue 7)
        return bool(raw)
    if kind == LENGTH:
        return raw if number == 16 else raw.decode("utf-8")
    return raw


def _property_set(data: bytes) -> dict[str, Property]:
    keys: list[str] = []
    values: list[Property] = []
    for number, _kind, raw in fields(data):
        if number == 1:
            keys.append(raw.decode("utf-8"))
        elif number == 2:
            prop = Property()
            for n, k, r in fields(raw):
                if n == 1:
                    prop.type = r
                elif n == 2:
                    prop.is_null = bool(r)
                elif 3 <= n <= 8:
                    prop.value = _value(n, k, r)
            values.append(prop)
    if len(keys) != len(values):
        raise WireError(f"a PropertySet with {len(keys)} keys and {len(values)} values")
    return dict(zip(keys, values, strict=True))


def decode_metric(data: bytes) -> Metric:
    metric = Metric()
    for number, kind, raw in fields(data):
        match number:
            case 1:
                metric.name = raw.decode("utf-8")
            case 2:
                metric.alias = raw
            case 3:
                metric.timestamp = raw
            case 4:
                metric.datatype = raw
            case 5:
                metric.is_historical = bool(raw)
            case 6:
                metric.is_transient = bool(raw)
            case 7:
                metric.is_null = bool(raw)
            case 9:
                metric.properties = _property_set(raw)
            case n if 10 <= n <= 16:
                metric.value_field, metric.raw = n, _value(n, kind, raw)
    return metric


def decode(data: bytes) -> Payload:
    """A Sparkplug B payload."""
    payload = Payload()
    for number, _kind, raw in fields(data):
        match number:
            case 1:
                payload.timestamp = raw
            case 2:
                payload.metrics.append(decode_metric(raw))
            case 3:
                payload.seq = raw
            case 4:
                payload.uuid = raw.decode("utf-8")
            case 5:
                payload.body = raw
    return payload


# ---------------------------------------------------------------------------------------
# Encoding, for the commands the tests send


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _record(number: int, kind: int, body: bytes) -> bytes:
    return varint(number << 3 | kind) + body


def _length(number: int, body: bytes) -> bytes:
    return _record(number, LENGTH, varint(len(body)) + body)


def command_metric(value: Any, datatype: int, *, name: str | None = None,
                   alias: int | None = None) -> bytes:
    """One metric of an NCMD/DCMD: a name or an alias, its datatype, its value."""
    out = b""
    if name is not None:
        out += _length(1, name.encode("utf-8"))
    if alias is not None:
        out += _record(2, VARINT, varint(alias))
    out += _record(4, VARINT, varint(datatype))
    if datatype == BOOLEAN:
        out += _record(14, VARINT, varint(int(value)))
    elif datatype in (INT8, INT16, INT32, UINT8, UINT16, UINT32):
        out += _record(10, VARINT, varint(value & 0xFFFFFFFF))
    elif datatype in (INT64, UINT64, DATETIME):
        out += _record(11, VARINT, varint(value & 0xFFFFFFFFFFFFFFFF))
    elif datatype == FLOAT:
        out += _record(12, FIXED32, struct.pack("<f", value))
    elif datatype == DOUBLE:
        out += _record(13, FIXED64, struct.pack("<d", value))
    elif datatype in (STRING, TEXT, UUID):
        out += _length(15, value.encode("utf-8"))
    else:
        out += _length(16, bytes(value))
    return out


def command(metrics: list[bytes], timestamp: int) -> bytes:
    """An NCMD/DCMD payload (a timestamp, no seq: the specification)."""
    return _record(1, VARINT, varint(timestamp)) + b"".join(_length(2, m) for m in metrics)
