"""The conformance kit's ms720 link checks (LNK-1..8, spec section 4) against the simulator:
conformant, then with each fault that breaks one of them."""

from __future__ import annotations

import functools

import pytest

from gateway.conformance import runner
from gateway.conformance.probe import Probe
from gateway.conformance.rules import RULES
from gateway.frames.ms720 import SEQ_MODULUS
from tests.conformance_helpers import (
    assert_only_its_rule_fails,
    breaks_of,
    explain,
    kit,
    simulated,
    verdicts,
)

LINK_RULES = {r.id for r in RULES.values() if r.group == "ms720"}


async def test_a_conformant_device_passes_the_ms720_link_checks(tmp_path):
    async with simulated(tmp_path, frames="ms720") as device:
        results = await kit(device, only=("ms720",))
    assert verdicts(results) == dict.fromkeys(sorted(LINK_RULES), "pass"), explain(results)
    assert "sent again 3 times without an ACK (at most 3)" in results["LNK-2"].why
    assert "2 ACKs, one PONG" in results["LNK-3"].why
    assert "was NACKed, not answered" in results["LNK-4"].why
    # The kit's seq starts 24 below 2^32: LNK-7 walks it across and names the seqs.
    assert "4294967295 PING, 0 PING" in results["LNK-7"].why
    assert "8 READs in flight" in results["LNK-8"].why


#: each link break, and what its rule's failure must say
WHY = {
    "no-link-ack": "none of the",
    "no-retransmit": "was sent once: no copy within 550 ms without an ACK",
    "retransmit-forever": "the configured number of re-sends is 3",
    "duplicate-delivery": "was answered 2 times",
    "wrong-request-seq": "do not carry the seq of a request they answer",
    "seq-skips": "(skipping 1) between two new frames",
    "wrap-rejected": "the first after the kit's seq wrapped from 4294967295 to 0",
    "no-pipelining": "7 of the 8 READs sent back to back got no answer",
}


def test_every_break_of_a_link_rule_is_tested():
    assert set(WHY) == set(breaks_of(LINK_RULES))


@pytest.mark.parametrize(("fault", "why"), WHY.items())
async def test_each_link_break_fails_its_rule_and_no_other(tmp_path, fault, why):
    async with simulated(tmp_path, frames="ms720", breaks=(fault,)) as device:
        results = await kit(device, only=("ms720",))
    assert_only_its_rule_fails(results, fault, why)


@pytest.mark.parametrize(("fault", "verdict"), [((), "pass"), (("wrap-rejected",), "fail")])
async def test_lnk_7_judges_a_wrap_already_crossed_from_the_transcript(tmp_path, monkeypatch,
                                                                        fault, verdict):
    """In a long run the kit's seq wraps before LNK-7 (here two frames in, from LNK-3 to
    LNK-4): the requests either side of it must have been answered."""
    monkeypatch.setattr(runner, "Probe", functools.partial(Probe, first_seq=SEQ_MODULUS - 2))
    async with simulated(tmp_path, frames="ms720", breaks=fault) as device:
        results = await kit(device, only=("LNK-3", "LNK-4", "LNK-7"))
    assert results["LNK-7"].verdict == verdict, explain(results)
    if verdict == "pass":
        assert "4294967295 PING, 0 PING" in results["LNK-7"].why
    else:
        assert "went unanswered: 0 PING (of 4294967295 PING, 0 PING)" in results["LNK-7"].why


async def test_a_device_that_acts_on_a_bad_crc_fails_lnk_4(tmp_path):
    """The framing break acts-on-bad-checksum breaks LNK-4 too, on ms720 (its ``also``)."""
    async with simulated(tmp_path, frames="ms720", breaks=("acts-on-bad-checksum",)) as device:
        results = await kit(device, only=("LNK-4",))
    assert verdicts(results) == {"LNK-4": "fail"}, explain(results)
    assert "answered a PING whose CRC was wrong" in results["LNK-4"].why
