#!/usr/bin/env bash
# Build the Debian package of mcp-gateway for this machine's architecture (docs/deploy.md).
#
#   packaging/build-deb.sh [--wheel FILE] [--wheelhouse DIR] [OUTDIR]    # OUTDIR: default dist/
#
#   --wheel FILE      the gateway's wheel (default: python -m build of this checkout)
#   --wheelhouse DIR  the locked run-time dependencies, already downloaded with
#                     pip download --require-hashes --no-deps -r <runtime_requirements.py --build>
#                     (default: downloaded here)
#
# Writes OUTDIR/mcp-gateway_VERSION_ARCH.deb and prints its path. It holds:
#   /opt/mcp-gateway/venv                 the gateway and exactly the run-time part of
#                                         requirements.lock, in a venv of Debian's own python3
#   /usr/bin/mcp-gateway                  -> /opt/mcp-gateway/venv/bin/mcp-gateway
#   /lib/systemd/system/mcp-gateway.service
#   /lib/udev/rules.d/99-mcp-gateway.rules  the commented examples; the operator's own lines go
#                                         in /etc/udev/rules.d/99-mcp-gateway.rules (which
#                                         takes this file's place, by udev's rule of names)
#   /etc/mcp-gateway/config.toml          the default configuration, a conffile
#   /usr/share/doc/mcp-gateway/           deploy.md and the broker examples it refers to
# and the maintainer scripts of packaging/debian/ (the system user, permissions, the unit).
#
# DEB_MAINTAINER='Name <email>' names who built it (default: the checkout's git identity);
# DEB_REVISION the Debian revision (default 1).
#
# Needs: dpkg-deb; the target's interpreter (TARGET_PYTHON, default /usr/bin/python3, with the
# same major.minor as the builder); a builder Python with build, setuptools and pip (PYTHON,
# default the checkout's .venv, which ./dev lint creates).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
builder=${PYTHON:-$here/.venv/bin/python}
target=${TARGET_PYTHON:-/usr/bin/python3}
revision=${DEB_REVISION:-1}
# Who built it (the Maintainer field): DEB_MAINTAINER, else the checkout's git identity.
maintainer=${DEB_MAINTAINER:-}
if [[ -z "$maintainer" ]]; then
  git_name=$(git -C "$here" config user.name 2>/dev/null || true)
  git_email=$(git -C "$here" config user.email 2>/dev/null || true)
  if [[ -n "$git_name" && -n "$git_email" ]]; then
    maintainer="$git_name <$git_email>"
  else
    maintainer="mcp-gateway local build <root@localhost>"
  fi
fi
final=/opt/mcp-gateway/venv  # where the venv runs on the box

die() { printf 'build-deb: %s\n' "$*" >&2; exit 1; }
say() { printf 'build-deb: %s\n' "$*" >&2; }

wheel="" wheelhouse="" outdir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheel) wheel=$(realpath "${2:?--wheel needs a file}"); shift 2 ;;
    --wheelhouse) wheelhouse=$(realpath "${2:?--wheelhouse needs a directory}"); shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
               exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$outdir" ]] || die "one OUTDIR only (got $outdir and $1)"; outdir=$1; shift ;;
  esac
done
outdir=${outdir:-$here/dist}

command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (apt install dpkg)"
[[ -x "$builder" ]] || die "no builder Python at $builder: run ./dev lint (it creates .venv)" \
  "or set PYTHON to a Python with build, setuptools and pip"
"$builder" -c 'import build, setuptools, pip' 2>/dev/null ||
  die "$builder lacks build, setuptools or pip: run ./dev lint (they are in requirements.lock)"
[[ -x "$target" ]] || die "no target interpreter $target (apt install python3)"
# The venv links to the versioned interpreter: when python3 moves to another minor version,
# the venv's compiled wheels would not load in it; python3.11 stays what it is.
pyver=$("$target" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
interpreter=/usr/bin/python$pyver
[[ -x "$interpreter" ]] || die "$target is Python $pyver but $interpreter is missing"
"$interpreter" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$interpreter is Python $pyver; mcp-gateway needs 3.11 or later"
builder_ver=$("$builder" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ "$builder_ver" == "$pyver" ]] || die "the builder ($builder) is Python $builder_ver and" \
  "the target ($interpreter) $pyver: the wheels downloaded must fit the target; set PYTHON" \
  "to a Python $pyver with the lock installed"
arch=$(dpkg --print-architecture)

umask 022
work=$(mktemp -d "${TMPDIR:-/tmp}/mcp-gateway-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
venv=$root$final

if [[ -z "$wheel" ]]; then
  say "building the sdist and the wheel of $here"
  # From the files a fresh clone has (uncommitted changes too): the egg-info of earlier
  # builds in a checkout would add what its SOURCES.txt lists, whatever pyproject.toml says.
  source=$here
  if git -C "$here" rev-parse --git-dir >/dev/null 2>&1; then
    source=$work/source
    mkdir -p "$source"
    git -C "$here" ls-files -z --cached --others --exclude-standard |
      tar -C "$here" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$source" -xf -
  fi
  # No isolated build environment: the locked setuptools builds it (as ./dev does).
  "$builder" -m build --no-isolation --outdir "$work/dist" "$source" >"$work/build.log" 2>&1 ||
    { cat "$work/build.log" >&2; die "python -m build failed"; }
  wheel=$(echo "$work"/dist/mcp_gateway-*.whl)
fi
[[ -f "$wheel" ]] || die "no wheel at $wheel"
version=$(basename "$wheel" | sed -E 's/^mcp_gateway-([^-]+)-.*/\1/')
# PEP 440 pre-releases sort before the release in Debian only behind a tilde (1.0~rc1 < 1.0).
debversion="$(sed -E 's/\.?(a|b|rc|dev)([0-9]*)/~\1\2/' <<<"$version")-$revision"

"$interpreter" "$here/packaging/runtime_requirements.py" --project "$here" >"$work/runtime.txt"
if [[ -z "$wheelhouse" ]]; then
  say "downloading the run-time part of requirements.lock"
  "$interpreter" "$here/packaging/runtime_requirements.py" --build --project "$here" \
    >"$work/runtime-build.txt"
  wheelhouse=$work/wheelhouse
  "$builder" -m pip download --quiet --require-hashes --no-deps --no-build-isolation \
    -r "$work/runtime-build.txt" -d "$wheelhouse"
fi

say "installing mcp-gateway $version and its locked dependencies into $final"
# No pip in the venv (nothing for an operator to pip install into a packaged venv): the
# builder's pip installs into it, run by the target's interpreter (--python).
"$interpreter" -m venv --without-pip "$venv"
pip_target=("$builder" -m pip --python "$venv/bin/python")
# --no-index: only the wheelhouse, which holds the locked setuptools that builds the
# sdist-only pins; --no-compile: byte code is compiled below, for the final path.
"${pip_target[@]}" install --quiet --no-index --find-links "$wheelhouse" --no-compile \
  --require-hashes --no-deps -r "$work/runtime.txt"
"${pip_target[@]}" install --quiet --no-index --no-compile --no-deps "$wheel"
"${pip_target[@]}" check >/dev/null || { "${pip_target[@]}" check >&2; die "pip check failed"; }

# The venv was made under $root: its scripts' shebangs, activate and pyvenv.cfg name that
# path. They name the final one from here on.
grep -rlIF --null "$venv" "$venv" | xargs -0 -r sed -i "s|$venv|$final|g"
if grep -rlF "$root" "$venv" >&2; then
  die "the files above still name the build directory $root"
fi
"$venv/bin/python" -m compileall -q -j 0 -s "$root" -p / "$venv/lib" >/dev/null
# The compiled wheels (manylinux) need this C library at least: the newest symbol version
# any of them links to.
glibc=$(find "$venv" -name '*.so*' -type f -exec grep -aohE 'GLIBC_2\.[0-9]+' {} + |
  sed 's/GLIBC_//' | sort -t. -k2,2n | tail -n 1)
libc=${glibc:+, libc6 (>= $glibc)}

install -D -m 0644 "$here/systemd/mcp-gateway.service" "$root/lib/systemd/system/mcp-gateway.service"
install -D -m 0644 "$here/udev/99-mcp-gateway.rules" "$root/lib/udev/rules.d/99-mcp-gateway.rules"
install -d -m 0750 "$root/etc/mcp-gateway"
install -m 0640 "$here/systemd/gateway.toml.example" "$root/etc/mcp-gateway/config.toml"
install -d "$root/usr/bin"
ln -s "$final/bin/mcp-gateway" "$root/usr/bin/mcp-gateway"
doc=$root/usr/share/doc/mcp-gateway
install -D -m 0644 "$here/docs/deploy.md" "$doc/deploy.md"
install -D -m 0644 -t "$doc/examples" "$here/systemd/mosquitto-mcp.conf.example" \
  "$here/systemd/mosquitto-acl.example"

install -d "$root/DEBIAN"
for script in preinst postinst prerm postrm; do
  install -m 0755 "$here/packaging/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/mcp-gateway/config.toml >"$root/DEBIAN/conffiles"
# For dpkg --verify (conffiles have their own sums in dpkg's database).
(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' |
  LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: mcp-gateway
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: python$pyver, python3 (>= 3.11), adduser$libc
Suggests: mosquitto, mosquitto-clients
Section: net
Priority: optional
Description: hardware gateway for serial MCP devices on an MQTT fabric
 mcp-gateway reads MCP devices on serial ports (USB adapters, UARTs), registers
 them and puts their events, statuses and requests on an MQTT broker. Runs as
 the systemd service mcp-gateway, configured in /etc/mcp-gateway/config.toml.
 .
 The program and its locked Python dependencies are in /opt/mcp-gateway/venv,
 built for Python $pyver.
EOF

mkdir -p "$outdir"
deb=$(realpath "$outdir")/mcp-gateway_${debversion}_${arch}.deb
dpkg-deb --build --root-owner-group "$root" "$deb" >/dev/null
say "built $deb"
echo "$deb"
