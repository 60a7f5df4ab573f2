"""Issue 13 item 8: configurations that passed ``check-config`` and then failed or misbehaved
at run (a traceback, an endless reconnect, events refused, a setting silently ignored).

Each is now an error naming its key path, found by ``check-config`` where it can be seen
without side effects; what only binding or writing shows is an error of ``run`` naming the
key, exit 2, no traceback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from tests.harness import lacking
from tests.mqtt_helpers import free_port, make_certificates, make_client_certificate

BIN = Path(sys.executable).parent
TLS = "mqtts://localhost:8883"
PLAIN = "mqtt://127.0.0.1:1883"
PREFIX_RULE = ('expected topic levels separated by / such as "mcp/v1", without + or #, not '
               "starting with $, with no empty level")
METRICS_RULE = ('expected "host:port" such as "127.0.0.1:9108", or a port number (on '
                "127.0.0.1), with a port from 1 to 65535")
URL_RULE = "expected mqtt://host[:port] or mqtts://host[:port]"
SAME_DEVICE = ("expected each device on one port only (the second port to open it would find "
               "it in use)")


@dataclass(frozen=True)
class Files:
    """Things on disk the broken configs point at."""

    tmp: Path
    file: Path
    directory: Path
    not_pem: Path
    ca: Path
    ca_key: Path
    cert: Path
    key: Path
    encrypted_key: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    tmp = tmp_path_factory.mktemp("broken")
    (tmp / "file").write_text("x\n")
    (tmp / "dir").mkdir()
    (tmp / "not.pem").write_text("hello\n")
    try:
        certs = make_certificates(tmp)
        cert, key = make_client_certificate(certs, tmp)
        subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:x",
                        "-out", str(tmp / "encrypted-key.pem")], check=True, capture_output=True)
    except FileNotFoundError:
        lacking("openssl (to make test certificates)")
    return Files(tmp, tmp / "file", tmp / "dir", tmp / "not.pem", certs["ca"], certs["ca-key"],
                 cert, key, tmp / "encrypted-key.pem")


Case = Callable[[Files], tuple[dict[str, Any], str]]

#: each: the config (besides a state_dir) and its one error, exactly
PASSED_CHECK_CONFIG: list[Any] = [
    # metrics port 99999: a traceback at run (OverflowError from bind)
    pytest.param(lambda f: ({"metrics": {"address": "127.0.0.1:99999"}},
                            "metrics.address: '127.0.0.1:99999' has port 99999, which is not a "
                            f"TCP port; {METRICS_RULE}"), id="metrics-port-99999"),
    # port 0: served on a random port nobody scrapes
    pytest.param(lambda f: ({"metrics": {"address": 0}},
                            f"metrics.address: 0 is not a TCP port; {METRICS_RULE}"),
                 id="metrics-port-0"),
    pytest.param(lambda f: ({"metrics": {"address": "127.0.0.1"}},
                            f"metrics.address: '127.0.0.1' is not host:port; {METRICS_RULE}"),
                 id="metrics-without-port"),
    # broker port 99999: exit 2 at run saying "Port out of range 0-65535", no key named
    pytest.param(lambda f: ({"broker": {"url": "mqtt://127.0.0.1:99999"}},
                            "broker.url: 'mqtt://127.0.0.1:99999' is not a broker URL: port "
                            f"99999 is not a TCP port; {URL_RULE} with a port from 1 to 65535"),
                 id="broker-port-99999"),
    # a query was taken into the host name's place silently
    pytest.param(lambda f: ({"broker": {"url": "mqtt://broker?x=1"}},
                            "broker.url: 'mqtt://broker?x=1' is not a broker URL: MQTT has no "
                            f"paths, queries or fragments; {URL_RULE}"), id="broker-url-query"),
    # credentials in the URL were never sent
    pytest.param(lambda f: ({"broker": {"url": "mqtt://gw:secret@broker"}},
                            "broker.url: 'mqtt://gw:secret@broker' is not a broker URL: it holds "
                            f"a user name or password, which would not be sent; {URL_RULE}, with "
                            "broker.username and broker.password_file or broker.password_env"),
                 id="broker-url-credentials"),
    # every event refused by the broker and dropped
    pytest.param(lambda f: ({"topic_prefix": "$SYS/x"},
                            "topic_prefix: '$SYS/x' is not a topic prefix: topics starting with $ "
                            "are the broker's own ($SYS), where it refuses (or drops) what "
                            f"clients publish; {PREFIX_RULE}"), id="prefix-dollar"),
    # endless reconnects: the broker closes the connection over the will topic
    pytest.param(lambda f: ({"topic_prefix": "mcp\x00v1"},
                            "topic_prefix: 'mcp\\x00v1' is not a topic prefix: it contains the "
                            "control character U+0000, which brokers refuse (they close the "
                            f"connection); {PREFIX_RULE}"), id="prefix-nul"),
    # topics with //
    pytest.param(lambda f: ({"topic_prefix": "mcp/v1/"},
                            "topic_prefix: 'mcp/v1/' is not a topic prefix: it has an empty level "
                            f"(a / at its start or end, or //), so every topic would too; "
                            f"{PREFIX_RULE}"), id="prefix-trailing-slash"),
    pytest.param(lambda f: ({"topic_prefix": "mcp/+"},
                            "topic_prefix: 'mcp/+' is not a topic prefix: + and # are wildcards, "
                            f"not topic characters; {PREFIX_RULE}"), id="prefix-wildcard"),
    # the profiles in it were silently never loaded
    pytest.param(lambda f: ({"profiles_dir": str(f.tmp / "nope")},
                            f"profiles_dir: '{f.tmp / 'nope'}' does not exist; expected a "
                            "directory of device profiles (NAME.toml)"), id="profiles-dir-missing"),
    # the file silently won
    pytest.param(lambda f: ({"broker": {"username": "gw", "password_file": str(f.file),
                                        "password_env": "PATH"}},
                            "broker.password_env: 'PATH' is given with broker.password_file; "
                            "expected one of them (the file would be used and this ignored)"),
                 id="password-file-and-env"),
    # the password was silently not sent
    pytest.param(lambda f: ({"broker": {"password_env": "PATH"}},
                            "broker.password_env: 'PATH' needs broker.username: MQTT sends a "
                            "password only with a user name, so it would be ignored"),
                 id="password-without-username"),
    # reported at run as "in use by another program"
    pytest.param(lambda f: ({"ports": [{"name": "a", "path": "/dev/ttyUSB0"},
                                       {"name": "b", "path": "/dev/../dev/ttyUSB0"}]},
                            "ports[1].path: '/dev/../dev/ttyUSB0' is the same device as the path "
                            f"of ports[0] ('a'); {SAME_DEVICE}"), id="one-path-two-ports"),
    pytest.param(lambda f: ({"ports": [{"name": "bus", "path": "/dev/ttyUSB*"},
                                       {"name": "a", "path": "/dev/ttyUSB0"}]},
                            "ports[1].path: '/dev/ttyUSB0' is matched by '/dev/ttyUSB*', the glob "
                            f"of ports[0] ('bus'); {SAME_DEVICE}"), id="glob-over-a-port"),
    pytest.param(lambda f: ({"ports": [{"name": "a", "path": "socket://10.0.0.5:4000"},
                                       {"name": "b", "path": "socket://10.0.0.5:4000"}]},
                            "ports[1].path: 'socket://10.0.0.5:4000' is the same device as the "
                            f"path of ports[0] ('a'); {SAME_DEVICE}"), id="one-socket-two-ports"),
    # waited for forever: found from the working directory (/ under systemd)
    pytest.param(lambda f: ({"ports": [{"name": "a", "path": "ttyUSB0"}]},
                            "ports[0].path: 'ttyUSB0' is not an absolute path; expected a device "
                            "path such as /dev/ttyUSB0 (a relative one depends on the working "
                            "directory: / under systemd)"), id="port-relative-path"),
    # retried forever: "invalid URL, protocol 'tcp' not known"
    pytest.param(lambda f: ({"ports": [{"name": "a", "path": "tcp://10.0.0.5:4000"}]},
                            "ports[0].path: 'tcp://10.0.0.5:4000' is not a serial URL pyserial "
                            "can open; expected a device path, a glob, or socket://host:port (or "
                            "rfc2217://, loop://, spy://)"), id="port-unknown-url"),
    # retried forever: "'<=' not supported between instances of 'int' and 'NoneType'"
    pytest.param(lambda f: ({"ports": [{"name": "a", "path": "socket://10.0.0.5"}]},
                            "ports[0].path: 'socket://10.0.0.5' is not host:port; expected "
                            "socket://HOST:PORT with a port from 1 to 65535"),
                 id="port-socket-without-port"),
    # retried forever: "Is a directory"
    pytest.param(lambda f: ({"ports": [{"name": "a", "path": str(f.directory)}]},
                            f"ports[0].path: '{f.directory}' is a directory; expected a serial "
                            f"device such as /dev/ttyUSB0, or a glob such as {f.directory}/*"),
                 id="port-a-directory"),
    # pyserial sends 2 stop bits for 1.5 unless the byte has 5 bits
    pytest.param(lambda f: ({"ports": [{"name": "a", "path": "/dev/ttyUSB0", "stopbits": 1.5}]},
                            "ports[0].stopbits: 1.5 needs bytesize = 5: with 8 data bits a UART "
                            "sends 2 stop bits instead; expected 1 or 2"), id="stopbits-1.5"),
    # a traceback at run (ssl.SSLError from the connection's context)
    pytest.param(lambda f: ({"broker": {"url": TLS, "ca_file": str(f.not_pem)}},
                            f"broker.ca_file: '{f.not_pem}' is not a CA bundle "
                            "(NO_CERTIFICATE_OR_CRL_FOUND); expected PEM certificates"),
                 id="ca-file-not-pem"),
    # the operator thinks the link is verified: it is not even encrypted
    pytest.param(lambda f: ({"broker": {"url": PLAIN, "ca_file": str(f.ca)}},
                            f"broker.ca_file: '{f.ca}' is for TLS, and broker.url is mqtt:// (no "
                            "TLS), so it would be ignored; expected mqtts:// in broker.url, or no "
                            "ca_file"), id="ca-file-without-tls"),
    # the key was silently not used
    pytest.param(lambda f: ({"broker": {"url": TLS, "key_file": str(f.key)}},
                            f"broker.key_file: '{f.key}' needs broker.cert_file, the client "
                            "certificate it is the key of"), id="key-without-certificate"),
    # a traceback at run: "[SSL] PEM lib"
    pytest.param(lambda f: ({"broker": {"url": TLS, "cert_file": str(f.cert)}},
                            f"broker.cert_file: '{f.cert}' does not load as a certificate with its "
                            "key; expected broker.key_file with the key, or the PEM certificate "
                            "and key both in this file"), id="certificate-without-key"),
    pytest.param(lambda f: ({"broker": {"url": TLS, "cert_file": str(f.cert),
                                        "key_file": str(f.ca_key)}},
                            f"broker.key_file: '{f.ca_key}' does not load as the key of "
                            f"broker.cert_file '{f.cert}' (KEY_VALUES_MISMATCH); expected PEM "
                            "files: the certificate, and its private key"),
                 id="certificate-with-another-key"),
    # at run OpenSSL asks for the passphrase on the terminal (or fails under systemd)
    pytest.param(lambda f: ({"broker": {"url": TLS, "cert_file": str(f.cert),
                                        "key_file": str(f.encrypted_key)}},
                            f"broker.key_file: '{f.encrypted_key}' is an encrypted key, and the "
                            "gateway has no passphrase to give; expected an unencrypted key "
                            "(openssl pkey -in KEY -out PLAIN), readable by the service's user "
                            "only"), id="encrypted-key"),
    # endless reconnects: Mosquitto closes the connection
    pytest.param(lambda f: ({"broker": {"client_id": "gw\x01"}},
                            "broker.client_id: 'gw\\x01' contains the control character U+0001, "
                            "which brokers refuse (they close the connection)"),
                 id="client-id-control-character"),
    # the connection task died silently (struct.error packing the CONNECT)
    pytest.param(lambda f: ({"broker": {"client_id": "x" * 70_000}},
                            f"broker.client_id: {'x' * 60!r}… (70000 characters) is 70000 bytes "
                            "long; an MQTT string is at most 65535"), id="client-id-too-long"),
    # exit 2 at run only
    pytest.param(lambda f: ({"broker": {"embedded": True, "url": "mqtt://10.0.0.1:1883"}},
                            "broker.url: 'mqtt://10.0.0.1:1883' is not for the embedded broker: it "
                            "listens on loopback without TLS; expected mqtt://127.0.0.1:PORT "
                            "(broker.embedded = true)"), id="embedded-broker-not-on-loopback"),
]


@pytest.mark.parametrize("case", PASSED_CHECK_CONFIG)
def test_a_config_that_used_to_pass_check_config_is_an_error_naming_its_key(
        case: Case, files: Files) -> None:
    data, message = case(files)
    with pytest.raises(ConfigError) as info:
        parse_config({"state_dir": str(files.tmp / "state"), **data}, "gw.toml")
    assert info.value.errors == [message]


#: state_dir as check-config sees it: each was a traceback at run
STATE_DIRS: list[Any] = [
    pytest.param(lambda f: (f.file, f"state_dir: '{f.file}' is a file, not a directory; "
                            "expected a directory for spool.db and node_ids.json (or a path to "
                            "create one at)"), id="a-file"),
    pytest.param(lambda f: (f.file / "sub", f"state_dir: '{f.file / 'sub'}' cannot be created: "
                            f"'{f.file}' is a file, not a directory; expected a directory path"),
                 id="under-a-file"),
    pytest.param(lambda f: (f.tmp / "spool-dir", f"state_dir/spool.db: "
                            f"'{f.tmp / 'spool-dir' / 'spool.db'}' is not a file; expected the "
                            "event queue's file, or nothing yet: move it away"),
                 id="spool.db-a-directory"),
    pytest.param(lambda f: (f.tmp / "ids-dir", f"state_dir/node_ids.json: "
                            f"'{f.tmp / 'ids-dir' / 'node_ids.json'}' is not a file; expected the "
                            "uid -> node_id map's file, or nothing yet: move it away"),
                 id="node_ids.json-a-directory"),
]


@pytest.mark.parametrize("case", STATE_DIRS)
def test_check_config_sees_a_state_dir_run_cannot_use(case: Case, files: Files) -> None:
    (files.tmp / "spool-dir" / "spool.db").mkdir(parents=True, exist_ok=True)
    (files.tmp / "ids-dir" / "node_ids.json").mkdir(parents=True, exist_ok=True)
    state_dir, message = case(files)
    with pytest.raises(ConfigError) as info:
        parse_config({"state_dir": str(state_dir)}, check_state_dir=True)
    assert info.value.errors == [message]
    # The clients that read the gateway's file for its broker do not check it.
    parse_config({"state_dir": str(state_dir)})


@pytest.mark.parametrize("data", [
    {"broker": {"url": "mqtt://[::1]:1883"}},
    {"broker": {"url": "mqtts://broker.example/"}},
    {"metrics": {"address": "[::1]:9108"}},
    {"metrics": {"address": ":9108"}},
    {"metrics": {"address": 9108}},
    {"ports": [{"name": "a", "path": "loop://"}]},
    {"ports": [{"name": "a", "path": "rfc2217://10.0.0.5:7000?ign_set_control"}]},
    {"ports": [{"name": "a", "path": "/dev/ttyUSB0"}, {"name": "bus", "path": "/dev/ttyACM*"}]},
    {"ports": [{"name": "a", "path": "/dev/ttyS0", "bytesize": 5, "stopbits": 1.5}]},
    {"topic_prefix": "site-1/mcp v1/é"},
], ids=repr)
def test_what_is_right_stays_valid(data: dict[str, Any], tmp_path: Path) -> None:
    config = parse_config({"state_dir": str(tmp_path / "state"), **data}, check_state_dir=True)
    assert config.warnings == ()


def test_a_client_certificate_with_its_key_and_ca_is_valid(files: Files) -> None:
    parse_config({"state_dir": str(files.tmp / "state"), "broker": {
        "url": TLS, "ca_file": str(files.ca), "cert_file": str(files.cert),
        "key_file": str(files.key)}})


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mcp-gateway"), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_a_setting_that_runs_but_not_as_meant_is_a_warning(tmp_path: Path) -> None:
    """An empty password file (created, never filled) and a relative state_dir run, but
    probably not as meant: check-config says so on stderr and exits 0; run logs it."""
    (tmp_path / "empty").write_text("\n")
    config = tmp_path / "gw.toml"
    config.write_text(f'state_dir = "state"\n[broker]\nurl = "mqtt://127.0.0.1:{free_port()}"\n'
                      f'username = "gw"\npassword_file = "{tmp_path / "empty"}"\n')
    result = _run("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"mcp-gateway: warning: {config}: state_dir: 'state' is relative: it is found from the "
        "working directory, which is / under systemd",
        f"mcp-gateway: warning: {config}: broker.password_file: '{tmp_path / 'empty'}' gives an "
        "empty password",
    ]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _assert_refused_at_start(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@contextlib.contextmanager
def _listening() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_run_says_the_metrics_address_is_in_use_naming_the_key(tmp_path: Path, broker) -> None:
    """It was a traceback (OSError: Address already in use) and exit 1."""
    with _listening() as port:
        config = _write(tmp_path / "gw.toml", f'state_dir = "{tmp_path / "state"}"\n'
                        f'[broker]\nurl = "{broker.url}"\n[metrics]\naddress = {port}\n')
        assert _run("check-config", str(config)).returncode == 0  # binding is run's to try
        _assert_refused_at_start(
            _run("run", "--config", str(config)),
            f"mcp-gateway: cannot start: metrics.address: '127.0.0.1:{port}' cannot be listened "
            "on: Address already in use (another program, or another gateway, listens there)")


def test_run_says_a_metrics_host_that_is_not_this_hosts(tmp_path: Path, broker) -> None:
    config = _write(tmp_path / "gw.toml", f'state_dir = "{tmp_path / "state"}"\n[broker]\n'
                    f'url = "{broker.url}"\n[metrics]\naddress = "192.0.2.1:9108"\n')
    _assert_refused_at_start(
        _run("run", "--config", str(config)),
        "mcp-gateway: cannot start: metrics.address: '192.0.2.1:9108' cannot be listened on: "
        "Cannot assign requested address (not an address of this host)")


@pytest.mark.parametrize("where", ["a-file", "spool.db-a-directory"])
def test_run_refuses_a_state_dir_it_cannot_use_naming_it(tmp_path: Path, broker,
                                                          where: str) -> None:
    """Both were a traceback (FileExistsError; sqlite3.OperationalError) and exit 1."""
    state = tmp_path / "state"
    if where == "a-file":
        state.write_text("not a directory\n")
        message = f"state_dir: '{state}' is a file, not a directory"
    else:
        (state / "spool.db").mkdir(parents=True)
        message = f"state_dir/spool.db: '{state / 'spool.db'}' is not a file"
    config = _write(tmp_path / "gw.toml", f'state_dir = "{state}"\n[broker]\n'
                    f'url = "{broker.url}"\n')
    _assert_refused_at_start(_run("check-config", str(config)), message)
    _assert_refused_at_start(_run("run", "--config", str(config)), message)


@contextlib.contextmanager
def _read_only_mount(directory: Path) -> Iterator[Path]:
    directory.mkdir()
    if os.geteuid() != 0:
        lacking("root, to mount a read-only tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(directory)],
                   check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_read_only_state_dir_is_refused_by_check_config_and_run(tmp_path: Path) -> None:
    """As root every permission bit says yes: only the file system says no (EROFS), as
    systemd's ProtectSystem=strict does outside the unit's StateDirectory."""
    with _read_only_mount(tmp_path / "ro") as read_only:
        config = _write(tmp_path / "gw.toml", f'state_dir = "{read_only / "gw"}"\n')
        message = (f"state_dir: '{read_only / 'gw'}' does not exist and cannot be created: "
                   f"'{read_only}' is not writable by this user")
        _assert_refused_at_start(_run("check-config", str(config)), message)
        _assert_refused_at_start(_run("run", "--config", str(config)), message)


def test_run_tries_writing_the_state_dir_and_names_it(tmp_path: Path) -> None:
    """What only trying shows: root may "write" anywhere in /proc by its permission bits,
    but nothing can be created there. Run says so, exit 2, instead of a traceback."""
    if os.geteuid() != 0:
        lacking("root (as any other user check-config already refuses /proc)")
    config = _write(tmp_path / "gw.toml", 'state_dir = "/proc/mcp-gateway-test"\n')
    assert _run("check-config", str(config)).returncode == 0
    _assert_refused_at_start(
        _run("run", "--config", str(config)),
        "mcp-gateway: cannot start: state_dir: '/proc/mcp-gateway-test' cannot be written (No "
        "such file or directory); expected a directory the gateway's user (uid 0) may write")


def test_run_names_broker_url_when_the_embedded_broker_cannot_listen(tmp_path: Path) -> None:
    """It said so, after amqtt had logged the same failure with a traceback."""
    with _listening() as port:
        config = _write(tmp_path / "gw.toml", f'state_dir = "{tmp_path / "state"}"\n[broker]\n'
                        f'url = "mqtt://127.0.0.1:{port}"\nembedded = true\n')
        _assert_refused_at_start(
            _run("run", "--config", str(config)),
            f"mcp-gateway: cannot start: broker.url: 'mqtt://127.0.0.1:{port}' cannot be "
            f"served: the embedded broker cannot listen on 127.0.0.1:{port}")


def test_run_names_broker_url_for_a_port_out_of_range(tmp_path: Path) -> None:
    """It exited 2 saying only "Port out of range 0-65535"."""
    config = _write(tmp_path / "gw.toml", f'state_dir = "{tmp_path / "state"}"\n[broker]\n'
                    'url = "mqtt://127.0.0.1:99999"\n')
    _assert_refused_at_start(_run("run", "--config", str(config)),
                             "broker.url: 'mqtt://127.0.0.1:99999' is not a broker URL: port "
                             "99999 is not a TCP port")


def test_two_links_to_one_device_are_one_device_and_a_dangling_link_is_not(tmp_path: Path) -> None:
    """Two udev names for one adapter would open it twice; a link whose device is gone says
    nothing about which device its old target name belongs to now."""
    # /dev/null stands in for the adapter: a character device, only its identity matters.
    (tmp_path / "by-id").symlink_to("/dev/null")
    (tmp_path / "by-path").symlink_to("/dev/null")
    with pytest.raises(ConfigError) as info:
        parse_config({"state_dir": str(tmp_path / "s"), "ports": [
            {"name": "a", "path": str(tmp_path / "by-id")},
            {"name": "b", "path": str(tmp_path / "by-path")}]})
    assert info.value.errors == [(
        f"ports[1].path: '{tmp_path / 'by-path'}' is the same device as the path of ports[0] "
        f"('a'); {SAME_DEVICE}")]
    (tmp_path / "gone").symlink_to(tmp_path / "ttyUSB9")
    (tmp_path / "other").symlink_to(tmp_path / "ttyUSB9")
    parse_config({"state_dir": str(tmp_path / "s"), "ports": [
        {"name": "a", "path": str(tmp_path / "gone")},
        {"name": "b", "path": str(tmp_path / "other")}]})
