#!/usr/bin/env bash
# Install or remove mcp-gateway as a systemd service on a Debian / Raspberry Pi OS box, from
# this checkout. The Debian package is the preferred way (packaging/build-deb.sh builds it,
# docs/deploy.md says how); this script is for running a checkout, and refuses to run while
# the package is installed (both put the gateway in /opt/mcp-gateway).
#
#   sudo scripts/install.sh               # install (again: it is idempotent)
#   sudo scripts/install.sh uninstall     # remove; keeps the config, the udev rules, the state
#   sudo scripts/install.sh uninstall --purge   # also those and the user
#
# Puts in place: a virtualenv with the gateway in /opt/mcp-gateway/venv, the system user
# mcp-gateway (in dialout), the unit /etc/systemd/system/mcp-gateway.service and, if there
# are none yet, the udev rules file /etc/udev/rules.d/99-mcp-gateway.rules (where the
# operator adds one line per adapter: mcp-gateway udev-rule DEVICE) and the configuration
# /etc/mcp-gateway/config.toml. Neither is ever overwritten once the operator has it; the
# rules of old versions, which claimed every adapter of common chips, are set aside, and the
# configuration of old versions, /etc/mcp-gateway/gateway.toml, is renamed config.toml.
#
# DESTDIR=DIR installs the files under DIR and skips users, pip and systemctl (packaging,
# tests); SKIP_VENV=1 skips the virtualenv alone.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${DESTDIR:-}"
prefix="$dest/opt/mcp-gateway"
unit="$dest/etc/systemd/system/mcp-gateway.service"
rules="$dest/etc/udev/rules.d/99-mcp-gateway.rules"
confdir="$dest/etc/mcp-gateway"
statedir="$dest/var/lib/mcp-gateway"
user=mcp-gateway

say() { printf 'mcp-gateway install: %s\n' "$*"; }
system() {  # run a command that changes the system, unless installing into DESTDIR
  if [[ -n "$dest" ]]; then say "(DESTDIR) would run: $*"; else "$@"; fi
}

if [[ -z "$dest" && $EUID -ne 0 ]]; then
  echo "mcp-gateway install: run as root (sudo $0 ${*:-install})" >&2
  exit 2
fi

# The package owns /opt/mcp-gateway, the unit and the configuration while it is installed:
# this script would overwrite its files (install) or delete them (uninstall) behind dpkg.
if [[ -z "$dest" ]] && command -v dpkg-query >/dev/null; then
  package_status=$(dpkg-query -W -f='${db:Status-Status}' mcp-gateway 2>/dev/null || true)
  if [[ "$package_status" == config-files ]]; then
    # Removed, not purged: a later 'apt purge' would delete /etc/mcp-gateway and the state
    # (this install's configuration and event queue) and disable the unit.
    echo "mcp-gateway install: the Debian package mcp-gateway was removed but not purged:" \
      "its 'apt purge' would delete /etc/mcp-gateway and /var/lib/mcp-gateway under this" \
      "install. Copy /etc/mcp-gateway aside, run 'apt purge mcp-gateway', put the copy" \
      "back, then run this script again." >&2
    exit 1
  elif [[ -n "$package_status" && "$package_status" != not-installed ]]; then
    echo "mcp-gateway install: the Debian package mcp-gateway is installed ($package_status)" \
      "and owns /opt/mcp-gateway; upgrade it with 'apt install ./mcp-gateway_VERSION_ARCH.deb'" \
      "(docs/deploy.md), or move to this checkout: copy /etc/mcp-gateway aside," \
      "'apt purge mcp-gateway', put the copy back, run this script." >&2
    exit 1
  fi
fi

install_rules() {
  # Old versions shipped rules claiming every FTDI/CP210x/CH340/CDC-ACM adapter (a Zigbee
  # stick too); they are set aside (udev reads only *.rules), not kept.
  if [[ -e "$rules" ]] && grep -q 'GOTO="mcp_link"' "$rules"; then
    mv "$rules" "$rules.old"
    say "set aside the old catch-all udev rules as $rules.old: name each adapter with"
    say "  mcp-gateway udev-rule DEVICE --name NAME | tee -a $rules"
  fi
  if [[ -e "$rules" ]]; then
    say "kept the existing $rules"
  else
    install -D -m 0644 "$here/udev/99-mcp-gateway.rules" "$rules"
    say "wrote $rules: add a line per adapter (mcp-gateway udev-rule DEVICE)"
  fi
}

install_config() {
  # Old versions wrote gateway.toml; the unit and the package read config.toml, one path.
  if [[ -e "$confdir/gateway.toml" && ! -e "$confdir/config.toml" ]]; then
    mv "$confdir/gateway.toml" "$confdir/config.toml"
    say "moved $confdir/gateway.toml to $confdir/config.toml (the file the unit reads now);" \
      "a running gateway still names the old file: restart it (systemctl restart mcp-gateway)"
  elif [[ -e "$confdir/gateway.toml" ]]; then
    say "both $confdir/gateway.toml and config.toml exist: the unit reads config.toml;" \
      "gateway.toml is not read (merge what you need, then remove it)"
  fi
  rm -f "$confdir/gateway.toml.example"  # the sample of old versions, now config.toml.example
  install -m 0644 "$here/systemd/gateway.toml.example" "$confdir/config.toml.example"
  if [[ -e "$confdir/config.toml" ]]; then
    say "kept the existing $confdir/config.toml"
  else
    install -m 0640 "$here/systemd/gateway.toml.example" "$confdir/config.toml"
    say "wrote $confdir/config.toml: edit it, then check it with mcp-gateway check-config"
  fi
}

install_all() {
  if [[ -z "$dest" && -z "${SKIP_VENV:-}" ]]; then
    command -v python3 >/dev/null || { echo "python3 is missing: apt install python3" >&2; exit 1; }
    python3 -m venv --help >/dev/null 2>&1 || apt-get install -y python3-venv
    [[ -x "$prefix/venv/bin/python" ]] || python3 -m venv "$prefix/venv"
    "$prefix/venv/bin/pip" install --quiet --upgrade "$here"
    say "installed $("$prefix/venv/bin/mcp-gateway" --version) in $prefix/venv"
  fi
  if ! id -u "$user" >/dev/null 2>&1; then
    system useradd --system --user-group --no-create-home --home-dir /var/lib/mcp-gateway \
      --shell /usr/sbin/nologin "$user"
  fi
  system usermod -a -G dialout "$user"
  install -D -m 0644 "$here/systemd/mcp-gateway.service" "$unit"
  install_rules
  install -d -m 0750 "$confdir"
  install_config
  system chgrp -R "$user" "$confdir"
  system udevadm control --reload
  system udevadm trigger --subsystem-match=tty --action=change
  system systemctl daemon-reload
  system systemctl enable mcp-gateway.service
  say "done. Start it:    systemctl start mcp-gateway"
  say "      its logs:    journalctl -u mcp-gateway -f"
}

uninstall_all() {
  local purge="${1:-}"
  system systemctl disable --now mcp-gateway.service || true
  rm -f "$unit"
  rm -rf "$prefix"
  system systemctl daemon-reload
  system udevadm control --reload
  if [[ "$purge" == "--purge" ]]; then
    rm -rf "$confdir" "$statedir"
    rm -f "$rules" "$rules.old"
    system udevadm control --reload
    if id -u "$user" >/dev/null 2>&1; then system userdel "$user"; fi
    say "removed, with the configuration, the udev rules, the state and the user"
  else
    say "removed; kept $confdir, $statedir and $rules (uninstall --purge removes them)"
  fi
}

case "${1:-install}" in
  install) install_all ;;
  uninstall) uninstall_all "${2:-}" ;;
  *) echo "usage: $0 [install | uninstall [--purge]]" >&2; exit 2 ;;
esac
