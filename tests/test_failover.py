"""Broker failover on a real clustered broker (issue 18): a two-node RabbitMQ cluster with its
MQTT plugin (``tests/broker_cluster.py``), a real ``mcp-gateway run`` with ``[broker] urls``
streaming from simulated devices, and a consumer on the other node.

The node the gateway is connected to dies; the gateway moves to the next node, and a
consumer that was on a surviving node all along gets every event (per device, every seq
from the first it saw to the last, none missing), the statuses there say online, and
requests are answered through the surviving nodes. MQTT 3.1.1: what RabbitMQ 3.10 speaks, so the
3.1.1 envelope (reply address in the body) is what the requests exercise.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import Static

from gateway.bridge.mqtt import BrokerSettings, MqttConnection
from tests.broker_cluster import RabbitCluster, rabbitmq_server
from tests.fleet_helpers import wait_until
from tests.harness import lacking, wait_for
from tests.mqtt_helpers import Client, free_port, seqs_by_device
from tests.test_cli_run import Lines
from tui.app import DashboardApp

BIN = os.path.dirname(sys.executable)
GW = "fo"
P = f"mcp/v1/{GW}"
DEVICES = 4


@pytest.fixture
def cluster(tmp_path):
    if rabbitmq_server() is None:
        lacking("RabbitMQ is not installed (apt install rabbitmq-server)")
    with RabbitCluster(tmp_path / "rabbitmq") as cluster:
        yield cluster


def gaps(seqs: list[int]) -> list[int]:
    """The seqs missing between the first and the last one seen (QoS 1: a duplicate is
    allowed, a hole is not)."""
    seen = set(seqs)
    return [seq for seq in range(min(seen), max(seen) + 1) if seq not in seen]


def latest_json(client: Client, topic: str) -> dict | None:
    messages = [m for m in client.on(topic) if m.topic == topic and m.payload]
    return json.loads(messages[-1].payload) if messages else None


def start_stack(tmp_path: Path, urls: list[str]) -> tuple[subprocess.Popen, subprocess.Popen,
                                                          Lines, list[str]]:
    links = tmp_path / "links"
    sim = subprocess.Popen(
        [os.path.join(BIN, "mcp-sim"), "--pty", "--count", str(DEVICES), "--link-dir",
         str(links), "--interval-ms", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    names = [sim.stdout.readline().split()[0] for _ in range(DEVICES)]
    ports = "".join(f'[[ports]]\nname = "{name}"\npath = "{links / name}"\n'
                    'allow = ["read", "ping"]\n' for name in names)
    config = tmp_path / "gw.toml"
    config.write_text(
        f'gateway_id = "{GW}"\nstate_dir = "{tmp_path / "state"}"\nstats_interval_s = 0.5\n'
        f"[broker]\nurls = {json.dumps(urls)}\nprotocol = 3\n{ports}")
    gw = subprocess.Popen([os.path.join(BIN, "mcp-gateway"), "run", "--config", str(config)],
                          stderr=subprocess.PIPE, text=True)
    return sim, gw, Lines(gw.stderr), names


def stop_stack(sim: subprocess.Popen, gw: subprocess.Popen) -> None:
    for proc in (gw, sim):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(300)  # a RabbitMQ cluster boots in 25 s here; more under CI load
def test_the_gateway_fails_over_and_a_consumer_on_a_surviving_node_misses_nothing(
        tmp_path, cluster):
    urls = cluster.urls
    consumer = Client(cluster.mqtt_ports[1], protocol=3, client_id="consumer")
    consumer.subscribe(f"{P}/#")
    sim, gw, lines, names = start_stack(tmp_path, urls)
    try:
        lines.until(f"connected to {urls[0]}", timeout=30)
        wait_until(lambda: all(len(seqs_by_device(consumer, P).get(name, ())) >= 20
                               for name in names), 30, "20 events of every device on node 1")
        before = {name: len(seqs) for name, seqs in seqs_by_device(consumer, P).items()}

        cluster.kill(0)  # the node the gateway is on dies: no clean close, no will
        moved = lines.until(f"failing over from {urls[0]}", timeout=90)[-1]
        now_on = next(i for i, url in enumerate(urls) if f"connected to {url}," in moved)

        # The gateway streams on through node 1, where the consumer gets it all.
        wait_until(lambda: all(len(seqs_by_device(consumer, P)[name]) >= before[name] + 40
                               for name in names), 60, "40 more events of every device")
        stats = wait_until(
            lambda: (s := latest_json(consumer, f"{P}/stats")) and s["mqtt"]["failovers"] and s,
            15, "stats saying the failover")
        assert stats["mqtt"]["node"] == urls[now_on]
        assert stats["mqtt"]["failovers"] == 1
        assert stats["mqtt"]["connected"] is True

        # Statuses, as the consumer got them live after the failover: all online again.
        assert latest_json(consumer, f"{P}/status")["state"] == "online"
        for name in names:
            assert latest_json(consumer, f"{P}/devices/{name}/status")["state"] == "online"
        # And retained on the node the gateway is on now, for a consumer that comes later.
        late = Client(cluster.mqtt_ports[now_on], protocol=3, client_id="late")
        try:
            # Exact topics: RabbitMQ 3.10 sends retained messages for those only.
            for topic in (f"{P}/status", *(f"{P}/devices/{name}/status" for name in names)):
                late.subscribe(topic)
            wait_until(lambda: latest_json(late, f"{P}/status"), 10, "the gateway's status")
            assert latest_json(late, f"{P}/status")["state"] == "online"
            for name in names:
                status = wait_until(lambda n=name: latest_json(late, f"{P}/devices/{n}/status"),
                                    10, f"{name}'s status")
                assert status["state"] == "online", status
        finally:
            late.close()

        # Requests are answered after the failover: the one-shot client tries the dead
        # node first and goes on to the next (the 3.1.1 envelope carries the reply address).
        for name in names[:2]:
            answer = subprocess.run(
                [os.path.join(BIN, "mcp-gateway"), "request", "--broker", ",".join(urls),
                 "--protocol", "3", "--wait", "20", GW, name, "read", '{"key": "interval_ms"}'],
                capture_output=True, text=True, timeout=60, check=False)
            assert answer.returncode == 0, answer.stderr
            response = json.loads(answer.stdout)
            assert response["status"] == "ok"
            assert response["payload"]["value"] == 50

        stop_stack(sim, gw)
        assert gw.returncode == 0
        # Nothing lost: every device's seqs from the first seen to the last, no hole.
        for name, seqs in seqs_by_device(consumer, P).items():
            assert not gaps(seqs), f"{name} lost seqs {gaps(seqs)[:20]} across the failover"
        assert latest_json(consumer, f"{P}/status")["state"] == "offline"
    finally:
        consumer.close()
        stop_stack(sim, gw)


@pytest.mark.parametrize("subscribes", [False, True], ids=["no-subscribe", "suback-refused"])
async def test_a_node_that_accepts_and_then_drops_at_once_is_backed_off_and_logged_once(
        caplog, subscribes):
    """A broker that sends CONNACK and closes right after (as RabbitMQ does when a client's
    subscription queue is on a node that is down), or after a SUBACK refusing every filter,
    is a failed attempt: the waits between attempts grow as for a refused one (they stayed
    at 0.25 s, four attempts a second forever), and the warning is logged once, not at
    every attempt."""
    loop = asyncio.get_running_loop()
    accepted: list[float] = []

    async def accept_and_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        accepted.append(loop.time())
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted (MQTT 3.1.1)
        await writer.drain()
        if subscribes:
            subscribe = await reader.read(1024)  # SUBSCRIBE: 0x82, length, packet id, ...
            writer.write(b"\x90\x03" + subscribe[2:4] + b"\x80")  # SUBACK: refused
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(accept_and_drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = MqttConnection(BrokerSettings(url=f"mqtt://127.0.0.1:{port}", protocol=3,
                                         client_id="flapping"),
                          on_connect=lambda: subscribes and conn.subscribe(["a/topic"]))
    caplog.set_level(logging.DEBUG, logger="gateway.bridge.mqtt")
    async with server, asyncio.TaskGroup() as group:
        task = group.create_task(conn.run())
        await wait_for(lambda: len(accepted) >= 5, timeout=20, what="five attempts")
        task.cancel()
    waits = [later - earlier for earlier, later in itertools.pairwise(accepted)]
    # 0.25, 0.5, 1, 2 s, each with +-20 % jitter
    assert waits[2] > 0.75, waits
    assert waits[3] > 1.5, waits
    warned = [r for r in caplog.records if r.levelno == logging.WARNING
              and "closed the connection after accepting it, before it worked" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.INFO
                and "connected to" in r.getMessage()][1:]


def test_request_refuses_a_node_list_that_mixes_tls_and_plain():
    done = subprocess.run(
        [os.path.join(BIN, "mcp-gateway"), "request", "--broker", "mqtt://a:1883,mqtts://b:8883",
         "gw", "dev", "ping"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "the nodes mix mqtt:// and mqtts://" in done.stderr


def test_a_one_shot_request_fails_once_every_node_was_tried():
    """No node answers: the error names each node's reason, after one round (not at the first
    refusal, which would leave the other nodes untried, nor after the whole --wait)."""
    dead = [f"mqtt://127.0.0.1:{free_port()}" for _ in range(2)]
    done = subprocess.run(
        [os.path.join(BIN, "mcp-gateway"), "request", "--broker", ",".join(dead), "--wait", "30",
         "gw", "dev", "ping"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "no broker node answered" in done.stderr
    for url in dead:
        assert f"cannot connect to {url}" in done.stderr


async def test_the_dashboard_on_a_node_list_shows_the_node_it_is_on(tmp_path, broker):
    """The dashboard takes the same list as the gateway: the first node is down, it goes on
    to the next, and the health line names the node it is connected to."""
    dead = f"mqtt://127.0.0.1:{free_port()}"
    app = DashboardApp(BrokerSettings(url=dead, urls=(dead, broker.url)))
    async with app.run_test(size=(160, 40)):
        health = app.overview.query_one("#health", Static)
        await wait_for(lambda: f"broker {broker.url} connected" in str(health.render()),
                       timeout=15, what="the health line on the second node")
