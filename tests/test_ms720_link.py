"""The ms720 reliable link through real ptys: a gateway and simulated devices speaking it,
on a clean line and on a noisy one (compared with mcp on the same noise)."""

from __future__ import annotations

import asyncio

import pytest

from firmware_sim import Faults, FleetSpec
from gateway.session import TelemetryEvent
from gateway.transactions import Status
from tests.harness import fleet_and_gateway, is_state, next_event, wait_for
from tui.device_table import profile_cell


async def test_ms720_devices_register_stream_and_answer(tmp_path):
    spec = FleetSpec(count=2, interval_ms=50, frames="ms720")
    async with fleet_and_gateway(tmp_path, spec, frames="ms720") as (fleet, gw, sub):
        for name in ("sim-0", "sim-1"):
            await next_event(sub, is_state(name, "online"), timeout=5)
        event = await next_event(sub, lambda e: isinstance(e, TelemetryEvent), timeout=5)
        assert set(event.fields) == {"temperature_c", "humidity_pct", "battery_mv", "uptime_s"}
        outcome = await gw.device("sim-0").request("read", {"key": "interval_ms"})
        assert outcome.status is Status.OK
        assert outcome.value == 50
        link = gw.device("sim-0").link.framing
        assert link.link_counters.acks_in > 0
        assert fleet.devices[0].line.framing.link_counters.acks_in > 0
        # The frame profile is in the device's facts (its retained status) and stats.
        assert gw.device("sim-0").facts["frames"] == "ms720"
        counters = gw.device("sim-0").counters()
        assert counters["link_lost"] == 0
        assert {"link_retransmits", "link_duplicates", "link_gaps_skipped"} <= set(counters)
        assert profile_cell(gw.device("sim-0").facts) == "env-sensor (ms720)"


async def _noisy_run(tmp_path, frames: str) -> tuple[int, int, int, int, bool]:
    """10% of frames corrupted in both directions (ms720: also 5% dropped and 5% doubled);
    returns (STATUS sent, STATUS received
    exactly once and in order, requests sent, requests answered)."""
    noise = Faults(corrupt_rate=0.10, rx_corrupt_rate=0.10)
    if frames == "ms720":  # whole frames lost and doubled too (mcp has no way to notice)
        noise = Faults(corrupt_rate=0.10, rx_corrupt_rate=0.10, frame_drop_rate=0.05,
                       duplicate_rate=0.05)
    # The spec's 3 retransmissions leave a frame lost when all 4 sends fail: ~4e-4 per frame
    # on this line, a few % of runs. The test asks for none, so both ends try 8 times.
    spec = FleetSpec(count=1, interval_ms=20, frames=frames, faults=noise, seed=3,
                     link_retries=7)
    received = []
    link = {"link_retries": 7} if frames == "ms720" else {}
    async with fleet_and_gateway(tmp_path / frames, spec, frames=frames, retries=5,
                                 request_timeout_s=0.5, **link) as (fleet, gw, sub):
        device = fleet.devices[0]
        await wait_for(lambda: gw.device("sim-0").node_id, timeout=15, what="registration")
        answered = 0
        for _ in range(30):
            outcome = await gw.device("sim-0").request("read", {"key": "interval_ms"})
            answered += outcome.status is Status.OK
        await wait_for(lambda: len(device.sent_status) >= 200, timeout=30,
                       what="200 STATUS frames sent")
        sent = list(device.sent_status)
        # Every frame sent by now has had its chances once a frame sent well after it has
        # arrived: ms720 delivers in seq order, so nothing earlier can come later.
        later = len(sent) + 60
        await wait_for(lambda: len(device.sent_status) > later, timeout=15,
                       what="more STATUS frames")
        async with asyncio.timeout(30):  # mcp may lose any frame, a later one too
            while True:
                event = await next_event(sub, lambda e: isinstance(e, TelemetryEvent))
                if event.name != "status":
                    continue
                received.append(event.payload)
                enough = frames != "ms720" or len(received) > len(sent)
                if enough and event.payload in list(device.sent_status)[later:]:
                    break
    # STATUS frames the gateway got, in order, exactly once: a subsequence of what was sent.
    exact = received[:len(sent)] == sent  # each once, in order, none missing
    return len(sent), _matched_in_order(sent, received), 30, answered, exact


def _matched_in_order(sent: list[bytes], got: list[bytes]) -> int:
    """How many of ``sent`` arrived, each once and in order (-1 if any out of order)."""
    i = matched = 0
    for payload in got:
        j = i
        while j < len(sent) and sent[j] != payload:
            j += 1
        if j == len(sent):
            continue  # a frame sent after the snapshot
        matched += 1
        i = j + 1
    return matched


@pytest.mark.timeout(120)
async def test_ms720_loses_nothing_on_a_noisy_line_where_mcp_does(tmp_path, capsys):
    ms_sent, ms_got, ms_asked, ms_answered, ms_exact = await _noisy_run(tmp_path, "ms720")
    mcp_sent, mcp_got, mcp_asked, mcp_answered, _ = await _noisy_run(tmp_path, "mcp")
    with capsys.disabled():
        print(f"\n10% noise both ways: ms720 STATUS {ms_got}/{ms_sent}, requests "
              f"{ms_answered}/{ms_asked}; mcp STATUS {mcp_got}/{mcp_sent}, requests "
              f"{mcp_answered}/{mcp_asked}")
    assert ms_exact  # every STATUS exactly once, in order
    assert ms_got == ms_sent
    assert ms_answered == ms_asked
    assert mcp_got < mcp_sent  # the same noise costs mcp frames


@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "noisy"])
async def test_sixteen_pipelined_requests_complete_with_the_right_answers(tmp_path, noisy):
    """16 requests in flight to one device, which answers them out of order: each write of
    the name followed by a read of it gets back the name it wrote."""
    faults = Faults(response_delay_s=0.05, response_jitter_s=0.1)
    if noisy:
        faults = Faults(response_delay_s=0.05, response_jitter_s=0.1, corrupt_rate=0.1,
                        rx_corrupt_rate=0.1, frame_drop_rate=0.05, duplicate_rate=0.05)
    spec = FleetSpec(count=1, interval_ms=200, frames="ms720", faults=faults, seed=5,
                     link_retries=7)  # see _noisy_run
    async with fleet_and_gateway(tmp_path, spec, frames="ms720", max_in_flight=16,
                                 allow=["read", "write"], request_timeout_s=3,
                                 link_retries=7) as (fleet, gw, _):
        session = gw.device("sim-0")
        await wait_for(lambda: session.node_id is not None, timeout=15, what="registration")
        device = fleet.devices[0]
        requests = []
        for i in range(8):
            requests.append(session.request("write", {"key": "name", "value": f"n{i}"}))
            requests.append(session.request("read", {"key": "name"}))
        outcomes = await asyncio.gather(*requests)
        assert [o.status for o in outcomes] == [Status.OK] * 16
        assert [o.value for o in outcomes[1::2]] == [f"n{i}" for i in range(8)]
        assert session.transactions.peak_in_flight == 16
        assert session.transactions.counters.retries == 0  # answered, not retried
        # The device answered the reads out of order (so only the seq could match them).
        read_answers = [p[2:].decode() for c, p, _ in device.sent if c == 0x90]
        assert sorted(read_answers) == [f"n{i}" for i in range(8)]
        assert read_answers != sorted(read_answers)
