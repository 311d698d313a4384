"""The five Entra ID logs AuditLake collects, and the one envelope every record travels in.

Each log is a *stream*: its Graph endpoint and filter, the diagnostic-setting category Entra gives
it when it streams to an Event Hub, and the Sentinel table it lands in. A stream's name is
``Entra.<category>``: the ContentType of its windows in the ledger and of its checkpoint, beside
the Management feed's ``Audit.*`` and the search's ``Purview.Search``.

**One envelope for both ways in.** Streamed by a diagnostic setting, each record reaches ADX as
``{time, category, operationName, resultType, correlationId, ..., properties: {...}}`` inside
``{"records": [...]}`` (Microsoft's Event Hub format), and the update policies of
``infra/kql/entra.kql`` expand it into the five tables. A polled record is the Graph resource
itself, which is what a diagnostic record holds under ``properties``; ``envelope`` wraps it the
same way, so the raw table, the expansion and the tables are one definition whichever way a
record came, on ADX and in the local lake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RAW_TABLE = "EntraActivityRaw"
"""The table both ways in write: one row per batch of envelopes, ``Records`` the array."""

SIGNINS_PATH = "beta/auditLogs/signIns"
"""Beta: v1.0 lists interactive user sign-ins only; the other three kinds need ``signInEventTypes``."""
DIRECTORY_AUDITS_PATH = "v1.0/auditLogs/directoryAudits"


@dataclass(frozen=True, slots=True)
class Stream:
    category: str
    """The diagnostic-setting category (``SignInLogs``, ``AuditLogs``, ...)."""
    table: str
    """The Sentinel table its records land in."""
    path: str
    """The Graph path under the root."""
    time_field: str
    """The resource's timestamp, which ``$filter`` ranges over and ``time`` is set from."""
    event_type: str | None = None
    """``signInEventTypes`` value for sign-ins (None for directory audits)."""

    @property
    def name(self) -> str:
        """``Entra.<category>``: ContentType in the ledger, key of the checkpoint."""
        return f"Entra.{self.category}"

    @property
    def is_signin(self) -> bool:
        return self.event_type is not None


STREAMS: tuple[Stream, ...] = (
    Stream("SignInLogs", "SigninLogs", SIGNINS_PATH, "createdDateTime", "interactiveUser"),
    Stream("NonInteractiveUserSignInLogs", "AADNonInteractiveUserSignInLogs", SIGNINS_PATH, "createdDateTime",
           "nonInteractiveUser"),
    Stream("ServicePrincipalSignInLogs", "AADServicePrincipalSignInLogs", SIGNINS_PATH, "createdDateTime",
           "servicePrincipal"),
    Stream("ManagedIdentitySignInLogs", "AADManagedIdentitySignInLogs", SIGNINS_PATH, "createdDateTime",
           "managedIdentity"),
    Stream("AuditLogs", "AuditLogs", DIRECTORY_AUDITS_PATH, "activityDateTime"),
)
STREAMS_BY_NAME: dict[str, Stream] = {s.name: s for s in STREAMS}

SHORT_NAMES: dict[str, Stream] = {
    "signins": STREAMS[0],
    "noninteractive": STREAMS[1],
    "serviceprincipal": STREAMS[2],
    "managedidentity": STREAMS[3],
    "directoryaudits": STREAMS[4],
}
"""What ``auditlake collect --source`` accepts for each stream (``entra`` means all five)."""


def parse_streams(text: str) -> tuple[Stream, ...]:
    """The streams a comma list names: ``entra`` (all five) or short names (``SHORT_NAMES``), in
    ``STREAMS`` order; empty text, none. ValueError names an unknown one."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n != "entra" and n not in SHORT_NAMES]
    if unknown:
        raise ValueError(f"unknown Entra ID log {', '.join(unknown)}; choose from entra, {', '.join(SHORT_NAMES)}")
    chosen = set(STREAMS) if "entra" in names else {SHORT_NAMES[n] for n in names}
    return tuple(s for s in STREAMS if s in chosen)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _initiator(record: Mapping[str, Any]) -> Mapping[str, Any]:
    by = record.get("initiatedBy")
    if isinstance(by, Mapping):
        for kind in ("user", "app"):
            who = by.get(kind)
            if isinstance(who, Mapping):
                return who
    return {}


def envelope(stream: Stream, tenant_id: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """*record* (a Graph resource as returned) in a diagnostic setting's envelope.

    The envelope's own fields are what Entra sets on a streamed record, derived from the resource;
    the resource is kept whole, unchanged, under ``properties``."""
    out: dict[str, Any] = {
        "time": record.get(stream.time_field),
        "resourceId": f"/tenants/{tenant_id}/providers/Microsoft.aadiam",
        "category": stream.category,
        "tenantId": tenant_id,
        "correlationId": record.get("correlationId"),
        "properties": dict(record),
    }
    if stream.is_signin:
        status = record.get("status")
        status = status if isinstance(status, Mapping) else {}
        location = record.get("location")
        code = status.get("errorCode")
        out.update(
            operationName="Sign-in activity",
            operationVersion="1.0",
            resultType=str(code) if code is not None else "",
            resultDescription=_text(status.get("failureReason")),
            callerIpAddress=_text(record.get("ipAddress")),
            identity=_text(record.get("userDisplayName")) or _text(record.get("servicePrincipalName")),
            location=_text(location.get("countryOrRegion")) if isinstance(location, Mapping) else "",
            Level=4,
        )
    else:
        who = _initiator(record)
        out.update(
            operationName=_text(record.get("activityDisplayName")),
            operationVersion="1.0",
            resultType=_text(record.get("result")),
            resultDescription=_text(record.get("resultReason")),
            callerIpAddress=_text(who.get("ipAddress")),
            identity=_text(who.get("displayName")) or _text(who.get("userPrincipalName")),
            Level=4,
        )
    return out
