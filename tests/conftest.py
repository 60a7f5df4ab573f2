"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
from hypothesis import settings

from tests.mqtt_helpers import Mosquitto

# No deadline per example: it is a wall-clock assert, and a loaded machine (CI's 2 cores
# beside emulators and brokers) failed a pure codec test with it once.
settings.register_profile("mcp", deadline=None)
settings.load_profile("mcp")


@pytest.fixture
def broker(tmp_path):
    """A real Mosquitto on a free port, for this test only."""
    mosquitto = Mosquitto(tmp_path)
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def durable_broker(tmp_path):
    """A Mosquitto that keeps its sessions through a restart (persistence on): a watcher's
    subscription and the messages queued for it while it reconnects are not lost, so what
    the watcher misses is what the gateway did not publish."""
    directory = tmp_path / "durable-broker"
    directory.mkdir()
    mosquitto = Mosquitto(directory, extra=f"persistence true\npersistence_location {directory}/\n")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()
