"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from tests.mqtt_helpers import Mosquitto


@pytest.fixture
def broker(tmp_path):
    """A real Mosquitto on a free port, for this test only."""
    mosquitto = Mosquitto(tmp_path)
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()
