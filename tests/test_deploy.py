"""What an operator installs: the systemd unit, the udev rules, the install script and the
sample configuration."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (apt install systemd)")
    unit = (ROOT / "systemd" / "mcp-gateway.service").read_text()
    assert "/opt/mcp-gateway/venv/bin/mcp-gateway run --config" in unit
    # verify also checks that ExecStart exists: point it at this checkout's command.
    local = tmp_path / "mcp-gateway.service"
    local.write_text(unit.replace("/opt/mcp-gateway/venv/bin/mcp-gateway",
                                  str(BIN / "mcp-gateway")))
    result = subprocess.run([analyze, "verify", "--man=no", str(local)],
                            capture_output=True, text=True, timeout=60, check=False)
    if "Failed to" in result.stderr and "bus" in result.stderr.lower():
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if local.name in line]
    assert complaints == []  # unknown keys and bad values are only warnings: none allowed
    for wanted in ("Type=notify", "WatchdogSec=", "Restart=on-failure",
                   "SupplementaryGroups=dialout", "StateDirectory=mcp-gateway",
                   "ConfigurationDirectory=mcp-gateway", "ProtectSystem=strict",
                   "ProtectHome=true", "PrivateTmp=true", "NoNewPrivileges=true",
                   "DeviceAllow=char-ttyUSB rw", "RestrictAddressFamilies=",
                   "ExecReload=/bin/kill -HUP $MAINPID"):
        assert wanted in unit, wanted


_UDEV_KEYS = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "ATTRS", "ENV", "IMPORT", "GOTO", "LABEL",
              "SYMLINK", "GROUP", "MODE", "TAG"}
_UDEV_TOKEN = re.compile(r'^([A-Z]+)(\{[A-Za-z_]+\})?(==|!=|\+=|=)"([^"]*)"$')


def test_the_udev_rules_are_well_formed():
    """udevadm verify needs systemd >= 254 (Debian 12 has 252): a structural check."""
    text = (ROOT / "udev" / "99-mcp-gateway.rules").read_text()
    labels, gotos = set(), set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        for token in (t.strip() for t in line.split(", ")):
            match = _UDEV_TOKEN.match(token)
            assert match, f"line {number}: {token!r} is not KEY[{{attr}}]OP\"value\""
            key, _, _op, value = match.groups()
            assert key in _UDEV_KEYS, f"line {number}: unknown key {key}"
            if key == "LABEL":
                labels.add(value)
            if key == "GOTO":
                gotos.add(value)
    assert gotos <= labels, f"GOTO without LABEL: {gotos - labels}"
    for vendor in ("0403", "10c4", "1a86"):  # FTDI, CP210x, CH340
        assert f'ATTRS{{idVendor}}=="{vendor}"' in text
    assert 'ENV{ID_USB_DRIVER}=="cdc_acm"' in text
    assert 'SYMLINK+="mcp/$env{ID_SERIAL_SHORT}"' in text
    assert 'GROUP="dialout"' in text
    assert 'TAG+="systemd"' in text


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_the_install_script_is_idempotent_and_uninstalls(tmp_path):
    script = ROOT / "scripts" / "install.sh"
    env = {**os.environ, "DESTDIR": str(tmp_path / "root")}

    def run(*args: str) -> str:
        result = subprocess.run(["bash", str(script), *args], env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    out = run()
    first = _tree(tmp_path / "root")
    assert set(first) == {"etc/systemd/system/mcp-gateway.service",
                          "etc/udev/rules.d/99-mcp-gateway.rules",
                          "etc/mcp-gateway/gateway.toml",
                          "etc/mcp-gateway/gateway.toml.example"}
    assert "would run: useradd --system" in out
    assert "would run: systemctl enable mcp-gateway.service" in out
    # The operator edits the config; a second install changes nothing else and keeps it.
    config = tmp_path / "root" / "etc" / "mcp-gateway" / "gateway.toml"
    config.write_text(config.read_text() + "\n# edited\n")
    edited = _tree(tmp_path / "root")
    assert "kept the existing" in run()
    assert _tree(tmp_path / "root") == edited
    run("uninstall")
    assert set(_tree(tmp_path / "root")) == {"etc/mcp-gateway/gateway.toml",
                                              "etc/mcp-gateway/gateway.toml.example"}
    run("uninstall", "--purge")
    assert _tree(tmp_path / "root") == {}


def test_the_sample_configuration_loads():
    config = load_config(ROOT / "systemd" / "gateway.toml.example")
    assert config.ports[0].path == "/dev/mcp/*"  # the udev rules' names
    assert config.broker is not None
    assert str(config.state_dir) == "/var/lib/mcp-gateway"
