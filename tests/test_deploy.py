"""What an operator installs: the systemd unit, the udev rules, the install script and the
sample configuration."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.config import load_config
from tests.harness import lacking

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        lacking("systemd-analyze is not installed here (apt install systemd)")
    unit = (ROOT / "systemd" / "mcp-gateway.service").read_text()
    assert ("/opt/mcp-gateway/venv/bin/mcp-gateway run --config /etc/mcp-gateway/config.toml"
            in unit)
    # verify also checks that ExecStart exists: point it at this checkout's command.
    local = tmp_path / "mcp-gateway.service"
    local.write_text(unit.replace("/opt/mcp-gateway/venv/bin/mcp-gateway",
                                  str(BIN / "mcp-gateway")))
    result = subprocess.run([analyze, "verify", "--man=no", str(local)],
                            capture_output=True, text=True, timeout=60, check=False)
    if "Failed to" in result.stderr and "bus" in result.stderr.lower():
        lacking(f"systemd-analyze cannot run here: {result.stderr.strip()}")
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


_UDEV_KEYS = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "KERNELS", "ATTRS", "ENV",
              "IMPORT", "GOTO", "LABEL", "SYMLINK", "GROUP", "MODE", "TAG"}
_UDEV_TOKEN = re.compile(r'^([A-Z]+)(\{[A-Za-z_]+\})?(==|!=|\+=|=)"([^"]*)"$')
#: a match that picks out one adapter: its serial number, or the USB port it is in
_ONE_DEVICE = {("ATTRS", "{serial}"), ("ENV", "{ID_SERIAL_SHORT}"), ("ENV", "{ID_PATH}"),
               ("KERNELS", None)}


def parse_udev_rule(line: str) -> list[tuple[str, str | None, str, str]]:
    """A rule line as (key, {attribute} or None, operator, value) tokens; AssertionError
    on anything that is not KEY[{attr}]OP"value"."""
    tokens = []
    for token in (t.strip() for t in line.split(", ")):
        match = _UDEV_TOKEN.match(token)
        assert match, f"{token!r} is not KEY[{{attr}}]OP\"value\""
        key, attribute, op, value = match.groups()
        assert key in _UDEV_KEYS, f"unknown key {key}"
        tokens.append((key, attribute, op, value))
    return tokens


def claims_one_device(tokens: list[tuple[str, str | None, str, str]]) -> bool:
    """A rule that names a device matches one adapter (a serial or a port), and no glob."""
    specific = [(k, a) for k, a, op, v in tokens
                if op == "==" and (k, a) in _ONE_DEVICE and v and not set(v) & set("*[|")]
    return bool(specific)


def _rules(text: str) -> tuple[list[str], list[str]]:
    """The active rule lines, and the example rules in comments (``# SUBSYSTEM==…``)."""
    active = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    examples = [line[2:] for line in text.splitlines() if line.startswith('# SUBSYSTEM==')]
    return active, examples


def test_the_udev_rules_claim_no_device_by_default():
    """Issue 12: the shipped rules matched every FTDI, CP210x, CH340/CH9102 and CDC-ACM
    adapter, so the gateway grabbed a Zigbee stick on the same box. Now no line is active
    until the operator adds one per adapter; the examples each claim one adapter."""
    text = (ROOT / "udev" / "99-mcp-gateway.rules").read_text()
    active, examples = _rules(text)
    assert active == []
    assert len(examples) >= 3
    for line in examples:
        tokens = parse_udev_rule(line)
        assert claims_one_device(tokens), line
        assert ("SUBSYSTEM", None, "==", "tty") in tokens
        assert ("GROUP", None, "=", "dialout") in tokens
        assert ("TAG", None, "+=", "systemd") in tokens
        assert any(k == "SYMLINK" and v.startswith("mcp/") for k, _, _, v in tokens)
    assert "mcp-gateway udev-rule" in text
    assert "/etc/udev/rules.d/99-mcp-gateway.rules" in text
    assert "udevadm control --reload" in text


#: the active lines of the rules shipped before issue 12 (a catch-all by chip)
_OLD_CATCH_ALL = """\
ACTION=="remove", GOTO="mcp_end"
SUBSYSTEM!="tty", GOTO="mcp_end"
SUBSYSTEMS=="usb", IMPORT{builtin}="usb_id"
ENV{ID_SERIAL_SHORT}=="", GOTO="mcp_end"
ATTRS{idVendor}=="0403", GOTO="mcp_link"
ATTRS{idVendor}=="10c4", ATTRS{idProduct}=="ea60|ea70|ea71", GOTO="mcp_link"
ATTRS{idVendor}=="1a86", ATTRS{idProduct}=="7523|5523|55d4", GOTO="mcp_link"
ENV{ID_USB_DRIVER}=="cdc_acm", GOTO="mcp_link"
GOTO="mcp_end"
LABEL="mcp_link"
ENV{ID_USB_INTERFACE_NUM}=="00", SYMLINK+="mcp/$env{ID_SERIAL_SHORT}"
GROUP="dialout", MODE="0660", TAG+="systemd"
LABEL="mcp_end"
"""


def test_the_catch_all_check_catches_the_old_rules():
    """The check above can fail: the rules shipped before issue 12 fail it."""
    active, _ = _rules(_OLD_CATCH_ALL)
    linking = [parse_udev_rule(line) for line in active if "SYMLINK" in line]
    assert linking
    assert not any(claims_one_device(tokens) for tokens in linking)


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
                          "etc/mcp-gateway/config.toml",
                          "etc/mcp-gateway/config.toml.example"}
    assert "would run: useradd --system" in out
    assert "would run: systemctl enable mcp-gateway.service" in out
    # The operator edits the config; a second install changes nothing else and keeps it.
    config = tmp_path / "root" / "etc" / "mcp-gateway" / "config.toml"
    config.write_text(config.read_text() + "\n# edited\n")
    edited = _tree(tmp_path / "root")
    assert "kept the existing" in run()
    assert _tree(tmp_path / "root") == edited
    run("uninstall")
    assert set(_tree(tmp_path / "root")) == {"etc/mcp-gateway/config.toml",
                                              "etc/mcp-gateway/config.toml.example",
                                              "etc/udev/rules.d/99-mcp-gateway.rules"}
    run("uninstall", "--purge")
    assert _tree(tmp_path / "root") == {}


def test_the_install_script_moves_an_old_gateway_toml_to_config_toml(tmp_path):
    """One configuration path: the unit and the package read /etc/mcp-gateway/config.toml; a
    box installed when the file was gateway.toml keeps the operator's file under the new
    name (and the old sample goes), and is told so."""
    script = ROOT / "scripts" / "install.sh"
    env = {**os.environ, "DESTDIR": str(tmp_path / "root")}
    confdir = tmp_path / "root" / "etc" / "mcp-gateway"
    confdir.mkdir(parents=True)
    mine = '# the operator\'s own\ngateway_id = "edge-7"\n'
    (confdir / "gateway.toml").write_text(mine)
    (confdir / "gateway.toml.example").write_text("# the old sample\n")
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert f"moved {confdir}/gateway.toml to {confdir}/config.toml" in result.stdout
    assert sorted(p.name for p in confdir.iterdir()) == ["config.toml", "config.toml.example"]
    assert (confdir / "config.toml").read_text() == mine
    unit = (tmp_path / "root" / "etc" / "systemd" / "system" / "mcp-gateway.service").read_text()
    assert "--config /etc/mcp-gateway/config.toml" in unit


def test_nothing_names_the_old_configuration_path():
    """The unit, the install script, the sample and the deployment guide name one file."""
    for relative in ("systemd/mcp-gateway.service", "systemd/gateway.toml.example",
                     "docs/deploy.md", "docs/configuration.md", "packaging/build-deb.sh"):
        text = (ROOT / relative).read_text()
        assert "/etc/mcp-gateway/gateway.toml" not in text, relative
        assert "/etc/mcp-gateway/config.toml" in text, relative


def test_the_install_script_keeps_the_operators_udev_rules_and_sets_old_ones_aside(tmp_path):
    script = ROOT / "scripts" / "install.sh"
    env = {**os.environ, "DESTDIR": str(tmp_path / "root")}
    rules = tmp_path / "root" / "etc" / "udev" / "rules.d" / "99-mcp-gateway.rules"

    def run() -> str:
        result = subprocess.run(["bash", str(script)], env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    # A box installed by an old version has the catch-all rules: they must not stay.
    rules.parent.mkdir(parents=True)
    old = 'SUBSYSTEM!="tty", GOTO="mcp_end"\nATTRS{idVendor}=="0403", GOTO="mcp_link"\n'
    rules.write_text(old)
    out = run()
    assert "set aside the old catch-all udev rules" in out
    assert rules.with_name(rules.name + ".old").read_text() == old
    assert rules.read_text() == (ROOT / "udev" / "99-mcp-gateway.rules").read_text()
    # The operator's own lines survive the next install (an upgrade).
    mine = ('SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001", '
            'ATTRS{serial}=="A10K3XYZ", SYMLINK+="mcp/boiler", GROUP="dialout", '
            'MODE="0660", TAG+="systemd"\n')
    rules.write_text(rules.read_text() + mine)
    edited = rules.read_text()
    assert "kept the existing" in run()
    assert rules.read_text() == edited


def test_the_sample_configuration_loads():
    config = load_config(ROOT / "systemd" / "gateway.toml.example")
    # Issue 12: no glob claiming every adapter; each port is one the operator named.
    assert config.ports
    for port in config.ports:
        assert not port.is_glob, port.path
        assert port.path == f"/dev/mcp/{port.name}"  # the name its udev rule gives it
    assert config.broker is not None
    assert str(config.state_dir) == "/var/lib/mcp-gateway"
