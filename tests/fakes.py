"""Fakes at the leaves: an in-memory Management API for core timeline tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from function_app.core.errors import ApiError, ContentExpiredError, SubscriptionMissingError
from function_app.core.model import ContentBlob, FetchedContent


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class FakeApi:
    """Serves blobs by contentCreated like the real API; hidden blobs appear when revealed."""

    clock: FakeClock
    page_size: int = 2
    blobs: list[ContentBlob] = field(default_factory=list)
    records: dict[str, list[Any]] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)
    subscribed: bool = True
    list_calls: list[tuple[datetime, datetime]] = field(default_factory=list)
    fail_listing_after: int | None = None
    expired: set[str] = field(default_factory=set)
    started: int = 0

    def add(self, tenant: str, ctype: str, cid: str, created: datetime, records: list[Any]) -> ContentBlob:
        blob = ContentBlob(tenant, ctype, cid, f"https://manage.office.com/api/v1.0/{tenant}/activity/feed/audit/{cid}",
                           created, created + timedelta(days=7))
        self.blobs.append(blob)
        self.records[cid] = records
        return blob

    async def start_subscription(self, tenant_id: str, content_type: str) -> None:
        self.started += 1
        self.subscribed = True

    async def list_content(
        self, tenant_id: str, content_type: str, start: datetime, end: datetime
    ) -> AsyncIterator[list[ContentBlob]]:
        if not self.subscribed:
            raise SubscriptionMissingError("No subscription found", code="AF20022", status=400)
        assert end - start <= timedelta(hours=24), "window over 24 h"
        assert start >= self.clock() - timedelta(days=7), "start more than 7 days back"
        self.list_calls.append((start, end))
        if self.fail_listing_after is not None and len(self.list_calls) > self.fail_listing_after:
            raise ApiError("boom", code="AF50000", status=500)
        hits = [b for b in self.blobs
                if b.tenant_id == tenant_id and b.content_type == content_type
                and start <= b.content_created < end and b.content_created <= self.clock()
                and b.content_id not in self.hidden]
        for i in range(0, len(hits), self.page_size):
            yield hits[i:i + self.page_size]

    async def fetch_content(self, tenant_id: str, content_uri: str) -> FetchedContent:
        cid = content_uri.rsplit("/", 1)[1]
        if cid in self.expired:
            raise ContentExpiredError(f"Content requested with the key {cid} has already expired.",
                                      code="AF20051", status=400)
        recs = self.records[cid]
        return FetchedContent(recs, size=len(str(recs)))
