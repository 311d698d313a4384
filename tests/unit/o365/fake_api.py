"""A scripted stand-in for the Management Activity API: each request gets the next reply in line.

It records every request exactly as it arrived (method, raw path and query, headers), so tests can
check what the client sent byte for byte.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy, MultiMapping

from function_app.core.budget import MemoryBudget
from function_app.o365.auth import StaticTokenProvider
from function_app.o365.client import ManagementApiClient
from function_app.o365.retry import RetryPolicy

TENANT = "41463f53-8812-40f4-890f-865bf6e35190"
PUBLISHER = "9c2a5b8e-0000-4c3e-9f00-5e2b6a7d1c40"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOi.secret-bearer-token.signature"


@dataclass
class Reply:
    """One scripted answer. ``cut_after`` sends a Content-Length for the whole body, then only
    that many bytes and closes the connection; ``chunked`` streams without a Content-Length."""

    status: int = 200
    body: bytes = b"[]"
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None
    chunked: bool = False


def json_reply(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, orjson.dumps(value), headers or {})


def af_reply(code: str, status: int = 400, message: str = "scripted error") -> Reply:
    return json_reply({"error": {"code": code, "message": message}}, status)


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str
    query: MultiMapping[str]
    headers: CIMultiDictProxy[str]


class FakeApi:
    """Answers requests from a queue of replies; an empty queue answers 599 so a test notices."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = deque(replies)
        self.seen: list[Seen] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.raw_path, request.query, request.headers))
        await request.read()
        if not self.replies:
            return web.Response(status=599, text="no scripted reply left")
        reply = self.replies.popleft()
        if reply.cut_after is not None:
            response = web.StreamResponse(status=reply.status, headers=reply.headers)
            response.content_length = len(reply.body)
            await response.prepare(request)
            await response.write(reply.body[: reply.cut_after])
            assert request.transport is not None
            request.transport.close()
            return response
        if reply.chunked:
            response = web.StreamResponse(status=reply.status, headers=reply.headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(reply.body), 1000):
                await response.write(reply.body[start : start + 1000])
            await response.write_eof()
            return response
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


@dataclass
class Harness:
    api: FakeApi
    client: ManagementApiClient
    root: str
    sleeps: list[float]

    def blob_uri(self, content_id: str) -> str:
        return f"{self.root}/{TENANT}/activity/feed/audit/{content_id}"

    def feed_url(self, tail: str) -> str:
        return f"{self.root}/{TENANT}/activity/feed/{tail}"


@asynccontextmanager
async def harness(
    replies: list[Reply], *, max_blob_bytes: int | None = None, memory: MemoryBudget | None = None,
    memory_wait: float | None = None, timeout: float = 10, **policy: Any
) -> AsyncIterator[Harness]:
    api = FakeApi(replies)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(float(seconds))

    options: dict[str, Any] = {"max_attempts": 4, "base_delay": 0.01, "max_delay": 0.05, "jitter": False}
    options.update(policy)
    retry = RetryPolicy(sleep=fake_sleep, **options)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        root = str(server.make_url("/api/v1.0"))
        client = ManagementApiClient(
            session,
            api_root=root,
            publisher_id=PUBLISHER,
            tokens=StaticTokenProvider(TOKEN),
            retry=retry,
            timeout=timeout,
            max_blob_bytes=max_blob_bytes,
            memory=memory,
            memory_factor=1,
            memory_wait=memory_wait,
        )
        yield Harness(api, client, root, sleeps)
