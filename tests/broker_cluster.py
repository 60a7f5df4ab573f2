"""A real clustered MQTT broker for failover tests and benches: two RabbitMQ nodes on one
machine (each with its own node name, ports and data directory), clustered, with the MQTT
plugin (MQTT 3.1.1), on free loopback ports.

What the tests rely on, as measured on RabbitMQ 3.10 (Debian bookworm's):
- a message published on one node reaches a subscriber's queue on the other (the queue
  lives on the node its subscriber connected to), and the PUBACK comes once it is there;
- when one node dies, the other goes on routing and accepting new MQTT connections (its
  client id tracker has no Raft majority, so it does not record them: it would refuse new
  connections only if it restarted too);
- retained messages are kept per node, not across the cluster: a retained status is on the
  node it was published on. The gateway publishes its statuses afresh on every connection,
  so they are on the node it is on.

NATS was tried too (three nodes, JetStream, its MQTT listener): each QoS 1 subscription is a
replicated JetStream consumer, and on this 2-core machine their creation after a node loss
timed out often enough (SUBACKs and request replies missing for 5-20 s) to make a test flaky;
its retained messages also lagged on the third node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.mqtt_helpers import free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def rabbitmq_server() -> Path | None:
    """The rabbitmq-server start script, None if this machine lacks RabbitMQ."""
    script = RABBITMQ_BIN / "rabbitmq-server"
    return script if script.exists() and shutil.which("erl") else None


class RabbitCluster:
    """``with RabbitCluster(tmp_path) as cluster:`` two clustered nodes; ``cluster.urls`` (the
    MQTT URL of each), ``cluster.mqtt_ports``, ``stop(i)`` / ``kill(i)`` for outages."""

    def __init__(self, directory: Path, nodes: int = 2) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.count = nodes
        tag = free_port()  # node names are host-wide (epmd): unique per cluster
        self.names = [f"mcp{tag}-{i}@localhost" for i in range(nodes)]
        self.mqtt_ports = [free_port() for _ in range(nodes)]
        self.home = directory / "home"
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(f"MCPTEST{tag}")
        cookie.chmod(0o400)
        peers = "".join(f"cluster_formation.classic_config.nodes.{i + 1} = {name}\n"
                        for i, name in enumerate(self.names))
        self.envs = []
        for i, name in enumerate(self.names):
            node = directory / f"node-{i}"
            (node / "log").mkdir(parents=True, exist_ok=True)
            (node / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
            (node / "rabbitmq-env.conf").write_text("")
            (node / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{free_port()}\n"
                f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_ports[i]}\n"
                "mqtt.allow_anonymous = true\nloopback_users = none\n"
                "log.console = false\nlog.file.level = info\n"
                "cluster_formation.peer_discovery_backend = classic_config\n" + peers)
            self.envs.append({
                **os.environ, "HOME": str(self.home),
                "PATH": f"{RABBITMQ_BIN}:{os.environ.get('PATH', '')}",
                "RABBITMQ_NODENAME": name,
                "RABBITMQ_DIST_PORT": str(free_port()),
                "RABBITMQ_MNESIA_BASE": str(node / "mnesia"),
                "RABBITMQ_MNESIA_DIR": str(node / "mnesia" / name),
                "RABBITMQ_LOG_BASE": str(node / "log"),
                "RABBITMQ_LOGS": str(node / "log" / "rabbit.log"),
                "RABBITMQ_PID_FILE": str(node / "rabbit.pid"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(node / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(node / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node / "advanced.config"),
                "RABBITMQ_CONF_ENV_FILE": str(node / "rabbitmq-env.conf"),
                "RABBITMQ_FEATURE_FLAGS_FILE": str(node / "feature_flags"),
                "RABBITMQ_QUORUM_DIR": str(node / "mnesia" / name / "quorum"),
            })
        self.procs: list[subprocess.Popen | None] = [None] * nodes

    @property
    def urls(self) -> list[str]:
        return [f"mqtt://127.0.0.1:{port}" for port in self.mqtt_ports]

    def log(self, i: int) -> Path:
        return Path(self.envs[i]["RABBITMQ_LOGS"])

    def start(self, i: int) -> None:
        assert self.procs[i] is None, f"node {i} runs already"
        out = (self.directory / f"node-{i}" / "stdout.log").open("ab")
        # A session of its own: the node's processes (the start script, the Erlang VM and
        # its port programs) go down together with a signal to the group.
        self.procs[i] = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")], env=self.envs[i], stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self, i: int, sig: int = signal.SIGTERM) -> None:
        """Stop node ``i`` (SIGTERM: a clean shutdown; SIGKILL: a node that dies)."""
        proc = self.procs[i]
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs[i] = None

    def kill(self, i: int) -> None:
        self.stop(i, signal.SIGKILL)

    def __enter__(self) -> RabbitCluster:
        # The first node alone, then the others: they find it running and join it. Started
        # together, two fresh nodes can each find no peer up and form clusters of their own.
        self.start(0)
        try:
            self.wait_ready()
            for i in range(1, self.count):
                self.start(i)
            self.wait_ready()
            self.mirror_mqtt_queues()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for i in range(self.count):
            with contextlib.suppress(Exception):
                self.kill(i)

    def ctl(self, i: int, *args: str) -> str:
        """``rabbitmqctl`` at node ``i``; its output."""
        done = subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.names[i], *args],
                              env=self.envs[i], capture_output=True, text=True, timeout=60,
                              check=False)
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def mirror_mqtt_queues(self) -> None:
        """What a RabbitMQ 3.x cluster needs for MQTT clients to fail over (docs/deploy.md):
        a client's QoS 1 subscription queue is durable, named by its client id and lives on
        one node; while that node is down the same client id cannot subscribe on another
        node (NOT_FOUND, home node down), unless the queue is mirrored on every node."""
        self.ctl(0, "set_policy", "--apply-to", "queues", "mqtt-mirrored",
                 "^mqtt-subscription-", '{"ha-mode": "all", "ha-sync-mode": "automatic"}')

    def routes_everywhere(self) -> bool:
        """True when a message published on each running node reaches every other one."""
        running = [i for i in range(self.count) if self.procs[i] is not None]
        try:
            if len(running) == 1:  # alone: its own MQTT listener answers
                return routes(self.mqtt_ports[running[0]], self.mqtt_ports[running[0]])
            return all(routes(self.mqtt_ports[i], self.mqtt_ports[j])
                       for i in running for j in running if i != j)
        except (OSError, TimeoutError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until a QoS 1 message published on each running node reaches a subscriber on
        every other one: they run their MQTT listeners, and they are one cluster."""
        deadline = time.monotonic() + timeout
        while not self.routes_everywhere():
            if time.monotonic() > deadline:
                logs = "\n".join(self.log(i).read_text()[-3000:] if self.log(i).exists()
                                 else "(no log)" for i in range(self.count))
                raise RuntimeError(f"the RabbitMQ cluster did not become ready:\n{logs}")
            time.sleep(0.3)


def _client(port: int, timeout: float) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311,
                         client_id=f"probe-{free_port()}")
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise TimeoutError(f"no CONNACK from port {port}")
    return client


def routes(from_port: int, to_port: int, timeout: float = 5.0) -> bool:
    """True when a QoS 1 message published at the node on ``from_port`` reaches a subscriber
    at the node on ``to_port``."""
    topic = f"cluster-ready/{free_port()}"
    came = threading.Event()
    receiver = _client(to_port, timeout)
    try:
        subscribed = threading.Event()
        receiver.on_subscribe = lambda *args: subscribed.set()
        receiver.on_message = lambda *args: came.set()
        receiver.subscribe(topic, qos=1)
        if not subscribed.wait(timeout):
            return False
        sender = _client(from_port, timeout)
        try:
            sender.publish(topic, b"ready", qos=1).wait_for_publish(timeout)
        finally:
            sender.disconnect()
            sender.loop_stop()
        return came.wait(timeout)
    finally:
        receiver.disconnect()
        receiver.loop_stop()


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False
