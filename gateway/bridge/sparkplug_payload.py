"""The Sparkplug B payload: Eclipse Tahu's ``sparkplug_b.proto`` declared in code, and its encoders.

The schema is built as a ``FileDescriptorProto`` (the field numbers and types are Tahu's) and
turned into message classes by Google's protobuf runtime: no protoc, no generated file to keep
in step. Only what the gateway sends or reads is declared (Payload, Metric, PropertySet,
PropertyValue and the DataType values); a field it leaves out (a DataSet, a Template, metadata)
is kept by protobuf as an unknown field when read, never misread.

Values follow the specification's encoding: Int8/16/32 and UInt8/16/32 in ``int_value``
(signed ones as 32-bit two's complement), Int64/UInt64/DateTime in ``long_value`` (64-bit two's
complement), Float, Double, Boolean, String/Text/UUID and Bytes/File in their own fields; a
value that is not known is ``is_null`` with no value.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

__all__ = ["DataType", "DecodeError", "MetricSpec", "Payload", "decode_payload",
           "encode_payload", "metric_value"]

_PACKAGE = "org.eclipse.tahu.protobuf"
_F = descriptor_pb2.FieldDescriptorProto


class DataType(enum.IntEnum):
    """The Sparkplug B datatypes (the specification's table, Tahu's numbers)."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19
    PROPERTYSET = 20
    PROPERTYSETLIST = 21

    @property
    def label(self) -> str:
        """The specification's name (``UInt32``, ``Boolean``...)."""
        return _LABELS[self]


_LABELS = {DataType.UNKNOWN: "Unknown", DataType.INT8: "Int8", DataType.INT16: "Int16",
           DataType.INT32: "Int32", DataType.INT64: "Int64", DataType.UINT8: "UInt8",
           DataType.UINT16: "UInt16", DataType.UINT32: "UInt32", DataType.UINT64: "UInt64",
           DataType.FLOAT: "Float", DataType.DOUBLE: "Double", DataType.BOOLEAN: "Boolean",
           DataType.STRING: "String", DataType.DATETIME: "DateTime", DataType.TEXT: "Text",
           DataType.UUID: "UUID", DataType.DATASET: "DataSet", DataType.BYTES: "Bytes",
           DataType.FILE: "File", DataType.TEMPLATE: "Template",
           DataType.PROPERTYSET: "PropertySet", DataType.PROPERTYSETLIST: "PropertySetList"}

#: datatype -> the Metric/PropertyValue field its value goes in
_INT32 = (DataType.INT8, DataType.INT16, DataType.INT32)
_UINT32 = (DataType.UINT8, DataType.UINT16, DataType.UINT32)
_VALUE_FIELD: dict[DataType, str] = {
    **dict.fromkeys(_INT32 + _UINT32, "int_value"),
    **dict.fromkeys((DataType.INT64, DataType.UINT64, DataType.DATETIME), "long_value"),
    DataType.FLOAT: "float_value",
    DataType.DOUBLE: "double_value",
    DataType.BOOLEAN: "boolean_value",
    **dict.fromkeys((DataType.STRING, DataType.TEXT, DataType.UUID), "string_value"),
    **dict.fromkeys((DataType.BYTES, DataType.FILE), "bytes_value"),
}
#: integer datatypes -> (bits, signed): the range a value must fit
_INTEGERS = {DataType.INT8: (8, True), DataType.INT16: (16, True), DataType.INT32: (32, True),
             DataType.INT64: (64, True), DataType.UINT8: (8, False),
             DataType.UINT16: (16, False), DataType.UINT32: (32, False),
             DataType.UINT64: (64, False), DataType.DATETIME: (64, False)}


def _field(name: str, number: int, kind: int, *, label: int = _F.LABEL_OPTIONAL,
           type_name: str | None = None, oneof: int | None = None) -> _F:
    field = _F(name=name, number=number, type=kind, label=label)  # type: ignore[arg-type]
    if type_name is not None:
        field.type_name = f".{_PACKAGE}.Payload.{type_name}"
    if oneof is not None:
        field.oneof_index = oneof
    return field


def _schema() -> descriptor_pb2.FileDescriptorProto:
    """Tahu's ``sparkplug_b.proto`` (proto2), the parts the gateway uses."""
    repeated = _F.LABEL_REPEATED
    file = descriptor_pb2.FileDescriptorProto(name="sparkplug_b.proto", package=_PACKAGE,
                                              syntax="proto2")
    datatype = file.enum_type.add(name="DataType")
    for member in DataType:
        datatype.value.add(name=member.label, number=member.value)

    payload = file.message_type.add(name="Payload")
    property_value = payload.nested_type.add(name="PropertyValue")
    property_value.oneof_decl.add(name="value")
    property_value.field.extend([
        _field("type", 1, _F.TYPE_UINT32),
        _field("is_null", 2, _F.TYPE_BOOL),
        _field("int_value", 3, _F.TYPE_UINT32, oneof=0),
        _field("long_value", 4, _F.TYPE_UINT64, oneof=0),
        _field("float_value", 5, _F.TYPE_FLOAT, oneof=0),
        _field("double_value", 6, _F.TYPE_DOUBLE, oneof=0),
        _field("boolean_value", 7, _F.TYPE_BOOL, oneof=0),
        _field("string_value", 8, _F.TYPE_STRING, oneof=0),
        _field("propertyset_value", 9, _F.TYPE_MESSAGE, type_name="PropertySet", oneof=0),
    ])
    property_set = payload.nested_type.add(name="PropertySet")
    property_set.field.extend([
        _field("keys", 1, _F.TYPE_STRING, label=repeated),
        _field("values", 2, _F.TYPE_MESSAGE, label=repeated, type_name="PropertyValue"),
    ])
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    metric.field.extend([
        _field("name", 1, _F.TYPE_STRING),
        _field("alias", 2, _F.TYPE_UINT64),
        _field("timestamp", 3, _F.TYPE_UINT64),
        _field("datatype", 4, _F.TYPE_UINT32),
        _field("is_historical", 5, _F.TYPE_BOOL),
        _field("is_transient", 6, _F.TYPE_BOOL),
        _field("is_null", 7, _F.TYPE_BOOL),
        _field("properties", 9, _F.TYPE_MESSAGE, type_name="PropertySet"),
        _field("int_value", 10, _F.TYPE_UINT32, oneof=0),
        _field("long_value", 11, _F.TYPE_UINT64, oneof=0),
        _field("float_value", 12, _F.TYPE_FLOAT, oneof=0),
        _field("double_value", 13, _F.TYPE_DOUBLE, oneof=0),
        _field("boolean_value", 14, _F.TYPE_BOOL, oneof=0),
        _field("string_value", 15, _F.TYPE_STRING, oneof=0),
        _field("bytes_value", 16, _F.TYPE_BYTES, oneof=0),
    ])
    payload.field.extend([
        _field("timestamp", 1, _F.TYPE_UINT64),
        _field("metrics", 2, _F.TYPE_MESSAGE, label=repeated, type_name="Metric"),
        _field("seq", 3, _F.TYPE_UINT64),
        _field("uuid", 4, _F.TYPE_STRING),
        _field("body", 5, _F.TYPE_BYTES),
    ])
    return file


# A pool of its own: the schema cannot clash with another copy of Tahu's proto in the process.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_schema())
#: the Sparkplug B ``Payload`` message class
Payload: type[Message] = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{_PACKAGE}.Payload"))


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric of a payload, as the gateway means it: encoded by ``encode_payload``.

    ``name`` goes in BIRTHs and ``alias`` everywhere; ``datatype`` is sent only when
    ``with_datatype`` (BIRTHs: the specification asks DATA messages to leave it out). A value
    of None is sent as ``is_null``. ``properties``: name -> (datatype, value)."""

    value: Any
    datatype: DataType
    name: str | None = None
    alias: int | None = None
    timestamp_ms: int | None = None
    historical: bool = False
    with_datatype: bool = True
    properties: tuple[tuple[str, DataType, Any], ...] = ()


def _check_integer(value: Any, datatype: DataType) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{value!r} is not an integer ({datatype.label})")
    bits, signed = _INTEGERS[datatype]
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range for {datatype.label}")
    return value


def _set_value(target: Message, datatype: DataType, value: Any) -> None:
    """Put ``value`` in the field ``datatype`` says (a Metric or a PropertyValue)."""
    if value is None:
        target.is_null = True  # type: ignore[attr-defined]
        return
    field = _VALUE_FIELD.get(datatype)
    if field is None:
        raise ValueError(f"the gateway does not encode {datatype.label} values")
    if datatype in _INTEGERS:
        value = _check_integer(value, datatype)
        # Signed values travel as two's complement of the field's width.
        value &= 0xFFFFFFFF if field == "int_value" else 0xFFFFFFFFFFFFFFFF
    elif datatype in (DataType.FLOAT, DataType.DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number ({datatype.label})")
        value = float(value)
    elif datatype is DataType.BOOLEAN:
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not a boolean")
    elif field == "bytes_value":
        value = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    elif not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string ({datatype.label})")
    setattr(target, field, value)


def encode_payload(metrics: Iterable[MetricSpec], *, timestamp_ms: int,
                   seq: int | None) -> bytes:
    """A Sparkplug B payload: its timestamp, its ``seq`` (None: none, as NDEATH has) and
    metrics. ``ValueError`` if a value does not fit its datatype."""
    payload = Payload(timestamp=timestamp_ms)
    if seq is not None:
        payload.seq = seq  # type: ignore[attr-defined]
    for spec in metrics:
        metric = payload.metrics.add()  # type: ignore[attr-defined]
        if spec.name is not None:
            metric.name = spec.name
        if spec.alias is not None:
            metric.alias = spec.alias
        if spec.timestamp_ms is not None:
            metric.timestamp = spec.timestamp_ms
        if spec.with_datatype:
            metric.datatype = int(spec.datatype)
        if spec.historical:
            metric.is_historical = True
        for key, kind, value in spec.properties:
            metric.properties.keys.append(key)
            property_value = metric.properties.values.add()
            property_value.type = int(kind)
            _set_value(property_value, kind, value)
        _set_value(metric, spec.datatype, spec.value)
    return payload.SerializeToString()


def decode_payload(data: bytes) -> Message:
    """A received payload (an NCMD, a DCMD); ``DecodeError`` if it is not one."""
    payload = Payload()
    payload.ParseFromString(data)
    return payload


def metric_value(metric: Message, datatype: DataType) -> Any:
    """The value of a received metric read as ``datatype`` (the one its BIRTH declared; a
    command need not say it): None if ``is_null``. ``ValueError`` when it carries no value, or
    one of another kind."""
    if metric.is_null:  # type: ignore[attr-defined]
        return None
    kind = metric.WhichOneof("value")
    if kind is None:
        raise ValueError("the metric carries no value")
    raw = getattr(metric, kind)
    if datatype in _INTEGERS:
        if kind not in ("int_value", "long_value"):
            raise ValueError(f"a {datatype.label} metric carries a {kind}")
        signed = _INTEGERS[datatype][1]
        width = 32 if kind == "int_value" else 64
        if signed and raw >= 1 << (width - 1):
            raw -= 1 << width  # two's complement of the field's width
        return _check_integer(raw, datatype)
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        if kind in ("float_value", "double_value", "int_value", "long_value"):
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(f"{value} is not a finite number")
            return value
        raise ValueError(f"a {datatype.label} metric carries a {kind}")
    expected = _VALUE_FIELD.get(datatype)
    if kind != expected:
        raise ValueError(f"a {datatype.label} metric carries a {kind}")
    return raw
