"""The dashboard: its state from fabric messages, and the app driven by Textual's pilot
against a real Mosquitto fed by a real gateway and simulated devices."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
from pathlib import Path

from textual.geometry import Region
from textual.widgets import Input, Select, Static

from firmware_sim import Fleet, FleetSpec
from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.bridge.mqtt import BrokerSettings
from gateway.config import parse_config
from tests.harness import wait_for
from tui.app import DashboardApp
from tui.command import CommandScreen
from tui.detail import DeviceScreen
from tui.device_table import DeviceTable, cell
from tui.fabric import shown_url
from tui.help import HelpScreen
from tui.overview import health_text
from tui.state import FabricState

P = "mcp/v1"
BIN = Path(sys.executable).parent


def msg(state: FabricState, topic: str, body, now: float | None = None) -> None:
    state.apply(f"{P}/{topic}", json.dumps(body).encode() if body is not None else b"", now)


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


def test_devices_of_an_offline_gateway_are_stale_whatever_their_own_status_says():
    """Spec (fabric.md): a device's status holds only while its gateway's status is online;
    the dashboard records when it saw the gateway go offline."""
    state = FabricState(P, clock=lambda: 500.0)
    msg(state, "gw1/status", {"state": "online", "started_at": 1.0})
    for name in ("a", "b"):
        msg(state, f"gw1/devices/{name}/status", {"state": "online", "reason": "registered"})
    msg(state, "gw1/devices/c/status", {"state": "offline", "reason": "port_gone"})
    msg(state, "gw1/stats", {"devices": {n: {"rx_fps": 2.5} for n in ("a", "b", "c")}})
    assert state.counts() == (2, 0, 3)
    state.take_changes()
    # The will (a SIGKILL, a power loss): the devices' retained statuses still say online.
    msg(state, "gw1/status", {"state": "offline"}, now=100.0)
    a, c = state.devices[("gw1", "a")], state.devices[("gw1", "c")]
    assert (a.state, a.shown_state, c.shown_state) == ("online", "stale", "offline")
    assert state.gateways["gw1"].offline_since == 100.0
    assert a.gateway_offline_since == 100.0
    assert state.counts() == (0, 2, 3)
    assert state.take_changes()[0] == {("gw1", "a"), ("gw1", "b"), ("gw1", "c")}
    assert [d.device_id for d in state.rows("stale")] == ["a", "b"]
    # No stale rate for a device that is not there.
    assert (a.rx_fps, c.rx_fps, cell(a, "rx", 0), cell(c, "rx", 0)) == (None, None, "-", "-")
    # Still offline, said again: the time it went away stays.
    msg(state, "gw1/status", {"state": "offline"}, now=200.0)
    assert a.gateway_offline_since == 100.0
    # A device first seen while its gateway is offline (the dashboard starts after the
    # crash, retained messages only), with the clock's time.
    msg(state, "gw2/status", {"state": "offline"})
    msg(state, "gw2/devices/x/status", {"state": "unregistered", "reason": "port_open"})
    assert state.devices[("gw2", "x")].shown_state == "stale"
    assert state.gateways["gw2"].offline_since == 500.0
    # Back online: its devices' own statuses hold again.
    msg(state, "gw1/status", {"state": "online", "started_at": 300.0})
    assert (a.shown_state, a.rx_fps, state.gateways["gw1"].offline_since) == (
        "online", 2.5, None)
    assert state.counts() == (2, 1, 4)


def test_the_shown_broker_url_never_carries_a_password():
    assert shown_url(BrokerSettings(url="mqtt://127.0.0.1:1883")) == "mqtt://127.0.0.1:1883"
    assert shown_url(BrokerSettings(url="mqtts://gw:secret@broker.example:8883",
                                    password="pw")) == "mqtts://gw@broker.example:8883"
    assert shown_url(BrokerSettings(url="mqtt://[::1]:1884", username="dash",
                                    password="pw")) == "mqtt://dash@[::1]:1884"


def table_column(app: DashboardApp, column: str) -> dict[str, str]:
    """device -> the text of ``column`` in its row, as the table shows it."""
    table = app.overview.query_one(DeviceTable)
    return {str(table.get_cell(row, "device")): str(table.get_cell(row, column))
            for row in table.rows}


def table_states(app: DashboardApp) -> dict[str, str]:
    return table_column(app, "state")


def headers(app: DashboardApp) -> list[str]:
    table = app.overview.query_one(DeviceTable)
    return [str(c.label) for c in table.ordered_columns]


def health_of(app: DashboardApp) -> str:
    return str(app.overview.query_one("#health", Static).render())


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
                # The broker's URL is on the health line, for mosquitto_sub beside it.
                assert f"broker {broker.url} connected" in health_of(app)
                assert "2/2 devices online" in health_of(app)
                # Unplugged: the row says offline, and shows no stale rate.
                await fleet.devices[1].unplug()
                await wait_for(lambda: table_states(app).get("sim-1") == "offline",
                               timeout=10, what="sim-1 offline in the table")
                assert table_column(app, "rx")["sim-1"] == "-"
                await filter_mode_keeps_keys_for_text(app, pilot)
                # Enter opens the device; c opens the command form.
                await pilot.press("slash", *"sim-0", "enter")
                await wait_for(lambda: list(table_states(app)) == ["sim-0"],
                               what="the filter")
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
                await wait_for(lambda: "NOT connected" in str(health.render()),
                               what="the health line to say the broker is away")
                assert "down" in health.classes
                broker.start()
                await wait_for(lambda: f"{broker.url} connected" in str(health.render()),
                               timeout=20, what="the dashboard to reconnect")
                assert "(1 reconnects)" in str(health.render())


async def filter_mode_keeps_keys_for_text(app: DashboardApp, pilot) -> None:
    """Issue 12: typing "sim-1" used to filter by "im-1" (the "s" re-sorted), "eq" quit.
    "/" opens the filter, where every key is text; enter keeps it; escape clears it."""
    overview = app.overview
    filter_input = overview.query_one("#filter", Input)
    assert not filter_input.display  # closed until "/"
    assert headers(app)[0] == "device ▲"  # the sort key, in its column header
    await pilot.press(*"im-1")  # on the table letters are keys, never filter text
    assert overview.filter_text == ""
    assert not filter_input.display
    await pilot.press("slash", *"sim-1")
    await wait_for(lambda: list(table_states(app)) == ["sim-1"], what="the filter")
    assert (overview.filter_text, overview.sort) == ("sim-1", "device")
    await pilot.press("enter")  # kept: the table has the keys again, the filter stays
    assert overview.query_one(DeviceTable).has_focus
    assert filter_input.display
    assert list(table_states(app)) == ["sim-1"]
    await pilot.press("x")  # not added to the kept filter
    assert overview.filter_text == "sim-1"
    await pilot.press("s")  # now a key: sorts
    assert overview.sort == "gateway"
    await wait_for(lambda: "gateway ▲" in headers(app), what="the sort arrow moved")
    await pilot.press("escape")  # cleared and closed
    await wait_for(lambda: sorted(table_states(app)) == ["sim-0", "sim-1"],
                   what="the filter cleared")
    assert not filter_input.display
    await pilot.press("slash", "e", "q")  # text, not "quit"
    assert overview.filter_text == "eq"
    assert app.is_running
    await pilot.press("escape", "s", "s")  # gateway -> state -> rx/s, descending
    await wait_for(lambda: "rx/s ▼" in headers(app), what="sorted by rx/s")
    await pilot.press("s", "s")  # -> errors -> device
    await wait_for(lambda: headers(app)[0] == "device ▲", what="sorted by device again")
    await wait_for(lambda: list(table_states(app)) == ["sim-0", "sim-1"], what="all rows")


async def test_devices_of_a_killed_gateway_show_stale_from_its_real_last_will(tmp_path,
                                                                                broker):
    """Issue 12: after a SIGKILL the devices' retained statuses still say online; the
    gateway's will (published by Mosquitto when the dead process's socket closes) makes
    them stale in the table, the counts and the device screen."""
    links = tmp_path / "links"
    async with Fleet(FleetSpec(count=2, interval_ms=200, link_dir=links)) as fleet:
        config = tmp_path / "gw.toml"
        text = (f'gateway_id = "dead-gw"\nstate_dir = "{tmp_path / "state"}"\n'
                f'stats_interval_s = 0.5\n[broker]\nurl = "{broker.url}"\n')
        for device in fleet.devices:
            text += (f'[[ports]]\nname = "{device.name}"\npath = "{links / device.name}"\n'
                     "heartbeat_s = 0.5\n")
        config.write_text(text)
        gateway = await asyncio.create_subprocess_exec(
            BIN / "mcp-gateway", "run", "--config", str(config),
            stderr=asyncio.subprocess.DEVNULL)
        try:
            app = DashboardApp(broker.url, gateway="dead-gw")
            async with app.run_test(size=(160, 40)) as pilot:
                await wait_for(lambda: table_states(app) == {"sim-0": "online",
                                                            "sim-1": "online"},
                               timeout=15, what="both devices online in the table")
                await wait_for(lambda: table_column(app, "rx")["sim-0"] not in ("-", "0.0"),
                               timeout=10, what="a rate for sim-0")
                gateway.send_signal(signal.SIGKILL)
                await gateway.wait()
                await wait_for(lambda: table_states(app) == {"sim-0": "stale",
                                                            "sim-1": "stale"},
                               timeout=10, what="both devices stale in the table")
                # Their own retained statuses still say online: that is what the will
                # overrides.
                assert app.state.devices[("dead-gw", "sim-0")].state == "online"
                assert table_column(app, "rx") == {"sim-0": "-", "sim-1": "-"}
                health = health_of(app)
                assert "dead-gw offline for " in health
                assert "0/2 devices online, 2 stale" in health
                await pilot.press("enter")
                await wait_for(lambda: isinstance(app.screen, DeviceScreen), what="detail")
                facts = str(app.screen.query_one("#facts", Static).render())
                assert "stale: gateway offline since " in facts
                assert "its last status said online (registered)" in facts
        finally:
            if gateway.returncode is None:
                gateway.kill()
                await gateway.wait()


NOW = 1_800_000_000.0


def _fixed_fabric(state: FabricState) -> None:
    """Deterministic content: two gateways (edge-2 went offline 2 minutes ago), three
    devices, telemetry history, a log."""
    msg(state, "edge-1/status", {"state": "online", "version": "0.1.0", "started_at": NOW - 90})
    msg(state, "edge-1/stats", {"uptime_s": 90, "mqtt": {"spooled": 0, "dropped": 0},
                                "devices": {"boiler": {"rx_fps": 1.0, "retries": 0,
                                                       "queue_depth": 0, "last_seen": NOW - 1},
                                            "pump": {"rx_fps": 0.5, "checksum_errors": 3,
                                                     "last_seen": NOW - 300}}})
    msg(state, "edge-1/devices/boiler/status", {
        "state": "online", "reason": "registered", "since": NOW - 80, "port": "/dev/mcp/A1",
        "profile": "env-sensor", "node_id": 1, "uid": "731f22d7f9126c9d", "fw": "1.2.3",
        "model": "env-sensor", "caps": ["status", "read", "write"]})
    msg(state, "edge-1/devices/pump/status", {"state": "offline", "reason": "port_gone",
                                              "since": NOW - 300, "profile": "env-sensor"})
    msg(state, "edge-2/status", {"state": "offline"}, now=NOW - 120)
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


# Snapshots call nothing timer-dependent: the app paints each screen when it is mounted.

def test_snapshot_of_the_overview(snap_compare):
    assert snap_compare(_snapshot_app(), terminal_size=(140, 24))


def test_snapshot_of_the_overview_at_80x24(snap_compare):
    """The most useful columns (device, gateway, state, rx/s, errors, last seen), the
    sort arrow, the stale device of the offline gateway, the broker URL."""
    assert snap_compare(_snapshot_app(), terminal_size=(80, 24))


def test_snapshot_of_the_overview_at_160x45(snap_compare):
    assert snap_compare(_snapshot_app(), terminal_size=(160, 45))


async def _open_boiler(pilot) -> None:
    await pilot.app.push_screen(DeviceScreen(("edge-1", "boiler")))
    await pilot.pause()


def test_snapshot_of_a_device(snap_compare):
    assert snap_compare(_snapshot_app(), terminal_size=(120, 36), run_before=_open_boiler)


def test_snapshot_of_a_device_at_80x24(snap_compare):
    """Sparklines with their scale (max over min) beside them."""
    assert snap_compare(_snapshot_app(), terminal_size=(80, 24), run_before=_open_boiler)


async def _send_a_command(pilot) -> None:
    app = pilot.app
    await app.push_screen(CommandScreen(("edge-1", "boiler")))
    app.screen.query_one("#send").press()  # not connected: answered at once
    result = app.screen.query_one("#result", Static)
    await wait_for(lambda: str(result.render()).startswith("not_connected"),
                   what="the answer")
    await pilot.pause()  # laid out


def test_snapshot_of_the_command_answer_at_80x24(snap_compare):
    assert snap_compare(_snapshot_app(), terminal_size=(80, 24), run_before=_send_a_command)


async def _open_help(pilot) -> None:
    await pilot.app.push_screen(HelpScreen())


def test_snapshot_of_the_help_at_80x24(snap_compare):
    assert snap_compare(_snapshot_app(), terminal_size=(80, 24), run_before=_open_help)


async def test_the_first_frame_shows_what_is_known_before_any_redraw_timer(monkeypatch):
    """Issue 12: the overview was empty until the 4 Hz timer first fired (a snapshot taken
    before it showed nothing). With the timer an hour away, the first frame is complete."""
    monkeypatch.setattr("tui.app.REDRAW_S", 3600.0)
    app = _snapshot_app()
    async with app.run_test(size=(140, 24)):
        assert "1/3 devices online, 1 stale" in health_of(app)
        assert table_states(app) == {"boiler": "online", "pump": "offline",
                                     "uid-0011223344556677": "stale"}
        assert "edge-2 offline for 2m" in health_of(app)


def _lines(widget) -> list[str]:
    """The text of a widget as it is rendered (border and padding included)."""
    return [strip.text.rstrip() for strip in widget.render_lines(
        Region(0, 0, widget.region.width, widget.region.height))]


async def test_at_80x24_the_table_keeps_its_most_useful_columns_and_unregistered_fits():
    app = _snapshot_app()
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.overview.query_one(DeviceTable)
        assert headers(app) == ["device ▲", "gateway", "state", "rx/s", "errors", "last seen"]
        assert table.virtual_size.width <= table.size.width  # no sideways scrolling
        # A state that grows after the row was drawn (update in place) is not cut.
        msg(app.state, "edge-1/devices/boiler/status", {"state": "unregistered",
                                                        "reason": "hello_pending"})
        app.redraw()
        await pilot.pause()
        assert any(" unregistered " in line for line in _lines(table))
        await pilot.resize_terminal(160, 45)
        await wait_for(lambda: len(headers(app)) == 10, what="every column at 160 wide")
        assert "model / fw" in headers(app)


async def test_at_80x24_the_command_form_shows_its_answer():
    app = _snapshot_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _send_a_command(pilot)
        result = app.screen.query_one("#result", Static)
        assert "not_connected" in "".join(_lines(result))
        # On screen, not clipped by the form (it used to be cut below its Send button).
        region = result.region
        assert all(app.screen.get_widget_at(region.x + 1, y)[0] is result
                   for y in range(region.y, region.bottom)), region


async def test_the_help_text_wraps_cleanly():
    """Each prose line is as full as the box allows: no line starts with a word that would
    have fit on the line before (the help used to carry hard line breaks wider than the
    box, which left one-word lines)."""
    for size in ((80, 24), (160, 45)):
        app = _snapshot_app()
        async with app.run_test(size=size) as pilot:
            await pilot.app.push_screen(HelpScreen())
            # Laid out and rendered (on a busy machine that can take more than one frame).
            await wait_for(lambda app=app: any(
                line.startswith("The top line is the health")
                for line in _lines(app.screen.query_one(Static))), what="the help text laid out")
            text = app.screen.query_one(Static)
            width = text.content_region.width
            lines = _lines(text)
            for before, line in itertools.pairwise(lines):
                if before and line and not line.startswith(" "):
                    first_word = line.split()[0]
                    assert len(before) + 1 + len(first_word) > width, (size, before, line)
            assert max(len(line) for line in lines) <= width


async def test_the_sparkline_scale_is_shown():
    """3300 -> 3241 mV must not look like a full-scale drop: max and min beside it."""
    app = _snapshot_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await _open_boiler(pilot)
        scale = _lines(app.screen.query_one("#scale-battery_mv", Static))
        assert (scale[0].strip(), scale[-1].strip()) == ("3300 mV", "3241 mV")


def first_command(app: DashboardApp) -> str:
    """The first command the open palette offers ("" until it offers one)."""
    found = app.screen.query("CommandList")
    if not found or not found.first().option_count:
        return ""
    return str(found.first().get_option_at_index(0).prompt)


async def test_the_palette_screenshot_saves_without_a_downloads_directory(tmp_path,
                                                                          monkeypatch):
    """Issue 12: "Screenshot" said "Failed to save screenshot": Textual saves to
    ~/Downloads, which an edge box has not. It saves in the working directory then."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for variable in ("XDG_DOWNLOAD_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(variable, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    app = _snapshot_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+p", *"screenshot")
        await wait_for(lambda: "Screenshot" in first_command(app), what="the command")
        await pilot.press("enter")
        saved = await wait_for(lambda: list(work.glob("*.svg")), what="the screenshot file")
        await wait_for(lambda: any("Screenshot saved to" in str(n.message)
                                   for n in app._notifications), what="the notification")
    assert "device" in saved[0].read_text()


def test_a_degraded_gateway_is_up_its_devices_are_not_stale_and_its_reason_shows():
    """Issue 13 item 1: a gateway whose event queue cannot be written says ``degraded``
    (spec: anything but offline is up). Its devices keep their own states, and the health
    line says why it is degraded."""
    state = FabricState(P, clock=lambda: 500.0)
    msg(state, "gw1/status", {"state": "online", "started_at": 1.0})
    msg(state, "gw1/devices/a/status", {"state": "online", "reason": "registered"})
    msg(state, "gw1/status", {"state": "degraded", "reason": "spool_error",
                              "error": "database or disk is full", "started_at": 1.0}, now=100.0)
    device = state.devices[("gw1", "a")]
    assert device.shown_state == "online"
    assert state.gateways["gw1"].offline_since is None
    assert state.counts() == (1, 0, 1)
    text = health_text(state, True, 0, "", now=500.0)
    assert "gw1 degraded (spool_error)" in text
    msg(state, "gw1/status", {"state": "online", "started_at": 1.0})
    assert "(spool_error)" not in health_text(state, True, 0, "", now=500.0)
