#!/usr/bin/env bash
# Recompile requirements.lock from pyproject.toml: exact versions and hashes of every runtime,
# test and build dependency, for every platform and Python >= 3.11 (uv's universal resolution).
# Versions already in the lock are kept unless pyproject.toml rules them out, so this changes
# only what must change; `scripts/lock.sh --upgrade` (or --upgrade-package NAME) moves pins on.
# Commit pyproject.toml and requirements.lock together: ./dev and CI install from the lock only,
# and scripts/check_lock.py fails CI when the two disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9   # the resolver is pinned too, so two people compile the same lock
tools=${TMPDIR:-/tmp}/mcp-gateway-uv-$UV_VERSION
if [ ! -x "$tools/bin/uv" ]; then
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
build_in=$(mktemp)
trap 'rm -f "$build_in"' EXIT
python3 scripts/check_lock.py --build-requires >"$build_in"
"$tools/bin/uv" pip compile pyproject.toml "$build_in" --extra test \
  --universal --python-version 3.11 --generate-hashes --quiet \
  --custom-compile-command "scripts/lock.sh" --output-file requirements.lock "$@"
# The build inputs come from a temporary file: name them by where they are declared.
sed -i "s|-r $build_in|pyproject.toml (build-system)|" requirements.lock
python3 scripts/check_lock.py --stamp
echo "requirements.lock updated; check it with: git diff requirements.lock" >&2
