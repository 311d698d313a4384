"""The Management Activity API emulator: synthetic tenants, fault injection and an aiohttp server."""

from auditlake.emulator.faults import FaultSpec
from auditlake.emulator.incident import Incident
from auditlake.emulator.server import EmulatorServer, EmulatorState, build_app, run_forever
from auditlake.emulator.tenant import EmulatedBlob, SyntheticTenant

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
