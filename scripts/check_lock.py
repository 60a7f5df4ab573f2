"""Check that requirements.lock agrees with pyproject.toml (run by ./dev before installing).

The lock pins every runtime, test and build dependency with hashes (``scripts/lock.sh`` writes
it). It records a fingerprint of the requirements it was compiled from; a pyproject.toml whose
requirements changed since then fails here, naming what to run. With ``--versions`` (once the
lock is installed, so that ``packaging`` is there) every requirement of pyproject.toml must also
be pinned, at a version inside its range.

    python3 scripts/check_lock.py [--versions]   # exit 1 with the reason when they disagree
    python3 scripts/check_lock.py --stamp        # write the fingerprint (scripts/lock.sh does)
    python3 scripts/check_lock.py --build-requires
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_NAME = "requirements.lock"
#: the extras the lock is compiled with (scripts/lock.sh passes the same)
LOCKED_EXTRAS = ("test",)
STAMP = "# pyproject-requirements: sha256:"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def requirements(root: Path) -> dict[str, list[str]]:
    """What the lock is compiled from, by where pyproject.toml declares it."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    extras = project["project"].get("optional-dependencies", {})
    return {
        "requires-python": [project["project"]["requires-python"]],
        "build-system": list(project["build-system"]["requires"]),
        "dependencies": list(project["project"].get("dependencies", [])),
        **{f"extra {name}": list(extras.get(name, [])) for name in LOCKED_EXTRAS},
    }


def fingerprint(root: Path) -> str:
    """A hash of the requirements (comments and formatting of pyproject.toml do not count)."""
    text = json.dumps(requirements(root), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def stamp(root: Path) -> None:
    """Write the current fingerprint into the lock's header."""
    lock = root / LOCK_NAME
    lines = [line for line in lock.read_text().splitlines() if not line.startswith(STAMP)]
    at = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    lines.insert(at, STAMP + fingerprint(root))
    lock.write_text("\n".join(lines) + "\n")


def pins(lock_text: str) -> dict[str, str]:
    """Package name (normalised) -> pinned version."""
    found = {}
    for line in lock_text.splitlines():
        match = PIN.match(line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def problems(root: Path, check_versions: bool) -> list[str]:
    """Every way the lock and pyproject.toml under ``root`` disagree."""
    lock = root / LOCK_NAME
    if not lock.exists():
        return [f"{LOCK_NAME} is missing: run scripts/lock.sh"]
    lock_text = lock.read_text()
    recorded = next((line[len(STAMP):] for line in lock_text.splitlines()
                     if line.startswith(STAMP)), None)
    if recorded != fingerprint(root):
        return [f"{LOCK_NAME} was compiled from other requirements than pyproject.toml now "
                "declares: run scripts/lock.sh and commit both files together"]
    if not check_versions:
        return []
    from packaging.requirements import Requirement  # noqa: PLC0415 - installed from the lock

    pinned, errors = pins(lock_text), []
    for where, declared in requirements(root).items():
        if where == "requires-python":
            continue
        for text in declared:
            requirement = Requirement(text)
            name = re.sub(r"[-_.]+", "-", requirement.name).lower()
            version = pinned.get(name)
            if version is None:
                errors.append(f"{where}: {text!r} is not pinned in {LOCK_NAME}")
            elif not requirement.specifier.contains(version, prereleases=True):
                errors.append(f"{where}: {text!r} but {LOCK_NAME} pins {name}=={version}")
    return errors


def main() -> int:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", action="store_true",
                        help="also check every pin against its range (needs packaging)")
    parser.add_argument("--stamp", action="store_true", help="record the fingerprint")
    parser.add_argument("--build-requires", action="store_true",
                        help="print the build-system requirements, one a line")
    parser.add_argument("--project", type=Path, default=ROOT,
                        help="the folder with pyproject.toml and the lock (default: this repo)")
    args = parser.parse_args()
    if args.build_requires:
        print("\n".join(requirements(args.project)["build-system"]))
        return 0
    if args.stamp:
        stamp(args.project)
    errors = problems(args.project, args.versions)
    for error in errors:
        print(f"check_lock: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
