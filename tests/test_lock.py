"""The lock file: installs are reproducible, and a lock that disagrees with pyproject.toml
stops ./dev (and so CI) before anything is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "check_lock.py"


def _project(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _check(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), "--project", str(project), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_checked_in_lock_agrees_with_pyproject():
    result = _check(ROOT, "--versions")
    assert result.returncode == 0, result.stderr


def test_every_pin_has_hashes_and_an_exact_version():
    lock = (ROOT / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[a-z0-9])", lock.split("\n", 3)[3])
    assert len(entries) > 20
    for entry in entries:
        assert re.match(r"^[a-z0-9][a-z0-9._-]*==[0-9][^ ;\\]*", entry), entry
        assert "--hash=sha256:" in entry, entry


def test_a_dependency_added_to_pyproject_without_relocking_fails(tmp_path):
    project = _project(tmp_path)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    added = text.replace("dependencies = [\n", 'dependencies = [\n    "requests",\n', 1)
    assert added != text
    pyproject.write_text(added)
    result = _check(project)
    assert result.returncode == 1
    assert "run scripts/lock.sh" in result.stderr


def test_comments_in_pyproject_do_not_count(tmp_path):
    project = _project(tmp_path)
    pyproject = project / "pyproject.toml"
    pyproject.write_text("# a comment\n" + pyproject.read_text())
    assert _check(project, "--versions").returncode == 0


def test_a_pin_outside_its_range_fails(tmp_path):
    project = _project(tmp_path)
    lock = project / "requirements.lock"
    lock.write_text(re.sub(r"^textual==\S+", "textual==9.0.0", lock.read_text(), flags=re.M))
    result = _check(project, "--versions")
    assert result.returncode == 1
    assert "'textual>=8.2,<8.3' but requirements.lock pins textual==9.0.0" in result.stderr


def test_a_missing_lock_says_how_to_make_one(tmp_path):
    project = _project(tmp_path)
    (project / "requirements.lock").unlink()
    result = _check(project)
    assert result.returncode == 1
    assert "requirements.lock is missing: run scripts/lock.sh" in result.stderr
