"""Entra ID sign-in and directory audit tables, named and typed as Microsoft Sentinel names them.

Two routes deliver the same record shape, the diagnostic-settings envelope ``{time, category,
operationName, resultType, resultSignature, resultDescription, durationMs, callerIpAddress,
correlationId, identity, Level, location, tenantId, properties}``: Entra's diagnostic setting
through Event Hub into the ADX table ``EntraActivityRaw (Records: dynamic)``, and the Graph poller,
which wraps each ``signIn`` / ``directoryAudit`` resource as ``properties`` of such an envelope.
The diagnostic setting's ``properties`` use the attribute names of the Graph (beta) resources, so
one expansion reads both; where one route has a value only at the top level and the other only
under ``properties`` (the client IP, the time, the result code and description, the correlation
id) the expansion takes whichever is present.

Each table is defined here once, column by column, with the KQL expression that fills it from
``r`` (a record) and ``p`` (its ``properties``). ``expansion_body`` renders those into the body of
``EntraExpand_<Table>()``: ADX runs it as a transactional update policy from ``EntraActivityRaw``
(``infra/kql/entra.kql``, rendered by ``render_adx_entra``) and the local lake runs the same text
through duckdb-kql (``auditlake.lake.entra_expand``).

Besides Sentinel's columns every table keeps the record whole (``RawRecord``), the normalised
``ClientIP`` (as ``AuditRecord.ClientIP``), the normalised principal (``UserPrincipal`` and/or
``PrincipalId``) and ``AuditLakeFlag``: empty for a sound record, else the defects found ("no id",
"properties is not an object", "no time"), joined by "; ". A record without an id is kept under
the surrogate ``x-<sha1 of the record>``, so a re-delivery of it still collapses to one row.

``schema.py`` registers the tables in ``TABLES`` (``build_entra_tables``). The classes live there,
so they are imported when the tables are built, not when this module is: either module may be
imported first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from function_app.lake.kql_commands import create_function, transactional_update_policy

if TYPE_CHECKING:
    from function_app.lake.schema import Table

RAW_TABLE = "EntraActivityRaw"
RAW_MAPPING = "EntraActivityRawMapping"
FUNCTION_PREFIX = "EntraExpand_"

SIGNIN_LOGS = "SigninLogs"
NON_INTERACTIVE = "AADNonInteractiveUserSignInLogs"
SERVICE_PRINCIPAL = "AADServicePrincipalSignInLogs"
MANAGED_IDENTITY = "AADManagedIdentitySignInLogs"
AUDIT_LOGS = "AuditLogs"

CATEGORIES: dict[str, str] = {
    SIGNIN_LOGS: "SignInLogs",
    NON_INTERACTIVE: "NonInteractiveUserSignInLogs",
    SERVICE_PRINCIPAL: "ServicePrincipalSignInLogs",
    MANAGED_IDENTITY: "ManagedIdentitySignInLogs",
    AUDIT_LOGS: "AuditLogs",
}
"""Table -> the ``category`` of the records it is built from (diagnostic-settings names)."""

TABLE_OF_CATEGORY: dict[str, str] = {c: t for t, c in CATEGORIES.items()}

ENTRA_TABLE_NAMES: tuple[str, ...] = tuple(CATEGORIES)


# ---------------------------------------------------------------------------------------------
# KQL expressions over r (the record) and p (r.properties)


def _s(path: str) -> str:
    return f"tostring({path})"


def _first(*exprs: str) -> str:
    """The first non-empty of string *exprs* (spelled out: ``coalesce`` differs in how it treats '')."""
    out = exprs[-1]
    for e in reversed(exprs[:-1]):
        out = f"iff(isnotempty({e}), {e}, {out})"
    return out


_TIME = "_time"
_ID = "_id"
_PROVIDER = 'extract(@"(?i)/providers/([^/]+)", 1, tostring(r.resourceId))'
# r["time"]: `time` is a KQL keyword, so r.time does not parse.
_RECORD_TIME = 'todatetime(r["time"])'

# Address only, as function_app.records.normalise.normalise_ip gives it: blanks trimmed, brackets
# and port removed, IPv4-mapped IPv6 (also the odd "ffff:a.b.c.d") as IPv4, IPv6 lower-cased,
# anything else ''. IPv6 is not re-compressed (ipaddress would write 2001:db8:0::1 as 2001:db8::1).
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# A port is 1-5 digits of value 65535 at most (leading zeros allowed, as _port reads it).
_PORT = r"(?:\d{1,4}|[0-5]\d{4}|6[0-4]\d{3}|65[0-4]\d{2}|655[0-2]\d|6553[0-5])"
_IP_STEPS = (
    f'_iphost = tolower(case(_ipraw startswith "[", extract(@"^\\[([^\\]]*)\\](?::{_PORT})?$", 1, _ipraw), '
    f'_ipraw matches regex @"^[^:]*:{_PORT}$", extract(@"^([^:]*):{_PORT}$", 1, _ipraw), _ipraw))',
    f'_ipv4 = extract(@"^(?:::ffff:|ffff:)?((?:{_OCTET}\\.){{3}}{_OCTET})$", 1, _iphost)',
)
_CLIENT_IP = ('iff(isnotempty(_ipv4), _ipv4, iff(_iphost matches regex @"^[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}$", '
              '_iphost, ""))')

_FLAG = ('trim(@"[; ]+", strcat(iff(isempty(tostring(p.id)), "no id; ", ""), '
         'iff(gettype(r.properties) != "dictionary", "properties is not an object; ", ""), '
         'iff(isnull(_time), "no time", "")))')


@dataclass(frozen=True, slots=True)
class EntraColumn:
    name: str
    kind: str
    """KQL type name (string, long, bool, datetime, dynamic)."""
    expr: str
    """KQL expression over ``r``, ``p`` and the helper columns of ``expansion_body``."""
    doc: str = ""


def _col(name: str, kind: str, expr: str, doc: str = "") -> EntraColumn:
    return EntraColumn(name, kind, expr, doc)


def _prop(name: str, prop: str, kind: str = "string", doc: str = "") -> EntraColumn:
    """A column read from ``properties.<prop>``; a string column gets objects as JSON text."""
    path = f"p.{prop}"
    expr = {"string": _s(path), "dynamic": path, "datetime": f"todatetime({path})", "bool": f"tobool({path})",
            "long": f"tolong({path})"}[kind]
    return EntraColumn(name, kind, expr, doc or f"properties.{prop}")


# Columns every envelope carries the same way, whatever its category.
def _common(table: str) -> dict[str, EntraColumn]:
    return {c.name: c for c in (
        _col("Category", "string", _s("r.category"), "category of the record"),
        _col("CorrelationId", "string", _first(_s("r.correlationId"), _s("p.correlationId")),
             "correlationId, else properties.correlationId"),
        _col("DurationMs", "long", "tolong(r.durationMs)", "durationMs"),
        _col("Id", "string", _ID, "properties.id; 'x-<sha1 of the record>' when it has none (flagged)"),
        _col("Identity", "string", _s("r.identity"), "identity"),
        _col("Level", "string", _s("r.Level"), "Level (a number in the diagnostic stream) as text"),
        _col("Location", "string", _first(_s("r.location"), _s("p.location.countryOrRegion")),
             "location, else properties.location.countryOrRegion"),
        _col("OperationName", "string", _s("r.operationName"), "operationName"),
        _col("OperationVersion", "string", _s("r.operationVersion"), "operationVersion"),
        _col("Resource", "string", _PROVIDER, "provider named in resourceId (Microsoft.aadiam)"),
        _col("ResourceGroup", "string", _PROVIDER, "provider named in resourceId, as Log Analytics fills it"),
        _col("ResourceId", "string", _s("r.resourceId"), "resourceId of the envelope"),
        _col("ResourceProvider", "string", _PROVIDER, "provider named in resourceId"),
        _col("ResultDescription", "string", _first(_s("r.resultDescription"), _s("p.status.failureReason")),
             "resultDescription, else properties.status.failureReason"),
        _col("ResultSignature", "string", _s("r.resultSignature"), "resultSignature"),
        _col("ResultType", "string", _first(_s("r.resultType"), _s("p.status.errorCode")),
             "resultType, else properties.status.errorCode"),
        _col("SourceSystem", "string", '"Azure AD"', "constant, as Log Analytics fills it"),
        _col("TenantId", "string", _s("r.tenantId"), "tenantId of the envelope (the Entra tenant)"),
        _col("AADTenantId", "string", _s("r.tenantId"), "tenantId of the envelope"),
        _col("TimeGenerated", "datetime", _TIME, "time, else createdDateTime / activityDateTime"),
        _col("Type", "string", f'"{table}"', "the table's name"),
    )}


_SIGNIN_PROPS: dict[str, tuple[str, str]] = {
    # Column -> (properties attribute, kind in SigninLogs); the non-interactive, service-principal
    # and managed-identity tables type the dynamic ones as string (Sentinel's schemas differ).
    "AlternateSignInName": ("alternateSignInName", "string"),
    "AppDisplayName": ("appDisplayName", "string"),
    "AppId": ("appId", "string"),
    "AppliedConditionalAccessPolicies": ("appliedConditionalAccessPolicies", "string"),
    "AppliedEventListeners": ("appliedEventListeners", "dynamic"),
    "AuthenticationContextClassReferences": ("authenticationContextClassReferences", "string"),
    "AuthenticationDetails": ("authenticationDetails", "string"),
    "AuthenticationMethodsUsed": ("authenticationMethodsUsed", "string"),
    "AuthenticationProcessingDetails": ("authenticationProcessingDetails", "string"),
    "AuthenticationProtocol": ("authenticationProtocol", "string"),
    "AuthenticationRequirement": ("authenticationRequirement", "string"),
    "AuthenticationRequirementPolicies": ("authenticationRequirementPolicies", "string"),
    "AutonomousSystemNumber": ("autonomousSystemNumber", "string"),
    "ClientAppUsed": ("clientAppUsed", "string"),
    "ConditionalAccessPolicies": ("appliedConditionalAccessPolicies", "dynamic"),
    "ConditionalAccessStatus": ("conditionalAccessStatus", "string"),
    "CreatedDateTime": ("createdDateTime", "datetime"),
    "CrossTenantAccessType": ("crossTenantAccessType", "string"),
    "DeviceDetail": ("deviceDetail", "dynamic"),
    "FederatedCredentialId": ("federatedCredentialId", "string"),
    "FlaggedForReview": ("flaggedForReview", "bool"),
    "HomeTenantId": ("homeTenantId", "string"),
    "IPAddressFromResourceProvider": ("ipAddressFromResourceProvider", "string"),
    "IsInteractive": ("isInteractive", "bool"),
    "IsRisky": ("isRisky", "bool"),
    "LocationDetails": ("location", "dynamic"),
    "MfaDetail": ("mfaDetail", "dynamic"),
    "NetworkLocationDetails": ("networkLocationDetails", "string"),
    "OriginalRequestId": ("originalRequestId", "string"),
    "ProcessingTimeInMilliseconds": ("processingTimeInMilliseconds", "string"),
    "ProcessingTimeInMs": ("processingTimeInMilliseconds", "string"),
    "ResourceDisplayName": ("resourceDisplayName", "string"),
    "ResourceIdentity": ("resourceId", "string"),
    "ResourceServicePrincipalId": ("resourceServicePrincipalId", "string"),
    "ResourceTenantId": ("resourceTenantId", "string"),
    "RiskDetail": ("riskDetail", "string"),
    "RiskEventTypes": ("riskEventTypes", "string"),
    "RiskEventTypes_V2": ("riskEventTypes_v2", "string"),
    "RiskLevel": ("riskLevel", "string"),
    "RiskLevelAggregated": ("riskLevelAggregated", "string"),
    "RiskLevelDuringSignIn": ("riskLevelDuringSignIn", "string"),
    "RiskState": ("riskState", "string"),
    "ServicePrincipalCredentialKeyId": ("servicePrincipalCredentialKeyId", "string"),
    "ServicePrincipalCredentialThumbprint": ("servicePrincipalCredentialThumbprint", "string"),
    "ServicePrincipalId": ("servicePrincipalId", "string"),
    "ServicePrincipalName": ("servicePrincipalName", "string"),
    "SessionLifetimePolicies": ("sessionLifetimePolicies", "string"),
    "SignInEventTypes": ("signInEventTypes", "string"),
    "SignInIdentifier": ("signInIdentifier", "string"),
    "SignInIdentifierType": ("signInIdentifierType", "string"),
    "Status": ("status", "dynamic"),
    "TokenIssuerName": ("tokenIssuerName", "string"),
    "TokenIssuerType": ("tokenIssuerType", "string"),
    "UniqueTokenIdentifier": ("uniqueTokenIdentifier", "string"),
    "UserAgent": ("userAgent", "string"),
    "UserDisplayName": ("userDisplayName", "string"),
    "UserId": ("userId", "string"),
    "UserPrincipalName": ("userPrincipalName", "string"),
    "UserType": ("userType", "string"),
}

_AUDIT_PROPS: dict[str, tuple[str, str]] = {
    "AADOperationType": ("operationType", "string"),
    "ActivityDateTime": ("activityDateTime", "datetime"),
    "AdditionalDetails": ("additionalDetails", "dynamic"),
    "InitiatedBy": ("initiatedBy", "dynamic"),
    "LoggedByService": ("loggedByService", "string"),
    "Result": ("result", "string"),
    "ResultReason": ("resultReason", "string"),
    "TargetResources": ("targetResources", "dynamic"),
}

# Sentinel's documented columns of each table, in the documentation's order (``_BilledSize``,
# ``_IsBillable`` and the other Log Analytics billing columns are not record data and are left
# out), with the type documented for each where it differs from the SigninLogs one above.
_STRING_IN_NON_INTERACTIVE = ("ConditionalAccessPolicies", "DeviceDetail", "LocationDetails", "MfaDetail", "Status")

_DOCUMENTED: dict[str, tuple[str, ...]] = {
    SIGNIN_LOGS: (
        "AADTenantId", "AlternateSignInName", "AppDisplayName", "AppId", "AppliedConditionalAccessPolicies",
        "AppliedEventListeners", "AuthenticationContextClassReferences", "AuthenticationDetails",
        "AuthenticationMethodsUsed", "AuthenticationProcessingDetails", "AuthenticationProtocol",
        "AuthenticationRequirement", "AuthenticationRequirementPolicies", "AutonomousSystemNumber", "Category",
        "ClientAppUsed", "ConditionalAccessPolicies", "ConditionalAccessStatus", "CorrelationId", "CreatedDateTime",
        "CrossTenantAccessType", "DeviceDetail", "DurationMs", "FlaggedForReview", "HomeTenantId", "Id", "Identity",
        "IPAddress", "IPAddressFromResourceProvider", "IsInteractive", "IsRisky", "Level", "Location",
        "LocationDetails", "MfaDetail", "NetworkLocationDetails", "OperationName", "OperationVersion",
        "OriginalRequestId", "ProcessingTimeInMilliseconds", "Resource", "ResourceDisplayName", "ResourceGroup",
        "ResourceId", "ResourceIdentity", "ResourceProvider", "ResourceServicePrincipalId", "ResourceTenantId",
        "ResultDescription", "ResultSignature", "ResultType", "RiskDetail", "RiskEventTypes", "RiskEventTypes_V2",
        "RiskLevel", "RiskLevelAggregated", "RiskLevelDuringSignIn", "RiskState", "ServicePrincipalId",
        "ServicePrincipalName", "SessionLifetimePolicies", "SignInIdentifier", "SignInIdentifierType",
        "SourceSystem", "Status", "TimeGenerated", "TokenIssuerName", "TokenIssuerType", "Type",
        "UniqueTokenIdentifier", "UserAgent", "UserDisplayName", "UserId", "UserPrincipalName", "UserType",
    ),
    NON_INTERACTIVE: (
        "AlternateSignInName", "AppDisplayName", "AppId", "AppliedEventListeners",
        "AuthenticationContextClassReferences", "AuthenticationDetails", "AuthenticationMethodsUsed",
        "AuthenticationProcessingDetails", "AuthenticationProtocol", "AuthenticationRequirement",
        "AuthenticationRequirementPolicies", "AutonomousSystemNumber", "Category", "ClientAppUsed",
        "ConditionalAccessPolicies", "ConditionalAccessStatus", "CorrelationId", "CreatedDateTime",
        "CrossTenantAccessType", "DeviceDetail", "DurationMs", "HomeTenantId", "Id", "Identity", "IPAddress",
        "IsInteractive", "IsRisky", "Level", "Location", "LocationDetails", "MfaDetail", "NetworkLocationDetails",
        "OperationName", "OperationVersion", "OriginalRequestId", "ProcessingTimeInMs", "ResourceDisplayName",
        "ResourceGroup", "ResourceIdentity", "ResourceServicePrincipalId", "ResourceTenantId", "ResultDescription",
        "ResultSignature", "ResultType", "RiskDetail", "RiskEventTypes", "RiskEventTypes_V2", "RiskLevelAggregated",
        "RiskLevelDuringSignIn", "RiskState", "ServicePrincipalId", "SessionLifetimePolicies", "SignInEventTypes",
        "SignInIdentifierType", "SourceSystem", "Status", "TenantId", "TimeGenerated", "TokenIssuerName",
        "TokenIssuerType", "Type", "UniqueTokenIdentifier", "UserAgent", "UserDisplayName", "UserId",
        "UserPrincipalName", "UserType",
    ),
    SERVICE_PRINCIPAL: (
        "AppId", "AuthenticationContextClassReferences", "AuthenticationProcessingDetails", "Category",
        "ConditionalAccessPolicies", "ConditionalAccessStatus", "CorrelationId", "DurationMs",
        "FederatedCredentialId", "Id", "Identity", "IPAddress", "Level", "Location", "LocationDetails",
        "OperationName", "OperationVersion", "ResourceDisplayName", "ResourceGroup", "ResourceIdentity",
        "ResourceServicePrincipalId", "ResultDescription", "ResultSignature", "ResultType",
        "ServicePrincipalCredentialKeyId", "ServicePrincipalCredentialThumbprint", "ServicePrincipalId",
        "ServicePrincipalName", "SourceSystem", "TenantId", "TimeGenerated", "Type", "UniqueTokenIdentifier",
    ),
    AUDIT_LOGS: (
        "AADOperationType", "AADTenantId", "ActivityDateTime", "ActivityDisplayName", "AdditionalDetails",
        "Category", "CorrelationId", "DurationMs", "Id", "Identity", "InitiatedBy", "Level", "Location",
        "LoggedByService", "OperationName", "OperationVersion", "Resource", "ResourceGroup", "ResourceId",
        "ResourceProvider", "Result", "ResultDescription", "ResultReason", "ResultSignature", "ResultType",
        "SourceSystem", "TargetResources", "TimeGenerated", "Type",
    ),
}
_DOCUMENTED[MANAGED_IDENTITY] = _DOCUMENTED[SERVICE_PRINCIPAL]

_SIGNIN_IP = _first(_s("p.ipAddress"), _s("r.callerIpAddress"))
# An app-initiated change carries no user; Graph puts the caller's address under initiatedBy.
_AUDIT_IP = _first(_s("p.initiatedBy.user.ipAddress"), _s("p.initiatedBy.app.ipAddress"), _s("r.callerIpAddress"))

_TIME_SOURCE: dict[str, str] = {
    SIGNIN_LOGS: "createdDateTime", NON_INTERACTIVE: "createdDateTime", SERVICE_PRINCIPAL: "createdDateTime",
    MANAGED_IDENTITY: "createdDateTime", AUDIT_LOGS: "activityDateTime",
}


def columns_of(table: str) -> tuple[EntraColumn, ...]:
    """Every column of the Entra table *table*, in order, with the expression that fills it."""
    common = _common(table)
    out: list[EntraColumn] = []
    for name in _DOCUMENTED[table]:
        if table == AUDIT_LOGS and name == "Category":
            # The audit category (UserManagement, ...), as Sentinel shows it; the envelope's is "AuditLogs".
            out.append(_col(name, "string", _first(_s("p.category"), _s("r.category")),
                            "properties.category (UserManagement, ...), else category"))
        elif table == AUDIT_LOGS and name == "ActivityDisplayName":
            out.append(_col(name, "string", _first(_s("p.activityDisplayName"), _s("r.operationName")),
                            "properties.activityDisplayName, else operationName"))
        elif table == AUDIT_LOGS and name == "OperationName":
            out.append(_col(name, "string", _first(_s("r.operationName"), _s("p.activityDisplayName")),
                            "operationName, else properties.activityDisplayName"))
        elif name == "IPAddress":
            out.append(_col(name, "string", _SIGNIN_IP, "properties.ipAddress, else callerIpAddress"))
        elif name in common:
            out.append(common[name])
        else:
            prop, kind = (_AUDIT_PROPS if table == AUDIT_LOGS else _SIGNIN_PROPS)[name]
            if table != SIGNIN_LOGS and name in _STRING_IN_NON_INTERACTIVE:
                kind = "string"
            out.append(_prop(name, prop, kind))
    out.append(_col("ClientIP", "string", _CLIENT_IP,
                    "address only, normalised as AuditRecord.ClientIP: no port, no brackets, IPv4-mapped IPv6 "
                    "as IPv4, IPv6 lower-cased; '' when not an address"))
    if table in (SIGNIN_LOGS, NON_INTERACTIVE):
        out.append(_col("UserPrincipal", "string", "tolower(trim(@\"\\s+\", tostring(p.userPrincipalName)))",
                        "lower-cased UPN"))
    elif table == AUDIT_LOGS:
        out.append(_col("UserPrincipal", "string",
                        "tolower(trim(@\"\\s+\", tostring(p.initiatedBy.user.userPrincipalName)))",
                        "lower-cased UPN of the user who made the change ('' when an app did)"))
        out.append(_col("PrincipalId", "string",
                        "tolower(trim(@\"\\s+\", tostring(p.initiatedBy.app.servicePrincipalId)))",
                        "lower-cased object id of the service principal that made the change ('' for a user)"))
    else:
        out.append(_col("PrincipalId", "string",
                        "tolower(trim(@\"\\s+\", " + _first(_s("p.servicePrincipalId"), _s("p.appId")) + "))",
                        "lower-cased object id of the signing-in service principal (its appId when it has none)"))
    # The expansion runs as the record is ingested (an update policy, or the local insert), so
    # now() is when it became queryable: the freshness the feed's IngestedAt measures.
    out.append(_col("IngestedAt", "datetime", "now()", "when the record became queryable here"))
    out.append(_col("AuditLakeFlag", "string", _FLAG,
                    "'' for a sound record, else its defects: no id, properties is not an object, no time"))
    out.append(_col("RawRecord", "dynamic", "r", "the record exactly as received"))
    return tuple(out)


def _ip_source(table: str) -> str:
    return _AUDIT_IP if table == AUDIT_LOGS else _SIGNIN_IP


def expansion_function(table: str) -> str:
    return f"{FUNCTION_PREFIX}{table}"


def expansion_body(table: str) -> str:
    """The query of ``EntraExpand_<table>()``: the records of the table's category in
    ``EntraActivityRaw``, one row each, projected onto the table's columns in order.

    One line per step and no blank line: the ADX scripts are cut into commands at blank lines.
    """
    created = _TIME_SOURCE[table]
    steps = [
        RAW_TABLE,
        "| mv-expand r = Records",
        f'| where tostring(r.category) == "{CATEGORIES[table]}"',
        "| extend p = r.properties",
        f"| extend {_TIME} = iff(isnull({_RECORD_TIME}), todatetime(p.{created}), {_RECORD_TIME})",
        f'| extend {_ID} = iff(isnotempty(tostring(p.id)), tostring(p.id), strcat("x-", hash_sha1(tostring(r))))',
        f'| extend _ipraw = trim(@"\\s+", {_ip_source(table)})',
        *(f"| extend {step}" for step in _IP_STEPS),
    ]
    projection = ",\n    ".join(f"{c.name} = {c.expr}" for c in columns_of(table))
    steps.append(f"| project\n    {projection}")
    return "\n".join(steps)


# ---------------------------------------------------------------------------------------------
# Tables (built with schema.py's classes; schema.py calls this to register them in TABLES)


_DOCS: dict[str, str] = {
    SIGNIN_LOGS: "Entra ID interactive user sign-ins, as Sentinel's SigninLogs",
    NON_INTERACTIVE: "Entra ID non-interactive user sign-ins, as Sentinel's AADNonInteractiveUserSignInLogs",
    SERVICE_PRINCIPAL: "Entra ID service principal sign-ins, as Sentinel's AADServicePrincipalSignInLogs",
    MANAGED_IDENTITY: "Entra ID managed identity sign-ins, as Sentinel's AADManagedIdentitySignInLogs",
    AUDIT_LOGS: "Entra ID directory audit events, as Sentinel's AuditLogs",
}


def build_entra_tables() -> tuple[Table, ...]:
    """The five Entra tables, keyed by ``Id`` and de-duplicated as AuditRecord is."""
    from function_app.lake.schema import DEDUP_LOOKBACK_DAYS, Column, Kind, Table

    return tuple(
        Table(
            name,
            tuple(Column(c.name, Kind(c.kind), c.doc, c.expr) for c in columns_of(name)),
            key=("Id",),
            doc=f"{_DOCS[name]}; one row per record Id (category {CATEGORIES[name]})",
            dedup_lookback_days=DEDUP_LOOKBACK_DAYS,
        )
        for name in ENTRA_TABLE_NAMES
    )


@cache
def raw_table() -> Table:
    """``EntraActivityRaw``: what the Event Hub data connection ingests, one row per hub message.

    ADX only, and not in ``TABLES`` (``Table`` cannot say ADX-only): rendered by ``render_adx_entra``.
    """
    from function_app.lake.schema import Column, Kind, Table

    return Table(RAW_TABLE, (Column("Records", Kind.DYNAMIC, "the message's records array", "$.records"),),
                 key=(), doc="Entra ID diagnostic-settings messages from Event Hub, expanded by update policies "
                             "into SigninLogs, AADNonInteractiveUserSignInLogs, AADServicePrincipalSignInLogs, "
                             "AADManagedIdentitySignInLogs and AuditLogs; kept no longer than the expansion")


# ---------------------------------------------------------------------------------------------
# ADX


def _function_command(table: str) -> str:
    doc = f"Records of category {CATEGORIES[table]} in {RAW_TABLE} as rows of {table} (its update policy)"
    return create_function(expansion_function(table), expansion_body(table), doc)


def _update_policy(table: str) -> str:
    return transactional_update_policy(table, RAW_TABLE, expansion_function(table))


def render_adx_entra(tables: Sequence[str] = ENTRA_TABLE_NAMES) -> str:
    """``infra/kql/entra.kql``: the raw table, its mapping, retention and batching, one expansion
    function per table and each table's transactional update policy from the raw table.

    Deployed after ``tables.kql`` (which creates the five tables). The raw table keeps nothing
    (soft delete 0): each message lives on only as the rows the policies made of it, and a
    message a policy fails on fails its ingestion as a whole (IsTransactional, which a soft
    delete of 0 requires), to be seen in ``.show ingestion failures`` and retried by the data
    connection, never half-written.
    """
    from function_app.lake.schema import adx_batching, adx_create_table, adx_json_mapping

    raw = raw_table()
    mapping = '[{"column":"Records","datatype":"dynamic","Properties":{"Path":"$.records"}}]'
    parts = [
        adx_create_table(raw),
        f".create-or-alter table {RAW_TABLE} ingestion json mapping \"{RAW_MAPPING}\" '{mapping}'",
        # The Graph poller's rows come through the collector's sink, which writes every table's
        # columns by name ({"Records": [...]}) and ingests with the table's own mapping.
        adx_json_mapping(raw),
        f".alter-merge table {RAW_TABLE} policy retention softdelete = 0d recoverability = disabled",
        adx_batching(raw),
    ]
    parts += [_function_command(t) for t in tables]
    parts += [_update_policy(t) for t in tables]
    return "\n\n".join(parts) + "\n"
