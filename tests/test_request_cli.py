"""``mcp-gateway request`` (a real subprocess) against a real Mosquitto: it fails at once, saying
why, when the broker refuses it or when no gateway of that id is on the fabric, instead of
waiting out its whole ``--wait`` (issue 12, item 1)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from firmware_sim import Fleet, FleetSpec
from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.config import parse_config
from tests.harness import wait_for
from tests.mqtt_helpers import Client, Mosquitto, free_port, tls_mosquitto

BIN = Path(sys.executable).parent
#: the default --wait is 10 s: every failure here must come well before it
FAST_S = 6.0


async def request(*args: str, **env: str) -> tuple[int, str, float]:
    """Run ``mcp-gateway request ARGS --wait 10``: exit code, stdout + stderr, seconds."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "mcp-gateway"), "request", *args, "--wait", "10",
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode() + err.decode(), time.monotonic() - started


async def test_a_refused_tcp_connection_fails_at_once_naming_the_broker():
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    code, out, seconds = await request("--broker", url, "gw", "-", "list_devices")
    assert code == 1, out
    assert seconds < FAST_S, out
    assert f"cannot connect to {url}" in out
    assert "Connection refused" in out


async def test_a_broker_that_refuses_the_credentials_fails_at_once(tmp_path):
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "gw", "right"],  # noqa: ASYNC221
                   check=True)
    locked = Mosquitto(tmp_path, extra=f"allow_anonymous false\npassword_file {passwords}\n")
    locked.start()
    try:
        for protocol in ("5", "3"):
            code, out, seconds = await request(
                "--broker", locked.url, "--protocol", protocol, "--username", "gw",
                "--password-env", "PW", "gw", "-", "list_devices", PW="wrong")
            assert code == 1, out
            assert seconds < FAST_S, out
            assert f"{locked.url} refused the connection" in out
            assert "wrong" not in out
    finally:
        locked.stop()


async def test_a_tls_failure_fails_at_once_saying_so(tmp_path):
    tls, _ = tls_mosquitto(tmp_path)
    port = tls.port
    tls.start()
    try:
        # The broker's certificate is signed by a CA this client was not given.
        url = f"mqtts://localhost:{port}"
        code, out, seconds = await request("--broker", url, "gw", "-", "list_devices")
        assert code == 1, out
        assert seconds < FAST_S, out
        assert f"cannot connect to {url}" in out
        assert "CERTIFICATE_VERIFY_FAILED" in out
    finally:
        tls.stop()


async def test_no_gateway_of_that_id_is_said_within_about_a_second(broker):
    code, out, seconds = await request("--broker", broker.url, "nope", "-", "list_devices")
    assert code == 1, out
    assert seconds < FAST_S, out
    assert (f"no gateway 'nope' on {broker.url}: no retained status on mcp/v1/nope/status"
            in out)


async def test_an_offline_gateway_is_said_at_once(broker):
    client = Client(broker.port)
    try:
        # What a gateway's MQTT will (or its clean stop) leaves behind.
        client.client.publish("mcp/v1/gone/status", b'{"state":"offline"}', qos=1,
                              retain=True).wait_for_publish(5)
        code, out, seconds = await request("--broker", broker.url, "gone", "sensor-a", "ping")
        assert code == 1, out
        assert seconds < FAST_S, out
        assert f"gateway 'gone' on {broker.url} is offline" in out
    finally:
        client.close()


async def test_a_running_gateway_is_not_mistaken_for_a_missing_one(tmp_path, broker):
    """The retained-status check lets a live gateway's answer through, MQTT 5 and 3.1.1."""
    links = tmp_path / "links"
    async with Fleet(FleetSpec(count=1, interval_ms=200, link_dir=links)):
        config = parse_config({
            "gateway_id": "live", "state_dir": str(tmp_path / "state"),
            "broker": {"url": broker.url},
            "ports": [{"name": "sim-0", "path": str(links / "sim-0")}]})
        gateway = Gateway(config)
        async with Bridge(gateway, config) as bridge, gateway:
            await wait_for(lambda: bridge.mqtt.subscribed, timeout=10, what="the bridge's SUBACK")
            for protocol in ("5", "3"):
                code, out, _ = await request("--broker", broker.url, "--protocol", protocol,
                                             "live", "-", "list_devices")
                assert code == 0, out
                assert '"sim-0"' in out
