"""The conformance kit as a firmware author runs it: the whole command against a simulated
device on a real pty (conformant on both frame profiles, and broken), its table, JSON and
JUnit saying the same thing, and a port the gateway holds refused."""

from __future__ import annotations

import asyncio
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from firmware_sim import FleetSpec
from firmware_sim.breaks import BREAKS
from gateway.conformance.checks import load
from gateway.conformance.rules import RULES, select
from tests.conformance_helpers import simulated
from tests.harness import fleet_and_gateway, is_state, next_event, wait_for

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


async def conformance(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``mcp-gateway conformance ARGS``; (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "mcp-gateway"), "conformance", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def table_rows(out: str) -> dict[str, str]:
    """The table's verdict per rule id (the first row of each rule)."""
    rows = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in RULES:
            rows[words[0]] = words[1].lower()
    return rows


@pytest.mark.parametrize("frames", ["mcp", "ms720"])
async def test_a_conformant_device_passes_every_rule_and_the_three_reports_agree(
        tmp_path, frames):
    json_file, junit_file = tmp_path / "r.json", tmp_path / "r.xml"
    async with simulated(tmp_path, frames=frames) as device:
        status, out, err = await conformance(
            device.link.path, "--frames", frames, "--json", str(json_file),
            "--junit", str(junit_file))
    expected = [r.id for r in select(None, frames)]
    # env-sensor declares no device-specific command: REQ-7 is the one skip.
    skipped = {"REQ-7"}
    assert status == 0, out + err
    rows = table_rows(out)
    assert list(rows) == expected, out
    assert {k for k, v in rows.items() if v != "pass"} == skipped, out
    passed = len(expected) - len(skipped)
    assert f"{passed} passed, 0 failed, 1 skipped" in out

    document = json.loads(json_file.read_text())
    assert document["frames"] == frames
    assert document["profile"] == "env-sensor"
    assert {r["id"]: r["verdict"] for r in document["results"]} == rows
    assert document["summary"] == {"passed": passed, "failed": 0, "skipped": 1,
                                   "text": f"{passed} passed, 0 failed, 1 skipped"}
    by_id = {r["id"]: r for r in document["results"]}
    assert "command" in by_id["REQ-7"]["why"], by_id["REQ-7"]
    assert all(r["why"] for r in document["results"]), "every verdict says what was found"

    suite = ET.parse(junit_file).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == (
        str(len(expected)), "0", "1")
    cases = {c.get("name").split()[0]: c for c in suite.iter("testcase")}
    assert list(cases) == expected
    assert cases["REQ-7"].find("skipped") is not None
    assert all(c.find("failure") is None for c in cases.values())


async def test_a_broken_device_fails_exit_1_with_the_frames_in_every_report(tmp_path):
    json_file, junit_file = tmp_path / "r.json", tmp_path / "r.xml"
    async with simulated(tmp_path, breaks=("no-unknown-nack",)) as device:
        status, out, err = await conformance(
            device.link.path, "--only", "requests", "--json", str(json_file),
            "--junit", str(junit_file), "--no-color")
    assert status == 1, out + err
    assert table_rows(out)["REQ-5"] == "fail", out
    assert "spec: shared/spec/serial-frames.md section 2 Request/response; 3 NACK codes" in out
    assert "\x1b[" not in out  # not a tty: no colour
    result = next(r for r in json.loads(json_file.read_text())["results"] if r["id"] == "REQ-5")
    assert result["verdict"] == "fail"
    sent = [e for e in result["evidence"] if e["direction"] == "tx"]
    assert sent, result["evidence"]
    assert all(e["hex"].startswith("5a ") for e in sent), result["evidence"]
    failure = next(c for c in ET.parse(junit_file).getroot().iter("testcase")
                   if c.get("name").startswith("REQ-5")).find("failure")
    assert failure is not None
    assert failure.get("message") == result["why"]
    assert sent[0]["hex"] in failure.text


async def test_the_kit_refuses_a_port_the_gateway_holds_and_the_gateway_keeps_it(tmp_path):
    async with fleet_and_gateway(tmp_path, FleetSpec(count=1, interval_ms=50)) as (
            _fleet, gateway, events):
        await next_event(events, is_state("sim-0", "online"), timeout=10)
        received = gateway.device("sim-0").counters()["rx_frames"]
        status, out, err = await conformance(str(tmp_path / "links" / "sim-0"))
        assert status == 2, out + err
        assert "is held by another program (the gateway?)" in err
        assert "Traceback" not in err
        assert out == ""
        await wait_for(lambda: gateway.device("sim-0").counters()["rx_frames"] > received + 5,
                       what="more frames at the gateway")
        assert str(gateway.device("sim-0").state) == "online"


async def test_a_missing_port_and_a_bad_only_word_are_usage_errors(tmp_path):
    status, _out, err = await conformance(str(tmp_path / "nothing-here"))
    assert status == 2
    assert "Traceback" not in err
    assert "nothing-here" in err
    status, _out, err = await conformance(str(tmp_path / "nothing-here"), "--only", "link")
    assert status == 2
    assert "--only link: not a group" in err
    status, _out, err = await conformance(str(tmp_path / "nothing-here"), "--only", "LNK-1")
    assert status == 2
    assert "give --frames ms720" in err


def test_every_rule_has_a_check_and_a_break_that_fails_it():
    """No rule passes by default: each is checked, and the simulator can break each."""
    checks = load()
    assert set(checks) == set(RULES)
    broken = {b.rule for b in BREAKS.values()}
    # LNK-4 is broken by the framing break that acts on a bad checksum or CRC
    # (test_conformance_link.py::test_a_device_that_acts_on_a_bad_crc_fails_lnk_4)
    assert "LNK-4" in BREAKS["acts-on-bad-checksum"].also
    broken.add("LNK-4")
    assert set(RULES) - broken == set(), f"rules no break fails: {set(RULES) - broken}"
    for b in BREAKS.values():
        assert b.rule in RULES, b
        assert set(b.also) <= set(RULES), b


def test_the_device_guide_quotes_every_rule():
    text = " ".join((ROOT / "docs" / "device-guide.md").read_text().split())
    steps = text[:text.index("## Run it")]
    for rule in RULES.values():
        # quoted in the list of rules, and named in the step that tells how to keep it
        assert f"**{rule.id}** {rule.statement} — section {rule.section}" in text, rule.id
        assert f"**{rule.id}**" in steps, f"{rule.id} is in no step of the firmware guide"
    for name in ("--frames", "--profile", "--only", "--link-retries", "--json", "--junit",
                 "--hello-timeout", "--reboot-timeout", "--no-color", "--baudrate"):
        assert f"`{name}" in text, name
