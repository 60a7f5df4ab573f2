"""Configuration loading: the ports part, every error with its key path."""

from __future__ import annotations

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError


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
    assert (a.baudrate, a.parity, a.stopbits, a.rtscts, a.retries) == (9600, "even", 2, True, 1)
    assert a.allow == ("read", "ping", "write")
    assert bus.is_glob
    assert not bus.is_url
    assert remote.is_url
    assert not remote.is_glob
    assert bus.baudrate == 115200
    assert bus.allow == ("read", "ping")
    assert config.gateway_id == "edge-1"


BROKEN = [
    ({"ports": [{"name": "a", "path": "/dev/x", "baudrate": 115201}]},
     "ports[0].baudrate: 115201 is not a standard baud rate; expected one of 1200"),
    ({"ports": [{"name": "a b", "path": "/dev/x"}]}, "ports[0].name: 'a b' is not a device id"),
    ({"ports": [{"name": "a"}]}, "ports[0].path: None is not a port"),
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
    ({"metrics": {"address": "everywhere"}}, "metrics: {'address': 'everywhere'} is not valid"),
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
    assert (a.max_in_flight, b.max_in_flight, c.max_in_flight) == (1, 16, 4)
    assert (b.link_window, c.link_window) == (128, 256)


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
