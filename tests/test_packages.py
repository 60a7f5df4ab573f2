"""What an operator installs (issue 18, "Packages"): the sdist and the wheel, run from a fresh
venv outside the checkout, and the Debian package, installed, reinstalled, removed and purged
with this machine's real dpkg.

The sdist, the wheel and the wheelhouse (the run-time part of requirements.lock, downloaded
once) are built once for the module; the .deb is built from the same wheel and wheelhouse.
The .deb tests run as root on a box without mcp-gateway (CI's); they leave it as they found
it, purging the package (and the user postinst made) in a fixture's teardown.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import __version__
from tests.harness import lacking

#: the package's build, the wheelhouse's download and the .deb's build are set-up of the
#: first tests that use them (about 30 s each here; 120 s is the suite's default limit)
pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mcp-gateway"
USER = "mcp-gateway"
VENV = Path("/opt/mcp-gateway/venv")
CONFIG = Path("/etc/mcp-gateway/config.toml")
STATE = Path("/var/lib/mcp-gateway")
UNIT = Path("/lib/systemd/system/mcp-gateway.service")
UDEV_RULES = Path("/lib/udev/rules.d/99-mcp-gateway.rules")
#: what the .deb puts on the box, beside the venv
PACKAGED = (Path("/usr/bin/mcp-gateway"), UNIT, UDEV_RULES, CONFIG,
            Path("/usr/share/doc/mcp-gateway/deploy.md"))
#: what a purge must take away, besides the package's own files
PURGED = (Path("/opt/mcp-gateway"), Path("/etc/mcp-gateway"), STATE,
          Path("/etc/systemd/system/mcp-gateway.service"),
          Path("/etc/systemd/system/multi-user.target.wants/mcp-gateway.service"))


def run(args: list[str | Path], *, timeout: float = 120, ok: bool = True,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command (no standard input: dpkg's conffile prompt fails instead of waiting);
    with ``ok``, fail with its output unless it exits 0."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            timeout=timeout, check=False, **kwargs)
    if ok:
        assert result.returncode == 0, (f"{args} exited {result.returncode}\n"
                                        f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def outside_env() -> dict[str, str]:
    """The environment for commands that must not see this checkout or its venv."""
    return {key: value for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Wheelhouse:
    #: the run-time part of requirements.lock, with hashes
    runtime: Path
    directory: Path


def clean_copy(directory: Path) -> Path:
    """The checkout's files as a fresh clone has them (with uncommitted changes): no
    egg-info or build/ of earlier builds, whose SOURCES.txt setuptools would add to the
    sdist, hiding a data file that pyproject.toml no longer ships."""
    listed = run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                  "--exclude-standard"]).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, directory / name)
    return directory


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``python -m build`` of the checkout (a clean copy of it): the sdist, and the wheel
    built from that sdist (so a file missing from the sdist is missing from the wheel too).
    The locked setuptools builds them (no isolated build environment, as ./dev installs the
    project)."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, clean_copy(
        tmp_path_factory.mktemp("source"))], timeout=300)
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return Dist(sdist, wheel)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    """The locked run-time dependencies, downloaded once, with the locked setuptools and wheel
    to build the pins published as sdists only; every file checked against its hash."""
    base = tmp_path_factory.mktemp("wheelhouse")
    script = ROOT / "packaging" / "runtime_requirements.py"
    runtime, download = base / "runtime.txt", base / "runtime-build.txt"
    runtime.write_text(run([sys.executable, script]).stdout)
    download.write_text(run([sys.executable, script, "--build"]).stdout)
    directory = base / "wheels"
    run([sys.executable, "-m", "pip", "download", "--quiet", "--require-hashes", "--no-deps",
         "--no-build-isolation", "-r", download, "-d", directory], timeout=600)
    return Wheelhouse(runtime, directory)


def _data_files() -> list[str]:
    """The files of the three packages that are not Python, as git tracks them."""
    listed = run(["git", "-C", ROOT, "ls-files", "gateway", "firmware_sim", "tui"]).stdout
    return sorted(p for p in listed.split() if not p.endswith(".py"))


def test_the_sdist_and_the_wheel_hold_every_data_file(dist):
    """Profiles, styles: what the program reads from its package directory at run time."""
    data = _data_files()
    assert "gateway/frames/builtin_profiles/env-sensor.toml" in data
    assert "tui/dashboard.tcss" in data
    with zipfile.ZipFile(dist.wheel) as wheel:
        in_wheel = set(wheel.namelist())
        entry_points = next(wheel.read(n).decode() for n in in_wheel
                            if n.endswith(".dist-info/entry_points.txt"))
    assert [f for f in data if f not in in_wheel] == []
    assert "mcp-gateway = gateway.cli:main" in entry_points
    assert "mcp-sim = firmware_sim.cli:main" in entry_points
    prefix = f"mcp_gateway-{__version__}/"
    with tarfile.open(dist.sdist) as sdist:
        in_sdist = {name.removeprefix(prefix) for name in sdist.getnames()}
    assert [f for f in data if f not in in_sdist] == []
    assert "pyproject.toml" in in_sdist


@pytest.fixture(scope="module")
def venv(dist, wheelhouse, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the locked run-time dependencies (hashes
    required, nothing resolved) and the wheel: what an operator's pip or pipx makes."""
    path = tmp_path_factory.mktemp("fresh") / "venv"
    run([sys.executable, "-m", "venv", path])
    pip = [path / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-index"]
    run([*pip, "--find-links", wheelhouse.directory, "--require-hashes", "--no-deps",
         "-r", wheelhouse.runtime], env=outside_env(), timeout=600)
    run([*pip, "--no-deps", dist.wheel], env=outside_env())
    run([path / "bin" / "python", "-m", "pip", "check"], env=outside_env())
    return path


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the checkout: nothing imports from the source tree."""
    assert not tmp_path.is_relative_to(ROOT)
    return tmp_path


@pytest.mark.slow
def test_the_wheel_runs_from_a_fresh_venv_outside_the_checkout(venv, elsewhere):
    found = run([venv / "bin" / "python", "-c",
                 "import gateway, tui, firmware_sim; "
                 "print(gateway.__file__, tui.__file__, firmware_sim.__file__)"],
                cwd=elsewhere, env=outside_env()).stdout.split()
    assert all(Path(f).is_relative_to(venv) for f in found), found
    version = run([venv / "bin" / "mcp-gateway", "--version"], cwd=elsewhere, env=outside_env())
    assert version.stdout == f"mcp-gateway {__version__}\n"


def _fabric_lines(stdout: str) -> list[dict]:
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines, "the demo printed nothing"
    return lines


def check_demo_output(stdout: str, devices: int = 3) -> None:
    """The headless demo printed real fabric traffic: the gateway online, each simulated
    device's STATUS events decoded by the builtin profile, a stats line per device, and the
    gateway's clean stop (offline last)."""
    lines = _fabric_lines(stdout)
    by_topic: dict[str, list] = {}
    for line in lines:
        if "topic" in line:
            by_topic.setdefault(line["topic"], []).append(line["payload"])
    assert by_topic["mcp/v1/demo/status"][0]["state"] == "online"
    assert by_topic["mcp/v1/demo/status"][-1]["state"] == "offline"
    for i in range(devices):
        events = by_topic.get(f"mcp/v1/demo/devices/sim-{i}/events/status")
        assert events, f"no STATUS event of sim-{i}: {sorted(by_topic)}"
        assert "temperature_c" in events[0]["payload"]  # a field the env-sensor profile names
    stats = [line["stats"] for line in lines if "stats" in line]
    assert sorted(s["device"] for s in stats) == [f"sim-{i}" for i in range(devices)]
    assert all(s["rx_frames"] > 0 for s in stats)


@pytest.mark.slow
def test_the_headless_demo_runs_from_the_wheel(venv, elsewhere):
    result = run([venv / "bin" / "mcp-gateway", "demo", "--headless", "--duration", "3"],
                 cwd=elsewhere, env=outside_env(), timeout=60)
    check_demo_output(result.stdout)


@pytest.mark.slow
def test_the_dashboard_starts_from_the_wheel(venv, elsewhere):
    """The dashboard reads its styles (tui/dashboard.tcss) from the package: without the file
    Textual stops it at once with a StylesheetError (exit 1). It runs on a pseudo-terminal
    (script(1)), showing the demo's devices, and quits after the duration."""
    script = shutil.which("script")
    if script is None:
        lacking("script(1) is not installed here (apt install bsdutils)")
    command = f"{venv / 'bin' / 'mcp-gateway'} demo --duration 3"
    result = subprocess.run([script, "-q", "-e", "-c", command, "/dev/null"],
                            capture_output=True, cwd=elsewhere, timeout=60, check=False,
                            stdin=subprocess.DEVNULL,
                            env={**outside_env(), "TERM": "xterm-256color"})
    screen = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, screen[-3000:]
    assert "sim-0" in screen
    assert "StylesheetError" not in screen


def _read_line(stream, deadline: float) -> str:
    """One line from ``stream``, or AssertionError once ``deadline`` (monotonic) passes."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=deadline - time.monotonic()):
                return stream.readline()
    raise AssertionError("no line before the deadline")


@pytest.mark.slow
def test_the_simulator_runs_from_the_wheel(venv, elsewhere):
    """``mcp-sim`` runs until SIGTERM: a device on a pty, whose STATUS frames the wheel's
    ``mcp-gateway monitor`` decodes with the builtin profile; it stops cleanly (exit 0)."""
    helped = run([venv / "bin" / "mcp-sim", "--help"], cwd=elsewhere, env=outside_env())
    assert "Simulated MCP devices" in helped.stdout
    sim = subprocess.Popen([venv / "bin" / "mcp-sim", "--count", "1", "--interval-ms", "200"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=elsewhere, env=outside_env())
    try:
        name, path = _read_line(sim.stdout, time.monotonic() + 30).split()
        assert name == "sim-0"
        monitor = run([venv / "bin" / "mcp-gateway", "monitor", path, "--passive",
                       "--duration", "2"], cwd=elsewhere, env=outside_env(), timeout=30)
        frames = [json.loads(line) for line in monitor.stdout.splitlines()]
        statuses = [f for f in frames if f.get("cmd") == "STATUS"]
        assert statuses, monitor.stdout
        assert "temperature_c" in statuses[0]["fields"]
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=15) == 0, sim.stderr.read()
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()


# --- the Debian package -------------------------------------------------------------------

def dpkg_status() -> str:
    """The package's dpkg status ("installed", "config-files"), "" when dpkg knows none."""
    result = run(["dpkg-query", "-W", "-f=${db:Status-Status}", PACKAGE], ok=False)
    return result.stdout if result.returncode == 0 else ""


def user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


def require_a_box_without_mcp_gateway() -> None:
    """The .deb tests install and purge for real: as root, with dpkg, and only on a box
    where nothing of mcp-gateway is (they would replace or delete it)."""
    if os.geteuid() != 0:
        lacking("the .deb tests need root (dpkg -i)")
    for tool in ("dpkg", "dpkg-deb", "dpkg-query", "adduser"):
        if shutil.which(tool) is None:
            lacking(f"{tool} is not installed here")
    there = [str(p) for p in (*PURGED, *PACKAGED) if p.exists() or p.is_symlink()]
    if dpkg_status() not in ("", "not-installed") or there or user_exists():
        lacking(f"this box has mcp-gateway already (package status {dpkg_status()!r}, "
                f"{there}, user {USER}: {user_exists()}); the .deb tests would replace it")


@pytest.fixture(scope="module")
def deb(dist, wheelhouse, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """packaging/build-deb.sh with the module's wheel and wheelhouse."""
    if shutil.which("dpkg-deb") is None:
        lacking("dpkg-deb is not installed here")
    out = tmp_path_factory.mktemp("deb")
    built = run([ROOT / "packaging" / "build-deb.sh", "--wheel", dist.wheel,
                 "--wheelhouse", wheelhouse.directory, out],
                env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    path = Path(built.stdout.strip())
    assert path == out / f"mcp-gateway_{__version__}-1_{arch}.deb"
    return path


@pytest.fixture(scope="module")
def next_deb(deb, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The next version of the package (Debian revision 2) whose default configuration
    changed: the .deb unpacked with dpkg-deb, its control and config.toml edited, and
    packed again (gzip -1: this one is built for speed)."""
    tree = tmp_path_factory.mktemp("next") / "tree"
    run(["dpkg-deb", "--raw-extract", deb, tree])
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(
        f"Version: {__version__}-1\n", f"Version: {__version__}-2\n"))
    default = tree / "etc" / "mcp-gateway" / "config.toml"
    default.write_text(default.read_text() + "# a line of the next version's default\n")
    out = tree.parent / f"mcp-gateway_{__version__}-2.deb"
    run(["dpkg-deb", "--build", "--root-owner-group", "-Zgzip", "-z1", tree, out])
    return out


def purge_everything() -> None:
    """Teardown: the package purged, and whatever a broken purge left (the box had none of
    it before: require_a_box_without_mcp_gateway), and the user postinst made."""
    run(["dpkg", "--purge", PACKAGE], ok=False)
    for path in PURGED:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    if user_exists():
        run(["userdel", USER], ok=False)
    run(["groupdel", USER], ok=False)


@pytest.mark.slow
def test_the_deb_refuses_a_box_installed_by_install_sh(deb):
    """A box set up from a checkout (scripts/install.sh) has its own venv and unit where
    the package's go: preinst stops the install, saying how to move over, before a file
    is unpacked. Runs before the tests that install the package."""
    require_a_box_without_mcp_gateway()
    fake = VENV / "bin" / "mcp-gateway"
    try:
        fake.parent.mkdir(parents=True)
        fake.write_text("#!/bin/sh\n")
        result = run(["dpkg", "-i", deb], ok=False, timeout=300)
        assert result.returncode != 0
        assert "scripts/install.sh uninstall" in result.stderr
        assert dpkg_status() in ("", "not-installed", "config-files")
        assert fake.read_text() == "#!/bin/sh\n"
        assert not UNIT.exists()
    finally:
        shutil.rmtree("/opt/mcp-gateway", ignore_errors=True)
        purge_everything()


@pytest.fixture(scope="module")
def installed(deb) -> Iterator[Path]:
    """The .deb installed with dpkg -i; purged at the end of the module, whatever happened."""
    require_a_box_without_mcp_gateway()
    try:
        result = run(["dpkg", "-i", deb], timeout=300)
        assert "warning" not in result.stderr.lower(), result.stderr
        yield deb
    finally:
        purge_everything()


def _mode(path: Path) -> tuple[str, str, int]:
    info = path.stat()
    return (pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name,
            stat.S_IMODE(info.st_mode))


def owned_by_dpkg() -> set[str]:
    return set(run(["dpkg-query", "-L", PACKAGE]).stdout.split("\n"))


@pytest.mark.slow
def test_the_deb_installs_the_program_its_files_and_its_user(installed):
    assert dpkg_status() == "installed"
    for path in PACKAGED:
        assert path.exists(), path
    assert Path("/usr/bin/mcp-gateway").resolve() == VENV / "bin" / "mcp-gateway"
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).stdout
    assert str(CONFIG) in conffiles
    # The venv runs on Debian's own interpreter, at its final path.
    assert (VENV / "bin" / "python").resolve().parent == Path("/usr/bin")
    assert run(["head", "-1", VENV / "bin" / "mcp-gateway"]).stdout == f"#!{VENV}/bin/python\n"
    run(["dpkg", "--verify", PACKAGE])  # every file as the package has it (md5sums)
    stray = run(["grep", "-rlF", "mcp-gateway-deb.", VENV], ok=False)
    assert stray.stdout == ""  # nothing names the build directory
    assert run(["mcp-gateway", "--version"]).stdout == f"mcp-gateway {__version__}\n"
    # The system user, in dialout, owning the state; the configuration readable by its group.
    user = pwd.getpwnam(USER)
    assert user.pw_uid < 1000
    assert user.pw_shell == "/usr/sbin/nologin"
    assert user.pw_dir == str(STATE)
    assert USER in grp.getgrnam("dialout").gr_mem
    assert _mode(CONFIG.parent) == ("root", USER, 0o750)
    assert _mode(CONFIG) == ("root", USER, 0o640)
    assert _mode(STATE) == (USER, USER, 0o750)
    # Enabled for the next boot, not started (the operator edits the configuration first).
    wants = Path("/etc/systemd/system/multi-user.target.wants/mcp-gateway.service")
    assert wants.is_symlink()
    assert wants.resolve() == UNIT.resolve()


@pytest.mark.slow
def test_the_installed_config_checks_as_root_and_as_the_service_user(installed):
    run(["mcp-gateway", "check-config", CONFIG])
    # As the service's user it also proves what that user may read (the file) and write
    # (state_dir): the permissions postinst gave them.
    run(["runuser", "-u", USER, "--", "mcp-gateway", "check-config", CONFIG], cwd="/")


@pytest.mark.slow
def test_the_installed_program_runs_and_writes_nothing_into_its_venv(installed, tmp_path):
    """The packaged venv (its compiled wheels, its byte code compiled for the final path)
    runs the whole demo; and Python writes no byte code beside it, which dpkg -r would
    leave behind."""
    result = run(["mcp-gateway", "demo", "--headless", "--duration", "3"], cwd=tmp_path,
                 env=outside_env(), timeout=60)
    check_demo_output(result.stdout)
    on_disk = set(run(["find", "/opt/mcp-gateway"]).stdout.split("\n")) - {""}
    assert sorted(on_disk - owned_by_dpkg()) == []


@pytest.mark.slow
def test_the_installed_unit_passes_systemd_analyze_verify(installed):
    """As tests/test_deploy.py verifies the checkout's unit, here the one dpkg installed,
    whose ExecStart (the packaged venv's command) now exists."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        lacking("systemd-analyze is not installed here (apt install systemd)")
    text = UNIT.read_text()
    assert f"ExecStart={VENV}/bin/mcp-gateway run --config {CONFIG}" in text
    result = run([analyze, "verify", "--man=no", UNIT], ok=False, timeout=60)
    if "Failed to" in result.stderr and "bus" in result.stderr.lower():
        lacking(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if UNIT.name in line] == []


@pytest.mark.slow
def test_install_sh_refuses_to_touch_the_packaged_install(installed):
    """scripts/install.sh and the package both install into /opt/mcp-gateway: with the
    package installed, the script neither overwrites (install) nor deletes (uninstall) it."""
    for args in ([], ["uninstall"]):
        result = run(["bash", ROOT / "scripts" / "install.sh", *args], ok=False, timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "the Debian package mcp-gateway is installed" in result.stderr
    assert (VENV / "bin" / "mcp-gateway").exists()
    assert not Path("/etc/systemd/system/mcp-gateway.service").exists()


@pytest.mark.slow
def test_the_deb_keeps_the_operators_files_on_upgrade_and_remove_and_purge_clears(
        installed, next_deb):
    """A reinstall (dpkg -i again) and an upgrade to a version whose default configuration
    changed keep the edited conffile (the upgrade's default lands beside it, as
    config.toml.dpkg-dist, with --force-confold as docs/deploy.md says) and the state;
    dpkg -r removes the program and keeps the configuration, the state and the user; dpkg
    -P removes the configuration and the state too. What policy leaves: the system user
    and its group (files it owns may outlive the package), and /opt if it was there before.
    Runs last of the installed tests: it removes what they use."""
    edited = CONFIG.read_text().replace('log_level = "INFO"', 'log_level = "DEBUG"')
    assert edited != CONFIG.read_text()
    CONFIG.write_text(edited)
    queue = STATE / "spool.db"  # stands for the event queue the gateway keeps there
    queue.write_bytes(b"queued events")

    result = run(["dpkg", "-i", installed], timeout=300)
    assert "warning" not in result.stderr.lower(), result.stderr
    assert CONFIG.read_text() == edited
    assert not CONFIG.with_name("config.toml.dpkg-dist").exists()

    result = run(["dpkg", "--force-confold", "-i", next_deb], timeout=300)
    assert "warning" not in result.stderr.lower(), result.stderr
    version = run(["dpkg-query", "-W", "-f=${Version}", PACKAGE]).stdout
    assert version == f"{__version__}-2"
    assert CONFIG.read_text() == edited
    new_default = CONFIG.with_name("config.toml.dpkg-dist").read_text()
    assert new_default.endswith("# a line of the next version's default\n")
    assert _mode(CONFIG) == ("root", USER, 0o640)
    assert queue.read_bytes() == b"queued events"
    run(["mcp-gateway", "check-config", CONFIG])

    run(["dpkg", "-r", PACKAGE], timeout=300)
    assert dpkg_status() == "config-files"
    for path in (VENV, Path("/opt/mcp-gateway"), Path("/usr/bin/mcp-gateway"), UNIT,
                 UDEV_RULES):
        assert not path.exists(), path
    assert CONFIG.read_text() == edited
    assert queue.read_bytes() == b"queued events"
    assert user_exists()
    # Removed, not purged: install.sh refuses (a later purge would delete what it installs
    # on: the configuration, the event queue, the unit's enablement).
    result = run(["bash", ROOT / "scripts" / "install.sh"], ok=False, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "was removed but not purged" in result.stderr

    run(["dpkg", "-P", PACKAGE], timeout=300)
    assert dpkg_status() == ""
    left = [str(p) for p in PURGED if p.exists() or p.is_symlink()]
    assert left == []
    overrides = run(["dpkg-statoverride", "--list"]).stdout
    assert "/etc/mcp-gateway" not in overrides
    assert user_exists()  # policy: kept (purge_everything removes the test's)
