"""A real Mosquitto per test (on a free port) and a small synchronous MQTT client for tests."""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """A mosquitto process on 127.0.0.1:port; ``stop``/``start`` for outages."""

    def __init__(self, directory: Path, port: int | None = None, extra: str = "") -> None:
        self.port = port or free_port()
        self.conf = directory / f"mosquitto-{self.port}.conf"
        # As root mosquitto would switch to its own user, which cannot read pytest's tmp dirs.
        # Unlimited queues for slow subscribers: a test or bench must see every message.
        self.conf.write_text(f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\n"
                             "allow_anonymous true\npersistence false\nmax_queued_messages 0\n"
                             f"max_inflight_messages 0\nset_tcp_nodelay true\n{extra}")
        self.log = directory / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def _no_delay(client, userdata, sock) -> None:
    """Nagle off: a request must not wait for the ACK of the previous small packet."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Client:
    """paho in its own thread; collects every message it sees."""

    def __init__(self, port: int, *, protocol: int = 5, client_id: str = "",
                 username: str | None = None, password: str | None = None) -> None:
        self.protocol = protocol
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client.on_message = self._on_message
        self.client.on_socket_open = _no_delay
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append(message)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5), "no SUBACK"

    def publish(self, topic: str, body: bytes | str, *, response_topic: str | None = None,
                correlation: bytes | None = None) -> None:
        properties = None
        if response_topic is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
        self.client.publish(topic, body, qos=1, properties=properties).wait_for_publish(5)

    def on(self, topic_prefix: str) -> list[paho.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if m.topic.startswith(topic_prefix)]

    def json_on(self, topic_prefix: str) -> list[dict]:
        return [json.loads(m.payload) for m in self.on(topic_prefix)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def make_certificates(directory: Path, host: str = "localhost") -> dict[str, Path]:
    """A test CA and a server certificate for ``host`` (DNS name only), made with openssl."""
    paths = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "server",
                                                           "server-key", "server-csr")}
    ext = directory / "san.ext"
    ext.write_text(f"subjectAltName=DNS:{host}\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", str(paths["ca-key"]), "-out", str(paths["ca"]))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
        "-keyout", str(paths["server-key"]), "-out", str(paths["server-csr"]))
    run("x509", "-req", "-in", str(paths["server-csr"]), "-CA", str(paths["ca"]),
        "-CAkey", str(paths["ca-key"]), "-CAcreateserial", "-days", "2",
        "-extfile", str(ext), "-out", str(paths["server"]))
    return paths


def tls_mosquitto(directory: Path, extra: str = "") -> tuple[Mosquitto, dict[str, Path]]:
    """A Mosquitto (not started) that speaks TLS only, with ``make_certificates``' server
    certificate for localhost on a free port; ``extra`` adds listener options."""
    certs = make_certificates(directory)
    broker = Mosquitto(directory, port=free_port(), extra=(
        f"cafile {certs['ca']}\ncertfile {certs['server']}\nkeyfile {certs['server-key']}\n"
        + extra))
    return broker, certs


def make_client_certificate(certs: dict[str, Path], directory: Path,
                            name: str = "gateway") -> tuple[Path, Path]:
    """A client certificate and key signed by ``make_certificates``' CA."""
    cert, key, csr = (directory / f"{name}{suffix}.pem" for suffix in ("", "-key", "-csr"))
    for args in (("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                  "-keyout", str(key), "-out", str(csr)),
                 ("x509", "-req", "-in", str(csr), "-CA", str(certs["ca"]),
                  "-CAkey", str(certs["ca-key"]), "-CAcreateserial", "-days", "2",
                  "-out", str(cert))):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    return cert, key


class DurableWatcher(Client):
    """An MQTT 3.1.1 client with a persistent session (clean_session off), subscribed to
    ``topic`` at QoS 1: with ``durable_broker``, what it misses is what was not published."""

    def __init__(self, port: int, topic: str) -> None:
        self.protocol = 4
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="durable-watcher",
                                  protocol=paho.MQTTv311, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.messages = []
        self.lock = threading.Lock()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.subscribe(topic)


def seqs_by_device(client: Client, prefix: str) -> dict[str, list[int]]:
    """Every event's seq that ``client`` got under ``{prefix}/devices/``, per device, in
    arrival order (duplicates kept)."""
    seqs: dict[str, list[int]] = {}
    for message in client.on(f"{prefix}/devices/"):
        if "/events/" in message.topic:
            device = message.topic.split("/")[-3]
            seqs.setdefault(device, []).append(json.loads(message.payload)["seq"])
    return seqs
