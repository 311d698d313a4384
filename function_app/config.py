"""Settings, built once from the environment, failing fast with the setting's name.

The CLI overrides some of these with flags; the Functions app reads them from app settings
(every name here is declared in infra/, and a contract test keeps the two in step).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import orjson

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
    max_blob_bytes: int = 256 * 1024 * 1024
    retry_attempts: int = 8
    retry_base: float = 0.5
    retry_max: float = 60.0
    http_timeout: float = 120.0
    concurrency: int = 8
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
            max_blob_bytes=int(_number(env, "AUDITLAKE_MAX_BLOB_BYTES", 256 * 1024 * 1024, minimum=1024)),
            retry_attempts=int(_number(env, "AUDITLAKE_RETRY_ATTEMPTS", 8, minimum=1)),
            retry_base=_number(env, "AUDITLAKE_RETRY_BASE_SECONDS", 0.5),
            retry_max=_number(env, "AUDITLAKE_RETRY_MAX_SECONDS", 60),
            http_timeout=_number(env, "AUDITLAKE_HTTP_TIMEOUT_SECONDS", 120, minimum=1),
            concurrency=int(_number(env, "AUDITLAKE_CONCURRENCY", 8, minimum=1)),
        )
