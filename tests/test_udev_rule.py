"""``mcp-gateway udev-rule DEVICE`` (the installed command) against a fake sysfs tree laid out
as the kernel lays out USB-serial adapters (a real sysfs here has none): a rule that claims
one adapter only, and clear errors (issue 12, item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_deploy import claims_one_device, parse_udev_rule

BIN = Path(sys.executable).parent
PCI = "devices/pci0000:00/0000:00:14.0/usb1"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _link(link: Path, target: Path) -> None:
    """A relative symlink, as sysfs has them (so the tree can live anywhere)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def _usb_device(sysfs: Path, port: str, vendor: str, product: str, serial: str | None,
                manufacturer: str, name: str) -> Path:
    device = sysfs / PCI / port
    for attribute, value in (("idVendor", vendor), ("idProduct", product),
                             ("manufacturer", manufacturer), ("product", name)):
        _write(device / attribute, value)
    if serial is not None:
        _write(device / "serial", serial)
    return device


def _tty(sysfs: Path, tty: str, device_dir: Path, dev: str) -> None:
    """class/tty/<tty> -> .../<device_dir>/tty/<tty>, whose ``device`` is ``device_dir``."""
    node = device_dir / "tty" / tty
    _write(node / "dev", dev)
    _link(node / "device", device_dir)
    _link(sysfs / "class" / "tty" / tty, node)


def _usb_serial_port(sysfs: Path, device: Path, interface: int, tty: str, dev: str) -> None:
    """A usb-serial driver's port (FTDI, CP210x, CH340): interface/ttyUSBn/tty/ttyUSBn."""
    iface = device / f"{device.name}:1.{interface}"
    _write(iface / "bInterfaceNumber", f"{interface:02x}")
    _tty(sysfs, tty, iface / tty, dev)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    (root / "bus" / "platform").mkdir(parents=True)
    # An FTDI FT232R with a serial number.
    ftdi = _usb_device(root, "1-1", "0403", "6001", "A10K3XYZ", "FTDI", "FT232R USB UART")
    _usb_serial_port(root, ftdi, 0, "ttyUSB0", "188:0")
    # An FT2232: one serial number, two ports.
    dual = _usb_device(root, "1-2", "0403", "6010", "FT2X9K", "FTDI", "Dual RS232-HS")
    _usb_serial_port(root, dual, 0, "ttyUSB1", "188:1")
    _usb_serial_port(root, dual, 1, "ttyUSB2", "188:2")
    # A CH340 without a serial number, and what udev's database says of its port.
    ch340 = _usb_device(root, "1-3", "1a86", "7523", None, "", "USB Serial")
    _usb_serial_port(root, ch340, 0, "ttyUSB3", "188:3")
    _write(tmp_path / "udev" / "c188:3",
           "I:123\nE:ID_PATH=pci-0000:00:14.0-usb-0:3:1.0\nE:ID_PATH_TAG=x")
    # A CDC-ACM board (an RP2040): interface 0 has the tty, interface 1 the data.
    pico = _usb_device(root, "1-4", "2e8a", "000a", "E6614103E7", "Raspberry Pi", "Pico")
    control = pico / "1-4:1.0"
    _write(control / "bInterfaceNumber", "00")
    _write(pico / "1-4:1.1" / "bInterfaceNumber", "01")
    _tty(root, "ttyACM0", control, "166:0")
    # The board's own UART, and a virtual terminal.
    uart = root / "devices" / "platform" / "fe201000.serial"
    _link(uart / "subsystem", root / "bus" / "platform")
    _tty(root, "ttyAMA0", uart, "204:64")
    _write(root / "devices" / "virtual" / "tty" / "tty0" / "dev", "4:0")
    _link(root / "class" / "tty" / "tty0", root / "devices" / "virtual" / "tty" / "tty0")
    return root


def udev_rule(sysfs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mcp-gateway"), "udev-rule", *args, "--sysfs", str(sysfs),
         "--udev-data", str(sysfs.parent / "udev")],
        capture_output=True, text=True, timeout=30, check=False)


def _the_rule(stdout: str) -> list[tuple[str, str | None, str, str]]:
    lines = [line for line in stdout.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1, stdout
    tokens = parse_udev_rule(lines[0])
    assert claims_one_device(tokens)
    return tokens


def test_a_rule_for_one_adapter_by_vendor_product_and_serial(sysfs):
    result = udev_rule(sysfs, "ttyUSB0", "--name", "boiler")
    assert result.returncode == 0, result.stderr
    assert _the_rule(result.stdout) == [
        ("SUBSYSTEM", None, "==", "tty"), ("ATTRS", "{idVendor}", "==", "0403"),
        ("ATTRS", "{idProduct}", "==", "6001"), ("ATTRS", "{serial}", "==", "A10K3XYZ"),
        ("SYMLINK", None, "+=", "mcp/boiler"), ("GROUP", None, "=", "dialout"),
        ("MODE", None, "=", "0660"), ("TAG", None, "+=", "systemd")]
    assert result.stdout.startswith("# FTDI FT232R USB UART (0403:6001), serial A10K3XYZ")
    # Where it goes and what comes next, on stderr (stdout is the file's text).
    assert "| sudo tee -a /etc/udev/rules.d/99-mcp-gateway.rules" in result.stderr
    assert "udevadm control --reload && sudo udevadm trigger" in result.stderr
    assert 'path = "/dev/mcp/boiler"' in result.stderr


def test_the_name_defaults_to_the_serial_and_a_path_is_taken(sysfs):
    result = udev_rule(sysfs, "/dev/ttyUSB0")
    assert result.returncode == 0, result.stderr
    assert ("SYMLINK", None, "+=", "mcp/A10K3XYZ") in _the_rule(result.stdout)


def test_one_port_of_a_multi_port_chip_is_told_by_its_interface(sysfs):
    result = udev_rule(sysfs, "ttyUSB2")
    assert result.returncode == 0, result.stderr
    tokens = _the_rule(result.stdout)
    assert ("ATTRS", "{serial}", "==", "FT2X9K") in tokens
    assert ("ENV", "{ID_USB_INTERFACE_NUM}", "==", "01") in tokens
    assert ("SYMLINK", None, "+=", "mcp/FT2X9K-if01") in tokens


def test_a_cdc_acm_board(sysfs):
    result = udev_rule(sysfs, "ttyACM0", "--name", "pico")
    assert result.returncode == 0, result.stderr
    tokens = _the_rule(result.stdout)
    assert ("ATTRS", "{idVendor}", "==", "2e8a") in tokens
    assert ("ATTRS", "{serial}", "==", "E6614103E7") in tokens
    assert not any(key == "ENV" for key, *_ in tokens)  # its second interface has no tty


def test_an_adapter_without_a_serial_number_is_matched_by_its_usb_port(sysfs):
    result = udev_rule(sysfs, "ttyUSB3", "--name", "meter")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "ttyUSB3, USB Serial (1a86:7523) on USB port 1-3, has no serial number" in \
        result.stderr
    assert 'ENV{ID_PATH}=="pci-0000:00:14.0-usb-0:3:1.0", SYMLINK+="mcp/meter"' in \
        result.stderr
    assert "--by-path" in result.stderr
    by_path = udev_rule(sysfs, "ttyUSB3", "--by-path", "--name", "meter")
    assert by_path.returncode == 0, by_path.stderr
    assert _the_rule(by_path.stdout) == [
        ("SUBSYSTEM", None, "==", "tty"), ("ENV", "{ID_PATH}", "==",
                                           "pci-0000:00:14.0-usb-0:3:1.0"),
        ("SYMLINK", None, "+=", "mcp/meter"), ("GROUP", None, "=", "dialout"),
        ("MODE", None, "=", "0660"), ("TAG", None, "+=", "systemd")]


@pytest.mark.parametrize(("args", "message"), [
    (["ttyUSB9"], "no such device: ttyUSB9 (no "),
    (["ttyAMA0"], "ttyAMA0 is not a USB serial adapter (it is on the platform bus): its name "
                  "does not change, so it needs no rule; use it as it is: path = "
                  "\"/dev/ttyAMA0\""),
    (["tty0"], "tty0 is not a USB serial adapter: it has no device behind it"),
    (["ttyUSB0", "--name", "../etc"], "--name '../etc' is not a device name"),
    (["ttyUSB3", "--by-path"], "--by-path needs --name"),
])
def test_what_cannot_have_a_rule_says_why(sysfs, args, message):
    result = udev_rule(sysfs, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_no_such_device_lists_the_adapters_that_are_there(sysfs):
    result = udev_rule(sysfs, "/dev/ttyUSB9")
    assert "USB serial adapters here: ttyACM0, ttyUSB0, ttyUSB1, ttyUSB2, ttyUSB3" in \
        result.stderr
    assert "ttyAMA0" not in result.stderr


def test_a_serial_number_with_glob_characters_matches_only_itself(sysfs):
    weird = sysfs / PCI / "1-1" / "serial"
    weird.write_text('A*1"[x]\n')
    result = udev_rule(sysfs, "ttyUSB0")
    assert result.returncode == 0, result.stderr
    tokens = _the_rule(result.stdout)
    assert ("ATTRS", "{serial}", "==", "A?1??x?") in tokens
    assert ("SYMLINK", None, "+=", "mcp/A_1__x_") in tokens
