"""Print the part of requirements.lock that the installed gateway needs at run time.

The lock pins the runtime, test and build dependencies together. An operator's install (the
.deb's venv, a pipx or pip venv) gets only what ``[project] dependencies`` in pyproject.toml
pull in, with the lock's exact versions and hashes, so that pytest, ruff and hypothesis stay
out of it. The set is the closure of those dependencies over the lock's ``# via`` lines
(uv writes, under each pin, which pinned packages ask for it).

    python3 packaging/runtime_requirements.py [--build] [--project DIR] > runtime.txt
    pip install --require-hashes --no-deps -r runtime.txt

``--build`` adds the build-system requirements (setuptools, wheel): a wheelhouse needs them
to build the pins that are published as sdists only (crcmod) without reaching an index.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
#: a ``# via`` entry that is a declaration in pyproject.toml, not a pinned package
DECLARED = " (pyproject.toml)"


def normalise(name: str) -> str:
    """A package name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Pin:
    """One pin of the lock: its requirement lines (name, markers, hashes) and who asks for it."""

    name: str
    lines: list[str] = field(default_factory=list)
    wanted_by: set[str] = field(default_factory=set)


def parse_lock(text: str) -> list[Pin]:
    """The lock's pins in the lock's order."""
    found: list[Pin] = []
    in_via = False
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            found.append(Pin(normalise(match[1]), [line]))
            in_via = False
        elif found and line.startswith("    --hash="):
            found[-1].lines.append(line)
        elif found and line.strip().startswith("# via"):
            rest = line.strip()[len("# via"):].strip()
            in_via = not rest  # "# via" alone: one asker a line follows
            if rest:
                found[-1].wanted_by.add(rest)
        elif found and in_via and line.startswith("    #   "):
            found[-1].wanted_by.add(line.strip()[1:].strip())
        else:
            in_via = False
    return found


def declared_names(requirements: list[str]) -> set[str]:
    """The package names of PEP 508 requirement strings."""
    names = set()
    for requirement in requirements:
        match = NAME.match(requirement)
        if match is None:
            raise ValueError(f"pyproject.toml: cannot read the requirement {requirement!r}")
        names.add(normalise(match[1]))
    return names


def closure(pins: list[Pin], roots: set[str]) -> set[str]:
    """The roots and every pin that a pin of the set asks for, transitively."""
    asks: dict[str, set[str]] = {}
    for pin in pins:
        for asker in pin.wanted_by:
            if not asker.endswith(DECLARED):
                asks.setdefault(normalise(asker), set()).add(pin.name)
    wanted, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(asks.get(name, ()))
    return wanted


def runtime_lock(project: Path, with_build: bool) -> str:
    """The text of the runtime subset of ``project``'s lock."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    roots = declared_names(pyproject["project"]["dependencies"])
    if with_build:
        roots |= declared_names(pyproject["build-system"]["requires"])
    pins = parse_lock((project / "requirements.lock").read_text(encoding="utf-8"))
    wanted = closure(pins, roots)
    missing = wanted - {pin.name for pin in pins}
    if missing:
        raise ValueError(f"requirements.lock pins no {', '.join(sorted(missing))}: run "
                         "scripts/lock.sh")
    out = ["# The run-time part of requirements.lock (packaging/runtime_requirements.py"
           + (" --build" if with_build else "") + ")."]
    for pin in pins:
        if pin.name in wanted:
            out.extend(pin.lines)
    return "\n".join(out) + "\n"


def main() -> int:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true",
                        help="also the build-system requirements (setuptools, wheel)")
    parser.add_argument("--project", type=Path, default=ROOT,
                        help="the folder with pyproject.toml and requirements.lock")
    args = parser.parse_args()
    try:
        sys.stdout.write(runtime_lock(args.project, args.build))
    except (OSError, ValueError, KeyError) as exc:
        print(f"runtime_requirements: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
