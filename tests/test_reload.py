"""What a reload reports: every setting it changed in place is listed under ``updated``
(issue 12, item 5: ``stats_interval_s`` was applied but not listed)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from firmware_sim import Fleet, FleetSpec
from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.config import load_config
from gateway.reload import Reloader
from tests.harness import wait_for

BIN = Path(sys.executable).parent


def _write(path: Path, tmp_path: Path, url: str, links: Path, extra: str = "",
           gateway_allow: str = '["reload"]') -> None:
    path.write_text(f'gateway_id = "rl"\nstate_dir = "{tmp_path / "state"}"\n{extra}\n'
                    f"gateway_allow = {gateway_allow}\n"
                    f'[broker]\nurl = "{url}"\n'
                    f'[[ports]]\nname = "sim-0"\npath = "{links / "sim-0"}"\n')


async def _reload_over_the_fabric(url: str) -> dict:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "mcp-gateway"), "request", "--broker", url, "rl", "-", "reload",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_a_reload_lists_the_gateway_settings_it_changed_under_updated(tmp_path, broker):
    links = tmp_path / "links"
    path = tmp_path / "gw.toml"
    _write(path, tmp_path, broker.url, links)
    config = load_config(path)
    async with Fleet(FleetSpec(count=1, interval_ms=200, link_dir=links)):
        gateway = Gateway(config)
        async with Bridge(gateway, config) as bridge, gateway:
            Reloader(path, gateway, bridge)
            await wait_for(lambda: bridge.mqtt.subscribed, timeout=10, what="the bridge's SUBACK")
            _write(path, tmp_path, broker.url, links,
                   "stats_interval_s = 0.5\nmax_request_bytes = 4096")
            answer = await _reload_over_the_fabric(broker.url)
            assert answer["status"] == "ok", answer
            assert answer["payload"] == {"added": [], "removed": [], "restarted": [],
                                         "updated": ["stats_interval_s", "max_request_bytes"],
                                         "needs_restart": []}
            assert (bridge.config.stats_interval_s, bridge.config.max_request_bytes) == (0.5,
                                                                                        4096)
            # The same file again changes nothing, and says so.
            again = await _reload_over_the_fabric(broker.url)
            assert again["payload"]["updated"] == []
            # gateway_allow applies at once, like a port's allow (issue 13 item 5).
            _write(path, tmp_path, broker.url, links,
                   "stats_interval_s = 0.5\nmax_request_bytes = 4096", '["reload", "trace"]')
            allowed = await _reload_over_the_fabric(broker.url)
            assert allowed["payload"]["updated"] == ["gateway_allow"]
            assert bridge.request_server.config.gateway_allow == ("reload", "trace")
