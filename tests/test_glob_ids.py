"""Glob ports' device ids (issue 13, item 9): unique for every match, and a port whose id is
taken starts when it frees. Real ptys of simulated devices, behind real symlinks."""

from __future__ import annotations

import logging

from firmware_sim import Fleet, FleetSpec
from gateway.ports import unique_device_id
from gateway.session import DeviceRenamed
from tests.harness import gateway_config, is_state, next_event, running_gateway, wait_for


async def test_glob_matches_with_one_file_name_in_different_directories_all_start(tmp_path):
    """Issue 13 item 9: ``a/*/tty`` matching ``a/1/tty`` and ``a/2/tty`` started only the
    first ("device id already in use ... not started"), for good. Now each match's id is its
    path below the glob's fixed directory (``bus-1_tty``, ``bus-2_tty``); two paths that
    differ only in characters an id cannot hold get a hash of the path on the second."""
    root = tmp_path / "a"
    dirs = ["1", "2", "x y", "x_y"]
    async with Fleet(FleetSpec(count=len(dirs), interval_ms=100)) as fleet:
        for name, device in zip(dirs, fleet.devices, strict=True):
            (root / name).mkdir(parents=True)
            (root / name / "tty").symlink_to(device.link.path)
        config = gateway_config(tmp_path, {"bus": str(root / "*" / "tty")})
        async with running_gateway(config) as (gw, sub):
            path_ids = {}
            for device in fleet.devices:
                uid_id = f"uid-{device.uid.hex()}"
                renamed = await next_event(sub, lambda e, i=uid_id: isinstance(
                    e, DeviceRenamed) and e.device_id == i, timeout=10)
                path_ids[renamed.old_id] = gw.devices[uid_id].port
                await next_event(sub, is_state(uid_id, "online"), timeout=5)
            hashed = unique_device_id("bus-x_y_tty", str(root / "x_y" / "tty"))
            assert path_ids == {
                "bus-1_tty": str(root / "1" / "tty"),
                "bus-2_tty": str(root / "2" / "tty"),
                "bus-x_y_tty": str(root / "x y" / "tty"),  # sorted first: it keeps the plain id
                hashed: str(root / "x_y" / "tty"),
            }
            assert len(gw.devices) == len(dirs)


async def test_a_port_waiting_on_its_device_id_starts_when_the_id_frees(tmp_path, caplog):
    """Issue 13 item 9: a port whose device id was in use was never started, even after the
    id was free. A reload adds a port named like a glob match's id: it waits (one ERROR line
    saying so), and starts as soon as the reload that removes the glob frees the id."""
    caplog.set_level(logging.INFO, logger="gateway.app")
    links, other = tmp_path / "links", tmp_path / "other"
    async with Fleet(FleetSpec(count=1, name_prefix="dev", link_dir=links, interval_ms=100)) \
            as globbed, Fleet(FleetSpec(count=1, name_prefix="x", link_dir=other,
                                        interval_ms=100)) as fixed:  # fmt: skip
        glob_port = {"bus": str(links / "dev-*")}
        config = gateway_config(tmp_path, glob_port)
        async with running_gateway(config) as (gw, sub):
            uid_id = f"uid-{globbed.devices[0].uid.hex()}"
            await next_event(sub, is_state(uid_id, "online"), timeout=10)
            # The path id stays the glob device's while it is uid-named (it may go back to it).
            report = await gw.apply(gateway_config(
                tmp_path, {**glob_port, "bus-dev-0": str(other / "x-0")}))
            assert report.added == ["bus-dev-0"]
            await wait_for(lambda: any("starts when it is free" in r.getMessage()
                                       for r in caplog.records), what="the waiting line")
            assert gw.devices[uid_id].port == str(links / "dev-0")
            assert "bus-dev-0" not in gw.devices
            report = await gw.apply(gateway_config(tmp_path, {"bus-dev-0": str(other / "x-0")}))
            assert report.removed == ["bus"]
            online = await next_event(sub, is_state("bus-dev-0", "online"), timeout=10)
            assert online.facts["uid"] == fixed.devices[0].uid.hex()
            assert online.facts["port"] == str(other / "x-0")
            assert set(gw.devices) == {"bus-dev-0"}
