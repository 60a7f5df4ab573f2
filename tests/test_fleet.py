"""Many gateways on one fabric (issue 18): ten ``mcp-gateway run`` processes with four
simulated devices each on one real Mosquitto, watched by the dashboard; and the dashboard's
overview at that size, as a snapshot."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import defaultdict
from pathlib import Path

from textual.widgets import Static

from tests.harness import wait_for
from tests.mqtt_helpers import Client
from tests.test_dashboard import NOW, msg
from tui.app import DashboardApp
from tui.device_table import DeviceTable
from tui.overview import health_text
from tui.state import FabricState

BIN = Path(sys.executable).parent
GATEWAYS = [f"edge-{i:02d}" for i in range(10)]
DEVICES = [f"sensor-{j}" for j in range(4)]
#: the gateway killed, and the one a second process tries to take the id of
KILLED, DUPLICATED = "edge-07", "edge-03"


def _config(tmp_path: Path, gateway_id: str, paths: list[str], broker_url: str,
            name: str | None = None) -> Path:
    name = name or gateway_id
    text = (f'gateway_id = "{gateway_id}"\nstate_dir = "{tmp_path / name}"\n'
            f'stats_interval_s = 1\n[broker]\nurl = "{broker_url}"\n')
    for device, path in zip(DEVICES, paths, strict=True):
        text += f'[[ports]]\nname = "{device}"\npath = "{path}"\nheartbeat_s = 1\n'
    config = tmp_path / f"{name}.toml"
    config.write_text(text)
    return config


async def _start(config: Path, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        BIN / "mcp-gateway", "run", "--config", str(config), stderr=log.open("wb"))


def _events(sub: Client) -> dict[tuple[str, str], list[dict]]:
    """(gateway, device) -> its event envelopes, as the subscriber got them."""
    found: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for message in sub.on("mcp/v1/"):
        parts = message.topic.split("/")
        if len(parts) >= 6 and parts[3] == "devices" and parts[5] == "events":
            found[parts[2], parts[4]].append(json.loads(message.payload))
    return found


def _health(app: DashboardApp) -> str:
    return str(app.overview.query_one("#health", Static).render())


def _shown(app: DashboardApp) -> dict[tuple[str, str], str]:
    return {d.key: d.shown_state for d in app.state.devices.values()}


async def test_ten_gateways_on_one_broker_keep_apart_and_one_dying_touches_no_other(
        tmp_path, broker):
    sim = await asyncio.create_subprocess_exec(
        BIN / "mcp-sim", "--pty", "--count", str(len(GATEWAYS) * len(DEVICES)),
        "--interval-ms", "250", stdout=asyncio.subprocess.PIPE)
    assert sim.stdout is not None
    paths = [(await sim.stdout.readline()).decode().split()[1]
             for _ in range(len(GATEWAYS) * len(DEVICES))]
    ports = {gw: paths[i * len(DEVICES):(i + 1) * len(DEVICES)]
             for i, gw in enumerate(GATEWAYS)}
    sub = Client(broker.port)
    sub.subscribe("mcp/v1/#")
    procs: dict[str, asyncio.subprocess.Process] = {}
    try:
        for gw in GATEWAYS:
            procs[gw] = await _start(_config(tmp_path, gw, ports[gw], broker.url),
                                     tmp_path / f"{gw}.log")
        app = DashboardApp(broker.url)
        async with app.run_test(size=(160, 50)):
            everything = {(gw, dev): "online" for gw in GATEWAYS for dev in DEVICES}
            await wait_for(lambda: _shown(app) == everything, timeout=40,
                           what="the dashboard showing all 40 devices online")
            table = app.overview.query_one(DeviceTable)
            await wait_for(lambda: table.row_count == 40, what="40 rows")
            await wait_for(lambda: "| 40/40 devices online" in _health(app),
                           what="the health line")
            assert "| 10 gateways, 10 online" in _health(app)

            # Each gateway lists exactly its own four devices, on its own ports.
            for gw in GATEWAYS:
                answer = await app.fabric.request(gw, None, "list_devices")
                assert answer["status"] == "ok", answer
                devices = answer["payload"]["devices"]
                assert devices.keys() == set(DEVICES), (gw, devices)
                assert sorted(d["port"] for d in devices.values()) == sorted(ports[gw])

            # The same gateway_id again: refused, exit 2, and the holder goes on.
            duplicate = await asyncio.create_subprocess_exec(
                BIN / "mcp-gateway", "run", "--config",
                str(_config(tmp_path, DUPLICATED, ports[DUPLICATED], broker.url,
                            name="duplicate")),
                stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(duplicate.communicate(), 30)
            assert duplicate.returncode == 2, err
            assert (f"mcp-gateway: gateway_id '{DUPLICATED}' is in use on {broker.url}: a "
                    "gateway started at ").encode() in err
            assert procs[DUPLICATED].returncode is None
            answer = await app.fabric.request(DUPLICATED, None, "list_devices")
            assert answer["status"] == "ok"

            # One gateway dies: it and its devices show dead; the others are untouched.
            before = {key: len(events) for key, events in _events(sub).items()}
            procs[KILLED].send_signal(signal.SIGKILL)
            await procs[KILLED].wait()
            dead = {(KILLED, dev): "stale" for dev in DEVICES}
            await wait_for(lambda: _shown(app) == {**everything, **dead}, timeout=15,
                           what="the killed gateway's devices stale, the others online")
            assert app.state.gateways[KILLED].state == "offline"
            await wait_for(lambda: "| 36/40 devices online, 4 stale" in _health(app),
                           what="the health line")
            health = _health(app)
            assert "| 10 gateways, 9 online" in health
            assert f"; {KILLED} offline for " in health
            await wait_for(lambda: all(
                len(_events(sub).get((gw, dev), [])) >= before[gw, dev] + 8
                for gw in GATEWAYS if gw != KILLED for dev in DEVICES), timeout=20,
                what="every other device's events going on")
            assert _shown(app) == {**everything, **dead}

        for gw, proc in procs.items():
            if gw != KILLED:
                proc.send_signal(signal.SIGTERM)
        for gw, proc in procs.items():
            assert await asyncio.wait_for(proc.wait(), 20) in ((0,) if gw != KILLED else (-9,))
        await wait_for(lambda: all(
            (json.loads(m.payload) or {}).get("state") == "offline"
            for m in [next(m for m in reversed(sub.on(f"mcp/v1/{gw}/status")))
                      for gw in GATEWAYS]), what="every gateway's last status offline")
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        sim.send_signal(signal.SIGTERM)
        await sim.wait()

    # Every device's events, complete and only under its gateway.
    events = _events(sub)
    assert set(events) == {(gw, dev) for gw in GATEWAYS for dev in DEVICES}
    for (gw, dev), envelopes in events.items():
        assert {e["source"] for e in envelopes} == {f"{gw}/{dev}"}
        seqs = sorted({e["seq"] for e in envelopes})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"a gap in {gw}/{dev}'s seqs"
    for gw in GATEWAYS:
        ports_said = {json.loads(m.payload).get("port")
                      for m in sub.on(f"mcp/v1/{gw}/devices/") if m.topic.endswith("/status")
                      and m.payload}
        assert ports_said - {None} == set(ports[gw]), gw
        instances = {json.loads(m.payload)["instance"] for m in sub.on(f"mcp/v1/{gw}/status")}
        assert len(instances) == 1, (gw, instances)  # the refused one never published
    sub.close()


# ---------------------------------------------------------------------- the overview at size


def _fleet_fabric(state: FabricState) -> None:
    """Deterministic content: ten gateways of four devices each; edge-07 died 90 s ago
    (its devices' own statuses still say online); edge-02 has events queued; one device of
    edge-05 is unplugged."""
    for i, gw in enumerate(GATEWAYS):
        msg(state, f"{gw}/status", {"state": "online", "version": "0.1.0",
                                    "started_at": NOW - 600 - i, "instance": f"{i:016x}"})
        msg(state, f"{gw}/stats", {
            "uptime_s": 600 + i, "mqtt": {"spooled": 12 if gw == "edge-02" else 0,
                                          "dropped": 0},
            "devices": {dev: {"rx_fps": 4.0, "checksum_errors": (i + j) % 3 if i == 4 else 0,
                              "retries": 0, "queue_depth": 0, "last_seen": NOW - 1}
                        for j, dev in enumerate(DEVICES)}})
        for j, dev in enumerate(DEVICES):
            unplugged = gw == "edge-05" and dev == "sensor-2"
            msg(state, f"{gw}/devices/{dev}/status", {
                "state": "offline" if unplugged else "online",
                "reason": "port_gone" if unplugged else "registered", "since": NOW - 590,
                "port": f"/dev/mcp/{gw}-{j}", "profile": "env-sensor", "node_id": j + 1,
                "uid": f"{i:08x}{j:08x}", "fw": "1.2.3", "model": "env-sensor"})
    msg(state, "edge-07/status", {"state": "offline", "instance": f"{7:016x}",
                                  "started_at": NOW - 607}, now=NOW - 90)


def _fleet_app() -> DashboardApp:
    app = DashboardApp("mqtt://127.0.0.1:9", connect=False, clock=lambda: NOW)
    _fleet_fabric(app.state)
    return app


async def _sort_by_gateway(pilot) -> None:
    # What ``s`` does, without its toast (which would be in the snapshot or not, by timing).
    pilot.app.overview.sort = "gateway"
    pilot.app.redraw()
    await pilot.pause()


def test_snapshot_of_the_overview_of_ten_gateways(snap_compare):
    """All forty devices at 160x50, grouped by gateway: the dead gateway's four stale, the
    health line counting gateways instead of describing each."""
    assert snap_compare(_fleet_app(), terminal_size=(160, 50), run_before=_sort_by_gateway)


def test_the_health_line_of_a_fleet_names_only_the_gateways_not_online():
    state = FabricState()
    _fleet_fabric(state)
    text = health_text(state, True, 0, "", now=NOW, url="mqtt://b:1883")
    assert text == ("broker mqtt://b:1883 connected | 10 gateways, 9 online (queued 12 "
                    "dropped 0); edge-07 offline for 2m | 35/40 devices online, 4 stale")
    msg(state, "edge-04/status", {"state": "degraded", "reason": "spool_error",
                                  "started_at": NOW - 604})
    assert "9 online" not in health_text(state, True, 0, "", now=NOW)
    assert "; edge-04 degraded (spool_error) up 10m" in health_text(state, True, 0, "", now=NOW)
