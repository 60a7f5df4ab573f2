"""The fabric's one request client (``gateway.bridge.client.RequestClient``, used by
``mcp-gateway request`` and the dashboard) against a real Mosquitto and a hand-written
answerer: answers are matched by their correlation (fabric.md, "Envelope": MQTT 5
Correlation Data, or the 3.1.1 envelope's ``correlation_id``), whatever their order."""

from __future__ import annotations

import asyncio
import json
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.bridge.client import NoResponse, NotConnected, RequestClient
from gateway.bridge.mqtt import BrokerSettings
from tests.harness import wait_for
from tests.mqtt_helpers import free_port

REQUESTS = "mcp/v1/gw/requests"


class Answerer:
    """A stand-in gateway: once ``batch`` requests have come, answers them in reverse
    order, each with ``answer(request)`` as its body (plus the 3.1.1 correlation_id)."""

    def __init__(self, port: int, protocol: int, batch: int, answer=None) -> None:
        self.batch = batch
        self.answer = answer or (lambda request: {"status": "ok",
                                                  "payload": request["payload"]})
        self.waiting: list[paho.MQTTMessage] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"answerer-{protocol}",
                                  protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_connect = lambda *args: self.client.subscribe(REQUESTS, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        self.waiting.append(message)
        if len(self.waiting) < self.batch:
            return
        for request in reversed(self.waiting):
            envelope = json.loads(request.payload)
            body = self.answer(envelope)
            properties = None
            reply_to = getattr(request.properties, "ResponseTopic", None)
            if reply_to is not None:  # MQTT 5: the properties carry the correlation
                properties = Properties(PacketTypes.PUBLISH)
                properties.CorrelationData = request.properties.CorrelationData
            else:
                reply_to = envelope["reply_to"]
                if isinstance(body, dict):
                    body = {**body, "correlation_id": envelope["correlation_id"]}
            client.publish(reply_to, json.dumps(body), qos=1, properties=properties)
        self.waiting.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize("protocol", [5, 3], ids=["mqtt5", "mqtt311"])
async def test_concurrent_answers_in_reverse_order_each_reach_their_request(broker, protocol):
    """Correlation, both ways the spec allows: three requests in flight on one client, the
    answers in reverse order, each answer reaches the request it answers."""
    answerer = Answerer(broker.port, protocol, batch=3)
    try:
        assert answerer.subscribed.wait(5), "the answerer's SUBACK"
        async with RequestClient(BrokerSettings(url=broker.url, protocol=protocol),
                                 name="mcp-dashboard") as client:
            await wait_for(lambda: client.conn.subscribed, what="the client's SUBACK")
            answers = await asyncio.gather(*(
                client.request("gw", None, "ping", {"n": n}, wait_s=10) for n in range(3)))
        assert [a["payload"] for a in answers] == [{"n": 0}, {"n": 1}, {"n": 2}]
    finally:
        answerer.close()


async def test_an_answer_that_is_not_an_object_is_an_invalid_response(broker):
    answerer = Answerer(broker.port, 5, batch=1, answer=lambda request: [1, 2])
    try:
        assert answerer.subscribed.wait(5), "the answerer's SUBACK"
        async with RequestClient(BrokerSettings(url=broker.url)) as client:
            await wait_for(lambda: client.conn.subscribed, what="the client's SUBACK")
            answer = await client.request("gw", None, "ping", wait_s=10)
        assert answer == {"status": "invalid",
                          "error": {"message": "the response is not an object"}}
    finally:
        answerer.close()


async def test_a_long_lived_client_says_not_connected_at_once_and_no_response_at_the_deadline(
        broker):
    """The dashboard's client: no waiting for a connection that is down; without an
    answer, ``NoResponse`` when the deadline passes (and nothing left pending)."""
    nowhere = RequestClient(BrokerSettings(url=f"mqtt://127.0.0.1:{free_port()}"))
    with pytest.raises(NotConnected):
        await nowhere.request("gw", None, "ping", wait_s=10)
    async with RequestClient(BrokerSettings(url=broker.url)) as client:
        await wait_for(lambda: client.connected, what="connected")
        with pytest.raises(NoResponse) as failure:
            await client.request("gw", "dev", "ping", wait_s=0.3)
        assert str(failure.value) == "no response on mcp/v1/gw/devices/dev/requests within 0.3 s"
        assert not client._pending
