"""Issue 13 items 5 and 6: hostile or broken clients on the broker. The gateway is no
confused deputy (it never answers into a gateway's namespace or onto a ``$`` topic, and
gateway-level actions have their own allow list); the shipped Mosquitto ACL works for the
gateway, the dashboard and ``mcp-gateway request`` with anonymous access off; and every
request naming a reply topic is answered, even one the parser refuses whole."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim import Fleet, FleetSpec
from gateway.bridge.mqtt import BrokerSettings
from gateway.config import parse_config
from gateway.errors import ConfigError
from tests.harness import lacking, wait_for
from tests.mqtt_helpers import Client, Mosquitto
from tests.test_bridge import P, request, stack
from tests.test_cli_run import Lines
from tests.test_request_cli import request as request_cli

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def watcher(broker):
    """Sees everything on the fabric, the replies and a ``$`` topic a client may use."""
    c = Client(broker.port)
    for topic in ("mcp/v1/#", "replies/#", "$hostile/#"):
        c.subscribe(topic)
    yield c
    c.close()


def responses_on(client: Client, prefix: str) -> list[dict]:
    found = []
    for message in client.on(prefix):
        try:
            body = json.loads(message.payload)
        except ValueError:
            continue
        if isinstance(body, dict) and body.get("message_type") == "response":
            found.append({"topic": message.topic, **body})
    return found


FORBIDDEN_REPLY_TOPICS = [
    f"{P}/status",                               # the gateway's own retained status
    f"{P}/stats",
    f"{P}/requests",                             # would be served as a request again
    f"{P}/devices/sim-0/events/status",          # a device's event stream
    f"{P}/devices/sim-0/status",
    "mcp/v1/other-gw/status",                    # another gateway's namespace
    "mcp/v1/other-gw/devices/x/events/status",
    "mcp/v1//devices",                           # "+" matches an empty level too
    "$hostile/x",                                # the broker's own ($SYS and the like)
]


async def test_no_response_is_published_inside_a_gateways_namespace_or_on_a_dollar_topic(
        tmp_path, broker, watcher, caplog):
    """Item 5: responses were published onto another gateway's event topic, a device's
    event topic and the gateway's own retained status. Now such a request is neither
    carried out nor answered: it is counted, and logged once (not once per request)."""
    caplog.set_level(logging.INFO, "gateway.bridge.requests")
    async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=1000),
                     ports={"allow": ["read", "ping", "write"]}) as (fleet, gateway, bridge):
        await wait_for(lambda: gateway.device("sim-0").node_id, what="registration")
        topic = f"{P}/devices/sim-0/requests"
        write = {"action": "write", "payload": {"key": "interval_ms", "value": 5000}}
        for reply_to in FORBIDDEN_REPLY_TOPICS:
            # MQTT 5 Response Topic, the envelope's reply_to, and a body the parser refuses
            watcher.publish(topic, json.dumps(write), response_topic=reply_to)
            watcher.publish(topic, json.dumps({**write, "reply_to": reply_to}))
            watcher.publish(topic, json.dumps({"reply_to": reply_to}).encode()[:-1] + b"\xff")
            watcher.publish(f"{P}/requests", json.dumps({"action": "list_devices"}),
                            response_topic=reply_to)
        # Requests are served in order: once this one is answered, all of those were seen.
        _, answer = await request(watcher, topic, {"action": "ping"})
        assert answer["status"] == "ok"
        assert bridge.request_server.withheld == 4 * len(FORBIDDEN_REPLY_TOPICS)
        assert responses_on(watcher, "mcp/v1/") == []
        assert responses_on(watcher, "$hostile/") == []
        assert [r["topic"] for r in responses_on(watcher, "replies/")] == ["replies/a"]
        # not carried out either: the device's interval never changed
        assert 5000 not in fleet.devices[0].settings.values()
        assert json.loads(watcher.on(f"{P}/status")[-1].payload)["state"] == "online"
        assert bridge.stats()["mqtt"]["requests_withheld"] == 4 * len(FORBIDDEN_REPLY_TOPICS)
    logged = [r for r in caplog.records if "not carried out and not answered" in r.message]
    assert len(logged) == 1, [r.message for r in logged]


async def test_gateway_actions_have_their_own_allow_list(tmp_path, broker, watcher):
    """Item 5: reload, trace (raw frames in hex) and list_devices answered ok to anyone.
    By default only list_devices is allowed; unknown actions are invalid first."""
    async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=1000)) as (
            _, gateway, _bridge):
        await wait_for(lambda: gateway.device("sim-0").node_id, what="registration")
        gw = f"{P}/requests"
        _, listed = await request(watcher, gw, {"action": "list_devices"})
        assert listed["status"] == "ok"
        for action, payload in (("trace", {"device": "sim-0"}), ("reload", {})):
            _, answer = await request(watcher, gw, {"action": action, "payload": payload})
            assert answer["status"] == "forbidden", answer
            assert "gateway_allow: list_devices" in answer["error"]["message"]
        _, unknown = await request(watcher, gw, {"action": "shutdown"})
        assert unknown["status"] == "invalid"
    async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=1000),
                     gateway_allow=[]) as (_, gateway, _bridge):
        _, listed = await request(watcher, gw, {"action": "list_devices"})
        assert listed["status"] == "forbidden"


def test_gateway_allow_takes_known_gateway_actions_only(tmp_path):
    base = {"state_dir": str(tmp_path)}
    assert parse_config(base).gateway_allow == ("list_devices",)
    assert parse_config({**base, "gateway_allow": ["trace", "reload"]}).gateway_allow == (
        "trace", "reload")
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "gateway_allow": ["list_devices", "restart"]})
    assert "gateway_allow[1]: 'restart' is not a gateway action; expected one of " \
        "list_devices, reload, trace" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "gateway_allow": "trace"})
    assert "gateway_allow: 'trace' is not a list" in str(info.value)


# ---------------------------------------------------------------------- item 6

UNPARSABLE = [
    # (body, what the invalid answer says, its correlation_id): MQTT 3.1.1 requests
    (b'{"reply_to": "replies/b", "correlation_id": "c-big", "action": "read", "payload": '
     b'{"x": "' + b"a" * 70_000 + b'"}}', "the limit is 65536", "c-big"),
    (b'{"reply_to": "replies/b", "correlation_id": "c-deep", "action": "read", "payload": '
     + b'{"a": ' * 20 + b"1" + b"}" * 20 + b"}", "nests deeper than 8 levels", "c-deep"),
    (b'{"action": "read", "payload": ' + b"[" * 30 + b"]" * 30
     + b', "reply_to": "replies/b", "correlation_id": "c-deep-first"}', "nests deeper",
     "c-deep-first"),
    (b'{"reply_to": "replies/b", "correlation_id": "c-utf8", "action": "r\xe9ad"}',
     "not UTF-8", "c-utf8"),
    (b'{"reply_to": "replies/b", "correlation_id": 42, "action": "read", ', "not JSON", "42"),
]


async def test_requests_the_parser_refuses_whole_are_still_answered_invalid(
        tmp_path, broker, watcher):
    """Item 6: MQTT 3.1.1 requests over 64 KiB, nested deeper than 8 or not UTF-8 got no
    answer. The reply_to is salvaged from the first 64 KiB and the answer is invalid,
    with the correlation_id."""
    async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=1000),
                     broker={"protocol": 3}) as (_, gateway, _bridge):
        await wait_for(lambda: gateway.device("sim-0").node_id, what="registration")
        topic = f"{P}/devices/sim-0/requests"
        for body, message, correlation in UNPARSABLE:
            before = len(watcher.on("replies/"))
            watcher.publish(topic, body)
            await wait_for(lambda b=before: len(watcher.on("replies/")) > b,
                           what=f"an answer to {body[:50]!r}")
            answer = json.loads(watcher.on("replies/")[before].payload)
            assert answer["status"] == "invalid"
            assert message in answer["error"]["message"]
            assert answer["correlation_id"] == correlation
        # exactly one each
        _, answer = await request(watcher, topic, {"action": "ping"}, v5=False)
        assert answer["status"] == "ok"
        assert len(watcher.on("replies/")) == len(UNPARSABLE) + 1


# ---------------------------------------------------------------------- the shipped ACL

ACL = ROOT / "systemd" / "mosquitto-acl.example"
MOSQUITTO_CONF = ROOT / "systemd" / "mosquitto-mcp.conf.example"


def acl_broker(tmp_path: Path, passwords: dict[str, str]) -> Mosquitto:
    """A Mosquitto with the shipped configuration: its lines as they are, with the
    password file made as docs/deploy.md says and the shipped ACL file itself (the test's
    own listener replaces the example's)."""
    passwd = tmp_path / "mcp.passwd"
    for number, (user, secret) in enumerate(passwords.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if number == 0 else []), "-b",
                        str(passwd), user, secret], check=True)
    lines = []
    for line in MOSQUITTO_CONF.read_text().splitlines():
        if line.startswith("listener "):
            continue
        lines.append(line.replace("/etc/mosquitto/mcp.passwd", str(passwd))
                     .replace("/etc/mosquitto/mcp.acl", str(ACL)))
    return Mosquitto(tmp_path, extra="\n".join(lines) + "\n")


def test_the_deploy_guide_includes_the_shipped_acl_and_configuration():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for shipped in (ACL, MOSQUITTO_CONF):
        assert shipped.read_text().strip() in guide, f"{shipped.name} differs in deploy.md"


async def test_gateway_dashboard_and_request_work_under_the_shipped_acl(tmp_path):
    """Item 5: the deployment guide's ACL and password file, anonymous access off: the
    gateway publishes and serves, the dashboard sees and asks, ``mcp-gateway request``
    asks; anonymous clients are refused and an application cannot forge a status."""
    import shutil  # noqa: PLC0415

    if shutil.which("mosquitto_passwd") is None:
        lacking("mosquitto_passwd is not installed")
    from tui.fabric import Fabric  # noqa: PLC0415
    from tui.state import FabricState  # noqa: PLC0415

    secrets = {"edge-1": "gw-secret", "dashboard": "dash-secret", "app": "app-secret"}
    broker = acl_broker(tmp_path, secrets)
    broker.start()
    files = {}
    for user, secret in secrets.items():
        files[user] = tmp_path / f"{user}.pass"
        files[user].write_text(secret + "\n")
    links = tmp_path / "links"
    config = tmp_path / "gw.toml"
    config.write_text(
        f'gateway_id = "edge-1"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[broker]\nurl = "{broker.url}"\nusername = "edge-1"\n'
        f'password_file = "{files["edge-1"]}"\n'
        f'[[ports]]\nname = "sensor-a"\npath = "{links}/sim-0"\n')
    gw = None
    fabric = None
    try:
        async with Fleet(FleetSpec(count=1, interval_ms=100, link_dir=links)):
            gw = subprocess.Popen(  # noqa: ASYNC220 - read by a thread (Lines), never awaited
                [str(BIN / "mcp-gateway"), "run", "--config", str(config)],
                stderr=subprocess.PIPE, text=True)
            lines = Lines(gw.stderr)
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: lines.until("sensor-a is online", timeout=20))

            def as_user(user: str) -> tuple[str, ...]:
                return ("--broker", broker.url, "--username", user, "--password-file",
                        str(files[user]))

            code, out, _ = await request_cli(*as_user("app"), "edge-1", "sensor-a", "ping")
            assert code == 0, out
            code, out, _ = await request_cli(*as_user("app"), "edge-1", "-", "list_devices")
            assert code == 0, out
            assert '"sensor-a"' in out
            code, out, _ = await request_cli("--broker", broker.url, "edge-1", "-",
                                             "list_devices")
            assert code == 1
            assert "refused" in out, out

            # An application cannot forge the gateway's retained status.
            # Credentials from the first CONNECT (a reconnect after an anonymous one raced).
            forger = Client(broker.port, client_id="forger", username="app",
                            password=secrets["app"])
            await wait_for(forger.client.is_connected, what="the forger connected")
            forger.client.publish("mcp/v1/edge-1/status", b'{"state":"offline"}', qos=1,
                                  retain=True).wait_for_publish(5)
            forger.close()

            state = FabricState()
            fabric = Fabric(BrokerSettings(url=broker.url, username="dashboard",
                                           password=secrets["dashboard"]), state)
            fabric.start()
            await wait_for(lambda: fabric.connected, what="the dashboard connected")
            await wait_for(lambda: ("edge-1", "sensor-a") in state.devices, timeout=10,
                           what="the dashboard saw the device")
            await wait_for(lambda: state.gateways["edge-1"].state == "online",
                           what="the dashboard saw the gateway online")
            await wait_for(lambda: state.devices["edge-1", "sensor-a"].last_seen, timeout=10,
                           what="the dashboard saw events")
            answer = await fabric.request("edge-1", "sensor-a", "ping")
            assert answer["status"] == "ok", answer
            answer = await fabric.request("edge-1", None, "list_devices")
            assert answer["status"] == "ok", answer
            assert state.gateways["edge-1"].state == "online"  # the forgery never landed
            gw.send_signal(15)
            assert await asyncio.get_running_loop().run_in_executor(None, gw.wait, 15) == 0
            assert "Traceback" not in lines.rest()
    finally:
        if fabric is not None:
            await fabric.stop()
        if gw is not None and gw.poll() is None:
            gw.kill()
            gw.wait()
        broker.stop()

