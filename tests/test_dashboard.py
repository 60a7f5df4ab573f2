"""The dashboard: its state from fabric messages, and the app driven by Textual's pilot
against a real Mosquitto fed by a real gateway and simulated devices."""

from __future__ import annotations

import json

from textual.widgets import Input, Select, Static

from firmware_sim import Fleet, FleetSpec
from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.config import parse_config
from tests.harness import wait_for
from tui.app import DashboardApp
from tui.command import CommandScreen
from tui.detail import DeviceScreen
from tui.device_table import DeviceTable
from tui.state import FabricState

P = "mcp/v1"


def msg(state: FabricState, topic: str, body) -> None:
    state.apply(f"{P}/{topic}", json.dumps(body).encode() if body is not None else b"")


def test_the_state_follows_statuses_stats_and_events():
    state = FabricState(P)
    msg(state, "gw1/status", {"state": "online", "version": "0.1", "started_at": 1.0})
    msg(state, "gw1/devices/a/status", {"state": "online", "reason": "registered",
                                        "since": 5.0, "profile": "env-sensor", "fw": "1.2.3"})
    msg(state, "gw1/devices/a/events/status", {"timestamp": 10.0, "payload": {
        "temperature_c": 21.5, "humidity_pct": 40.0}})
    msg(state, "gw1/devices/a/events/status", {"timestamp": 11.0, "payload": {
        "temperature_c": 21.7, "humidity_pct": 41.0}})
    msg(state, "gw1/devices/a/events/log", {"timestamp": 12.0, "payload": {
        "level": "warn", "text": "low battery"}})
    msg(state, "gw1/stats", {"uptime_s": 60, "mqtt": {"spooled": 3, "dropped": 1},
                             "devices": {"a": {"rx_fps": 2.5, "checksum_errors": 2,
                                               "discarded_bytes": 5, "retries": 1}}})
    msg(state, "gw2/devices/a/status", {"state": "offline", "reason": "port_gone"})
    device = state.devices[("gw1", "a")]
    assert device.telemetry == {"temperature_c": 21.7, "humidity_pct": 41.0}
    assert [v for _, v in device.history["temperature_c"]] == [21.5, 21.7]
    assert device.facts == {"profile": "env-sensor", "fw": "1.2.3"}
    assert device.errors == 7
    assert any("low battery" in line for line in device.log)
    assert state.gateways["gw1"].mqtt == {"spooled": 3, "dropped": 1}
    changed, gateways = state.take_changes()
    assert changed == {("gw1", "a"), ("gw2", "a")}
    assert gateways
    assert state.take_changes() == (set(), False)
    # Filter by typing, sort, bad input counted, a cleared status removes the device.
    assert [d.gateway_id for d in state.rows("offline")] == ["gw2"]
    assert [d.gateway_id for d in state.rows("", "errors")] == ["gw1", "gw2"]
    state.apply(f"{P}/gw1/devices/a/status", b"not json")
    state.apply(f"{P}/gw1/devices/a/status", b"[1, 2]")
    assert state.bad_messages == 2
    msg(state, "gw2/devices/a/status", None)
    assert ("gw2", "a") not in state.devices


def table_states(app: DashboardApp) -> dict[str, str]:
    table = app.overview.query_one(DeviceTable)
    return {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[2])
            for i in range(table.row_count)}


async def test_the_dashboard_watches_and_commands_a_real_fabric(tmp_path, broker):
    links = tmp_path / "links"
    async with Fleet(FleetSpec(count=2, interval_ms=200, link_dir=links)) as fleet:
        config = parse_config({
            "gateway_id": "test-gw", "state_dir": str(tmp_path / "state"),
            "stats_interval_s": 0.5, "broker": {"url": broker.url},
            "ports": [{"name": d.name, "path": str(links / d.name), "heartbeat_s": 0.5,
                       "allow": ["read", "ping"]} for d in fleet.devices]})
        gateway = Gateway(config)
        async with Bridge(gateway, config), gateway:
            app = DashboardApp(broker.url, gateway="test-gw")
            async with app.run_test(size=(160, 40)) as pilot:
                await wait_for(lambda: table_states(app) == {"sim-0": "online",
                                                            "sim-1": "online"},
                               timeout=10, what="both devices online in the table")
                health = str(app.overview.query_one("#health", Static).render())
                assert "broker connected" in health
                assert "2/2 devices online" in health
                # Unplugged: the row says offline.
                await fleet.devices[1].unplug()
                await wait_for(lambda: table_states(app).get("sim-1") == "offline",
                               timeout=10, what="sim-1 offline in the table")
                # Filter by typing.
                await pilot.press("s", "i", "m", "-", "0")  # "s" sorts; the rest filters
                await wait_for(lambda: list(table_states(app)) == ["sim-0"],
                               what="the filter")
                assert app.overview.query_one("#filter", Input).value == "im-0"
                # Enter opens the device; c opens the command form.
                app.overview.query_one(DeviceTable).focus()
                await pilot.press("enter")
                await wait_for(lambda: isinstance(app.screen, DeviceScreen), what="detail")
                await wait_for(lambda: "temperature_c: " in str(app.screen.query_one(
                    "#label-temperature_c", Static).render()), what="telemetry shown")
                assert " °C" in str(app.screen.query_one("#label-temperature_c",
                                                         Static).render())
                await pilot.press("c")
                await wait_for(lambda: isinstance(app.screen, CommandScreen), what="form")
                form = app.screen
                form.query_one("#key", Select).value = "interval_ms"
                form.query_one("#send").press()
                result = form.query_one("#result", Static)
                await wait_for(lambda: "interval_ms = 200 ms" in str(result.render()),
                               timeout=10, what="the read's value")
                form.query_one("#action", Select).value = "write"
                form.query_one("#value", Input).value = "500"
                form.query_one("#send").press()
                await wait_for(lambda: str(result.render()).startswith("forbidden"),
                               timeout=10, what="forbidden for a write")
                assert "failed" in result.classes
                await pilot.press("escape")
                device = app.state.devices[("test-gw", "sim-0")]
                assert any("forbidden" in line for line in device.log)
                await pilot.press("escape")  # back to the overview
                # Help and theme.
                await pilot.press("question_mark")
                await wait_for(lambda: type(app.screen).__name__ == "HelpScreen", what="help")
                await pilot.press("escape")
                theme = app.theme
                await pilot.press("t")
                assert app.theme != theme
                # The broker goes away: the health line says so; it comes back by itself.
                broker.stop()
                health = app.overview.query_one("#health", Static)
                await wait_for(lambda: "broker NOT connected" in str(health.render()),
                               what="the health line to say the broker is away")
                assert "down" in health.classes
                broker.start()
                await wait_for(lambda: "broker connected" in str(health.render()),
                               timeout=20, what="the dashboard to reconnect")
                assert "(1 reconnects)" in str(health.render())


NOW = 1_800_000_000.0


def _fixed_fabric(state: FabricState) -> None:
    """Deterministic content: two gateways, three devices, telemetry history, a log."""
    msg(state, "edge-1/status", {"state": "online", "version": "0.1.0", "started_at": NOW - 90})
    msg(state, "edge-1/stats", {"uptime_s": 90, "mqtt": {"spooled": 0, "dropped": 0},
                                "devices": {"boiler": {"rx_fps": 1.0, "retries": 0,
                                                       "queue_depth": 0, "last_seen": NOW - 1},
                                            "pump": {"rx_fps": 0.0, "checksum_errors": 3,
                                                     "last_seen": NOW - 300}}})
    msg(state, "edge-1/devices/boiler/status", {
        "state": "online", "reason": "registered", "since": NOW - 80, "port": "/dev/mcp/A1",
        "profile": "env-sensor", "node_id": 1, "uid": "731f22d7f9126c9d", "fw": "1.2.3",
        "model": "env-sensor", "caps": ["status", "read", "write"]})
    msg(state, "edge-1/devices/pump/status", {"state": "offline", "reason": "port_gone",
                                              "since": NOW - 300, "profile": "env-sensor"})
    msg(state, "edge-2/status", {"state": "offline"})
    msg(state, "edge-2/devices/uid-0011223344556677/status", {
        "state": "unregistered", "reason": "port_open", "profile": "env-sensor"})
    for i in range(60):
        msg(state, "edge-1/devices/boiler/events/status", {"timestamp": NOW - 60 + i, "payload": {
            "temperature_c": round(21 + (i % 12) / 4, 2), "humidity_pct": 40 + i % 7,
            "battery_mv": 3300 - i, "uptime_s": 20 + i}})
    msg(state, "edge-1/devices/boiler/events/log", {"timestamp": NOW - 5, "payload": {
        "level": "warn", "text": "battery below 3.3 V"}})


def _snapshot_app() -> DashboardApp:
    app = DashboardApp("mqtt://127.0.0.1:9", connect=False, clock=lambda: NOW)
    _fixed_fabric(app.state)
    for device in app.state.devices.values():  # log stamps without the local time zone
        device.log = type(device.log)((line[9:] for line in device.log), maxlen=200)
    return app


def test_snapshot_of_the_overview(snap_compare):
    assert snap_compare(_snapshot_app(), terminal_size=(140, 24))


def test_snapshot_of_a_device(snap_compare):
    async def open_boiler(pilot) -> None:
        await pilot.pause()
        app = pilot.app
        app.redraw()
        app.push_screen(DeviceScreen(("edge-1", "boiler")))
        await pilot.pause()
        await pilot.pause()

    assert snap_compare(_snapshot_app(), terminal_size=(120, 36), run_before=open_boiler)
