"""Builds the local pipeline's parts from Settings: the one place adapters meet the core."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp

from function_app.config import Settings
from function_app.core.budget import MemoryBudget
from function_app.core.model import ContentBlob
from function_app.o365.auth import TokenProvider, token_provider_from_env
from function_app.o365.client import ManagementApiClient
from function_app.o365.clouds import Cloud
from function_app.o365.retry import RetryPolicy
from function_app.records.flatten import BlobContext
from function_app.records.tables import flatten_tables


def utcnow() -> datetime:
    return datetime.now(UTC)


def build_rows(
    records: list[Any], blob: ContentBlob, fetched_at: datetime
) -> Mapping[str, Sequence[Mapping[str, Any]]]:
    """The rows of every table built from one blob's records: ``AuditRecord`` (one row per record),
    ``MailItemAccess``, ``DirectoryChange``, ``SignIn`` and ``SchemaObservation``; never raises on
    record content."""
    ctx = BlobContext(
        tenant_id=blob.tenant_id,
        content_type=blob.content_type,
        content_id=blob.content_id,
        content_created=blob.content_created,
        ingested_at=fetched_at,
    )
    return flatten_tables(records, ctx)


def api_root_for(settings: Settings) -> str:
    return settings.api_root or Cloud.parse(settings.cloud).api_root


@asynccontextmanager
async def management_client(
    settings: Settings,
    tenant_ids: Sequence[str],
    *,
    tokens: TokenProvider | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[ManagementApiClient]:
    """A ready client for *settings*; the session closes when the context ends."""
    cloud = Cloud.parse(settings.cloud)
    provider = tokens or token_provider_from_env(env if env is not None else os.environ, cloud)
    publisher = settings.publisher_id or (tenant_ids[0] if tenant_ids else "")
    retry = RetryPolicy(
        max_attempts=settings.retry_attempts, base_delay=settings.retry_base, max_delay=settings.retry_max
    )
    connector = aiohttp.TCPConnector(limit=max(16, settings.concurrency * 2))
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            yield ManagementApiClient(
                session,
                api_root=api_root_for(settings),
                publisher_id=publisher,
                tokens=provider,
                retry=retry,
                timeout=settings.http_timeout,
                max_blob_bytes=settings.max_blob_bytes,
                memory=MemoryBudget(settings.memory_budget_mb * 1024 * 1024),
            )
    finally:
        # azure-identity credentials hold their own HTTP sessions.
        close = getattr(provider, "close", None)
        if close is not None:
            await close()
