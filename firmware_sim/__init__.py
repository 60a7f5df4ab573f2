"""firmware_sim: simulated MCP devices over pseudo-terminals and TCP, with fault injection."""

from firmware_sim.device import Faults, SimulatedDevice
from firmware_sim.fleet import Fleet, FleetSpec, FleetThread
from firmware_sim.links import PtyLink, TcpLink

__all__ = ["Faults", "Fleet", "FleetSpec", "FleetThread", "PtyLink", "SimulatedDevice", "TcpLink"]
