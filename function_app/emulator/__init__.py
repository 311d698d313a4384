"""The Management Activity API emulator: synthetic tenants, fault injection and an aiohttp server."""

from function_app.emulator.faults import FaultSpec
from function_app.emulator.incident import Incident
from function_app.emulator.server import EmulatorServer, EmulatorState, build_app, run_forever
from function_app.emulator.tenant import EmulatedBlob, SyntheticTenant

__all__ = [
    "EmulatedBlob",
    "EmulatorServer",
    "EmulatorState",
    "FaultSpec",
    "Incident",
    "SyntheticTenant",
    "build_app",
    "run_forever",
]
