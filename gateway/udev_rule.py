"""``mcp-gateway udev-rule DEVICE``: a udev rule naming one USB-serial adapter ``/dev/mcp/NAME``.

The gateway claims only the adapters the operator chose: each gets a rule matching its USB
vendor id, product id and serial number (read from sysfs), so a Zigbee stick or a modem on
the same box, even one with the same chip, is left alone. An adapter without a serial
number can only be told apart by the USB port it is plugged into (``ENV{ID_PATH}``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ID_PATTERN, ID_UNSAFE
from gateway.errors import GatewayError

RULES_FILE = "/etc/udev/rules.d/99-mcp-gateway.rules"
RELOAD_COMMAND = "udevadm control --reload && udevadm trigger --subsystem-match=tty --action=change"
#: what every rule gives the device: the gateway's group, and a systemd device unit
DEVICE_ACCESS = 'GROUP="dialout", MODE="0660", TAG+="systemd"'
#: udev match values are globs (``* ? [ ] |``) in double quotes: such characters match as ``?``
_GLOB_OR_QUOTE = re.compile(r'[*?\[\]|"\\]')


class UdevRuleError(GatewayError):
    """No rule can be written for this device; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class UsbSerialAdapter:
    """What sysfs says about the USB device behind one tty."""

    tty: str
    vendor_id: str
    product_id: str
    serial: str | None
    manufacturer: str
    product: str
    #: the USB device's kernel name (``1-1.3``): the port it is plugged into
    usb_port: str
    #: the interface number of this tty (``00``), and whether the device has other ttys
    interface: str | None
    shares_device: bool
    #: udev's ID_PATH for the tty, when its database has it
    id_path: str | None = None

    @property
    def label(self) -> str:
        """``FTDI FT232R USB UART (0403:6001)``: for people."""
        what = " ".join(part for part in (self.manufacturer, self.product) if part)
        return f"{what or 'USB device'} ({self.vendor_id}:{self.product_id})"

    def default_name(self) -> str:
        """``/dev/mcp/<this>``: the serial number (``-ifNN`` for one port of several)."""
        if not self.serial:
            raise UdevRuleError(f"{self.tty} has no serial number: give --name")
        name = ID_UNSAFE.sub("_", self.serial)[:58]
        if self.shares_device and self.interface is not None:
            name += f"-if{self.interface}"
        return name


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def tty_name(device: str) -> str:
    """The kernel name of a tty given as ``ttyUSB0``, ``/dev/ttyUSB0`` or a symlink to it
    (``/dev/serial/by-id/…``)."""
    if "/" not in device:
        return device
    if os.path.exists(device):
        return os.path.basename(os.path.realpath(device))
    return os.path.basename(device)


def usb_serial_ttys(sysfs: Path) -> list[str]:
    """The ttys of this machine that sit on a USB device (for "did you mean")."""
    found = []
    for entry in sorted((sysfs / "class" / "tty").glob("*")):
        with_device = entry / "device"
        if with_device.exists() and _usb_device(with_device.resolve(), sysfs) is not None:
            found.append(entry.name)
    return found


def _usb_device(start: Path, sysfs: Path) -> Path | None:
    """The nearest ancestor of ``start`` with idVendor and idProduct: the USB device."""
    top = sysfs.resolve()
    node = start
    while node != top and top in node.parents:
        if (node / "idVendor").is_file() and (node / "idProduct").is_file():
            return node
        node = node.parent
    return None


def _tty_interfaces(usb_device: Path) -> int:
    """How many of the device's interfaces carry a tty (a multi-port chip has several)."""
    count = 0
    for interface in usb_device.glob(f"{usb_device.name}:*"):
        if any(interface.glob("tty")) or any(interface.glob("*/tty")):
            count += 1
    return count


def _udev_property(sysfs: Path, tty: str, udev_data: Path, key: str) -> str | None:
    """A property of the tty in udev's database (``/run/udev/data/c<major>:<minor>``)."""
    numbers = _read(sysfs / "class" / "tty" / tty / "dev")
    text = _read(udev_data / f"c{numbers}") if numbers else None
    for line in (text or "").splitlines():
        if line.startswith(f"E:{key}="):
            return line.split("=", 1)[1]
    return None


def find_adapter(device: str, sysfs: Path = Path("/sys"),
                 udev_data: Path = Path("/run/udev/data")) -> UsbSerialAdapter:
    """The USB-serial adapter behind ``device``; ``UdevRuleError`` saying why there is none."""
    tty = tty_name(device)
    entry = sysfs / "class" / "tty" / tty
    if not entry.exists():
        here = usb_serial_ttys(sysfs)
        listed = ", ".join(here) if here else "none is plugged in"
        raise UdevRuleError(f"no such device: {device} (no {entry}); USB serial adapters "
                            f"here: {listed}")
    if not (entry / "device").exists():
        raise UdevRuleError(f"{tty} is not a USB serial adapter: it has no device behind it "
                            "(a virtual terminal or pseudo-terminal)")
    start = (entry / "device").resolve()
    usb_device = _usb_device(start, sysfs)
    if usb_device is None:
        bus = os.path.basename(os.path.realpath(start / "subsystem"))
        raise UdevRuleError(
            f"{tty} is not a USB serial adapter (it is on the {bus} bus): its name does not "
            f"change, so it needs no rule; use it as it is: path = \"/dev/{tty}\"")
    interface_dir = next((d for d in [start, *start.parents]
                          if (d / "bInterfaceNumber").is_file()), None)
    interface = _read(interface_dir / "bInterfaceNumber") if interface_dir else None
    return UsbSerialAdapter(
        tty=tty,
        vendor_id=_read(usb_device / "idVendor") or "",
        product_id=_read(usb_device / "idProduct") or "",
        serial=_read(usb_device / "serial") or None,
        manufacturer=_read(usb_device / "manufacturer") or "",
        product=_read(usb_device / "product") or "",
        usb_port=usb_device.name,
        interface=interface,
        shares_device=_tty_interfaces(usb_device) > 1,
        id_path=_udev_property(sysfs, tty, udev_data, "ID_PATH"),
    )


def check_name(name: str) -> str:
    """A name for ``/dev/mcp/<name>``; ``UdevRuleError`` if it cannot be one."""
    if not ID_PATTERN.fullmatch(name) or name in (".", ".."):
        raise UdevRuleError(f"--name {name!r} is not a device name; expected 1-64 of "
                            "A-Z a-z 0-9 _ . -")
    return name


def _match(value: str) -> str:
    return _GLOB_OR_QUOTE.sub("?", value)


def rule_by_serial(adapter: UsbSerialAdapter, name: str) -> str:
    """The rule line naming this adapter (and only it) ``/dev/mcp/<name>``."""
    if not adapter.serial:
        raise UdevRuleError(no_serial_message(adapter, name))
    parts = ['SUBSYSTEM=="tty"', f'ATTRS{{idVendor}}=="{adapter.vendor_id}"',
             f'ATTRS{{idProduct}}=="{adapter.product_id}"',
             f'ATTRS{{serial}}=="{_match(adapter.serial)}"']
    if adapter.shares_device and adapter.interface is not None:
        # One serial number, several ports: ATTRS must all match one device, so the
        # interface comes from udev's usb_id (which 60-serial.rules imports for ttys).
        parts.append(f'ENV{{ID_USB_INTERFACE_NUM}}=="{adapter.interface}"')
    return ", ".join([*parts, f'SYMLINK+="mcp/{name}"', DEVICE_ACCESS])


def rule_by_path(adapter: UsbSerialAdapter, name: str) -> str:
    """The rule line naming whatever is plugged into this adapter's USB port."""
    if not adapter.id_path:
        raise UdevRuleError(
            f"udev's database has no ID_PATH for {adapter.tty}; find it with: udevadm info "
            f"-q property -n /dev/{adapter.tty} | grep ^ID_PATH=")
    return ", ".join(['SUBSYSTEM=="tty"', f'ENV{{ID_PATH}}=="{_match(adapter.id_path)}"',
                      f'SYMLINK+="mcp/{name}"', DEVICE_ACCESS])


def no_serial_message(adapter: UsbSerialAdapter, name: str | None) -> str:
    """Why there is no rule by serial number, and the rule by USB port to use instead."""
    id_path = adapter.id_path or "<ID_PATH: udevadm info -q property -n " \
        f"/dev/{adapter.tty} | grep ^ID_PATH=>"
    return (
        f"{adapter.tty}, {adapter.label} on USB port {adapter.usb_port}, has no serial number, "
        "so no rule can tell it from another adapter of its kind. Match the USB port it is "
        "plugged into instead (it keeps the name only in that port): mcp-gateway udev-rule "
        f"{adapter.tty} --by-path --name NAME, which prints\n"
        f'  SUBSYSTEM=="tty", ENV{{ID_PATH}}=="{id_path}", SYMLINK+="mcp/{name or "NAME"}", '
        f"{DEVICE_ACCESS}")


def render(adapter: UsbSerialAdapter, name: str, *, by_path: bool = False) -> str:
    """The rule with a comment saying what it is for: what goes in the rules file."""
    rule = rule_by_path(adapter, name) if by_path else rule_by_serial(adapter, name)
    which = f"in USB port {adapter.usb_port}" if by_path else f"serial {adapter.serial}"
    return f"# {adapter.label}, {which}, now {adapter.tty}: /dev/mcp/{name}\n{rule}\n"


def instructions(command: str, name: str) -> str:
    """How to install the rule ``command`` prints and use the name (for stderr)."""
    return (f"Install it:  {command} | sudo tee -a {RULES_FILE}\n"
            f"then:        sudo {RELOAD_COMMAND.replace('&& ', '&& sudo ')}\n"
            f"and give the gateway the port, in /etc/mcp-gateway/config.toml:\n"
            f'  [[ports]]\n  name = "{name}"\n  path = "/dev/mcp/{name}"\n')
