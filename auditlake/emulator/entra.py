"""The Microsoft Graph Entra ID activity logs (sign-ins and directory audits), emulated over the synthetic tenants.

Routes, on the same aiohttp app as the feed, under ``/graph``:

- ``GET /graph/beta/auditLogs/signIns``: beta ``signIn`` resources. Graph's documented behaviour,
  followed here: newest first (``createdDateTime`` descending), 1,000 a page by default and at
  most, ``$top`` for fewer, ``@odata.nextLink`` absolute with an opaque ``$skiptoken`` (absent on
  the last page), and without a ``signInEventTypes`` condition in ``$filter`` only interactive user
  sign-ins (the signIn resource page: "This API returns only interactive sign-ins unless you set an
  explicit filter"). ``$filter`` takes ``createdDateTime`` compared with ``ge``, ``gt``, ``le``,
  ``lt`` or ``eq`` to an unquoted DateTimeOffset (``2025-03-10T12:00:00Z``; a bare date is
  midnight UTC), ``signInEventTypes/any(t: t eq 'servicePrincipal')`` (``eq`` or ``ne``, several
  joined by ``or`` inside the lambda or as separate ``any`` clauses), ``and``, ``or``, ``not`` and
  parentheses; any other property compared with ``eq``/``ne`` to a quoted string, a number,
  ``true``, ``false`` or ``null`` (``servicePrincipalId eq '...'``, ``status/errorCode eq 50126``).
  A quoted DateTimeOffset, an unknown function or a clause that does not parse is Graph's
  ``400 BadRequest`` "Invalid filter clause". ``$orderby`` takes the time property, ``asc`` or
  ``desc``. Other ``$`` options (``$select``, ``$count``, ...) are a 400 naming them: the emulator
  does not implement them, and ignoring them would hide that from a client.
- ``GET /graph/v1.0/auditLogs/directoryAudits`` and ``/graph/beta/auditLogs/directoryAudits``:
  ``directoryAudit`` resources, the same rules over ``activityDateTime``. Path segments are matched
  in Graph's documented and in all-lower-case spelling (Graph's own nextLinks use ``signins``).

Emulator's choices where Graph documents nothing: ``$top`` above 1,000 is served as 1,000; the
result of a listing is fixed at its first page (each ``$skiptoken`` page is cut from that snapshot,
so a paging sees each record once unless ``entra_dup`` says otherwise); ties in time are ordered by
``id``; an unknown or altered ``$skiptoken`` is a 400. v1.0 ``signIns`` is not served. The logs keep
30 days (Entra's P1/P2 retention), so ``--days`` beyond 30 are not in them.

Records (deterministic from the tenant's seed, over the tenant's history up to its ``now``):
interactive user sign-ins (password and MFA steps in ``authenticationDetails``, Conditional Access
policies and status, failures 50126, 50074, 53003, ...), non-interactive token refreshes, service
principal sign-ins (client secret or certificate; a few failing with AADSTS 7000215 "invalid client
secret" or 7000222 "client secret keys expired") and managed identity sign-ins to Azure Key Vault
and Azure Resource Manager; directory audits initiated by users or by applications. Each record
becomes visible some time after its ``createdDateTime`` (30 s to 5 min; Entra documents minutes), and
until then is in no listing and not in the truth.

The default scenario's incident (:mod:`auditlake.emulator.incident`) is in these logs too: the
spray's 50126 failures and the victim's sign-ins from the attacker's address; "Add service principal
credentials." with ``initiatedBy.user`` the victim and the ``correlationId`` of the victim's Azure
portal sign-in just before it (the new key's id is the one the feed's record names, and the
``servicePrincipalCredentialKeyId`` of the sign-ins that use it); then failures with an expired and
an invalid secret from the principal's usual address, its successful sign-ins from ``sp_ip`` (an
address it never used before) to Exchange Online and Microsoft Graph, and directory changes
initiated by it (``initiatedBy.app``, which carries no address). ``initiatedBy.app.servicePrincipalId``
is the sign-ins' ``servicePrincipalId`` (the principal's object id).

Faults (:class:`~auditlake.emulator.faults.FaultSpec`, drawn from the seed): ``entra_throttle=P``
(429 ``TooManyRequests``, ``Retry-After: 1``), ``entra_5xx=P`` (500, 503 or 504 in turn),
``entra_cutoff=P`` (a 200 page whose body stops halfway), ``entra_dup=P`` (a page begins with the
last record of the page before), ``entra_late=P`` (a record becomes visible 1 to 4 hours after its
time), ``entra_drift=P`` (a record carries properties no schema knows), ``entra_nopremium``
(sign-ins answer 403 ``Authentication_RequestFromNonPremiumTenantOrB2CTenant``; directory audits,
which Entra keeps for free tenants too, still answer) and ``entra_noperm`` (both answer 403
``Authentication_MSGraphPermissionMissing`` naming AuditLog.Read.All, the code Graph sends for a
missing permission). Besides the faults, as Graph does for identity and access reports, each tenant
has a budget of *budget* requests per *budget_window* seconds (5 per 10 s by default, 0 for none);
past it a request is answered 429 with the seconds until a slot frees in ``Retry-After``.

Tokens and tenants as in :mod:`auditlake.emulator.purview`: a bearer ``<anything>@<tenant guid>``
chooses the tenant, any other token the first. ``/_emulator/entra_truth`` lists the ids of every
record visible now; ``/_emulator/stats`` counts requests and faults under ``entra``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import math
import random
import re
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from auditlake.emulator.faults import FaultSpec, stable_seed
from auditlake.emulator.purview import GraphError, bearer_tenant
from auditlake.emulator.synth import (
    APP_AAD_POWERSHELL,
    APP_EXCHANGE,
    APP_GRAPH,
    APP_OFFICE,
    APP_OUTLOOK_MOBILE,
    APP_SHAREPOINT,
    APP_TEAMS,
    ServicePrincipal,
    User,
    World,
)
from auditlake.emulator.tenant import SyntheticTenant
from function_app.core.model import iso_z, utc

log = logging.getLogger(__name__)

EVENT_TYPES = ("interactiveUser", "nonInteractiveUser", "servicePrincipal", "managedIdentity")
MAX_TOP = 1000
RETENTION = timedelta(days=30)
DEFAULT_SIGNINS_PER_DAY = 100
DEFAULT_BUDGET = 5
DEFAULT_BUDGET_WINDOW = 10.0
RETRY_AFTER_SECONDS = 1
# Per interactive user sign-in: how many of each other kind a day brings (non-interactive ones are
# the most numerous in real tenants; kept modest here).
KIND_SHARE = {"interactiveUser": 1.0, "nonInteractiveUser": 2.5, "servicePrincipal": 1.0,
              "managedIdentity": 0.5, "directoryAudit": 0.6}
NON_PREMIUM_CODE = "Authentication_RequestFromNonPremiumTenantOrB2CTenant"
NON_PREMIUM_MESSAGE = "Neither tenant is B2C or tenant doesn't have premium license"
NO_PERMISSION_CODE = "Authentication_MSGraphPermissionMissing"
NO_PERMISSION_MESSAGE = "Calling principal does not have required MSGraph permissions AuditLog.Read.All"
INVALID_FILTER = "Invalid filter clause"
_VISIBLE_AFTER_S = (30.0, 300.0)
_LATE_AFTER_S = (3600.0, 4 * 3600.0)
_MAX_LISTINGS = 2048
_RETRY_AFTER_SLACK = 0.05

APP_AZURE_PORTAL = "c44b4083-3bb0-49c1-b47d-974e53cbdf3c"
APP_ONEDRIVE_SYNC = "ab9b8c07-8f02-4f72-87fa-80105867a763"
APP_ARM = "797f4846-ba00-4fd7-ba43-dac1f8f63013"
APP_KEY_VAULT = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"
APP_TEAMS_SERVICES = "cc15fd57-2c6c-4117-a88c-83b1d56b4bbe"
RESOURCE_NAMES = {
    APP_EXCHANGE: "Office 365 Exchange Online", APP_SHAREPOINT: "Office 365 SharePoint Online",
    APP_GRAPH: "Microsoft Graph", APP_ARM: "Azure Resource Manager", APP_KEY_VAULT: "Azure Key Vault",
    APP_TEAMS_SERVICES: "Microsoft Teams Services",
}
_USER_APPS = ((APP_OFFICE, "Microsoft Office"), (APP_TEAMS, "Microsoft Teams"),
              (APP_OUTLOOK_MOBILE, "Outlook Mobile"), (APP_AZURE_PORTAL, "Azure Portal"),
              ("4765445b-32c6-49b0-83e6-1d93765276ca", "OfficeHome"))
_REFRESH_APPS = ((APP_OUTLOOK_MOBILE, "Outlook Mobile"), (APP_TEAMS, "Microsoft Teams"),
                 (APP_ONEDRIVE_SYNC, "OneDrive SyncEngine"), (APP_OFFICE, "Microsoft Office"))
_USER_RESOURCES = (APP_EXCHANGE, APP_SHAREPOINT, APP_GRAPH, APP_TEAMS_SERVICES)

# AADSTS codes with the reason Entra gives (error code reference).
FAILURES: dict[int, str] = {
    50126: "Error validating credentials due to invalid username or password.",
    50074: "Strong Authentication is required.",
    50053: "Account is locked because user tried to sign in too many times with an incorrect user ID or password.",
    50140: "This error occurred due to 'Keep me signed in' interrupt when the user was signing in.",
    53003: "Access has been blocked by Conditional Access policies.",
    500121: "Authentication failed during strong authentication request.",
    50173: "The provided grant has expired due to it being revoked.",
    70044: "The session has expired or is invalid due to sign-in frequency checks by conditional access.",
    7000215: "Invalid client secret is provided.",
    7000222: "The provided client secret keys are expired.",
}
_INTERACTIVE_OUTCOMES = ((0, 0.86), (50126, 0.05), (50074, 0.035), (50140, 0.02), (500121, 0.015),
                         (53003, 0.01), (50053, 0.01))
_CITIES = (
    ("Seattle", "Washington", "US", 47.61, -122.33), ("Chicago", "Illinois", "US", 41.88, -87.63),
    ("London", "England", "GB", 51.51, -0.13), ("Berlin", "Berlin", "DE", 52.52, 13.40),
    ("Paris", "Ile-de-France", "FR", 48.86, 2.35), ("Madrid", "Madrid", "ES", 40.42, -3.70),
    ("Toronto", "Ontario", "CA", 43.65, -79.38), ("Sydney", "New South Wales", "AU", -33.87, 151.21),
)
_FOREIGN = (
    ("Frankfurt am Main", "Hessen", "DE", 50.11, 8.68), ("Bucharest", "Bucuresti", "RO", 44.43, 26.10),
    ("Amsterdam", "Noord-Holland", "NL", 52.37, 4.90), ("Singapore", "Singapore", "SG", 1.35, 103.82),
)
_AZURE_REGIONS = (
    ("Boydton", "Virginia", "US", 36.67, -78.39), ("Dublin", "Dublin", "IE", 53.35, -6.26),
    ("Amsterdam", "Noord-Holland", "NL", 52.37, 4.90), ("San Antonio", "Texas", "US", 29.42, -98.49),
)
# Properties no version of the schemas has: the entra_drift fault adds them.
_DRIFT_SIGNIN = {"agentSignIn": {"agentType": "notAgentic", "parentAppId": None},
                 "sessionBindingDetails": {"bindingStatus": "unbound", "bindingStatusCode": 1008}}
_DRIFT_AUDIT = {"activityCategoryVersion": "2", "initiatorRiskContext": {"riskLevel": "none", "evaluated": False}}


@dataclass(frozen=True, slots=True)
class EntraEntry:
    """One record of a tenant's Entra logs: its time, when it becomes visible, its JSON."""

    kind: str  # "signIn" or "directoryAudit"
    id: str
    event_type: str | None
    created: datetime
    visible: datetime
    late: bool
    drift: bool
    record: dict[str, Any]
    text: bytes


@dataclass(frozen=True, slots=True)
class _Credential:
    key_id: str
    kind: str  # clientSecret or certificate
    thumbprint: str | None


@dataclass(frozen=True, slots=True)
class _Workload:
    """A service principal or managed identity that signs in on its own."""

    sp: ServicePrincipal
    ip: str
    credential: _Credential
    resources: tuple[str, ...]
    msi_type: str | None = None
    resource_id: str | None = None


def _stamp(t: datetime, fraction: bool) -> str:
    t = utc(t)
    if not fraction:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}0Z"


def _whole_seconds(t: datetime) -> datetime:
    return t.replace(microsecond=0)


@functools.lru_cache(maxsize=4096)
def _place(ip: str) -> tuple[str, str, str, float, float]:
    table = _AZURE_REGIONS if ip.startswith(("20.", "40.", "52.")) else _FOREIGN if ip.startswith(
        "185.") else _CITIES
    return table[stable_seed("entra-location", ip) % len(table)]


def _location(ip: str, home: tuple[str, str, str, float, float] | None) -> dict[str, Any]:
    city, state, country, lat, lon = home if home is not None else _place(ip)
    return {"city": city, "state": state, "countryOrRegion": country,
            "geoCoordinates": {"altitude": None, "latitude": lat, "longitude": lon}}


@functools.lru_cache(maxsize=4096)
def _asn(ip: str) -> int:
    if ip.startswith(("20.", "40.", "52.")):
        return 8075  # Microsoft's own network: Azure-hosted workloads
    return (7018, 3320, 5089, 3215, 2856, 9009, 16276)[stable_seed("entra-asn", ip) % 7]


def _status(code: int) -> dict[str, Any]:
    if code == 0:
        return {"errorCode": 0, "failureReason": None, "additionalDetails": None}
    return {"errorCode": code, "failureReason": FAILURES[code], "additionalDetails": None}


class _Writer:
    """Writes one tenant's Entra records from its own random stream and the tenant's world."""

    def __init__(self, tenant: SyntheticTenant, world: World, seed: int, spec: FaultSpec) -> None:
        self.tenant = tenant
        self.w = world
        self.tid = tenant.tenant_id
        self.seed = seed
        self.spec = spec
        self.rng = random.Random(stable_seed(seed, tenant.tenant_id, "entra"))
        r = self.rng
        self.home = _CITIES[r.randrange(len(_CITIES))]
        self.office_ips = set(world.office_ips)
        self.policies = [
            (self.guid(), "Require MFA for administrators", ["Mfa"]),
            (self.guid(), "Require MFA outside trusted locations", ["Mfa"]),
            (self.guid(), "Block legacy authentication", ["Block"]),
            (self.guid(), "Require compliant device for Finance", ["RequireCompliantDevice"]),
        ]
        self.groups = [(self.guid(), name) for name in (
            "Finance Team", "All Company", "Engineering", "VPN Users", "Privileged Access")]
        subscription = self.guid()
        self.workloads = [self._workload(sp) for sp in world.apps]
        self.identities = [
            self._identity(name, msi, f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{provider}")
            for name, msi, group, provider in (
                ("func-payroll-export", "systemAssigned", "rg-payroll", "Microsoft.Web/sites/func-payroll-export"),
                ("vm-backup-01", "systemAssigned", "rg-backup", "Microsoft.Compute/virtualMachines/vm-backup-01"),
                ("id-reporting", "userAssigned", "rg-reporting",
                 "Microsoft.ManagedIdentity/userAssignedIdentities/id-reporting"),
            )
        ]
        self.entries: list[EntraEntry] = []
        self._resource_sps: dict[str, str] = {}

    # ------------------------------------------------------------------ small draws

    def guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[self.rng.randrange(len(seq))]

    def weighted(self, table: Sequence[tuple[Any, float]]) -> Any:
        u = self.rng.random() * sum(w for _, w in table)
        for value, weight in table:
            u -= weight
            if u < 0:
                return value
        return table[-1][0]

    def azure_ip(self) -> str:
        return f"{self.pick(('40.', '52.'))}{self.rng.randrange(64, 250)}.{self.rng.randrange(1, 255)}." \
               f"{self.rng.randrange(1, 255)}"

    def _workload(self, sp: ServicePrincipal) -> _Workload:
        certificate = self.rng.random() < 0.4
        thumbprint = f"{self.rng.getrandbits(160):040X}" if certificate else None
        credential = _Credential(self.guid(), "certificate" if certificate else "clientSecret", thumbprint)
        resources = (APP_GRAPH, APP_EXCHANGE) if "Mail" in sp.display_name else (APP_GRAPH,)
        return _Workload(sp, self.azure_ip(), credential, resources)

    def _identity(self, name: str, msi: str, resource_id: str) -> _Workload:
        sp = ServicePrincipal(name, self.guid(), self.guid())
        return _Workload(sp, self.azure_ip(), _Credential(self.guid(), "managedIdentity", None),
                         (APP_KEY_VAULT, APP_ARM), msi, resource_id)

    def resource_sp_id(self, app_id: str) -> str:
        """The object id of a first-party resource's service principal in this tenant."""
        found = self._resource_sps.get(app_id)
        if found is None:
            found = self._resource_sps[app_id] = str(uuid.UUID(int=stable_seed(self.tid, app_id), version=4))
        return found

    def user(self) -> User:
        users = self.w.users
        if self.rng.random() < 0.3:
            return users[self.rng.randrange(max(1, len(users) // 10))]
        return users[self.rng.randrange(len(users))]

    def user_ip(self, u: User) -> str:
        r = self.rng.random()
        return u.ips[0] if r < 0.6 else u.ips[1] if r < 0.92 else u.ips[2]

    # ------------------------------------------------------------------ records

    def add(self, kind: str, created: datetime, record: dict[str, Any], event_type: str | None = None) -> None:
        rid = str(record["id"])
        # Three draws of the record's own stream, always made: one fault's choice does not move
        # with another's probability.
        draws = random.Random(stable_seed(self.seed, "entra-record", rid))
        late = draws.random() < self.spec.entra_late
        drift = draws.random() < self.spec.entra_drift
        delay = draws.uniform(*(_LATE_AFTER_S if late else _VISIBLE_AFTER_S))
        if drift:
            record = {**record, **(_DRIFT_SIGNIN if kind == "signIn" else _DRIFT_AUDIT)}
            if kind == "signIn":
                record["status"] = {**record["status"], "errorCategory": "none" if record["status"][
                    "errorCode"] == 0 else "userError"}
        self.entries.append(EntraEntry(kind, rid, event_type, created, created + timedelta(seconds=delay), late,
                                       drift, record, orjson.dumps(record)))

    def _policies(self, u: User | None, ip: str, code: int, legacy: bool) -> tuple[list[dict[str, Any]], str]:
        """The tenant's Conditional Access policies as evaluated for one user sign-in, and the status."""
        if code in (50126, 50053) or u is None:
            # Credentials failed before Conditional Access was evaluated.
            results = ["notApplied", "notApplied", "notApplied", "notEnabled"]
        else:
            trusted = ip in self.office_ips
            results = [
                ("failure" if code in (50074, 500121) else "success") if u.admin else "notApplied",
                "notApplied" if trusted else ("failure" if code in (50074, 500121) else "success"),
                "failure" if legacy or code == 53003 else "notApplied",
                "notEnabled",
            ]
        out = [{"id": pid, "displayName": name, "enforcedGrantControls": grants if res in ("success", "failure")
                else [], "enforcedSessionControls": [], "result": res,
                "conditionsSatisfied": "application,users" if res != "notEnabled" else "none",
                "conditionsNotSatisfied": "none"}
               for (pid, name, grants), res in zip(self.policies, results, strict=True)]
        status = "failure" if "failure" in results else "success" if "success" in results else "notApplied"
        return out, status

    def _user_fields(self, u: User | None, upn: str, object_id: str, display: str | None) -> dict[str, Any]:
        return {"userDisplayName": display if u is None else u.display_name, "userPrincipalName": upn.lower(),
                "userId": object_id, "userType": "member", "signInIdentifier": upn,
                "signInIdentifierType": "userPrincipalName", "homeTenantId": self.tid, "homeTenantName": None}

    def _common(self, t: datetime, rid: str, correlation: str) -> dict[str, Any]:
        return {
            "id": rid, "createdDateTime": _stamp(t, False), "correlationId": correlation,
            "originalRequestId": rid, "uniqueTokenIdentifier": base64.urlsafe_b64encode(
                self.rng.getrandbits(128).to_bytes(16, "big")).decode().rstrip("="),
            "processingTimeInMilliseconds": self.rng.randrange(40, 900), "tokenIssuerType": "AzureAD",
            "tokenIssuerName": "", "riskDetail": "none", "riskLevelAggregated": "none",
            "riskLevelDuringSignIn": "none", "riskState": "none", "riskEventTypes_v2": [],
            "resourceTenantId": self.tid, "crossTenantAccessType": "none", "flaggedForReview": False,
            "isTenantRestricted": False, "isThroughGlobalSecureAccess": False, "mfaDetail": None,
            "authenticationProcessingDetails": [], "networkLocationDetails": [],
            "authenticationRequirementPolicies": [], "sessionLifetimePolicies": [],
            "authenticationContextClassReferences": [], "appliedEventListeners": [],
        }

    def user_signin(
        self, t: datetime, u: User | None, *, interactive: bool, ip: str, code: int,
        app: tuple[str, str] | None = None, resource: str | None = None, correlation: str | None = None,
        upn: str | None = None, object_id: str | None = None, display: str | None = None,
        user_agent: str | None = None, ropc: bool = False, device: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """An interactive or non-interactive user sign-in; *u* None for a user the world does not know."""
        t = _whole_seconds(t)
        app_id, app_name = app or self.pick(_USER_APPS if interactive else _REFRESH_APPS)
        resource = resource or self.pick(_USER_RESOURCES)
        rid = self.guid()
        upn = upn or (u.upn if u else "")
        object_id = object_id or (u.object_id if u else self.guid())
        policies, ca_status = self._policies(u, ip, code, legacy=False)
        mfa = any(p["result"] in ("success", "failure") and "Mfa" in p["enforcedGrantControls"] for p in policies)
        steps: list[dict[str, Any]] = []
        if interactive:
            password_ok = code not in (50126, 50053)
            steps.append({"authenticationStepDateTime": _stamp(t, False), "authenticationMethod": "Password",
                          "authenticationMethodDetail": "Password in the cloud", "succeeded": password_ok,
                          "authenticationStepResultDetail": "Correct password" if password_ok
                          else "Invalid username or password or Invalid on-premise username or password.",
                          "authenticationStepRequirement": "Primary authentication"})
            if mfa and password_ok:
                done = code not in (50074, 500121)
                steps.append({"authenticationStepDateTime": _stamp(t + timedelta(seconds=9), False),
                              "authenticationMethod": self.pick(("Mobile app notification", "Text message",
                                                                 "OATH verification code")),
                              "authenticationMethodDetail": None, "succeeded": done,
                              "authenticationStepResultDetail": "MFA successfully completed" if done
                              else "MFA required in Azure AD" if code == 50074 else "MFA denied; user declined",
                              "authenticationStepRequirement": "Multifactor authentication"})
        else:
            steps.append({"authenticationStepDateTime": _stamp(t, False),
                          "authenticationMethod": "Previously satisfied",
                          "authenticationMethodDetail": None, "succeeded": code == 0,
                          "authenticationStepResultDetail": "First factor requirement satisfied by claim in the token"
                          if code == 0 else "Token expired or revoked",
                          "authenticationStepRequirement": "Primary authentication"})
        os_name, browser = device or (u.device if u else ("Windows 10", "Chrome"))
        managed = u is not None and u.admin
        record = {
            **self._common(t, rid, correlation or self.guid()),
            **self._user_fields(u, upn, object_id, display),
            "appId": app_id, "appDisplayName": app_name, "ipAddress": ip,
            "ipAddressFromResourceProvider": None, "autonomousSystemNumber": _asn(ip),
            "clientAppUsed": "Mobile Apps and Desktop clients" if ropc or not interactive else "Browser",
            "userAgent": user_agent if user_agent is not None else (u.user_agent if u else ""),
            "conditionalAccessStatus": ca_status, "appliedConditionalAccessPolicies": policies,
            "authenticationRequirement": "multiFactorAuthentication" if mfa else "singleFactorAuthentication",
            "authenticationDetails": steps, "authenticationMethodsUsed": [],
            "authenticationProtocol": "ropc" if ropc else "none",
            "incomingTokenType": "none" if interactive else "primaryRefreshToken",
            "isInteractive": interactive,
            "signInEventTypes": ["interactiveUser" if interactive else "nonInteractiveUser"],
            "resourceDisplayName": RESOURCE_NAMES[resource], "resourceId": resource,
            "resourceServicePrincipalId": self.resource_sp_id(resource),
            "servicePrincipalId": "", "servicePrincipalName": None, "servicePrincipalCredentialKeyId": "",
            "servicePrincipalCredentialThumbprint": "", "clientCredentialType": "none", "federatedCredentialId": None,
            "azureResourceId": None,
            "managedServiceIdentity": {"msiType": "none", "associatedResourceId": None, "federatedTokenId": None,
                                       "federatedTokenIssuer": None},
            "sessionId": self.guid(), "status": _status(code),
            "deviceDetail": {"deviceId": self.guid() if managed else "", "displayName": None,
                             "operatingSystem": os_name, "browser": f"{browser} {self.rng.randrange(100, 125)}.0.0",
                             "isCompliant": managed, "isManaged": managed,
                             "trustType": "Azure AD joined" if managed else None},
            "location": _location(ip, self.home if ip in self.office_ips else None),
        }
        self.add("signIn", t, record, record["signInEventTypes"][0])
        return record

    def workload_signin(self, t: datetime, wl: _Workload, *, code: int = 0, ip: str | None = None,
                        resource: str | None = None, credential: _Credential | None = None) -> dict[str, Any]:
        """A service principal or managed identity sign-in (client credentials, no user)."""
        t = _whole_seconds(t)
        rid = self.guid()
        ip = ip or wl.ip
        resource = resource or self.pick(wl.resources)
        cred = credential or wl.credential
        msi = wl.msi_type is not None
        event_type = "managedIdentity" if msi else "servicePrincipal"
        record = {
            **self._common(t, rid, self.guid()),
            "userDisplayName": None, "userPrincipalName": None, "userId": "", "userType": None,
            "signInIdentifier": None, "signInIdentifierType": None, "homeTenantId": self.tid, "homeTenantName": None,
            "appId": wl.sp.app_id, "appDisplayName": wl.sp.display_name, "ipAddress": ip,
            "ipAddressFromResourceProvider": None, "autonomousSystemNumber": _asn(ip), "clientAppUsed": None,
            "userAgent": None, "conditionalAccessStatus": "notApplied", "appliedConditionalAccessPolicies": [],
            "authenticationRequirement": "singleFactorAuthentication", "authenticationDetails": [],
            "authenticationMethodsUsed": [], "authenticationProtocol": "none", "incomingTokenType": "none",
            "isInteractive": False, "signInEventTypes": [event_type],
            "resourceDisplayName": RESOURCE_NAMES[resource], "resourceId": resource,
            "resourceServicePrincipalId": self.resource_sp_id(resource),
            "servicePrincipalId": wl.sp.object_id, "servicePrincipalName": wl.sp.display_name,
            "servicePrincipalCredentialKeyId": cred.key_id,
            "servicePrincipalCredentialThumbprint": cred.thumbprint or "",
            "clientCredentialType": cred.kind, "federatedCredentialId": None,
            "azureResourceId": wl.resource_id if msi else None,
            "managedServiceIdentity": {"msiType": wl.msi_type or "none", "associatedResourceId": wl.resource_id,
                                       "federatedTokenId": None, "federatedTokenIssuer": None},
            "sessionId": None, "status": _status(code),
            "deviceDetail": {"deviceId": "", "displayName": None, "operatingSystem": None, "browser": None,
                             "isCompliant": None, "isManaged": None, "trustType": None},
            "location": _location(ip, None),
        }
        self.add("signIn", t, record, event_type)
        return record

    def audit(
        self, t: datetime, activity: str, category: str, operation: str, *, by: User | ServicePrincipal | None,
        targets: list[dict[str, Any]], ip: str | None = None, correlation: str | None = None,
        result: str = "success", reason: str = "", service: str = "Core Directory",
        details: list[dict[str, str]] | None = None, by_upn: str | None = None, by_id: str | None = None,
        by_name: str | None = None,
    ) -> dict[str, Any]:
        """A directoryAudit; *by* a user (``initiatedBy.user``, with *ip*) or an app (``initiatedBy.app``,
        which has no address)."""
        correlation = correlation or self.guid()
        rid = f"Directory_{correlation}_{''.join(self.pick('ABCDEFGHJKLMNPQRSTUVWXYZ') for _ in range(5))}_" \
              f"{self.rng.randrange(10**8, 10**9)}"
        initiated: dict[str, Any]
        if isinstance(by, ServicePrincipal):
            initiated = {"user": None, "app": {"appId": by.app_id, "displayName": by.display_name,
                                               "servicePrincipalId": by.object_id, "servicePrincipalName": None}}
        else:
            initiated = {"app": None, "user": {
                "id": by.object_id if by else by_id, "displayName": by.display_name if by else by_name,
                "userPrincipalName": by.upn if by else by_upn, "ipAddress": ip or "", "userType": None,
                "homeTenantId": self.tid, "homeTenantName": None}}
        record = {
            "id": rid, "category": category, "correlationId": correlation, "result": result,
            "resultReason": reason, "activityDisplayName": activity, "activityDateTime": _stamp(t, True),
            "loggedByService": service, "operationType": operation, "initiatedBy": initiated,
            "targetResources": targets, "additionalDetails": details or [],
        }
        self.add("directoryAudit", t, record)
        return record

    # ------------------------------------------------------------------ targets

    @staticmethod
    def changed(name: str, old: Any, new: Any) -> dict[str, Any]:
        # Entra writes each value as JSON inside a string.
        return {"displayName": name, "oldValue": None if old is None else orjson.dumps(old).decode(),
                "newValue": None if new is None else orjson.dumps(new).decode()}

    def user_target(self, u: User, props: list[dict[str, Any]]) -> dict[str, Any]:
        if props:
            props = [*props, self.changed("Included Updated Properties", None,
                                          ", ".join(p["displayName"] for p in props))]
        return {"id": u.object_id, "displayName": None, "type": "User", "userPrincipalName": u.upn,
                "groupType": None, "modifiedProperties": props}

    def group_member(self, t: datetime, by: User | ServicePrincipal, u: User, group: tuple[str, str],
                     ip: str | None, *, remove: bool = False, failed: bool = False) -> None:
        gid, name = group
        props = [self.changed("Group.ObjectID", gid if remove else None, None if remove else gid),
                 self.changed("Group.DisplayName", name if remove else None, None if remove else name)]
        self.audit(t, "Remove member from group." if remove else "Add member to group.", "GroupManagement",
                   "Unassign" if remove else "Assign", by=by, ip=ip, result="failure" if failed else "success",
                   reason="One or more added object references already exist for the following modified "
                          "properties: 'members'." if failed else "", targets=[
                       {"id": u.object_id, "displayName": None, "type": "User", "userPrincipalName": u.upn,
                        "groupType": None, "modifiedProperties": props},
                       {"id": gid, "displayName": name, "type": "Group", "userPrincipalName": None,
                        "groupType": "unifiedGroups", "modifiedProperties": []}])

    def sp_target(self, sp: ServicePrincipal, props: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": sp.object_id, "displayName": sp.display_name, "type": "ServicePrincipal",
                "userPrincipalName": None, "groupType": None, "modifiedProperties": props}

    def credential_props(self, key_id: str) -> list[dict[str, Any]]:
        key = f"[KeyIdentifier={key_id},KeyType=Password,KeyUsage=Verify,DisplayName=]"
        return [self.changed("KeyDescription", [], [key]), self.changed("Included Updated Properties", None,
                                                                        "KeyDescription")]

    # ------------------------------------------------------------------ background

    def background(self, start: datetime, end: datetime, per_day: int) -> None:
        span = (end - start).total_seconds()
        if span <= 0 or per_day <= 0:
            return
        days = span / 86400.0
        makers: dict[str, Callable[[datetime], None]] = {
            "interactiveUser": self.bg_interactive, "nonInteractiveUser": self.bg_refresh,
            "servicePrincipal": self.bg_service_principal, "managedIdentity": self.bg_managed_identity,
            "directoryAudit": self.bg_audit,
        }
        for kind, share in KIND_SHARE.items():
            count = round(per_day * share * days)
            times = sorted(start + timedelta(seconds=self.rng.random() * span) for _ in range(count))
            for t in times:
                makers[kind](t)

    def bg_interactive(self, t: datetime) -> None:
        u = self.user()
        self.user_signin(t, u, interactive=True, ip=self.user_ip(u), code=self.weighted(_INTERACTIVE_OUTCOMES))

    def bg_refresh(self, t: datetime) -> None:
        u = self.user()
        code = self.weighted(((0, 0.96), (50173, 0.02), (70044, 0.02)))
        self.user_signin(t, u, interactive=False, ip=self.user_ip(u), code=code)

    def bg_service_principal(self, t: datetime) -> None:
        wl = self.pick(self.workloads)
        code = self.weighted(((0, 0.97), (7000215, 0.02), (7000222, 0.01)))
        inc = self.tenant.incident
        if inc is not None and wl.sp.object_id == inc.sp_object_id and t >= inc.sp_credential_time:
            # The incident's story: the workload's own secret stopped working when the new one came.
            code = 7000222
        self.workload_signin(t, wl, code=code)

    def bg_managed_identity(self, t: datetime) -> None:
        self.workload_signin(t, self.pick(self.identities))

    def bg_audit(self, t: datetime) -> None:
        admin = self.pick(self.w.admins)
        ip = self.user_ip(admin)
        kind = self.weighted((("update", 30), ("member", 20), ("unmember", 8), ("reset", 8), ("app-update", 10),
                              ("credential", 2), ("license", 5), ("role", 3)))
        if kind == "update":
            dept = self.pick(("Sales", "Finance", "Engineering", "Legal", "Marketing", "Operations"))
            other = self.pick(("Support", "HR"))
            self.audit(t, "Update user.", "UserManagement", "Update", by=admin, ip=ip, targets=[
                self.user_target(self.user(), [self.changed("Department", [other], [dept])])])
        elif kind in ("member", "unmember"):
            self.group_member(t, admin, self.user(), self.pick(self.groups[:4]), ip, remove=kind == "unmember",
                              failed=kind == "member" and self.rng.random() < 0.08)
        elif kind == "reset":
            failed = self.rng.random() < 0.1
            self.audit(t, "Reset user password.", "UserManagement", "Update", by=admin, ip=ip,
                       targets=[self.user_target(self.user(), [])], result="failure" if failed else "success",
                       reason="Password does not comply with password complexity requirements." if failed else "")
        elif kind == "app-update":
            sp = self.pick(self.w.system_sps)
            self.audit(t, "Update user.", "UserManagement", "Update", by=sp, targets=[
                self.user_target(self.user(), [self.changed("StsRefreshTokensValidFrom", None,
                                                            [_stamp(t, False)])])])
        elif kind == "credential":
            sp = self.pick(self.w.apps)
            self.audit(t, "Add service principal credentials.", "ApplicationManagement", "Update", by=admin, ip=ip,
                       targets=[self.sp_target(sp, self.credential_props(self.guid()))],
                       details=[{"key": "AppId", "value": sp.app_id}])
        elif kind == "license":
            sku = self.pick(("ENTERPRISEPACK", "SPE_E5", "POWER_BI_STANDARD"))
            self.audit(t, "Change user license.", "UserManagement", "Update", by=admin, ip=ip, targets=[
                self.user_target(self.user(), [self.changed("AssignedLicense", [], [f"[SkuName={sku}]"])])])
        else:
            self.audit(t, "Add member to role.", "RoleManagement", "Assign", by=admin, ip=ip, targets=[
                self.user_target(self.user(), [self.changed("Role.DisplayName", None, "Exchange Administrator")])])

    # ------------------------------------------------------------------ the incident

    def incident(self) -> None:
        inc = self.tenant.incident
        if inc is None:
            return
        by_upn = {u.upn: u for u in self.w.users}
        victim = by_upn.get(inc.victim_upn)
        attacker_ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) " \
                      "Chrome/122.0.0.0 Safari/537.36"
        # The spray: ROPC with a bad password, from the attacker's address.
        n = len(inc.sprayed_upns)
        for i, upn in enumerate(inc.sprayed_upns):
            t = inc.spray_start + (inc.spray_end - inc.spray_start) * (i / max(1, n - 1))
            u = by_upn.get(upn)
            self.user_signin(t, u, interactive=True, ip=inc.attacker_ip, code=50126,
                             app=(APP_AAD_POWERSHELL, "Azure Active Directory PowerShell"), resource=APP_GRAPH,
                             upn=upn, user_agent="BAV2ROPC", ropc=True, device=("Windows 10", "Other"))
        # The victim's session from the attacker's address, and its token refreshes for mail.
        victim_kw: dict[str, Any] = {"upn": inc.victim_upn, "object_id": inc.victim_object_id,
                                     "display": victim.display_name if victim else inc.victim_upn,
                                     "user_agent": attacker_ua, "device": ("Windows 10", "Chrome")}
        self.user_signin(inc.victim_login_time, victim, interactive=True, ip=inc.attacker_ip, code=0,
                         app=(APP_OFFICE, "Microsoft Office"), resource=APP_EXCHANGE, **victim_kw)
        for minutes in (4, 10, 16, 22):
            self.user_signin(inc.victim_login_time + timedelta(minutes=minutes), victim, interactive=False,
                             ip=inc.attacker_ip, code=0, app=(APP_OFFICE, "Microsoft Office"), resource=APP_EXCHANGE,
                             **victim_kw)
        # The new secret, added from an Azure portal session of the victim's: the same correlation id.
        cred_t = inc.sp_credential_time
        portal = self.user_signin(cred_t - timedelta(minutes=3), victim, interactive=True, ip=inc.attacker_ip,
                                  code=0, app=(APP_AZURE_PORTAL, "Azure Portal"), resource=APP_ARM, **victim_kw)
        sp = ServicePrincipal(inc.sp_display_name, inc.sp_app_id, inc.sp_object_id)
        key_id = self.feed_key_id() or self.guid()
        self.audit(cred_t, "Add service principal credentials.", "ApplicationManagement", "Update", by=victim,
                   by_upn=inc.victim_upn, by_id=inc.victim_object_id, by_name=victim_kw["display"],
                   ip=inc.attacker_ip, correlation=portal["correlationId"],
                   targets=[self.sp_target(sp, self.credential_props(key_id))],
                   details=[{"key": "User-Agent", "value": attacker_ua}, {"key": "AppId", "value": sp.app_id}])
        # The workload's old secret no longer works from its usual address; then the new one, elsewhere.
        wl = next((w for w in self.workloads if w.sp.object_id == inc.sp_object_id), None)
        if wl is None or wl.sp.app_id != inc.sp_app_id:
            wl = _Workload(sp, self.azure_ip(), _Credential(self.guid(), "clientSecret", None), (APP_GRAPH,))
        old = _Credential(wl.credential.key_id, "clientSecret", None)
        for minutes, code in ((6, 7000222), (7, 7000222), (12, 7000215)):
            self.workload_signin(cred_t + timedelta(minutes=minutes), wl, code=code, credential=old)
        new = _Credential(key_id, "clientSecret", None)
        access = inc.sp_access_time
        uses = [(access - timedelta(minutes=2), APP_EXCHANGE), (access + timedelta(minutes=13), APP_EXCHANGE),
                (access + timedelta(minutes=28), APP_EXCHANGE), (access - timedelta(minutes=1), APP_GRAPH),
                (access + timedelta(minutes=4), APP_GRAPH), (access + timedelta(minutes=19), APP_GRAPH)]
        for t, resource in uses:
            self.workload_signin(t, wl, ip=inc.sp_ip, resource=resource, credential=new)
        # What the principal changed itself: no address in the audit, only in its sign-ins above.
        others = [u for u in self.w.users if u.upn not in (inc.victim_upn, *inc.sp_accessed_mailboxes)]
        target = others[0] if others else victim
        if target is not None:
            self.group_member(access + timedelta(minutes=5), sp, target, self.groups[4], None)
            self.audit(access + timedelta(minutes=20), "Update user.", "UserManagement", "Update", by=sp, targets=[
                self.user_target(target, [self.changed("StrongAuthenticationPhoneAppDetail", [], [])])])
        self.audit(access + timedelta(minutes=6), "Add app role assignment to service principal.",
                   "ApplicationManagement", "Assign", by=sp, targets=[self.sp_target(sp, [
                       self.changed("AppRole.Value", None, "Mail.ReadWrite"),
                       self.changed("ServicePrincipal.ObjectID", None, sp.object_id)])])

    def feed_key_id(self) -> str | None:
        """The KeyIdentifier of the incident's new credential as the feed's record names it."""
        inc = self.tenant.incident
        if inc is None:
            return None
        wanted = {k[0] for k in inc.record_keys if k[2] == "Add service principal credentials."}
        for blob in self.tenant.blobs:
            if not blob.has_incident or blob.content_type != "Audit.AzureActiveDirectory":
                continue
            for rec in orjson.loads(blob.body):
                if rec.get("Id") not in wanted:
                    continue
                for prop in rec.get("ModifiedProperties") or []:
                    found = re.search(r"KeyIdentifier=([0-9a-fA-F-]{36})", str(prop.get("NewValue", "")))
                    if found:
                        return found.group(1)
        return None


def tenant_world(tenant: SyntheticTenant) -> World:
    """The tenant's users and applications, drawn again exactly as :meth:`SyntheticTenant.generate`
    drew them (the world is the first thing its random stream makes)."""
    rng = random.Random(stable_seed(tenant.seed, tenant.tenant_id, "tenant"))
    world = World(rng, tenant.tenant_id, 200 if tenant.scenario == "default" else 15)
    if world.domain != tenant.domain:
        log.warning("the Entra logs' world does not match the tenant's (domain %s, not %s): users and "
                    "applications will differ from the feed's", world.domain, tenant.domain,
                    extra={"tenant_id": tenant.tenant_id})
    return world


class EntraLog:
    """One tenant's sign-ins and directory audits, each newest first (then by id, descending)."""

    def __init__(self, entries: Sequence[EntraEntry]) -> None:
        key: Callable[[EntraEntry], tuple[datetime, str]] = lambda e: (e.created, e.id)  # noqa: E731
        self.signins = sorted((e for e in entries if e.kind == "signIn"), key=key, reverse=True)
        self.audits = sorted((e for e in entries if e.kind == "directoryAudit"), key=key, reverse=True)
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):  # pragma: no cover - a mistake in this module
            raise ValueError("Entra record ids are not unique")

    @classmethod
    def build(cls, tenant: SyntheticTenant, *, seed: int, faults: FaultSpec, signins_per_day: int) -> EntraLog:
        """Write the tenant's records: background over its history (at most the 30 days Entra keeps),
        and the incident's."""
        started = time.perf_counter()
        writer = _Writer(tenant, tenant_world(tenant), seed, faults)
        end = tenant.now
        start = end - min(timedelta(days=tenant.days), RETENTION)
        writer.background(start, end, signins_per_day)
        writer.incident()
        made = cls([e for e in writer.entries if start <= e.created <= end])
        log.info("wrote %d sign-ins and %d directory audits in %.2fs", len(made.signins), len(made.audits),
                 time.perf_counter() - started, extra={"tenant_id": tenant.tenant_id})
        return made

    def of(self, kind: str) -> list[EntraEntry]:
        return self.signins if kind == "signIn" else self.audits


# ------------------------------------------------------------------------------- $filter


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json",
                        charset="utf-8", headers=headers)


def _bad_filter(detail: str) -> GraphError:
    return GraphError(400, "BadRequest", f"{INVALID_FILTER}: {detail}")


_TOKEN_RE = re.compile(
    r"\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<colon>:)|(?P<str>'(?:[^']|'')*')"
    r"|(?P<dt>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?(?:Z|[+-]\d{2}:\d{2})?)?(?![\w:.-]))"
    r"|(?P<num>-?\d+(?:\.\d+)?(?![\w-]))|(?P<word>[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_]*)*))"
)
Token = tuple[str, str]
Predicate = Callable[[EntraEntry], bool]
_COMPARISONS = ("eq", "ne", "ge", "gt", "le", "lt")
_MISSING = object()


def _tokens(text: str) -> list[Token]:
    out: list[Token] = []
    at = 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        m = _TOKEN_RE.match(text, at)
        if m is None or m.end() == at:
            raise _bad_filter(f"cannot read {text[at:].strip()[:40]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        at = m.end()
    return out


def _datetime(raw: str) -> datetime:
    text = raw[:-1] + "+00:00" if raw.endswith("Z") else raw
    if len(text) > 26 and "." in text:
        # Seven fraction digits are Graph's; Python reads six.
        head, _, tail = text.partition(".")
        digits = re.match(r"\d+", tail)
        n = digits.group(0) if digits else ""
        text = f"{head}.{n[:6].ljust(6, '0')}{tail[len(n):]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _bad_filter(f"{raw!r} is not a DateTimeOffset") from None
    return utc(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("/"):
        if not isinstance(value, Mapping):
            return _MISSING
        found = next((v for k, v in value.items() if k.lower() == part.lower()), _MISSING)
        if found is _MISSING:
            return _MISSING
        value = found
    return value


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    try:
        return bool({"ge": left >= right, "gt": left > right, "le": left <= right, "lt": left < right}[op])
    except TypeError:
        return False


@dataclass
class ParsedFilter:
    """A ``$filter``: the predicate, and whether it says anything about ``signInEventTypes``."""

    predicate: Predicate
    names_event_types: bool = False


class _Parser:
    """Recursive descent over the OData subset of the module docstring."""

    def __init__(self, text: str, time_field: str, signins: bool) -> None:
        self.tokens = _tokens(text)
        self.at = 0
        self.time_field = time_field
        self.signins = signins
        self.names_event_types = False

    def parse(self) -> ParsedFilter:
        if not self.tokens:
            raise _bad_filter("the filter is empty")
        predicate = self.or_expr(None)
        if self.at != len(self.tokens):
            raise _bad_filter(f"unexpected {self.tokens[self.at][1]!r}")
        return ParsedFilter(predicate, self.names_event_types)

    def peek(self) -> Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            got = "the end" if token is None else repr(token[1])
            raise _bad_filter(f"expected {value or kind}, found {got}")
        self.at += 1
        return token[1]

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token == ("word", word):
            self.at += 1
            return True
        return False

    def or_expr(self, var: str | None) -> Predicate:
        parts = [self.and_expr(var)]
        while self.keyword("or"):
            parts.append(self.and_expr(var))
        return parts[0] if len(parts) == 1 else (lambda e: any(p(e) for p in parts))

    def and_expr(self, var: str | None) -> Predicate:
        parts = [self.unary(var)]
        while self.keyword("and"):
            parts.append(self.unary(var))
        return parts[0] if len(parts) == 1 else (lambda e: all(p(e) for p in parts))

    def unary(self, var: str | None) -> Predicate:
        if self.keyword("not"):
            inner = self.unary(var)
            return lambda e: not inner(e)
        return self.primary(var)

    def primary(self, var: str | None) -> Predicate:
        token = self.peek()
        if token is None:
            raise _bad_filter("the filter ends too soon")
        if token[0] == "lp":
            self.at += 1
            inner = self.or_expr(var)
            self.take("rp")
            return inner
        name = self.take("word")
        if var is not None:
            return self.lambda_clause(name, var)
        if name.lower() == "signineventtypes/any":
            if not self.signins:
                raise _bad_filter("signInEventTypes is a property of signIn")
            return self.any_clause()
        if self.peek() == ("lp", "("):
            raise _bad_filter(f"the emulator does not implement the function {name!r}")
        op = self.take("word")
        if op not in _COMPARISONS:
            raise _bad_filter(f"{op!r} is not a comparison operator")
        if name.lower() == self.time_field.lower():
            kind, raw = self.peek() or ("", "")
            if kind != "dt":
                raise _bad_filter(f"{self.time_field} must be compared with an unquoted DateTimeOffset, not {raw!r}")
            self.at += 1
            bound = _datetime(raw)
            return lambda e: _compare(op, e.created, bound)
        if op not in ("eq", "ne"):
            raise _bad_filter(f"the emulator compares {name!r} with eq or ne only")
        value = self.literal()
        return lambda e: _compare(op, _lookup(e.record, name), value)

    def literal(self) -> Any:
        token = self.peek()
        if token is None:
            raise _bad_filter("a value is missing")
        kind, raw = token
        self.at += 1
        if kind == "str":
            return raw[1:-1].replace("''", "'")
        if kind == "num":
            return float(raw) if "." in raw else int(raw)
        if kind == "word" and raw in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[raw]
        raise _bad_filter(f"{raw!r} is not a value")

    def any_clause(self) -> Predicate:
        self.names_event_types = True
        self.take("lp")
        var = self.take("word")
        self.take("colon")
        inner = self.or_expr(var)
        self.take("rp")
        return inner

    def lambda_clause(self, name: str, var: str) -> Predicate:
        if name != var:
            raise _bad_filter(f"{name!r} is not the lambda variable {var!r}")
        op = self.take("word")
        if op not in ("eq", "ne"):
            raise _bad_filter(f"signInEventTypes supports eq and ne, not {op!r}")
        kind, raw = self.peek() or ("", "")
        if kind != "str":
            raise _bad_filter(f"{raw!r} is not a quoted signInEventTypes value")
        self.at += 1
        value = raw[1:-1]
        if value not in EVENT_TYPES:
            raise _bad_filter(f"'{value}' is not a signInEventTypes value")
        return lambda e: (e.event_type == value) == (op == "eq")


def parse_filter(text: str, *, time_field: str, signins: bool) -> ParsedFilter:
    """Parse a ``$filter`` of the sign-ins (*signins*) or directory audits; GraphError 400 if it is not one."""
    return _Parser(text, time_field, signins).parse()


# ------------------------------------------------------------------------------- serving


@dataclass(slots=True)
class EntraListing:
    """A listing's result, fixed at its first page."""

    tenant_id: str
    kind: str
    version: str
    path: str
    entries: list[EntraEntry]
    top: int
    filter_text: str | None


@dataclass(slots=True)
class EntraStats:
    """What clients did with the Entra logs: requests, faults injected, errors."""

    requests: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    unauthorized: int = 0
    budget_exceeded: int = 0
    retry_after_ignored: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "requests_total": sum(self.requests.values()),
                "faults": dict(self.faults), "errors": dict(self.errors), "unauthorized": self.unauthorized,
                "budget_exceeded": self.budget_exceeded, "retry_after_ignored": self.retry_after_ignored}


_SIGNIN_PATHS = ("auditLogs/signIns", "auditlogs/signins", "auditLogs/signins")
_AUDIT_PATHS = ("auditLogs/directoryAudits", "auditlogs/directoryaudits", "auditLogs/directoryaudits")
_KNOWN_OPTIONS = ("$filter", "$top", "$skiptoken", "$orderby")


class EntraService:
    """The Entra logs' state for one emulator: the tenants' logs, listings, budget, fault draws, stats.

    *clock* gives the server's now (aware UTC); *signins_per_day* is how many interactive user
    sign-ins a tenant has a day (the other kinds in :data:`KIND_SHARE` proportion); *budget*
    requests per *budget_window* seconds per tenant are served, 0 for no limit.
    """

    def __init__(
        self,
        tenants: Mapping[str, SyntheticTenant],
        *,
        faults: FaultSpec,
        seed: int,
        clock: Callable[[], datetime],
        token: str | None,
        base_url: str | None,
        signins_per_day: int = DEFAULT_SIGNINS_PER_DAY,
        budget: int = DEFAULT_BUDGET,
        budget_window: float = DEFAULT_BUDGET_WINDOW,
    ) -> None:
        if signins_per_day < 0 or budget < 0 or budget_window <= 0:
            raise ValueError("signins_per_day and budget must not be negative, budget_window must be positive")
        self.tenants = {k.lower(): t for k, t in tenants.items()}
        self.faults = faults
        self.seed = seed
        self.clock = clock
        self.token = token
        self.base_url = base_url
        self.signins_per_day = signins_per_day
        self.budget = budget
        self.budget_window = budget_window
        self.stats = EntraStats()
        self._logs: dict[str, EntraLog] = {}
        self._lock = asyncio.Lock()
        self._listings: OrderedDict[int, EntraListing] = OrderedDict()
        self._listing_seq = 0
        self._sent: dict[str, deque[float]] = {}
        self._retry_not_before: dict[str, float] = {}
        # Drawn from their own streams, so switching Entra faults on shifts none of the feed's.
        self._request_rng = random.Random(stable_seed(seed, "entra-requests"))
        self._5xx_turn = 0
        self._dup_seen: set[tuple[int, int]] = set()
        self._secret = stable_seed(seed, "entra-skiptoken").to_bytes(8, "big")

    async def log(self, tenant: SyntheticTenant) -> EntraLog:
        """The tenant's logs, written on first use (off the event loop)."""
        found = self._logs.get(tenant.tenant_id)
        if found is not None:
            return found
        async with self._lock:
            found = self._logs.get(tenant.tenant_id)
            if found is None:
                found = await asyncio.to_thread(EntraLog.build, tenant, seed=self.seed, faults=self.faults,
                                                signins_per_day=self.signins_per_day)
                self._logs[tenant.tenant_id] = found
            return found

    def visible(self, log_: EntraLog, kind: str, now: datetime) -> Iterator[EntraEntry]:
        """Entries of *kind* visible at *now* and within the retention, newest first."""
        oldest = now - RETENTION
        for e in log_.of(kind):
            if e.created < oldest:
                break
            if e.visible <= now and e.created <= now:
                yield e

    # -------------------------------------------------------------------- gates

    def _authorize(self, request: web.Request) -> SyntheticTenant:
        tenant = bearer_tenant(request, self.tenants, self.token)
        if tenant is None:
            self.stats.unauthorized += 1
            raise GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.",
                             {"WWW-Authenticate": "Bearer"})
        return tenant

    def _take_budget(self, tenant: SyntheticTenant) -> None:
        if not self.budget:
            return
        now = time.monotonic()
        sent = self._sent.setdefault(tenant.tenant_id, deque())
        while sent and now - sent[0] >= self.budget_window:
            sent.popleft()
        if len(sent) >= self.budget:
            self.stats.budget_exceeded += 1
            wait = max(1, math.ceil(sent[0] + self.budget_window - now))
            raise self._throttled(wait)
        sent.append(now)

    def _throttled(self, seconds: int) -> GraphError:
        return GraphError(429, "TooManyRequests", "Too many requests. Retry after the time given in Retry-After.",
                          {"Retry-After": str(seconds)})

    def _faults(self, kind: str) -> None:
        spec = self.faults
        if spec.entra_noperm:
            self.stats.faults["entra_noperm"] += 1
            raise GraphError(403, NO_PERMISSION_CODE, NO_PERMISSION_MESSAGE)
        if spec.entra_nopremium and kind == "signIn":
            self.stats.faults["entra_nopremium"] += 1
            raise GraphError(403, NON_PREMIUM_CODE, NON_PREMIUM_MESSAGE)
        if not (spec.entra_throttle or spec.entra_server_error):
            return
        u = self._request_rng.random()
        if u < spec.entra_throttle:
            self.stats.faults["entra_throttle"] += 1
            raise self._throttled(RETRY_AFTER_SECONDS)
        if u < spec.entra_throttle + spec.entra_server_error:
            self.stats.faults["entra_5xx"] += 1
            self._5xx_turn += 1
            status, code, message = (
                (500, "UnknownError", "An internal server error occurred."),
                (503, "ServiceUnavailable", "The service is temporarily unavailable. Retry later."),
                (504, "GatewayTimeout", "The request timed out."),
            )[(self._5xx_turn - 1) % 3]
            raise GraphError(status, code, message, {"Retry-After": "1"} if status == 503 else None)

    def endpoint(self, name: str, kind: str, version: str, path: str
                 ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The list handler of *kind* behind the token check, the budget, the faults and Graph's error shape."""

        async def serve(request: web.Request) -> web.Response:
            self.stats.requests[name] += 1
            here = f"{request.method} {request.path_qs}"
            not_before = self._retry_not_before.pop(here, None)
            if not_before is not None and time.monotonic() < not_before - _RETRY_AFTER_SLACK:
                self.stats.retry_after_ignored += 1
            try:
                tenant = self._authorize(request)
                self._take_budget(tenant)
                self._faults(kind)
                return await self._list(request, tenant, kind, version, path)
            except GraphError as error:
                self.stats.errors[error.code] += 1
                retry = error.headers.get("Retry-After")
                if retry is not None:
                    self._retry_not_before[here] = time.monotonic() + int(retry)
                return error.response(self.clock())

        return serve

    # -------------------------------------------------------------------- listing

    def _skiptoken(self, seq: int, offset: int) -> str:
        body = seq.to_bytes(4, "big") + offset.to_bytes(4, "big")
        mac = hashlib.sha256(self._secret + body).digest()[:8]
        return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")

    def _read_skiptoken(self, raw: str) -> tuple[int, int] | None:
        try:
            data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except ValueError:
            return None
        if len(data) != 16 or hashlib.sha256(self._secret + data[:8]).digest()[:8] != data[8:]:
            return None
        return int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")

    async def _list(self, request: web.Request, tenant: SyntheticTenant, kind: str, version: str,
                    path: str) -> web.Response:
        query = request.query
        unknown = sorted({k for k in query if k.startswith("$") and k.lower() not in _KNOWN_OPTIONS})
        if unknown:
            raise GraphError(400, "BadRequest", f"The emulator does not implement the query option(s) "
                                                f"{', '.join(unknown)}.")
        options = {k.lower(): v for k, v in query.items()}
        token = options.get("$skiptoken")
        if token is not None:
            read = self._read_skiptoken(token)
            listing = self._listings.get(read[0]) if read else None
            if (read is None or listing is None or listing.tenant_id != tenant.tenant_id or listing.kind != kind
                    or read[1] > len(listing.entries)):
                raise GraphError(400, "BadRequest", f"'{token}' is not a valid $skiptoken for this request.")
            seq, offset = read
        else:
            listing = await self._new_listing(tenant, kind, version, path, options)
            self._listing_seq = (self._listing_seq + 1) % (1 << 32)
            seq, offset = self._listing_seq, 0
            self._listings[seq] = listing
            while len(self._listings) > _MAX_LISTINGS:
                self._listings.popitem(last=False)
        start = offset
        if offset > 0 and self.faults.entra_dup and random.Random(
                stable_seed(self.seed, "entra-dup", seq, offset)).random() < self.faults.entra_dup:
            # The record that ended the page before begins this one too.
            start = offset - 1
            if (seq, offset) not in self._dup_seen:
                self._dup_seen.add((seq, offset))
                self.stats.faults["entra_dup"] += 1
        page = listing.entries[start : start + listing.top]
        following = start + listing.top
        base = self.base_url or f"{request.scheme}://{request.host}"
        head: dict[str, Any] = {"@odata.context": f"{base}/graph/{version}/$metadata#{path}"}
        if following < len(listing.entries):
            link = f"{base}/graph/{version}/{path}?"
            if listing.filter_text is not None:
                link += f"$filter={quote(listing.filter_text, safe='')}&"
            head["@odata.nextLink"] = f"{link}$top={listing.top}&$skiptoken={self._skiptoken(seq, following)}"
        body = orjson.dumps({**head, "value": [orjson.Fragment(e.text) for e in page]})
        late = sum(e.late for e in page)
        if late:
            self.stats.faults["entra_late_served"] += late
        drift = sum(e.drift for e in page)
        if drift:
            self.stats.faults["entra_drift_served"] += drift
        if self.faults.entra_cutoff and self._request_rng.random() < self.faults.entra_cutoff:
            self.stats.faults["entra_cutoff"] += 1
            body = body[: len(body) // 2]
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def _new_listing(self, tenant: SyntheticTenant, kind: str, version: str, path: str,
                           options: Mapping[str, str]) -> EntraListing:
        signins = kind == "signIn"
        time_field = "createdDateTime" if signins else "activityDateTime"
        top = MAX_TOP
        raw_top = options.get("$top")
        if raw_top is not None:
            if not raw_top.isdigit() or int(raw_top) < 1:
                raise GraphError(400, "BadRequest", f"Invalid page size specified: '{raw_top}'. $top must be a "
                                                    "positive whole number.")
            top = min(int(raw_top), MAX_TOP)
        filter_text = options.get("$filter")
        parsed = parse_filter(filter_text, time_field=time_field, signins=signins) if filter_text else None
        descending = True
        orderby = options.get("$orderby")
        if orderby is not None:
            prop, _, direction = orderby.strip().partition(" ")
            direction = direction.strip().lower() or "asc"
            if prop.lower() != time_field.lower() or direction not in ("asc", "desc"):
                raise GraphError(400, "BadRequest", f"$orderby '{orderby}' is not supported: order by "
                                                    f"{time_field} asc or desc.")
            descending = direction == "desc"
        log_ = await self.log(tenant)
        now = self.clock()
        predicate = parsed.predicate if parsed else None
        # Graph's beta signIns: interactive user sign-ins only, unless the filter names the kinds.
        interactive_only = signins and not (parsed and parsed.names_event_types)
        entries = [e for e in self.visible(log_, kind, now)
                   if (not interactive_only or e.event_type == "interactiveUser")
                   and (predicate is None or predicate(e))]
        if not descending:
            entries.reverse()
        return EntraListing(tenant.tenant_id, kind, version, path, entries, top, filter_text)

    # -------------------------------------------------------------------- control plane

    async def control_truth(self, request: web.Request) -> web.Response:
        """``/_emulator/entra_truth?tenant=&start=&end=``: every record visible now (within the 30 days
        kept), optionally with ``start <= time < end``: ``signIns`` as ``[id, eventType]``,
        ``directoryAudits`` as ids, and ``late`` and ``drift``: the ids the faults touched."""
        raw = request.query.get("tenant") or request.query.get("tenantId")
        if raw is None and self.tenants:
            tenant: SyntheticTenant | None = next(iter(self.tenants.values()))
        else:
            tenant = self.tenants.get((raw or "").lower())
        if tenant is None:
            raise web.HTTPNotFound(text=f"unknown tenant {raw!r}")
        bounds: list[datetime | None] = []
        for name in ("start", "end"):
            value = request.query.get(name)
            try:
                bounds.append(_datetime(value) if value else None)
            except GraphError:
                raise web.HTTPBadRequest(text=f"{name}: {value!r} is not a time") from None
        start, end = bounds
        log_ = await self.log(tenant)
        now = self.clock()
        chosen = {kind: [e for e in self.visible(log_, kind, now)
                         if (start is None or e.created >= start) and (end is None or e.created < end)]
                  for kind in ("signIn", "directoryAudit")}
        both = chosen["signIn"] + chosen["directoryAudit"]
        return _json({
            "now": iso_z(now),
            "signIns": [[e.id, e.event_type] for e in chosen["signIn"]],
            "directoryAudits": [e.id for e in chosen["directoryAudit"]],
            "late": sorted(e.id for e in both if e.late),
            "drift": sorted(e.id for e in both if e.drift),
        })


ENTRA: web.AppKey[EntraService] = web.AppKey("emulator_entra", EntraService)


def add_routes(app: web.Application, service: EntraService) -> None:
    """Serve *service*'s Entra logs and its truth on *app*."""
    app[ENTRA] = service
    r = app.router
    for path in _SIGNIN_PATHS:
        r.add_get(f"/graph/beta/{path}", service.endpoint("ListSignIns", "signIn", "beta", "auditLogs/signIns"))
    for version in ("v1.0", "beta"):
        for path in _AUDIT_PATHS:
            r.add_get(f"/graph/{version}/{path}", service.endpoint(
                "ListDirectoryAudits", "directoryAudit", version, "auditLogs/directoryAudits"))
    r.add_get("/_emulator/entra_truth", service.control_truth)
