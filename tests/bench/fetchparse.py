"""The e2e bench's yardstick: list and fetch+parse the same blobs from the same emulator, nothing else.

Run in a process of its own (``python -m tests.bench.run --part fetchparse``) after ``collect --once``
has filled the lake: it lists the feed's last 7 days for every content type with the project's own
``ManagementApiClient`` (built as ``collect`` builds it: the default settings' retry policy, timeout,
blob cap, memory budget and the local lake's memory factor), then fetches and parses every listed blob
that the collector's ledger holds, ``concurrency`` at a time (the collector's default). No flatten, no
write. The time is the listing plus the fetches, from the first request to the last answer parsed; the
record identities the emulator served are gathered outside that time (their cost is subtracted).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

LIST_WINDOW = timedelta(hours=24)
FEED_DAYS = 7


async def fetch_and_parse(api_root: str, tenant: str, wanted: set[str] | None) -> dict[str, Any]:
    """List 7 days of every content type and fetch+parse each blob (only those in *wanted* when given)."""
    import os

    import aiohttp

    from function_app.config import Settings
    from function_app.core.budget import LAKE_BLOB_MEMORY_FACTOR, MemoryBudget
    from function_app.core.model import CONTENT_TYPES, ContentBlob
    from function_app.o365.auth import StaticTokenProvider
    from function_app.o365.client import ManagementApiClient
    from function_app.o365.retry import RetryPolicy

    settings = Settings.from_env({**os.environ, "AUDITLAKE_API_TOKEN": "bench", "AUDITLAKE_TENANTS": tenant})
    concurrency = settings.concurrency
    ids: set[str] = set()
    keys: set[tuple[str, int, str]] = set()
    key_seconds = 0.0
    records = blobs = 0
    listed: list[ContentBlob] = []
    connector = aiohttp.TCPConnector(limit=max(16, concurrency * 2))
    async with aiohttp.ClientSession(connector=connector) as session:
        client = ManagementApiClient(
            session, api_root=api_root, publisher_id=tenant, tokens=StaticTokenProvider("bench"),
            retry=RetryPolicy(max_attempts=settings.retry_attempts, base_delay=settings.retry_base,
                              max_delay=settings.retry_max),
            timeout=settings.http_timeout, max_blob_bytes=settings.max_blob_bytes, keep_body=False,
            memory=MemoryBudget(settings.memory_budget_mb * 1024 * 1024), memory_factor=LAKE_BLOB_MEMORY_FACTOR)
        for content_type in CONTENT_TYPES:  # collect started them; "already enabled" is success
            await client.start_subscription(tenant, content_type)
        started = time.perf_counter()
        now = datetime.now(UTC).replace(microsecond=0)
        start = now - timedelta(days=FEED_DAYS) + timedelta(minutes=1)
        for content_type in CONTENT_TYPES:
            cursor = start
            while cursor < now:
                end = min(cursor + LIST_WINDOW, now)
                async for page in client.list_content(tenant, content_type, cursor, end):
                    listed.extend(page)
                cursor = end
        listing = time.perf_counter() - started
        todo = [b for b in listed if wanted is None or b.content_id in wanted]
        queue: asyncio.Queue[ContentBlob] = asyncio.Queue()
        for blob in todo:
            queue.put_nowait(blob)

        async def worker() -> None:
            nonlocal records, blobs, key_seconds
            while True:
                try:
                    blob = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                fetched = await client.fetch_content(tenant, blob.content_uri)
                fetched.reservation.release()
                records += len(fetched.records)
                blobs += 1
                t0 = time.perf_counter()
                for r in fetched.records:
                    if isinstance(r, dict):
                        ids.add(str(r.get("Id")))
                        keys.add((str(r.get("Id")), int(r.get("RecordType") or 0), str(r.get("Operation"))))
                key_seconds += time.perf_counter() - t0

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started - key_seconds
    return {"listed": len(listed), "blobs": blobs, "records": records, "distinct_ids": len(ids),
            "distinct_keys": len(keys), "seconds": round(elapsed, 2), "concurrency": concurrency,
            "records_per_s": round(records / elapsed), "list_seconds": round(listing, 2),
            "not_in_ledger": len(listed) - len(todo),
            "ledger_not_listed": 0 if wanted is None else len(wanted - {b.content_id for b in listed})}
