"""Configuration loading: the ports part, every error with its key path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import gateway.config
from gateway.config import SETTING_GROUPS, load_config, parse_config
from gateway.errors import ConfigError
from gateway.frames.framing import FRAMINGS
from gateway.frames.reliable import Ms720Framing
from gateway.settings import declared, shown_default

BIN = Path(sys.executable).parent


def test_a_full_port_entry_and_defaults(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text("""
gateway_id = "edge-1"
state_dir = "/tmp/x"

[[ports]]
name = "sensor-a"
path = "/dev/ttyUSB0"
baudrate = 9600
parity = "even"
stopbits = 2
rtscts = true
allow = ["read", "ping", "write"]
heartbeat_s = 2
request_timeout_s = 0.5
retries = 1

[[ports]]
name = "bus"
path = "/dev/serial/by-id/usb-ACME_*"

[[ports]]
name = "remote"
path = "socket://10.0.0.5:4000"
""")
    config = load_config(path)
    a, bus, remote = config.ports
    assert (a.serial.baudrate, a.serial.parity, a.serial.stopbits, a.serial.rtscts,
            a.session.retries) == (9600, "even", 2, True, 1)
    assert a.allow == ("read", "ping", "write")
    assert bus.is_glob
    assert not bus.is_url
    assert remote.is_url
    assert not remote.is_glob
    assert bus.serial.baudrate == 115200
    assert bus.allow == ("read", "ping")
    assert config.gateway_id == "edge-1"


BROKEN = [
    ({"ports": [{"name": "a", "path": "/dev/x", "baudrate": 115201}]},
     "ports[0].baudrate: 115201 is not a standard baud rate; expected one of 1200"),
    ({"ports": [{"name": "a b", "path": "/dev/x"}]}, "ports[0].name: 'a b' is not a device id"),
    ({"ports": [{"name": "a"}]},
     "ports[0].path: missing; expected a device path, a glob or socket://host:port"),
    ({"ports": [{"path": "/dev/x"}]},
     "ports[0].name: missing; expected a device id (1-64 of A-Z a-z 0-9 _ . -)"),
    ({"ports": [{"name": "", "path": "/dev/x"}]}, "ports[0].name: '' is not a device id"),
    ({"ports": [{"name": "a", "path": "/dev/x", "parity": "sometimes"}]}, "ports[0].parity"),
    ({"ports": [{"name": "a", "path": "/dev/x", "stopbits": 3}]}, "ports[0].stopbits: 3"),
    ({"ports": [{"name": "a", "path": "/dev/x", "bytesize": 9}]}, "ports[0].bytesize: 9"),
    ({"ports": [{"name": "a", "path": "/dev/x", "frames": "xyz"}]},
     "ports[0].frames: 'xyz' is not a supported frame profile"),
    ({"ports": [{"name": "a", "path": "/dev/x", "profile": "toaster"}]},
     "ports[0].profile: 'toaster' is not a device profile; expected one of env-sensor"),
    ({"ports": [{"name": "a", "path": "/dev/x", "retries": -1}]}, "ports[0].retries: -1"),
    ({"ports": [{"name": "a", "path": "/dev/x", "heartbeat_s": "5"}]}, "ports[0].heartbeat_s"),
    ({"ports": [{"name": "a", "path": "/dev/x", "rtscts": "yes"}]},
     "ports[0].rtscts: 'yes' is not true or false"),
    ({"ports": [{"name": "a", "path": "/dev/x", "baudrat": 9600}]},
     "ports[0].baudrat: 9600 is an unknown key"),
    ({"ports": [{"name": "a", "path": "/dev/x"}, {"name": "a", "path": "/dev/y"}]},
     "ports[1].name: 'a' is used by an earlier port"),
    ({"portz": []}, "portz: [] is an unknown key"),
    ({"gateway_id": "has space"}, "gateway_id: 'has space' is not an id"),
    ({"topic_prefix": "a/#"}, "topic_prefix: 'a/#' is not a topic prefix"),
    ({"ports": {"name": "a"}}, "ports: {'name': 'a'} is not a list"),
    ({"log_level": "loud"}, "log_level: 'loud' is not a log level; expected one of DEBUG"),
    ({"log_format": "xml"}, "log_format: 'xml' is not a log format; expected text or json"),
    ({"queue": {"max_bytes": 1}}, "queue.max_bytes: 1 is not valid; expected a whole number"),
    ({"queue": {"commit_delay_ms": -1}}, "queue.commit_delay_ms: -1 is not valid"),
    ({"queue": {"size": 1}}, "queue.size: 1 is an unknown key; expected max_messages"),
    ({"broker": {"url": "http://x"}}, "broker.url: 'http://x' is not a broker URL"),
    ({"broker": {"protocol": 4}}, "broker.protocol: 4 is not an MQTT version; expected 5 or 3"),
    ({"broker": {"embedded": True, "protocol": 5}},
     "broker.protocol: 5 cannot be used with embedded = true"),
    ({"broker": {"password": "hunter2"}}, "broker.password: '***' is an unknown key"),
    ({"broker": {"password_env": "MCP_SURELY_UNSET_VARIABLE"}},
     "broker.password_env: 'MCP_SURELY_UNSET_VARIABLE' names an environment variable that "
     "is not set"),
    ({"broker": {"ca_file": "/nonexistent/ca.pem"}},
     "broker.ca_file: '/nonexistent/ca.pem' is not a readable file"),
    ({"metrics": {"address": "everywhere"}}, "metrics.address: 'everywhere' is not host:port"),
    ({"stats_interval_s": 0}, "stats_interval_s: 0 is not valid; expected a number from 0.1"),
    ({"ports": [{"name": "a", "path": "/dev/x", "allow": "read"}]}, "ports[0].allow"),
    ({"ports": [{"name": "a", "path": "/dev/x", "max_in_flight": 4}]},
     "ports[0].max_in_flight: 4 needs frames = \"ms720\": mcp frames carry no sequence number"),
    ({"ports": [{"name": "a", "path": "/dev/x", "frames": "ms720", "max_in_flight": 65}]},
     "ports[0].max_in_flight: 65 is not valid; expected a whole number from 1 to 64"),
    ({"ports": [{"name": "a", "path": "/dev/x", "frames": "ms720", "link_window": 0}]},
     "ports[0].link_window: 0 is not valid; expected a whole number from 1 to 512"),
]


def test_requests_in_flight_default_by_frame_profile():
    config = parse_config({"ports": [
        {"name": "a", "path": "/dev/x"},
        {"name": "b", "path": "/dev/y", "frames": "ms720"},
        {"name": "c", "path": "/dev/z", "frames": "ms720", "max_in_flight": 4,
         "link_window": 256},
    ]})
    a, b, c = config.ports
    assert (a.transactions.max_in_flight, b.transactions.max_in_flight,
            c.transactions.max_in_flight) == (1, 16, 4)
    assert (b.link.window, c.link.window) == (128, 256)


def test_a_third_frame_profile_is_one_registry_line_and_config_follows_it(monkeypatch):
    """Adding a profile is its module and a line in FRAMINGS: config's choices, the
    in-flight default and the in-flight bound come from the framing, not from its name."""

    class SmallWindow(Ms720Framing):
        name = "small"
        default_in_flight = 4
        max_in_flight = 8

    monkeypatch.setitem(FRAMINGS, "small", SmallWindow)
    monkeypatch.setattr(gateway.config, "FRAME_PROFILES", tuple(FRAMINGS))
    port = parse_config({"ports": [{"name": "a", "path": "/dev/x", "frames": "small"}]}).ports[0]
    assert (port.link.frames, port.transactions.max_in_flight) == ("small", 4)
    with pytest.raises(ConfigError) as info:
        parse_config({"ports": [{"name": "a", "path": "/dev/x", "frames": "small",
                                 "max_in_flight": 9}]})
    assert info.value.errors == ["ports[0].max_in_flight: 9 is more than small frames allow "
                                 "in flight; expected at most 8"]


@pytest.mark.parametrize(("data", "message"), BROKEN)
def test_broken_configs_name_the_key_path(data, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "gw.toml")
    assert message in str(info.value)


def test_every_error_is_reported_at_once():
    data = {"ports": [{"name": "a", "path": "/dev/x", "baudrate": 1, "parity": "x"}],
            "colour": 1}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert len(info.value.errors) == 3


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[ports]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


ENV_SENSOR_CHOICES = ("expected one of the actions read, write, raw, ping, a command of the "
                      "profile (none), or read:KEY / write:KEY with KEY one of interval_ms, "
                      "name, fw_build")


@pytest.mark.parametrize(("entry", "message"), [
    ("reboot", f"ports[0].allow[1]: 'reboot' is not an action of profile env-sensor; "
               f"{ENV_SENSOR_CHOICES}"),
    ("wrte", "ports[0].allow[1]: 'wrte' is not an action of profile env-sensor; expected one "
             "of the actions read, write, raw, ping"),
    ("write:nosuchkey", "ports[0].allow[1]: 'write:nosuchkey' is not valid: 'nosuchkey' is "
                        "not a key of profile env-sensor; expected write:KEY with KEY one of "
                        "interval_ms, name, fw_build"),
    ("ping:interval_ms", "ports[0].allow[1]: 'ping:interval_ms' is not valid: 'ping' takes no "
                         "key; expected ACTION:KEY with ACTION one of read, write"),
    ("wirte:name", "ports[0].allow[1]: 'wirte:name' is not valid: 'wirte' is not an action"),
    ("write:fw_build", "ports[0].allow[1]: 'write:fw_build' is not valid: key 'fw_build' of "
                       "profile env-sensor is read-only; expected write:KEY with KEY one of "
                       "interval_ms, name"),
])
def test_an_allow_entry_that_grants_nothing_is_an_error(entry, message):
    """Issue 12: every allow entry must name an action, a command or a key of the port's
    profile; a typo used to be accepted and silently allow nothing."""
    with pytest.raises(ConfigError) as info:
        parse_config({"ports": [{"name": "a", "path": "/dev/x", "allow": ["read", entry]}]})
    assert message in str(info.value)
    assert len(info.value.errors) == 1


def test_a_typo_in_allow_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"\(did you mean 'write'\?\)"):
        parse_config({"ports": [{"name": "a", "path": "/dev/x", "allow": ["wrte"]}]})


def test_allow_takes_the_commands_and_keys_of_each_ports_own_profile(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "motor.toml").write_text(
        'name = "motor"\n[[keys]]\nid = 7\nname = "speed"\ntype = "u16"\naccess = "rw"\n'
        '[[commands]]\nid = 0x30\nname = "spin"\nrequest = [{ name = "rpm", type = "u16" }]\n')
    motor = {"name": "m", "path": "/dev/m", "profile": "motor",
             "allow": ["spin", "read:speed", "write:7", "ping"]}
    config = parse_config({"profiles_dir": str(profiles), "ports": [
        motor, {"name": "s", "path": "/dev/s", "allow": ["write:interval_ms", "read:1"]}]})
    assert config.ports[0].allow == ("spin", "read:speed", "write:7", "ping")
    # The same entries on an env-sensor port: spin and speed are the motor's, not its.
    with pytest.raises(ConfigError) as info:
        parse_config({"profiles_dir": str(profiles), "ports": [
            motor, {"name": "s", "path": "/dev/s", "allow": ["spin", "write:speed"]}]})
    assert info.value.errors == [
        "ports[1].allow[0]: 'spin' is not an action of profile env-sensor; "
        + ENV_SENSOR_CHOICES,
        "ports[1].allow[1]: 'write:speed' is not valid: 'speed' is not a key of profile "
        "env-sensor; expected write:KEY with KEY one of interval_ms, name, fw_build",
    ]
    with pytest.raises(ConfigError, match="'spin:rpm' is not valid: 'spin' takes no key"):
        parse_config({"profiles_dir": str(profiles), "ports": [
            {**motor, "allow": ["spin:rpm"]}]})


def test_check_config_names_every_bad_allow_entry(tmp_path):
    """The issue's own example, through the command an operator runs."""
    path = tmp_path / "gw.toml"
    path.write_text('state_dir = "/tmp/x"\n[[ports]]\nname = "a"\npath = "/dev/x"\n'
                    'allow = ["read", "reboot", "write:nosuchkey", "wrte"]\n')
    proc = subprocess.run([str(BIN / "mcp-gateway"), "check-config", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    for number, entry in ((1, "reboot"), (2, "write:nosuchkey"), (3, "wrte")):
        assert f"ports[0].allow[{number}]: {entry!r}" in proc.stderr
    assert "allow[0]" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_says_a_missing_port_name_is_missing(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('state_dir = "/tmp/x"\n[[ports]]\npath = "/dev/x"\n')
    proc = subprocess.run([str(BIN / "mcp-gateway"), "check-config", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "ports[0].name: missing; expected a device id" in proc.stderr
    assert "None" not in proc.stderr


DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"


@pytest.mark.parametrize("group", SETTING_GROUPS, ids=lambda group: group.__name__)
def test_every_declared_key_is_documented_with_its_default(group):
    """A setting is declared once (gateway/settings.py): the operators' page names each of
    its keys with the declared default, so the docs cannot drift from the code."""
    rows = {}
    in_key_table = False  # a table of keys: | key | default | valid | meaning |
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            in_key_table = False
        elif cells[:2] == ["key", "default"]:
            in_key_table = True
        elif in_key_table and line.startswith("| `"):
            for key in re.findall(r"`([a-z_]+)`", cells[0]):
                rows[key] = cells[1]
    for name, declaration in declared(group):
        assert declaration.key in rows, f"{declaration.key} is not in {DOCS.name}"
        shown = shown_default(group, name)
        as_written = shown if declaration.shown or shown == "none" else f"`{shown}`"
        assert as_written in rows[declaration.key], declaration.key


# ---------------------------------------------------------------- broker.urls (a cluster)

CLUSTER = ["mqtt://a:1883", "mqtt://b:1883", "mqtt://c:1884"]


def test_urls_lists_a_clusters_nodes_in_order_and_url_is_the_first():
    broker = parse_config({"broker": {"urls": CLUSTER}}).broker
    assert broker.nodes == tuple(CLUSTER)
    assert broker.url == "mqtt://a:1883"
    assert [broker.endpoint(url) for url in broker.nodes] == [
        ("a", 1883, False), ("b", 1883, False), ("c", 1884, False)]


def test_a_single_url_is_a_cluster_of_one():
    broker = parse_config({"broker": {"url": "mqtt://a:1883"}}).broker
    assert broker.nodes == ("mqtt://a:1883",)
    assert broker.urls == ()


@pytest.mark.parametrize(("broker", "expected"), [
    ({"urls": []}, "broker.urls: [] is not a list of broker URLs"),
    ({"urls": "mqtt://a"}, "broker.urls: 'mqtt://a' is not a list of broker URLs"),
    ({"urls": ["mqtt://a", "http://b"]}, "broker.urls[1]: 'http://b' is not a broker URL"),
    ({"urls": ["mqtt://a", 7]}, "broker.urls[1]: 7 is not a broker URL"),
    ({"urls": ["mqtt://a", "mqtt://b", "mqtt://a"]},
     "broker.urls[2]: 'mqtt://a' is listed twice (also at broker.urls[0])"),
    ({"urls": ["mqtt://a", "mqtts://b"]}, "broker.urls: ['mqtt://a', 'mqtts://b'] mixes "
     "mqtt:// and mqtts://"),
    ({"urls": CLUSTER, "url": "mqtt://a:1883"}, "broker.url: 'mqtt://a:1883' is given with "
     "broker.urls; expected one of them"),
    ({"urls": [f"mqtt://n{i}" for i in range(17)]}, "broker.urls: '17 URLs' lists too many "
     "nodes; expected at most 16"),
    ({"urls": ["mqtt://127.0.0.1:1883"], "embedded": True},
     "broker.urls: ['mqtt://127.0.0.1:1883'] cannot be used with embedded = true"),
    ({"urls": ["mqtt://a"], "tls_insecure": True}, "broker.tls_insecure: True is for TLS, and "
     "broker.urls are mqtt:// (no TLS), so it would be ignored; expected mqtts:// in "
     "broker.urls, or no tls_insecure"),
])
def test_a_wrong_urls_is_an_error_naming_the_node(broker, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config({"broker": broker})
    assert expected in str(caught.value)


def test_the_effective_config_of_a_cluster_parses_back_to_it():
    for broker in ({"urls": CLUSTER}, {"url": "mqtt://a:1883"}):
        config = parse_config({"broker": broker})
        again = parse_config(gateway.config.effective(config))
        assert again.broker == config.broker
