"""Settings, built once from the environment, failing fast with the setting's name.

``SETTINGS`` defines every setting once: name, kind, default, who reads it, whether Azure
needs it, and what it means. Parsing takes its defaults from there and reads no other name;
contract tests hold the code's reads, docs/settings.md, local.settings.json.example and the
function app's Bicep app settings to it (tests/contract/test_settings_definition.py).

The CLI overrides some of these with flags; the Functions app reads them from app settings.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import orjson

from function_app.core.budget import BLOB_MEMORY_FACTOR
from function_app.core.model import CONTENT_TYPES

log = logging.getLogger(__name__)

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


def is_guid(value: str) -> bool:
    return bool(_GUID.match(value))


# -- The definition ---------------------------------------------------------------------------


class Scope(StrEnum):
    """Who reads a setting."""

    COLLECTOR = "collector"
    """The collector wherever it runs: the ``auditlake`` CLI and the Functions app."""
    AZURE = "azure"
    """The Functions app only (and ``auditlake replay --azure``)."""
    BINDING = "binding"
    """The Functions host itself, as ``%NAME%`` in a trigger binding (the app reads it too): the
    host has no default, so Azure must always set it."""


class Kind(StrEnum):
    """What a setting's value is (for people and tests; the parsing code enforces it)."""

    TEXT = "text"
    SECRET = "secret"
    INT = "int"
    NUMBER = "number"
    BOOL = "bool"
    GUID = "guid"
    TENANTS = "tenants"
    CLOUD = "cloud"
    URL = "url"
    PATH = "path"
    NCRONTAB = "ncrontab"
    STORAGE_NAME = "storage-name"
    TABLE_PREFIX = "table-prefix"
    CONNECTION_STRING = "connection-string"


@dataclass(frozen=True, slots=True)
class SettingDef:
    """One setting: what the docs table, the parsing code and the Bicep app settings agree on."""

    name: str
    kind: Kind
    doc: str
    scope: Scope = Scope.COLLECTOR
    default: str | None = None
    """The value used when the setting is unset, written as it would be in the environment."""
    unset: str = "(none)"
    """What happens when unset and there is no single default value (shown in the docs)."""
    required_in_azure: bool = False
    """The Functions app (or its host) cannot run without it: Bicep always sets it."""

    @property
    def shown_default(self) -> str:
        """The docs table's default column."""
        if self.required_in_azure:
            if self.default is None:
                return "(required in Azure)"
            return f"(required in Azure; Bicep sets `{self.default}`)"
        return f"`{self.default}`" if self.default is not None else self.unset


STORAGE_SETTING = "AzureWebJobsStorage"
CONTENT_QUEUE_SETTING = "CONTENT_QUEUE"
COLLECT_SCHEDULE_SETTING = "COLLECT_SCHEDULE"
SEARCH_SCHEDULE_SETTING = "SEARCH_SCHEDULE"
ENTRA_SCHEDULE_SETTING = "ENTRA_SCHEDULE"
ADX_INSECURE_SETTING = "ADX_ALLOW_INSECURE_HTTP"
POISON_SUFFIX = "-poison"

DEFAULT_MEMORY_BUDGET_MB = 1536
"""Memory the blobs in flight may hold together (core.budget): a 2,048 MB Flex Consumption
instance less ~512 MB for the worker, the SDKs and the runtime. Bicep sets it from the
instance size; the blob size cap follows from it. (SETTINGS takes its default from here.)"""

_A, _B = Scope.AZURE, Scope.BINDING

SETTINGS: tuple[SettingDef, ...] = (
    # The collector (CLI and Functions app).
    SettingDef("AUDITLAKE_TENANTS", Kind.TENANTS, required_in_azure=True, doc=(
        'tenants to collect: a comma list of GUIDs, or JSON `[{"tenantId": ..., "contentTypes": [...], '
        '"cloud": ...}]`; `--tenant-id` overrides; the Functions app refuses to start without one')),
    SettingDef("AUDITLAKE_CLOUD", Kind.CLOUD, default="Enterprise", doc=(
        "`Enterprise`, `GCC`, `GCCHigh` or `DoD`: selects the API root, token authority and audience")),
    SettingDef("AUDITLAKE_API_ROOT", Kind.URL, unset="the cloud's", doc=(
        "override of the API root, e.g. an emulator's `http://127.0.0.1:8765/api/v1.0`")),
    SettingDef("AUDITLAKE_GRAPH_ROOT", Kind.URL, unset="the cloud's Graph root", doc=(
        "override of the Microsoft Graph root the Purview audit search (`backfill`) calls, e.g. an emulator's "
        "`http://127.0.0.1:8765/graph`; `/beta/security/auditLog/queries` is appended")),
    SettingDef("AUDITLAKE_PUBLISHER_ID", Kind.GUID, unset="the first tenant", doc=(
        "`PublisherIdentifier` sent on every call (your own tenant GUID for an in-house deployment)")),
    SettingDef("AUDITLAKE_OVERLAP_MINUTES", Kind.NUMBER, default="60", doc=(
        "how far before the checkpoint each pass re-lists")),
    SettingDef("AUDITLAKE_SAFETY_LAG_SECONDS", Kind.NUMBER, default="30", doc=(
        "the checkpoint never passes now minus this")),
    SettingDef("AUDITLAKE_SWEEP_HOURS", Kind.NUMBER, default="24", doc="how often the last 24 h are re-listed"),
    SettingDef("AUDITLAKE_MEMORY_BUDGET_MB", Kind.INT, default=str(DEFAULT_MEMORY_BUDGET_MB), doc=(
        f"memory the blobs in flight may hold together: each fetch reserves {BLOB_MEMORY_FACTOR} × its size "
        "before reading the body, so many small blobs run at once and a large one waits its turn "
        "(in Azure, set from `instanceMemoryMB` − 512)")),
    SettingDef("AUDITLAKE_MAX_BLOB_BYTES", Kind.INT, unset=(
        f"budget ÷ {BLOB_MEMORY_FACTOR} "
        f"(`{DEFAULT_MEMORY_BUDGET_MB * 1024 * 1024 // BLOB_MEMORY_FACTOR}` at the default budget)"), doc=(
        "a blob larger than this is refused and marked `failed`; a value the budget cannot hold is refused "
        "at start-up")),
    SettingDef("AUDITLAKE_RETRY_ATTEMPTS", Kind.INT, default="8", doc="attempts per API call before giving up"),
    SettingDef("AUDITLAKE_RETRY_BASE_SECONDS", Kind.NUMBER, default="0.5", doc=(
        "first backoff; doubles with full jitter")),
    SettingDef("AUDITLAKE_RETRY_MAX_SECONDS", Kind.NUMBER, default="60", doc=(
        "longest single backoff (also caps `Retry-After`)")),
    SettingDef("AUDITLAKE_HTTP_TIMEOUT_SECONDS", Kind.NUMBER, default="120", doc="per request"),
    SettingDef("AUDITLAKE_CONCURRENCY", Kind.INT, default="32", doc=(
        "blobs fetched and flattened at once by the local collector")),
    SettingDef("AUDITLAKE_COMMIT_RECORDS", Kind.INT, default="20000", doc=(
        "records the local collector gathers into one lake commit (it also commits a second after a "
        "commit's first blob, and at once when no other blob is in hand); larger commits cost fewer "
        "statements, and each full row group of 2,048 rows they hold is written to the file once instead "
        "of to the log and again at a checkpoint; smaller ones hold less memory")),
    SettingDef("AUDITLAKE_SEARCH_HISTORY_DAYS", Kind.INT, default="180", doc=(
        "days of history the Purview audit search backfill keeps whole (Purview Standard's retention): the "
        "Functions app's search timer backfills `[today - N days, yesterday)`, skipping days already done")),
    # Authentication to the Management Activity API (o365/auth.py token_provider_from_env, first match wins).
    SettingDef("AUDITLAKE_API_TOKEN", Kind.SECRET, doc=(
        "a static bearer token for every tenant (tests, the emulator, a token minted by hand); "
        "when set, no other credential is used")),
    SettingDef("AZURE_FEDERATED_TOKEN_FILE", Kind.PATH, doc=(
        "workload identity (Kubernetes): the federated token file; needs `AZURE_CLIENT_ID`")),
    SettingDef("AUDITLAKE_FEDERATED_MI", Kind.BOOL, doc=(
        "`1`: authenticate as the app registration `AZURE_CLIENT_ID` with a federated credential that "
        "trusts the managed identity (what the Azure deployment uses: no secret)")),
    SettingDef("AUDITLAKE_TOKEN_EXCHANGE_AUDIENCE", Kind.TEXT, default="api://AzureADTokenExchange", doc=(
        "audience of the managed identity's token presented as the federated credential "
        "(US Government clouds: `api://AzureADTokenExchangeUSGov`)")),
    SettingDef("MANAGED_IDENTITY_CLIENT_ID", Kind.GUID, doc=(
        "client id of the user-assigned managed identity (with `AUDITLAKE_FEDERATED_MI`, or when no other "
        "credential is set; else `AZURE_CLIENT_ID`)")),
    SettingDef("AZURE_CLIENT_CERTIFICATE_PATH", Kind.PATH, doc=(
        "a certificate of the app registration (PEM or PKCS12); needs `AZURE_CLIENT_ID`")),
    SettingDef("AZURE_CLIENT_CERTIFICATE_PASSWORD", Kind.SECRET, doc="the certificate's password"),
    SettingDef("AZURE_CLIENT_SECRET", Kind.SECRET, doc=(
        "a client secret of the app registration (in Azure, a Key Vault reference); needs `AZURE_CLIENT_ID`")),
    SettingDef("AUDITLAKE_LAKE", Kind.PATH, default=".auditlake/lake.duckdb", doc=(
        "the `auditlake` CLI's lake file, for every command's `--lake` (a relative path is relative to the "
        "working directory: pin it to an absolute path for a service); the Functions app ignores it")),
    SettingDef("AZURE_CLIENT_ID", Kind.GUID, doc=(
        "application (client) id of the multi-tenant app registration the collector authenticates as")),
    # The Functions app.
    SettingDef(STORAGE_SETTING, Kind.CONNECTION_STRING, scope=_A, doc=(
        "storage connection string (Azurite, local runs); when set, the identity-based `__` settings "
        "below are ignored")),
    SettingDef(f"{STORAGE_SETTING}__accountName", Kind.TEXT, scope=_A, doc=(
        "identity-based connection: the storage account, for service URIs "
        "`https://<name>.<service>.core.windows.net`")),
    SettingDef(f"{STORAGE_SETTING}__queueServiceUri", Kind.URL, scope=_A, unset="from `__accountName`",
               doc="identity-based connection: the queue service URI"),
    SettingDef(f"{STORAGE_SETTING}__blobServiceUri", Kind.URL, scope=_A, unset="from `__accountName`",
               doc="identity-based connection: the blob service URI"),
    SettingDef(f"{STORAGE_SETTING}__tableServiceUri", Kind.URL, scope=_A, unset="from `__accountName`",
               doc="identity-based connection: the table service URI"),
    SettingDef(f"{STORAGE_SETTING}__credential", Kind.TEXT, scope=_A, unset="the default credential chain", doc=(
        "`managedidentity` (the only value accepted): the managed identity authenticates to storage")),
    SettingDef(f"{STORAGE_SETTING}__clientId", Kind.GUID, scope=_A, doc=(
        "client id of the user-assigned managed identity used for storage")),
    SettingDef(CONTENT_QUEUE_SETTING, Kind.STORAGE_NAME, scope=_B, default="content", required_in_azure=True,
               doc=("the queue between timer and workers; the poison queue is `<name>-poison`; the host "
                    "resolves `%CONTENT_QUEUE%` in the queue triggers itself")),
    SettingDef(COLLECT_SCHEDULE_SETTING, Kind.NCRONTAB, scope=_B, default="0 */2 * * * *", required_in_azure=True,
               doc="the timer (six-field NCRONTAB); the host resolves `%COLLECT_SCHEDULE%` in the timer triggers "
                   "itself"),
    SettingDef("AUDITLAKE_ENTRA_STREAMS", Kind.TEXT, unset="none", doc=(
        "the Entra ID logs the Functions app's `entra_poll` timer polls from Microsoft Graph, for a tenant "
        "that cannot stream them through an Event Hub (docs/entra.md): `entra` (all five) or a comma list of "
        "`signins`, `noninteractive`, `serviceprincipal`, `managedidentity`, `directoryaudits`; empty: none "
        "(the timer then does nothing). Needs the Graph permission AuditLog.Read.All and Entra ID P1/P2")),
    SettingDef("ENTRA_SCHEDULE", Kind.NCRONTAB, scope=_B, default="0 */5 * * * *", required_in_azure=True,
               doc="the Entra ID log polling timer (six-field NCRONTAB, UTC); it polls only the logs "
                   "`AUDITLAKE_ENTRA_STREAMS` names"),
    SettingDef("SEARCH_SCHEDULE", Kind.NCRONTAB, scope=_B, default="0 30 3 * * *", required_in_azure=True,
               doc="the Purview audit search timer (six-field NCRONTAB, UTC): daily, so day D is searched on D+2 "
                   "once Purview had a day to catch up; the first runs are the onboarding backfill"),
    SettingDef("ADX_INGEST_URI", Kind.URL, scope=_A, required_in_azure=True, doc=(
        "ADX data-management URI (`https://ingest-<cluster>.<region>.kusto.windows.net`)")),
    SettingDef("ADX_DATABASE", Kind.TEXT, scope=_A, required_in_azure=True, doc="ADX database"),
    SettingDef("ADX_STREAMING", Kind.BOOL, scope=_A, default="false", doc=(
        "use ManagedStreamingIngestClient (fresher; falls back to queued for large blobs; de-duplication "
        "never depends on ingest-by tags)")),
    SettingDef("ADX_ENGINE_URI", Kind.URL, scope=_A, unset="derived from the ingest URI", doc=(
        "engine URI for streaming")),
    SettingDef("ADX_CLIENT_ID", Kind.GUID, scope=_A, unset="the storage `__clientId`", doc=(
        "user-assigned managed identity used for ADX")),
    SettingDef(ADX_INSECURE_SETTING, Kind.BOOL, default="false", doc=(
        "accept a plain `http://` ADX URI (`ADX_INGEST_URI`, `ADX_ENGINE_URI`, `--adx-ingest-uri`), which gets "
        "no authentication: a local fake ADX for tests only, logged as a warning; never set in Azure")),
    SettingDef("STATE_TABLE_PREFIX", Kind.TABLE_PREFIX, scope=_A, default="AuditLake", doc=(
        "tables `<prefix>Checkpoints`, `<prefix>Ledger`, `<prefix>Runs`")),
    SettingDef("DEADLETTER_CONTAINER", Kind.STORAGE_NAME, scope=_A, default="deadletter", doc=(
        "raw content `content/{tenant}/{type}/{id}.json`, raw messages `messages/{date}/{id}.txt`")),
    SettingDef("AUDITLAKE_REQUEUE_AFTER_MINUTES", Kind.NUMBER, scope=_A, default="60", doc=(
        "re-enqueue a `listed`/`queued` row after this long without progress")),
    SettingDef("AUDITLAKE_CLAIM_LEASE_MINUTES", Kind.NUMBER, scope=_A, default="11", doc=(
        "how long a claim on a blob lasts; longer than `functionTimeout`")),
)

SETTING_BY_NAME: Mapping[str, SettingDef] = {d.name: d for d in SETTINGS}

_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off", ""}


def _definition(name: str) -> SettingDef:
    """The definition of *name*; every setting parsed here must have one."""
    try:
        return SETTING_BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name}: not defined in function_app.config.SETTINGS") from None


def _default(name: str) -> str:
    default = _definition(name).default
    if default is None:
        raise KeyError(f"{name}: SETTINGS gives it no default value")
    return default


def _default_number(name: str) -> float:
    return float(_default(name))


def _default_flag(name: str) -> bool:
    return _default(name).strip().lower() in _TRUE_WORDS


# Every app setting the Azure side reads, for the contract tests (bindings, infra/).
AZURE_SETTING_NAMES: frozenset[str] = frozenset(d.name for d in SETTINGS if d.scope is not Scope.COLLECTOR)

DEFAULT_CONTENT_QUEUE = _default(CONTENT_QUEUE_SETTING)
DEFAULT_COLLECT_SCHEDULE = _default(COLLECT_SCHEDULE_SETTING)
DEFAULT_SEARCH_SCHEDULE = _default(SEARCH_SCHEDULE_SETTING)
DEFAULT_ENTRA_SCHEDULE = _default(ENTRA_SCHEDULE_SETTING)
DEFAULT_STATE_TABLE_PREFIX = _default("STATE_TABLE_PREFIX")
DEFAULT_DEADLETTER_CONTAINER = _default("DEADLETTER_CONTAINER")


def _entra_streams(env: Mapping[str, str]) -> tuple[str, ...]:
    from function_app.entra.streams import parse_streams

    try:
        return tuple(s.name for s in parse_streams(_text(env, "AUDITLAKE_ENTRA_STREAMS")))
    except ValueError as exc:
        raise SettingsError(f"AUDITLAKE_ENTRA_STREAMS: {exc}") from None


def _text(env: Mapping[str, str], name: str) -> str:
    _definition(name)
    return env.get(name, "").strip()


def _flag(env: Mapping[str, str], name: str) -> bool:
    default = _default(name)
    raw = env.get(name)
    word = (default if raw is None else raw).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _number(env: Mapping[str, str], name: str, *, minimum: float = 0, default: float | None = None) -> float:
    """*name* as a number; unset or empty, *default* if given, else the definition's default."""
    _definition(name)
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default if default is not None else _default_number(name)
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {raw!r}")
    return value


def _whole(env: Mapping[str, str], name: str, *, minimum: int) -> int:
    """*name* as a whole number of at least *minimum* (unset: the definition's default)."""
    value = _number(env, name, minimum=minimum)
    if value != int(value):
        raise SettingsError(f"{name}: expected a whole number, got {env.get(name)!r}")
    return int(value)


def parse_content_types(value: str | list[str], setting: str) -> tuple[str, ...]:
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    by_lower = {c.lower(): c for c in CONTENT_TYPES}
    out: list[str] = []
    for item in items:
        canonical = by_lower.get(item.lower())
        if canonical is None:
            raise SettingsError(f"{setting}: unknown content type {item!r}; valid: {', '.join(CONTENT_TYPES)}")
        if canonical not in out:
            out.append(canonical)
    if not out:
        raise SettingsError(f"{setting}: no content type given")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class TenantConfig:
    tenant_id: str
    content_types: tuple[str, ...] = CONTENT_TYPES
    cloud: str = _default("AUDITLAKE_CLOUD")


def parse_tenants(raw: str, default_cloud: str, setting: str = "AUDITLAKE_TENANTS") -> tuple[TenantConfig, ...]:
    """Either a comma list of GUIDs, or JSON: ``[{"tenantId": ..., "contentTypes": [...], "cloud": ...}]``."""
    raw = raw.strip()
    if not raw:
        return ()
    if raw.startswith("["):
        try:
            items = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SettingsError(f"{setting}: not valid JSON: {exc}") from exc
        tenants = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("tenantId"), str):
                raise SettingsError(f"{setting}[{i}]: needs a string tenantId")
            tid = item["tenantId"]
            if not is_guid(tid):
                raise SettingsError(f"{setting}[{i}].tenantId: not a GUID: {tid!r}")
            cts = parse_content_types(item.get("contentTypes", list(CONTENT_TYPES)), f"{setting}[{i}].contentTypes")
            tenants.append(TenantConfig(tid.lower(), cts, str(item.get("cloud", default_cloud))))
        return tuple(tenants)
    out = []
    for tid in (t.strip() for t in raw.split(",") if t.strip()):
        if not is_guid(tid):
            raise SettingsError(f"{setting}: not a GUID: {tid!r}")
        out.append(TenantConfig(tid.lower(), CONTENT_TYPES, default_cloud))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the collector reads from its environment (defaults: ``SETTINGS``)."""

    tenants: tuple[TenantConfig, ...] = ()
    cloud: str = _default("AUDITLAKE_CLOUD")
    api_root: str | None = None
    graph_root: str | None = None
    publisher_id: str | None = None
    overlap: timedelta = timedelta(minutes=_default_number("AUDITLAKE_OVERLAP_MINUTES"))
    safety_lag: timedelta = timedelta(seconds=_default_number("AUDITLAKE_SAFETY_LAG_SECONDS"))
    sweep_every: timedelta = timedelta(hours=_default_number("AUDITLAKE_SWEEP_HOURS"))
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB
    max_blob_bytes: int = DEFAULT_MEMORY_BUDGET_MB * 1024 * 1024 // BLOB_MEMORY_FACTOR
    retry_attempts: int = int(_default_number("AUDITLAKE_RETRY_ATTEMPTS"))
    retry_base: float = _default_number("AUDITLAKE_RETRY_BASE_SECONDS")
    retry_max: float = _default_number("AUDITLAKE_RETRY_MAX_SECONDS")
    http_timeout: float = _default_number("AUDITLAKE_HTTP_TIMEOUT_SECONDS")
    concurrency: int = int(_default_number("AUDITLAKE_CONCURRENCY"))
    commit_records: int = int(_default_number("AUDITLAKE_COMMIT_RECORDS"))
    search_history_days: int = int(_default_number("AUDITLAKE_SEARCH_HISTORY_DAYS"))
    entra_streams: tuple[str, ...] = ()
    """Names of the Entra ID logs the Functions timer polls (``entra.streams.parse_streams`` reads them)."""
    """How many days back the Purview audit search backfill reaches (the Functions app's search timer)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        cloud = _text(env, "AUDITLAKE_CLOUD") or _default("AUDITLAKE_CLOUD")
        valid_clouds = ("Enterprise", "GCC", "GCCHigh", "DoD")
        matched = [c for c in valid_clouds if c.lower() == cloud.lower()]
        if not matched:
            raise SettingsError(f"AUDITLAKE_CLOUD: unknown cloud {cloud!r}; valid: {', '.join(valid_clouds)}")
        cloud = matched[0]
        api_root = _text(env, "AUDITLAKE_API_ROOT") or None
        if api_root is not None and not re.match(r"^https?://[^/]+", api_root):
            raise SettingsError(f"AUDITLAKE_API_ROOT: not an http(s) URL: {api_root!r}")
        graph_root = _text(env, "AUDITLAKE_GRAPH_ROOT") or None
        if graph_root is not None and not re.match(r"^https?://[^/]+", graph_root):
            raise SettingsError(f"AUDITLAKE_GRAPH_ROOT: not an http(s) URL: {graph_root!r}")
        budget_mb = int(_number(env, "AUDITLAKE_MEMORY_BUDGET_MB", minimum=64))
        # The largest blob that fits the budget on its own: a larger one could not be processed
        # without going past the memory the instance has, so it is refused (and failed, said so).
        fits = budget_mb * 1024 * 1024 // BLOB_MEMORY_FACTOR
        max_blob = int(_number(env, "AUDITLAKE_MAX_BLOB_BYTES", default=fits, minimum=1024))
        if max_blob > fits:
            raise SettingsError(
                f"AUDITLAKE_MAX_BLOB_BYTES: {max_blob} bytes needs about {BLOB_MEMORY_FACTOR}x that in memory, "
                f"more than AUDITLAKE_MEMORY_BUDGET_MB={budget_mb} allows (at most {fits}); "
                "raise the budget or lower the cap")
        publisher = _text(env, "AUDITLAKE_PUBLISHER_ID") or None
        if publisher is not None and not is_guid(publisher):
            raise SettingsError(f"AUDITLAKE_PUBLISHER_ID: not a GUID: {publisher!r}")
        return cls(
            tenants=parse_tenants(_text(env, "AUDITLAKE_TENANTS"), cloud),
            cloud=cloud,
            api_root=api_root.rstrip("/") if api_root else None,
            graph_root=graph_root.rstrip("/") if graph_root else None,
            publisher_id=publisher,
            overlap=timedelta(minutes=_number(env, "AUDITLAKE_OVERLAP_MINUTES")),
            safety_lag=timedelta(seconds=_number(env, "AUDITLAKE_SAFETY_LAG_SECONDS")),
            sweep_every=timedelta(hours=_number(env, "AUDITLAKE_SWEEP_HOURS", minimum=1)),
            memory_budget_mb=budget_mb,
            max_blob_bytes=max_blob,
            retry_attempts=int(_number(env, "AUDITLAKE_RETRY_ATTEMPTS", minimum=1)),
            retry_base=_number(env, "AUDITLAKE_RETRY_BASE_SECONDS"),
            retry_max=_number(env, "AUDITLAKE_RETRY_MAX_SECONDS"),
            http_timeout=_number(env, "AUDITLAKE_HTTP_TIMEOUT_SECONDS", minimum=1),
            concurrency=int(_number(env, "AUDITLAKE_CONCURRENCY", minimum=1)),
            commit_records=int(_number(env, "AUDITLAKE_COMMIT_RECORDS", minimum=1)),
            search_history_days=_whole(env, "AUDITLAKE_SEARCH_HISTORY_DAYS", minimum=2),
            entra_streams=_entra_streams(env),
        )


# -- Azure Functions settings -------------------------------------------------------------
#
# Read only by the Functions app (and `auditlake replay --azure`). Names that appear as
# ``%NAME%`` in a trigger binding (Scope.BINDING) are resolved by the Functions host itself,
# which has no default: Azure must set them (Bicep does), and the defaults in SETTINGS only
# apply to the Python side outside the host (replay, tests).

_QUEUE_OR_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_TABLE_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,51}$")
_ADX_DATABASE = re.compile(r"^[A-Za-z0-9_ .\-]{1,260}$")
_NCRONTAB_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?]+$")


def _http_url(env: Mapping[str, str], name: str, *, https_only: bool) -> str | None:
    value = _text(env, name)
    if not value:
        return None
    pattern = r"^https://[^/\s]+" if https_only else r"^https?://[^/\s]+"
    if not re.match(pattern, value):
        kind = "an https" if https_only else "an http(s)"
        raise SettingsError(f"{name}: not {kind} URL: {value!r}")
    return value.rstrip("/")


def adx_insecure_http_allowed(env: Mapping[str, str]) -> bool:
    """Whether ``ADX_ALLOW_INSECURE_HTTP`` accepts a plain ``http://`` ADX URI (used with no
    authentication: a local fake); SettingsError if it is neither true nor false."""
    return _flag(env, ADX_INSECURE_SETTING)


def _adx_uri(env: Mapping[str, str], name: str, *, allow_insecure: bool) -> str | None:
    """An ADX URI: https, or http (which the sink uses without authentication) only if allowed."""
    value = _http_url(env, name, https_only=False)
    if value is not None and value.startswith("http://") and not allow_insecure:
        raise SettingsError(
            f"{name}: {value!r} is plain http://, which is used without any authentication; use https://, "
            f"or set {ADX_INSECURE_SETTING}=true for a local fake ADX (test use only)")
    return value


def check_ncrontab(value: str, setting: str = COLLECT_SCHEDULE_SETTING) -> str:
    """*value* if it is a six-field NCRONTAB expression (seconds first), else SettingsError."""
    fields = value.split()
    if len(fields) != 6:
        raise SettingsError(
            f"{setting}: expected an NCRONTAB expression with six fields "
            f"(second minute hour day month day-of-week), got {value!r}"
        )
    for item in fields:
        if not _NCRONTAB_FIELD.match(item):
            raise SettingsError(f"{setting}: field {item!r} of {value!r} is not NCRONTAB")
    return " ".join(fields)


def _queue_or_container(env: Mapping[str, str], name: str, *, reserve: int = 0) -> str:
    value = _text(env, name) or _default(name)
    # Storage rules: 3-63 lower-case letters, digits and single inner hyphens.
    if not _QUEUE_OR_CONTAINER.match(value) or len(value) + reserve > 63:
        extra = f" and at most {63 - reserve} characters (the host appends {POISON_SUFFIX!r})" if reserve else ""
        raise SettingsError(
            f"{name}: {value!r} is not a valid name: 3-63 lower-case letters, digits and single hyphens, "
            f"starting and ending with a letter or digit{extra}"
        )
    return value


@dataclass(frozen=True, slots=True)
class StorageConnection:
    """How to reach the app's storage account: a connection string (Azurite, local runs) or,
    in Azure, service URIs and a managed identity (``AzureWebJobsStorage__*``, no keys)."""

    connection_string: str | None = None
    queue_service_uri: str | None = None
    blob_service_uri: str | None = None
    table_service_uri: str | None = None
    client_id: str | None = None
    managed_identity: bool = False

    @property
    def identity_based(self) -> bool:
        return self.connection_string is None

    def __repr__(self) -> str:
        # A connection string carries the account key: never print it.
        if self.connection_string is not None:
            return "StorageConnection(connection_string=<redacted>)"
        return (f"StorageConnection(queue={self.queue_service_uri}, blob={self.blob_service_uri}, "
                f"table={self.table_service_uri}, client_id={self.client_id}, "
                f"managed_identity={self.managed_identity})")

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str = STORAGE_SETTING) -> StorageConnection:
        """The connection named *prefix*, the way the Functions host reads it; SettingsError if absent."""
        conn = _text(env, prefix)
        if conn:
            parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
            if not parts:
                raise SettingsError(f"{prefix}: not a storage connection string")
            return cls(connection_string=conn)
        account = _text(env, f"{prefix}__accountName")
        uris: dict[str, str | None] = {}
        for service in ("queue", "blob", "table"):
            setting = f"{prefix}__{service}ServiceUri"
            uri = _http_url(env, setting, https_only=False)
            if uri is None and account:
                uri = f"https://{account}.{service}.core.windows.net"
            if uri is None:
                raise SettingsError(
                    f"{setting}: required for an identity-based connection (or set {prefix} to a "
                    f"connection string, or {prefix}__accountName)"
                )
            uris[service] = uri
        credential = _text(env, f"{prefix}__credential").lower()
        if credential not in ("", "managedidentity"):
            raise SettingsError(f"{prefix}__credential: only 'managedidentity' is supported, got {credential!r}")
        client_id = _text(env, f"{prefix}__clientId") or None
        if client_id is not None and not is_guid(client_id):
            raise SettingsError(f"{prefix}__clientId: not a GUID: {client_id!r}")
        return cls(queue_service_uri=uris["queue"], blob_service_uri=uris["blob"], table_service_uri=uris["table"],
                   client_id=client_id, managed_identity=credential == "managedidentity")


@dataclass(frozen=True, slots=True)
class AzureSettings:
    """What the Functions app needs beyond ``Settings``: storage, queue, schedule, ADX, state."""

    storage: StorageConnection
    adx_ingest_uri: str
    adx_database: str
    content_queue: str = DEFAULT_CONTENT_QUEUE
    collect_schedule: str = DEFAULT_COLLECT_SCHEDULE
    search_schedule: str = DEFAULT_SEARCH_SCHEDULE
    entra_schedule: str = DEFAULT_ENTRA_SCHEDULE
    adx_streaming: bool = _default_flag("ADX_STREAMING")
    adx_engine_uri: str | None = None
    adx_client_id: str | None = None
    state_table_prefix: str = DEFAULT_STATE_TABLE_PREFIX
    deadletter_container: str = DEFAULT_DEADLETTER_CONTAINER
    requeue_after: timedelta = timedelta(minutes=_default_number("AUDITLAKE_REQUEUE_AFTER_MINUTES"))
    claim_lease: timedelta = timedelta(minutes=_default_number("AUDITLAKE_CLAIM_LEASE_MINUTES"))
    adx_allow_insecure_http: bool = _default_flag(ADX_INSECURE_SETTING)
    """An ``http://`` ADX URI (no authentication: a local fake) was allowed explicitly."""

    @property
    def poison_queue(self) -> str:
        """The queue the Functions host moves a message to after maxDequeueCount failures."""
        return self.content_queue + POISON_SUFFIX

    @property
    def checkpoints_table(self) -> str:
        return f"{self.state_table_prefix}Checkpoints"

    @property
    def ledger_table(self) -> str:
        return f"{self.state_table_prefix}Ledger"

    @property
    def runs_table(self) -> str:
        return f"{self.state_table_prefix}Runs"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AzureSettings:
        """Validate and read every Azure setting; SettingsError names the first bad one."""
        storage = StorageConnection.from_env(env)
        allow_insecure = adx_insecure_http_allowed(env)
        ingest = _adx_uri(env, "ADX_INGEST_URI", allow_insecure=allow_insecure)
        if ingest is None:
            raise SettingsError("ADX_INGEST_URI: required (the cluster's data-management URI, "
                                "https://ingest-<cluster>.<region>.kusto.windows.net)")
        database = _text(env, "ADX_DATABASE")
        if not database:
            raise SettingsError("ADX_DATABASE: required")
        if not _ADX_DATABASE.match(database):
            raise SettingsError(f"ADX_DATABASE: not a database name: {database!r}")
        adx_client_id = _text(env, "ADX_CLIENT_ID") or None
        if adx_client_id is not None and not is_guid(adx_client_id):
            raise SettingsError(f"ADX_CLIENT_ID: not a GUID: {adx_client_id!r}")
        engine = _adx_uri(env, "ADX_ENGINE_URI", allow_insecure=allow_insecure)
        prefix = _text(env, "STATE_TABLE_PREFIX") or _default("STATE_TABLE_PREFIX")
        if not _TABLE_PREFIX.match(prefix):
            raise SettingsError(f"STATE_TABLE_PREFIX: {prefix!r} must be a letter then up to 51 letters or digits "
                                "(table names are the prefix plus Checkpoints, Ledger, Runs)")
        requeue = _number(env, "AUDITLAKE_REQUEUE_AFTER_MINUTES")
        lease = _number(env, "AUDITLAKE_CLAIM_LEASE_MINUTES")
        if requeue <= 0:
            raise SettingsError("AUDITLAKE_REQUEUE_AFTER_MINUTES: must be more than 0")
        if lease <= 0:
            raise SettingsError("AUDITLAKE_CLAIM_LEASE_MINUTES: must be more than 0")
        insecure = [name for name, uri in (("ADX_INGEST_URI", ingest), ("ADX_ENGINE_URI", engine))
                    if uri is not None and uri.startswith("http://")]
        if insecure:
            # Loud on purpose: nothing authenticates to this "cluster", and a real one never speaks http.
            log.warning("%s %s http://: no authentication, test use only (%s=true)",
                        " and ".join(insecure), "is" if len(insecure) == 1 else "are", ADX_INSECURE_SETTING)
        return cls(
            storage=storage,
            adx_ingest_uri=ingest,
            adx_database=database,
            content_queue=_queue_or_container(env, CONTENT_QUEUE_SETTING, reserve=len(POISON_SUFFIX)),
            collect_schedule=check_ncrontab(_text(env, COLLECT_SCHEDULE_SETTING) or _default(COLLECT_SCHEDULE_SETTING)),
            search_schedule=check_ncrontab(_text(env, SEARCH_SCHEDULE_SETTING) or _default(SEARCH_SCHEDULE_SETTING),
                                           SEARCH_SCHEDULE_SETTING),
            entra_schedule=check_ncrontab(_text(env, ENTRA_SCHEDULE_SETTING) or _default(ENTRA_SCHEDULE_SETTING),
                                          ENTRA_SCHEDULE_SETTING),
            adx_streaming=_flag(env, "ADX_STREAMING"),
            adx_engine_uri=engine,
            adx_client_id=adx_client_id,
            state_table_prefix=prefix,
            deadletter_container=_queue_or_container(env, "DEADLETTER_CONTAINER"),
            requeue_after=timedelta(minutes=requeue),
            claim_lease=timedelta(minutes=lease),
            adx_allow_insecure_http=allow_insecure,
        )


@dataclass(frozen=True, slots=True)
class AppSettings:
    """Everything the Functions app reads: the collector's settings and the Azure ones."""

    core: Settings
    azure: AzureSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AppSettings:
        """Both parts, validated; the Functions app also needs at least one tenant."""
        core = Settings.from_env(env)
        if not core.tenants:
            raise SettingsError("AUDITLAKE_TENANTS: no tenant configured (a comma list of tenant GUIDs, or JSON)")
        return cls(core, AzureSettings.from_env(env))


_app_settings: AppSettings | None = None


def app_settings(env: Mapping[str, str] | None = None) -> AppSettings:
    """The Functions app's settings, read from the process environment once and cached.

    With *env*, reads that mapping instead and caches nothing. Raises SettingsError naming
    the first bad setting (and keeps raising it on every call until the setting is fixed).
    """
    global _app_settings
    if env is not None:
        return AppSettings.from_env(env)
    if _app_settings is None:
        _app_settings = AppSettings.from_env(os.environ)
    return _app_settings


def reset_app_settings() -> None:
    """Forget the cached settings (tests that change the environment)."""
    global _app_settings
    _app_settings = None
