"""Device profiles: the TOML format, its errors, and the struct fast path against Construct."""

from __future__ import annotations

import struct

import pytest
from construct import ConstructError
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import PayloadError, ProfileError, UnknownProfile, ValueEncodingError
from gateway.frames import Command, ProfileRegistry
from gateway.frames.profiles import FieldSpec, Layout, parse_profile

ENV = ProfileRegistry().get("env-sensor")
STATUS = ENV.events[Command.STATUS].layout


def test_env_sensor_matches_the_spec():
    assert STATUS.names == ("temperature_c", "humidity_pct", "battery_mv", "uptime_s")
    assert STATUS.fast is not None
    assert STATUS.fast.size == 10
    assert {k.id: (k.name, k.writable) for k in ENV.keys.values()} == {
        1: ("interval_ms", True),
        2: ("name", True),
        3: ("fw_build", False),
    }
    assert ENV.key("interval_ms").default == 1000
    assert ENV.event_name(0x20) == "status"
    assert ENV.event_name(0x21) == "log"
    assert ENV.event_name(0x44) == "cmd-0x44"


def test_unknown_key_and_profile_errors_list_what_exists():
    with pytest.raises(KeyError, match=r"no key 'colour'; known keys: interval_ms \(1\)"):
        ENV.key("colour")
    with pytest.raises(UnknownProfile, match="'nope'; known profiles: env-sensor"):
        ProfileRegistry().get("nope")


@given(st.binary(max_size=14))
def test_status_fast_path_equals_construct_on_any_bytes(data):
    try:
        expected = dict(STATUS.construct.parse(data))
        expected.pop("_io", None)
        expected = {f.name: f.from_wire(expected[f.name]) for f in STATUS.fields}
    except ConstructError:
        expected = None
    try:
        got = STATUS.decode(data)
    except PayloadError:
        got = None
    assert got == expected


NUMERIC = ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "f64", "bool"]


@given(st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=6), st.binary(max_size=40))
def test_any_fixed_layout_fast_path_equals_construct(types, data):
    layout = Layout.build(tuple(FieldSpec(f"f{i}", t) for i, t in enumerate(types)))
    try:
        parsed = layout.construct.parse(data)
        expected = {f"f{i}": parsed[f"f{i}"] for i in range(len(types))}
    except ConstructError:
        expected = None
    try:
        got = layout.decode(data)
    except PayloadError:
        got = None
    if got is not None and expected is not None:
        # NaN != NaN: compare floats by their bits
        got = {k: struct.pack("<d", v) if isinstance(v, float) else v for k, v in got.items()}
        expected = {
            k: struct.pack("<d", v) if isinstance(v, float) else v for k, v in expected.items()
        }
    assert got == expected


@given(
    st.integers(-32768, 32767),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
)
def test_status_round_trips_real_values(t, h, b, u):
    raw = struct.pack("<hHHI", t, h, b, u)
    values = STATUS.decode(raw)
    assert values["temperature_c"] == round(t * 0.01, 2)
    assert STATUS.encode(values) == raw


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("interval_ms", 5, "5 is below the minimum 10"),
        ("interval_ms", 4_000_000, "above the maximum 3600000"),
        ("interval_ms", "fast", "is not a number"),
        ("interval_ms", True, "is not a number"),
        ("interval_ms", 100.5, "is not a whole number"),
        ("interval_ms", float("nan"), "is not a finite number"),
        ("name", 7, "is not a string"),
        ("name", "x" * 33, "is 33 bytes long; the maximum is 32"),
    ],
)
def test_value_errors_are_specific(key, value, message):
    with pytest.raises(ValueEncodingError, match=message):
        ENV.key(key).encode(value)


def test_scaled_values_out_of_range_name_the_real_limits():
    with pytest.raises(ValueEncodingError, match=r"out of range -327.68..327.67 for i16"):
        STATUS.encode({"temperature_c": 400.0, "humidity_pct": 1, "battery_mv": 1, "uptime_s": 1})
    with pytest.raises(PayloadError, match="missing uptime_s; unknown speed"):
        STATUS.encode({"temperature_c": 1, "humidity_pct": 1, "battery_mv": 1, "speed": 1})


USER_PROFILE = """
name = "motor"
description = "A motor controller"

[[events]]
id = 0x20
name = "status"
fields = [
  { name = "rpm", type = "u16" },
  { name = "current_a", type = "i32", scale = 0.001, unit = "A" },
  { name = "state", type = "utf8", max_len = 16 },
]

[[events]]
id = 0x22
name = "fault"
fields = [{ name = "code", type = "u8" }]

[[keys]]
id = 0x10
name = "target_rpm"
type = "u16"
access = "rw"
max = 6000

[[commands]]
id = 0x30
name = "spin"
request = [{ name = "rpm", type = "u16" }, { name = "seconds", type = "f32" }]
response = [{ name = "accepted", type = "bool" }]
"""


def test_a_user_profile_from_a_directory(tmp_path):
    (tmp_path / "motor.toml").write_text(USER_PROFILE)
    registry = ProfileRegistry([tmp_path])
    assert registry.names() == ["env-sensor", "motor"]
    motor = registry.get("motor")
    status = motor.events[0x20].layout
    assert status.fast is None  # utf8 makes it variable-length: Construct does the work
    payload = status.encode({"rpm": 1500, "current_a": -1.25, "state": "run"})
    assert payload == struct.pack("<Hi", 1500, -1250) + b"run"
    assert status.decode(payload) == {"rpm": 1500, "current_a": -1.25, "state": "run"}
    assert motor.event_name(0x22) == "fault"
    spin = motor.command("spin")
    assert spin.request.decode(spin.request.encode({"rpm": 10, "seconds": 1.5})) == {
        "rpm": 10,
        "seconds": 1.5,
    }
    assert motor.key("target_rpm").encode(6000) == (6000).to_bytes(2, "little")


@given(st.binary(max_size=16))
def test_a_bytes_field_decodes_to_hex_and_takes_hex_back(data):
    layout = Layout.build((FieldSpec(name="blob", type="bytes", max_len=16),))
    decoded = layout.decode(layout.encode({"blob": data}))
    assert decoded == {"blob": data.hex()}  # JSON-ready, like every decoded value
    assert layout.encode(decoded) == data


BROKEN = [
    ("", "name: is required"),
    ("name = 'x'\ncolour = 1", "colour: unknown key"),
    ("name = 'bad name'", "name: 'bad name' is not a name"),
    ("name='x'\n[[keys]]\nid=1\nname='a'\ntype='u33'", "keys[0].type: 'u33' is not a type"),
    ("name='x'\n[[keys]]\nid=70000\nname='a'\ntype='u8'", "keys[0].id: 70000 is not a key id"),
    ("name='x'\n[[keys]]\nid=1\nname='a'\ntype='u8'\naccess='w'", "keys[0].access: 'w'"),
    (
        "name='x'\n[[keys]]\nid=1\nname='a'\ntype='u8'\ndefault=300",
        "keys[0].default: a: 300 is out of range 0..255",
    ),
    (
        "name='x'\n[[keys]]\nid=1\nname='a'\ntype='u8'\n[[keys]]\nid=1\nname='b'\ntype='u8'",
        "keys[1]: key 'b' (1) is declared twice",
    ),
    ("name='x'\n[[keys]]\nid=1\nname='a'\ntype='utf8'\nscale=0.1", "keys[0].scale"),
    ("name='x'\n[[keys]]\nid=1\nname='a'\ntype='u8'\nmax_len=3", "keys[0].max_len"),
    ("name='x'\n[[events]]\nid=0x10\nname='e'\nfields=[]", "events[0].id: 0x10 cannot be an event"),
    (
        "name='x'\n[[events]]\nid=0x20\nname='e'\nfields=[{name='s',type='utf8'},{name='n',type='u8'}]",
        "events[0].fields[0].type: utf8 takes the rest of the payload",
    ),
    (
        "name='x'\n[[events]]\nid=0x20\nname='e'\nfields=[{name='a',type='u8'},{name='a',type='u8'}]",
        "events[0].fields[1].name: 'a' is used twice",
    ),
    (
        "name='x'\n[[events]]\nid=0x20\nname='e'\nfields=[{name='a',type='u8',sim={speed=1}}]",
        "events[0].fields[0].sim.speed: unknown key",
    ),
    ("name='x'\n[[commands]]\nid=0x70\nname='c'", "commands[0].id: 0x70: device commands use"),
    ("name='x'\n[[commands]]\nid=0x30\nname='read'", "commands[0].name: 'read' is a built-in"),
    ("name='x'\n[[events]]\nid=0x20\nname='e'\nfields='u8'", "events[0].fields: expected a list"),
]


@pytest.mark.parametrize(("text", "message"), BROKEN)
def test_broken_profiles_name_the_key_path(tmp_path, text, message):
    path = tmp_path / "x.toml"
    path.write_text(text)
    registry = ProfileRegistry([tmp_path])
    with pytest.raises(ProfileError) as info:
        registry.get("x")
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_invalid_toml_and_mismatched_names(tmp_path):
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(ProfileError, match=r"bad\.toml: not valid TOML"):
        ProfileRegistry([tmp_path]).get("bad")
    (tmp_path / "other.toml").write_text("name = 'different'")
    with pytest.raises(ProfileError, match="'different' does not match the file name 'other'"):
        ProfileRegistry([tmp_path]).get("other")


def test_profile_tables_parse_from_python_too():
    profile = parse_profile({"name": "tiny", "keys": [{"id": 1, "name": "k", "type": "bool"}]})
    assert profile.key(1).encode(True) == b"\x01"


def test_home_assistant_overrides_are_optional_checked_strings():
    """Profile format: ``ha_device_class``, ``ha_state_class`` (measurement, total,
    total_increasing) and ``ha_icon`` (``set:name``) on fields and keys."""
    profile = parse_profile({
        "name": "meter",
        "events": [{"id": 0x20, "name": "status", "fields": [
            {"name": "energy_wh", "type": "u32", "unit": "Wh", "ha_device_class": "energy",
             "ha_state_class": "total_increasing", "ha_icon": "mdi:flash-outline"},
            {"name": "plain", "type": "u8"},
        ]}],
        "keys": [{"id": 1, "name": "limit_w", "type": "u16", "access": "rw",
                  "ha_device_class": "power", "ha_icon": "mdi:gauge"}],
    })
    energy, plain = profile.events[0x20].layout.fields
    assert (energy.ha_device_class, energy.ha_state_class, energy.ha_icon) == \
        ("energy", "total_increasing", "mdi:flash-outline")
    assert (plain.ha_device_class, plain.ha_state_class, plain.ha_icon) == (None, None, None)
    assert profile.key("limit_w").field.ha_icon == "mdi:gauge"


@pytest.mark.parametrize(("override", "message"), [
    ("ha_device_class = ''", "ha_device_class: expected a non-empty string"),
    ("ha_device_class = 7", "ha_device_class: expected a non-empty string, got 7"),
    ("ha_device_class = 'Temperature'", "is not a Home Assistant device class"),
    ("ha_state_class = 'sum'", "ha_state_class: 'sum': expected one of measurement, total, "
                               "total_increasing"),
    ("ha_icon = 'thermometer'", "ha_icon: 'thermometer' is not an icon"),
    ("ha_icon = 'mdi:'", "is not an icon"),
])
def test_bad_home_assistant_overrides_name_the_key_path(tmp_path, override, message):
    (tmp_path / "x.toml").write_text(f"name='x'\n[[keys]]\nid=1\nname='a'\ntype='u8'\n{override}")
    with pytest.raises(ProfileError) as info:
        ProfileRegistry([tmp_path]).get("x")
    assert f"keys[0].{override.split()[0]}: " in str(info.value)
    assert message in str(info.value)
