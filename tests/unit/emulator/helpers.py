"""A small HTTP client and runner for talking to the emulator over real sockets in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import orjson

import tests.fakes
from auditlake.emulator import EmulatorServer
from function_app.core.model import CONTENT_TYPES, iso_z

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
TENANT = "5b2c3c1e-1111-4a4a-9a9a-0123456789ab"
PUBLISHER = "9f0e1d2c-3b4a-4596-8877-665544332211"
T = TypeVar("T")


class FakeClock(tests.fakes.FakeClock):
    """A settable server clock, starting at NOW."""

    def __init__(self, now: datetime = NOW) -> None:
        super().__init__(now)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def code(self) -> str | None:
        try:
            return str(self.json()["error"]["code"])
        except Exception:
            return None

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class Api:
    """Just enough of a Management Activity API client: correct, case-insensitive, verbatim paging."""

    def __init__(self, emu: EmulatorServer, session: aiohttp.ClientSession, tenant: str = TENANT) -> None:
        self.emu = emu
        self.session = session
        self.tenant = tenant
        self.feed = f"{emu.api_root}/{tenant}/activity/feed"
        self.header_names: list[str] = []

    async def call(
        self,
        method: str,
        url: str,
        params: dict[str, str] | None = None,
        *,
        token: str | None = "token",
        publisher: str | None = PUBLISHER,
    ) -> Reply:
        params = dict(params or {})
        if publisher:
            params["PublisherIdentifier"] = publisher
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, url, params=params, headers=headers) as resp:
            body = await resp.read()
            return Reply(resp.status, {k: v for k, v in resp.headers.items()}, body)

    async def start(self, content_type: str) -> Reply:
        return await self.call("POST", f"{self.feed}/subscriptions/start", {"contentType": content_type})

    async def start_all(self) -> None:
        for ct in CONTENT_TYPES:
            reply = await self.start(ct)
            assert reply.status == 200 or reply.code == "AF20024", reply.body

    async def stop(self, content_type: str) -> Reply:
        return await self.call("POST", f"{self.feed}/subscriptions/stop", {"contentType": content_type})

    async def list_page(
        self, content_type: str, start: str | None, end: str | None, *, kind: str = "content", **kw: Any
    ) -> Reply:
        params = {"contentType": content_type}
        if start is not None:
            params["startTime"] = start
        if end is not None:
            params["endTime"] = end
        return await self.call("GET", f"{self.feed}/subscriptions/{kind}", params, **kw)

    async def list_all(
        self, content_type: str, start: datetime, end: datetime, *, retries: int = 0, kind: str = "content"
    ) -> tuple[list[dict[str, Any]], int]:
        """Every item of one window, following NextPageUri verbatim; returns (items, pages)."""
        items: list[dict[str, Any]] = []
        pages = 0
        next_url: str | None = None
        while True:
            for _ in range(retries + 1):
                if next_url is None:
                    reply = await self.list_page(content_type, iso_z(start), iso_z(end), kind=kind)
                else:
                    reply = await self.call("GET", next_url)
                if not _transient(reply):
                    break
            assert reply.status == 200, reply.body
            pages += 1
            items.extend(reply.json())
            next_url = None
            for key, value in reply.headers.items():
                if key.lower() == "nextpageuri":
                    self.header_names.append(key)
                    next_url = value
            if next_url is None:
                return items, pages

    async def fetch(self, uri: str, *, retries: int = 0) -> Reply:
        reply = await self.call("GET", uri)
        for _ in range(retries):
            if not _transient(reply) and _parses(reply):
                break
            reply = await self.call("GET", uri)
        return reply

    async def control(self, path: str, params: dict[str, str] | None = None) -> Reply:
        async with self.session.get(f"{self.emu.base_url}/_emulator/{path}", params=params or {}) as resp:
            return Reply(resp.status, dict(resp.headers), await resp.read())


def _transient(reply: Reply) -> bool:
    return reply.status in (429, 500, 503) or reply.code == "AF429"


def _parses(reply: Reply) -> bool:
    try:
        reply.json()
    except orjson.JSONDecodeError:
        return False
    return True


def run(
    body: Callable[[EmulatorServer, Api], Awaitable[T]],
    *,
    clock: FakeClock | None = None,
    **server_kwargs: Any,
) -> T:
    """Start an emulator (quiet, small, fake clock unless overridden), run *body* against it, stop it."""
    server_kwargs.setdefault("scenario", "quiet")
    server_kwargs.setdefault("records_per_day", 200)
    server_kwargs.setdefault("seed", 11)

    async def main() -> T:
        async with (
            EmulatorServer([TENANT], clock=clock or FakeClock(), **server_kwargs) as emu,
            aiohttp.ClientSession() as session,
        ):
            return await body(emu, Api(emu, session))

    return asyncio.run(main())


def windows(now: datetime, days: int = 7) -> list[tuple[datetime, datetime]]:
    """Consecutive 24 h windows covering the last *days* days up to just after *now*."""
    end = now + timedelta(milliseconds=1)
    start = now - timedelta(days=days)
    out: list[tuple[datetime, datetime]] = []
    while start < end:
        stop = min(start + timedelta(hours=24), end)
        out.append((start, stop))
        start = stop
    return out
