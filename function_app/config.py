"""Settings, built once from the environment, failing fast with the setting's name.

The CLI overrides some of these with flags; the Functions app reads them from app settings
(every name here is declared in infra/, and a contract test keeps the two in step).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import orjson

from function_app.core.budget import BLOB_MEMORY_FACTOR
from function_app.core.model import CONTENT_TYPES

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


def is_guid(value: str) -> bool:
    return bool(_GUID.match(value))


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
    cloud: str = "Enterprise"


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


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {raw!r}")
    return value


DEFAULT_MEMORY_BUDGET_MB = 1536
"""Memory the blobs in flight may hold together (core.budget): a 2,048 MB Flex Consumption
instance less ~512 MB for the worker, the SDKs and the runtime. Bicep sets it from the
instance size; the blob size cap follows from it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the collector reads from its environment."""

    tenants: tuple[TenantConfig, ...] = ()
    cloud: str = "Enterprise"
    api_root: str | None = None
    publisher_id: str | None = None
    overlap: timedelta = timedelta(hours=1)
    safety_lag: timedelta = timedelta(seconds=30)
    sweep_every: timedelta = timedelta(hours=24)
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB
    max_blob_bytes: int = DEFAULT_MEMORY_BUDGET_MB * 1024 * 1024 // BLOB_MEMORY_FACTOR
    retry_attempts: int = 8
    retry_base: float = 0.5
    retry_max: float = 60.0
    http_timeout: float = 120.0
    concurrency: int = 32
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        cloud = env.get("AUDITLAKE_CLOUD", "Enterprise").strip() or "Enterprise"
        valid_clouds = ("Enterprise", "GCC", "GCCHigh", "DoD")
        matched = [c for c in valid_clouds if c.lower() == cloud.lower()]
        if not matched:
            raise SettingsError(f"AUDITLAKE_CLOUD: unknown cloud {cloud!r}; valid: {', '.join(valid_clouds)}")
        cloud = matched[0]
        api_root = env.get("AUDITLAKE_API_ROOT", "").strip() or None
        if api_root is not None and not re.match(r"^https?://[^/]+", api_root):
            raise SettingsError(f"AUDITLAKE_API_ROOT: not an http(s) URL: {api_root!r}")
        budget_mb = int(_number(env, "AUDITLAKE_MEMORY_BUDGET_MB", DEFAULT_MEMORY_BUDGET_MB, minimum=64))
        # The largest blob that fits the budget on its own: a larger one could not be processed
        # without going past the memory the instance has, so it is refused (and failed, said so).
        fits = budget_mb * 1024 * 1024 // BLOB_MEMORY_FACTOR
        max_blob = int(_number(env, "AUDITLAKE_MAX_BLOB_BYTES", fits, minimum=1024))
        if max_blob > fits:
            raise SettingsError(
                f"AUDITLAKE_MAX_BLOB_BYTES: {max_blob} bytes needs about {BLOB_MEMORY_FACTOR}x that in memory, "
                f"more than AUDITLAKE_MEMORY_BUDGET_MB={budget_mb} allows (at most {fits}); "
                "raise the budget or lower the cap")
        publisher = env.get("AUDITLAKE_PUBLISHER_ID", "").strip() or None
        if publisher is not None and not is_guid(publisher):
            raise SettingsError(f"AUDITLAKE_PUBLISHER_ID: not a GUID: {publisher!r}")
        return cls(
            tenants=parse_tenants(env.get("AUDITLAKE_TENANTS", ""), cloud),
            cloud=cloud,
            api_root=api_root.rstrip("/") if api_root else None,
            publisher_id=publisher,
            overlap=timedelta(minutes=_number(env, "AUDITLAKE_OVERLAP_MINUTES", 60)),
            safety_lag=timedelta(seconds=_number(env, "AUDITLAKE_SAFETY_LAG_SECONDS", 30)),
            sweep_every=timedelta(hours=_number(env, "AUDITLAKE_SWEEP_HOURS", 24, minimum=1)),
            memory_budget_mb=budget_mb,
            max_blob_bytes=max_blob,
            retry_attempts=int(_number(env, "AUDITLAKE_RETRY_ATTEMPTS", 8, minimum=1)),
            retry_base=_number(env, "AUDITLAKE_RETRY_BASE_SECONDS", 0.5),
            retry_max=_number(env, "AUDITLAKE_RETRY_MAX_SECONDS", 60),
            http_timeout=_number(env, "AUDITLAKE_HTTP_TIMEOUT_SECONDS", 120, minimum=1),
            concurrency=int(_number(env, "AUDITLAKE_CONCURRENCY", 32, minimum=1)),
        )


# -- Azure Functions settings -------------------------------------------------------------
#
# Read only by the Functions app (and `auditlake replay --azure`). Names that appear as
# ``%NAME%`` in a trigger binding are resolved by the Functions host itself, so they must be
# real app settings; the defaults below only apply to the Python side.

STORAGE_SETTING = "AzureWebJobsStorage"
CONTENT_QUEUE_SETTING = "CONTENT_QUEUE"
COLLECT_SCHEDULE_SETTING = "COLLECT_SCHEDULE"

DEFAULT_CONTENT_QUEUE = "content"
DEFAULT_COLLECT_SCHEDULE = "0 */2 * * * *"
DEFAULT_STATE_TABLE_PREFIX = "AuditLake"
DEFAULT_DEADLETTER_CONTAINER = "deadletter"
POISON_SUFFIX = "-poison"

# Every app setting the Azure side reads, for the contract tests (bindings, infra/).
AZURE_SETTING_NAMES: frozenset[str] = frozenset({
    STORAGE_SETTING,
    f"{STORAGE_SETTING}__accountName",
    f"{STORAGE_SETTING}__queueServiceUri",
    f"{STORAGE_SETTING}__blobServiceUri",
    f"{STORAGE_SETTING}__tableServiceUri",
    f"{STORAGE_SETTING}__credential",
    f"{STORAGE_SETTING}__clientId",
    CONTENT_QUEUE_SETTING,
    COLLECT_SCHEDULE_SETTING,
    "ADX_INGEST_URI",
    "ADX_ENGINE_URI",
    "ADX_DATABASE",
    "ADX_STREAMING",
    "ADX_CLIENT_ID",
    "STATE_TABLE_PREFIX",
    "DEADLETTER_CONTAINER",
    "AUDITLAKE_REQUEUE_AFTER_MINUTES",
    "AUDITLAKE_CLAIM_LEASE_MINUTES",
})

_QUEUE_OR_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_TABLE_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,51}$")
_ADX_DATABASE = re.compile(r"^[A-Za-z0-9_ .\-]{1,260}$")
_NCRONTAB_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?]+$")
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off", ""}


def _text(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _http_url(env: Mapping[str, str], name: str, *, https_only: bool) -> str | None:
    value = _text(env, name)
    if not value:
        return None
    pattern = r"^https://[^/\s]+" if https_only else r"^https?://[^/\s]+"
    if not re.match(pattern, value):
        kind = "an https" if https_only else "an http(s)"
        raise SettingsError(f"{name}: not {kind} URL: {value!r}")
    return value.rstrip("/")


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


def _queue_or_container(env: Mapping[str, str], name: str, default: str, *, reserve: int = 0) -> str:
    value = _text(env, name) or default
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
    adx_streaming: bool = False
    adx_engine_uri: str | None = None
    adx_client_id: str | None = None
    state_table_prefix: str = DEFAULT_STATE_TABLE_PREFIX
    deadletter_container: str = DEFAULT_DEADLETTER_CONTAINER
    requeue_after: timedelta = timedelta(minutes=60)
    claim_lease: timedelta = timedelta(minutes=11)

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
        ingest = _http_url(env, "ADX_INGEST_URI", https_only=False)
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
        prefix = _text(env, "STATE_TABLE_PREFIX") or DEFAULT_STATE_TABLE_PREFIX
        if not _TABLE_PREFIX.match(prefix):
            raise SettingsError(f"STATE_TABLE_PREFIX: {prefix!r} must be a letter then up to 51 letters or digits "
                                "(table names are the prefix plus Checkpoints, Ledger, Runs)")
        requeue = _number(env, "AUDITLAKE_REQUEUE_AFTER_MINUTES", 60)
        lease = _number(env, "AUDITLAKE_CLAIM_LEASE_MINUTES", 11)
        if requeue <= 0:
            raise SettingsError("AUDITLAKE_REQUEUE_AFTER_MINUTES: must be more than 0")
        if lease <= 0:
            raise SettingsError("AUDITLAKE_CLAIM_LEASE_MINUTES: must be more than 0")
        return cls(
            storage=storage,
            adx_ingest_uri=ingest,
            adx_database=database,
            content_queue=_queue_or_container(env, CONTENT_QUEUE_SETTING, DEFAULT_CONTENT_QUEUE,
                                              reserve=len(POISON_SUFFIX)),
            collect_schedule=check_ncrontab(_text(env, COLLECT_SCHEDULE_SETTING) or DEFAULT_COLLECT_SCHEDULE),
            adx_streaming=_flag(env, "ADX_STREAMING", False),
            adx_engine_uri=_http_url(env, "ADX_ENGINE_URI", https_only=False),
            adx_client_id=adx_client_id,
            state_table_prefix=prefix,
            deadletter_container=_queue_or_container(env, "DEADLETTER_CONTAINER", DEFAULT_DEADLETTER_CONTAINER),
            requeue_after=timedelta(minutes=requeue),
            claim_lease=timedelta(minutes=lease),
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
