"""Plain-value commands (``{p}/{gw}/devices/{dev}/set/KEY`` and ``.../press/ACTION``, what
Home Assistant sends): the value as the body, through the same allow list and rate limit as
requests; what is not carried out is logged and counted, never answered."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.bridge.requests import plain_value
from gateway.errors import InvalidRequest
from tests.harness import wait_for
from tests.mqtt_helpers import Client
from tests.test_bridge import P, request, stack


@pytest.fixture
def client(broker):
    c = Client(broker.port)
    c.subscribe("replies/#")
    yield c
    c.close()


async def read_interval(client) -> int:
    _, answer = await request(client, f"{P}/devices/sim-0/requests",
                              {"action": "read", "payload": {"key": "interval_ms"}})
    assert answer["status"] == "ok", answer
    return answer["payload"]["value"]


async def test_a_plain_value_writes_the_key_and_bad_ones_are_counted(tmp_path, broker, client,
                                                                     caplog):
    ports = {"allow": ["read", "ping", "write:interval_ms"]}
    async with stack(tmp_path, broker, ports=ports) as (_fleet, _gateway, bridge):
        counters = bridge.request_server.counters
        client.publish(f"{P}/devices/sim-0/set/interval_ms", b"250")
        await wait_for(lambda: counters()["plain_commands"] == 1, what="the command taken")
        assert await read_interval(client) == 250

        for topic, body in ((f"{P}/devices/sim-0/set/interval_ms", b"fast"),  # not a number
                            (f"{P}/devices/sim-0/set/interval_ms", b"2.5"),  # not whole
                            (f"{P}/devices/sim-0/set/interval_ms", b"5"),  # below min 10
                            (f"{P}/devices/sim-0/set/name", b"kitchen"),  # not allowed
                            (f"{P}/devices/sim-0/set/no_such_key", b"1"),  # unknown key
                            (f"{P}/devices/nobody/set/interval_ms", b"1")):  # unknown device
            client.publish(topic, body)
        await wait_for(lambda: counters()["plain_commands_failed"] == 6, what="6 refusals")
        assert await read_interval(client) == 250  # none of them wrote anything
        # logged once (the first, with why), then counted
        assert "plain-value command not carried out: " in caplog.text
        assert "interval_ms: invalid: 'fast' is not a number" in caplog.text

        client.publish(f"{P}/devices/sim-0/press/ping", b"PRESS")
        await wait_for(lambda: counters()["plain_commands"] == 8, what="the press taken")
        client.publish(f"{P}/devices/sim-0/press/reboot_everything", b"PRESS")
        await wait_for(lambda: counters()["plain_commands_failed"] == 7,
                       what="an unknown action refused")
        # the ping succeeded: only the unknown action was added to the failures
        assert counters()["plain_commands"] == 9
        # nothing was answered: plain commands have no reply topic (2 replies: the reads)
        assert len(client.on("replies/")) == 2


@given(st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_whole_numbers_are_taken_as_written(number):
    assert plain_value("u32", None, f" {number}\n") == number


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_of_scaled_fields_are_taken_as_real_values(number):
    assert plain_value("i16", 0.01, repr(number)) == number


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "", "0x10", "1e", "ten"])
def test_what_is_not_a_finite_number_is_refused(text):
    with pytest.raises(InvalidRequest):
        plain_value("f32", None, text)


@pytest.mark.parametrize(("text", "value"), [("ON", True), ("off", False), ("1", True),
                                             ("false", False)])
def test_switch_words_for_bool(text, value):
    assert plain_value("bool", None, text) is value


def test_text_is_taken_as_it_is():
    assert plain_value("utf8", None, " living room ") == " living room "
    assert math.isclose(plain_value("f64", None, "21.5"), 21.5)
