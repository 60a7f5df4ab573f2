"""One live gateway per gateway_id on a broker (issue 18, "Many gateways on one fabric"):
the decision as a pure function, then real ``mcp-gateway run`` processes on a real Mosquitto.
"""

from __future__ import annotations

import json
import signal
import time

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from gateway.bridge.claim import Claimant, ClaimWatch, Verdict, judge, parse_status
from gateway.bridge.mqtt import Message
from gateway.bridge.topics import Topics
from gateway.errors import GatewayIdInUse
from tests.fleet_helpers import GatewayProcess, retained, wait_until
from tests.mqtt_helpers import Client, Mosquitto, free_port

OURS = Claimant("a" * 16, 1000.0)
EARLIER = Claimant("b" * 16, 900.0)
LATER = Claimant("c" * 16, 1100.0)


def _offline(claimant: Claimant) -> Claimant:
    return Claimant(claimant.instance, claimant.started_at, state="offline")


# ---------------------------------------------------------------------- the decision


@pytest.mark.parametrize(("theirs", "before_own", "reconnected", "verdict"), [
    # Our own status (the echo of our publish, our will after a blip) says nothing.
    (OURS, True, False, Verdict.IGNORE),
    (_offline(OURS), True, True, Verdict.IGNORE),
    (_offline(OURS), False, True, Verdict.IGNORE),
    # Another run says it is up: the later one stops, wherever the status was seen.
    (EARLIER, True, False, Verdict.YIELD),
    (EARLIER, False, True, Verdict.YIELD),
    (LATER, True, False, Verdict.REPUBLISH),
    (LATER, False, False, Verdict.REPUBLISH),
    (Claimant("b" * 16, 900.0, state="degraded"), False, False, Verdict.YIELD),  # up too
    # Another run's offline held at our first connection: the last run's; ours follows.
    (_offline(EARLIER), True, False, Verdict.IGNORE),
    (_offline(LATER), True, False, Verdict.IGNORE),
    # Held when we come back: someone published there while we were away (a session
    # taken over by the same client id fires the will of the closed one): a live claim.
    (_offline(EARLIER), True, True, Verdict.YIELD),
    (_offline(LATER), True, True, Verdict.REPUBLISH),
    # Another run's offline as news (its stop, its late will): the broker must hold ours.
    (_offline(EARLIER), False, True, Verdict.REPUBLISH),
    (_offline(LATER), False, False, Verdict.REPUBLISH),
    # A status naming no run (an older version, a hand-made one) never stops this one.
    (Claimant("", 0.0), False, False, Verdict.REPUBLISH),
    (Claimant("", 0.0), True, True, Verdict.REPUBLISH),
    (Claimant("", 0.0), True, False, Verdict.IGNORE),
    (Claimant("b" * 16, 0.0), False, True, Verdict.REPUBLISH),
    (Claimant("", 0.0, "offline"), False, False, Verdict.REPUBLISH),
    # Cleared or not a status: nothing held; as news, say ours again.
    (None, True, False, Verdict.IGNORE),
    (None, True, True, Verdict.IGNORE),
    (None, False, False, Verdict.REPUBLISH),
])
def test_judge(theirs, before_own, reconnected, verdict):
    assert judge(OURS, theirs, before_own=before_own, reconnected=reconnected,
                 forgiven=False) is verdict


@pytest.mark.parametrize("theirs", [EARLIER, _offline(EARLIER), LATER, _offline(LATER)])
def test_what_a_node_new_to_this_run_holds_is_no_claim_but_news_there_is(theirs):
    """A cluster keeping retained messages per node holds on a node this run was not on
    whatever an older run left there: not a claim. A status published there while this run
    is connected is judged as anywhere."""
    assert judge(OURS, theirs, before_own=True, reconnected=True, forgiven=False,
                 new_node=True) is Verdict.IGNORE
    assert judge(OURS, theirs, before_own=False, reconnected=True, forgiven=False,
                 new_node=True) is judge(OURS, theirs, before_own=False, reconnected=True,
                                         forgiven=False)


@pytest.mark.parametrize("theirs", [EARLIER, _offline(EARLIER)])
def test_a_run_the_probe_found_dead_is_forgiven_its_stale_status_and_its_late_will(theirs):
    """The probe saw it up and unanswering: its held status, or its will firing while we
    run, never stops us (the will, as news, is answered with our status)."""
    assert judge(OURS, theirs, before_own=True, reconnected=True,
                 forgiven=True) is Verdict.IGNORE
    assert judge(OURS, theirs, before_own=False, reconnected=False,
                 forgiven=True) is Verdict.REPUBLISH


def test_the_same_start_time_is_decided_by_the_instance():
    first, second = Claimant("0" * 16, 5.0), Claimant("f" * 16, 5.0)
    assert judge(second, first, before_own=False, reconnected=False,
                 forgiven=False) is Verdict.YIELD
    assert judge(first, second, before_own=False, reconnected=False,
                 forgiven=False) is Verdict.REPUBLISH


claimants = st.builds(Claimant, st.text("0123456789abcdef", min_size=16, max_size=16),
                      st.floats(1, 2e9, allow_nan=False), st.sampled_from(["online",
                                                                            "degraded"]))


@given(claimants, claimants, st.booleans(), st.booleans())
def test_of_two_live_runs_exactly_one_stops(a, b, before_own, reconnected):
    """Whatever each sees when, the rule is antisymmetric: never both stop, never both
    stay (unless they are the same run)."""
    if a.instance == b.instance:
        return
    verdicts = {judge(a, b, before_own=before_own, reconnected=reconnected, forgiven=False),
                judge(b, a, before_own=before_own, reconnected=reconnected, forgiven=False)}
    assert verdicts == {Verdict.YIELD, Verdict.REPUBLISH}


@pytest.mark.parametrize(("payload", "expected"), [
    (b"", None),
    (b"not json", None),
    (b"[1]", None),
    (b'{"state": 1}', None),
    (b'{"state":"offline"}', Claimant("", 0.0, "offline")),  # a version before instance
    (b'{"state":"online","started_at":true,"instance":7}', Claimant("", 0.0, "online")),
    (json.dumps({"state": "online", "started_at": 12.5, "instance": "ab", "version": "0.1.0"})
     .encode(), Claimant("ab", 12.5, "online", "0.1.0")),
])
def test_parse_status(payload, expected):
    assert parse_status(payload) == expected


def _watch(dead: Claimant | None = None):
    said: list[str] = []
    lost: list[GatewayIdInUse] = []
    watch = ClaimWatch(Topics("mcp/v1", "edge-1"), lambda: "mqtt://broker", OURS,
                       republish=lambda: said.append("republish"), lost=lost.append, dead=dead)
    return watch, said, lost


def _status(claimant: Claimant) -> Message:
    return Message("mcp/v1/edge-1/status", json.dumps({
        "state": claimant.state, "instance": claimant.instance,
        "started_at": claimant.started_at}).encode())


def test_the_watch_forgives_a_dead_run_once_per_kind_then_takes_it_as_live():
    """The probe's dead run: its held status and its late will are forgiven; the same run
    up again later (a frozen process that resumed) is a live claim."""
    watch, said, lost = _watch(dead=EARLIER)
    watch.connected()
    watch.on_message(_status(EARLIER))  # held: the dead run's last status
    watch.on_message(_status(OURS))  # our own comes back: what follows is news
    watch.on_message(_status(_offline(EARLIER)))  # its will, late
    assert said == ["republish"]
    assert lost == []
    watch.on_message(_status(EARLIER))  # up again: alive after all, and it started first
    assert len(lost) == 1
    assert "gateway_id 'edge-1' is in use on mqtt://broker" in str(lost[0])
    assert lost[0].while_running
    watch.on_message(_status(EARLIER))
    assert len(lost) == 1  # said once


def test_the_watch_takes_another_runs_will_held_after_a_reconnect_as_a_takeover(caplog):
    watch, said, lost = _watch()
    watch.connected()
    watch.on_message(_status(_offline(EARLIER)))  # the last run's will: fine
    watch.on_message(_status(OURS))
    assert (said, lost) == ([], [])
    watch.connected()  # a reconnection
    watch.on_message(_status(_offline(EARLIER)))
    assert len(lost) == 1
    assert "took this one's session over" in caplog.text


# ---------------------------------------------------------------------- real processes


def _status_of(broker, gateway_id: str = "edge-1") -> dict | None:
    return retained(broker.port, f"mcp/v1/{gateway_id}/status")


def _started(gw: GatewayProcess) -> GatewayProcess:
    gw.start()
    gw.until("ready: ")
    return gw


def test_a_second_gateway_with_the_same_id_is_refused_and_the_first_keeps_serving(
        tmp_path, broker):
    first = _started(GatewayProcess(tmp_path, "edge-1", broker.url, name="first"))
    try:
        held = _status_of(broker)
        assert held is not None
        assert held["state"] == "online"
        assert len(held["instance"]) == 16
        second = GatewayProcess(tmp_path, "edge-1", broker.url, name="second").start()
        assert second.wait(20) == 2
        out = second.rest()
        assert (f"mcp-gateway: gateway_id 'edge-1' is in use on {broker.url}: a gateway "
                "started at ") in out
        assert f"instance {held['instance']}) answers there; give this gateway another " \
               "gateway_id" in out
        assert "Traceback" not in out
        assert first.proc.poll() is None
        assert _status_of(broker) == held  # the refused one never published
        client = Client(broker.port)
        try:
            client.subscribe("app/replies")
            client.publish("mcp/v1/edge-1/requests", '{"action": "list_devices"}',
                           response_topic="app/replies", correlation=b"1")
            answer = wait_until(lambda: client.json_on("app/replies"), what="an answer")
            assert answer[0]["status"] == "ok"
            assert answer[0]["payload"]["devices"].keys() == {"x"}
        finally:
            client.close()
    finally:
        first.kill()


@pytest.mark.parametrize("protocol", [5, 3])
def test_a_different_client_id_is_refused_too(tmp_path, broker, protocol):
    """Without the client id's takeover the probe is what keeps the topics apart; on MQTT
    3.1.1 the probe's question carries its reply address in the envelope."""
    first = _started(GatewayProcess(tmp_path, "edge-1", broker.url, name="first",
                                    broker_extra=f'client_id = "one"\nprotocol = {protocol}'))
    try:
        second = GatewayProcess(tmp_path, "edge-1", broker.url, name="second",
                                broker_extra=f'client_id = "two"\nprotocol = {protocol}'
                                ).start()
        assert second.wait(20) == 2
        assert "answers there" in second.rest()  # the probe's refusal, not the watch's
        assert first.proc.poll() is None
    finally:
        first.kill()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_restart_is_not_refused(tmp_path, broker, how):
    """SIGTERM (its clean offline) and SIGKILL (its will, fired when the kernel closes the
    socket) leave an offline status: the next run starts at once."""
    gw = _started(GatewayProcess(tmp_path, "edge-1", broker.url))
    before = _status_of(broker)
    gw.signal(how)
    gw.wait()
    gone = wait_until(lambda: (s := _status_of(broker)) and s["state"] == "offline" and s,
                      what="offline")
    assert gone["instance"] == before["instance"]
    again = _started(GatewayProcess(tmp_path, "edge-1", broker.url))
    try:
        after = wait_until(lambda: (s := _status_of(broker)) and s["state"] == "online" and s,
                           what="the new run online")
        assert after["instance"] != before["instance"]
        assert "says it is up" not in "".join(again.lines.queue.queue)
        assert again.proc.poll() is None
    finally:
        again.kill()


def test_a_run_that_cannot_answer_holds_no_id(tmp_path, broker):
    """A gateway whose status says online but which cannot answer (here: SIGSTOPped, as a
    host that lost power looks until its keepalive expires): the next run asks, waits the
    probe's deadline, starts, and takes the session; the frozen run, killed, changes
    nothing."""
    frozen = _started(GatewayProcess(tmp_path, "edge-1", broker.url, name="frozen"))
    held = _status_of(broker)
    frozen.signal(signal.SIGSTOP)
    try:
        successor = GatewayProcess(tmp_path, "edge-1", broker.url, name="successor").start()
        seen = successor.until("taken as a dead run whose will has not fired yet", 20)
        assert held["instance"] in seen[-1]
        successor.until("ready: ")
        ours = wait_until(lambda: (s := _status_of(broker)) and s["instance"] != held[
            "instance"] and s["state"] == "online" and s, what="the successor's status")
        frozen.kill()
        assert successor.proc.poll() is None
        assert _status_of(broker) == ours
        successor.signal(signal.SIGTERM)
        assert successor.wait() == 0
    finally:
        frozen.kill()
        successor.kill()


def _forge(broker, body: dict) -> None:
    client = Client(broker.port)
    try:
        client.client.publish("mcp/v1/edge-1/status", json.dumps(body), qos=1,
                              retain=True).wait_for_publish(5)
    finally:
        client.close()


def test_a_run_that_started_first_appearing_on_the_topic_stops_this_one(tmp_path, broker):
    gw = _started(GatewayProcess(tmp_path, "edge-1", broker.url))
    ours = _status_of(broker)
    try:
        # One that started later: this one stays and says its status again.
        _forge(broker, {"state": "online", "instance": "f" * 16,
                        "started_at": ours["started_at"] + 60, "version": "0.1.0"})
        wait_until(lambda: _status_of(broker) == ours, what="our status again")
        # Its clean stop (offline) while we run: ours again too.
        _forge(broker, {"state": "offline", "instance": "f" * 16,
                        "started_at": ours["started_at"] + 60})
        wait_until(lambda: _status_of(broker) == ours, what="our status again")
        assert gw.proc.poll() is None
        # One that started first: this one stops, exit 2, with the message.
        _forge(broker, {"state": "online", "instance": "0" * 16,
                        "started_at": ours["started_at"] - 60, "version": "0.1.0"})
        assert gw.wait() == 2
        out = gw.rest()
        assert "mcp-gateway: gateway_id 'edge-1' is in use on" in out
        assert "instance 0000000000000000) publishes there too and started first" in out
        assert "Traceback" not in out
        # It left without a last word: the status is the other run's.
        assert _status_of(broker)["instance"] == "0" * 16
    finally:
        gw.kill()


def test_a_session_taken_over_by_the_same_client_id_is_resolved(tmp_path, broker):
    """A client with the gateway's client id (as a second gateway started at the same
    instant would be) takes the session; Mosquitto closes the gateway's connection and
    fires its will, and when the gateway takes the session back, the intruder's will (an
    earlier run's offline). The gateway finds it on its topic after reconnecting: it
    stops, saying what happened."""
    gw = _started(GatewayProcess(tmp_path, "edge-1", broker.url))
    ours = _status_of(broker)
    intruder = paho.Client(CallbackAPIVersion.VERSION2, client_id="mcp-gateway-edge-1",
                           protocol=paho.MQTTv5, reconnect_on_failure=False)
    intruder.will_set("mcp/v1/edge-1/status", json.dumps({
        "state": "offline", "instance": "0" * 16, "started_at": ours["started_at"] - 1}),
        qos=1, retain=True)
    try:
        intruder.connect("127.0.0.1", broker.port)
        intruder.loop_start()
        assert gw.wait(20) == 2
        out = gw.rest()
        assert "took this one's session over" in out
        assert "mcp-gateway: gateway_id 'edge-1' is in use on" in out
    finally:
        intruder.loop_stop()
        gw.kill()


# ---------------------------------------------------------------------- a cluster of nodes


@pytest.fixture
def second_broker(tmp_path):
    """Another broker beside ``broker``: together, a cluster whose nodes keep retained
    messages each for itself (as RabbitMQ 3.x does)."""
    directory = tmp_path / "node-b"
    directory.mkdir()
    mosquitto = Mosquitto(directory)
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


def _retain(port: int, body: dict) -> None:
    client = Client(port)
    try:
        client.client.publish("mcp/v1/edge-1/status", json.dumps(body), qos=1,
                              retain=True).wait_for_publish(5)
    finally:
        client.close()


@pytest.mark.parametrize("held", ["offline", "online"])
def test_a_failover_to_a_node_holding_an_older_runs_status_is_no_claim(
        tmp_path, broker, second_broker, held):
    """Node B holds what an older run left there when it was last on B: its clean stop, or
    its online (B went down under it, so no will was fired there). Failing over to B, this
    run takes it for what it is, says its own status there and goes on (it stopped, exit 2,
    as if another gateway held the id)."""
    _retain(second_broker.port, {"state": held, "instance": "0" * 16,
                                 "started_at": time.time() - 86400, "version": "0.1.0"})
    gw = _started(GatewayProcess(tmp_path, "edge-1", [broker.url, second_broker.url]))
    try:
        broker.stop()
        gw.until(f"connected to {second_broker.url}, failing over from {broker.url}")
        ours = wait_until(lambda: (s := _status_of(second_broker)) and
                          s["instance"] != "0" * 16 and s, what="this run's status on B")
        assert ours["state"] == "online"
        # Its stats come on B, and again later: it runs on there.
        def uptime() -> float | None:
            stats = retained(second_broker.port, "mcp/v1/edge-1/stats")
            return stats["uptime_s"] if stats else None

        first = wait_until(uptime, timeout=20, what="stats on B")
        wait_until(lambda: (uptime() or 0) > first, timeout=20, what="fresh stats on B")
        assert gw.proc.poll() is None
        gw.signal(signal.SIGTERM)
        assert gw.wait() == 0
    finally:
        gw.kill()
        broker.start()


def test_the_probe_tries_every_node_before_it_gives_up(tmp_path, broker):
    """The first node is down: the probe goes on to the next, finds the live gateway there
    and refuses (it started unchecked, and the watch would have had to catch it)."""
    first = _started(GatewayProcess(tmp_path, "edge-1", broker.url, name="first"))
    try:
        dead = f"mqtt://127.0.0.1:{free_port()}"
        second = GatewayProcess(tmp_path, "edge-1", [dead, broker.url], name="second").start()
        assert second.wait(20) == 2
        out = second.rest()
        assert f"mcp-gateway: gateway_id 'edge-1' is in use on {broker.url}: " in out
        assert "answers there" in out  # the probe's refusal
        assert first.proc.poll() is None
    finally:
        first.kill()
