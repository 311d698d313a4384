"""The search client's error answers: a permission is named, a missing API is one line, 429 waits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from function_app.core.errors import PermanentApiError
from function_app.o365.auth import StaticTokenProvider
from function_app.o365.retry import RetryPolicy
from function_app.purview.client import PurviewSearchClient, QueryGoneError, QueryStatus, SearchUnavailableError

T0 = datetime(2026, 9, 5, tzinfo=UTC)
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _with_server(routes: dict[tuple[str, str], Handler], go: Callable[[PurviewSearchClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        app = web.Application()
        for (method, path), handler in routes.items():
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                client = PurviewSearchClient(
                    session, graph_root=f"http://127.0.0.1:{port}/graph", tokens=StaticTokenProvider("t"),
                    retry=RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, jitter=False))
                return await go(client)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


QUERIES = "/graph/beta/security/auditLog/queries"


def test_403_names_the_missing_permission() -> None:
    async def forbidden(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "Forbidden", "message": "Forbidden"}}, status=403)

    with pytest.raises(PermanentApiError, match=r"AuditLogsQuery\.Read\.All"):
        _with_server({("POST", QUERIES): forbidden},
                     lambda c: c.create_query("t1", T0, T0, display_name="x"))


def test_404_on_the_queries_route_says_the_api_does_not_exist_in_the_cloud() -> None:
    with pytest.raises(SearchUnavailableError, match="does not exist in cloud Enterprise"):
        _with_server({}, lambda c: c.create_query("t1", T0, T0, display_name="x"))


def test_429_is_retried_and_a_gone_query_is_said_so() -> None:
    calls = {"n": 0}

    async def create(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.json_response({"error": {"code": "TooManyRequests"}}, status=429, headers={"Retry-After": "0"})
        body = await request.json()
        assert body["filterStartDateTime"] == "2026-09-05T00:00:00Z"
        return web.json_response({"id": "q1", "status": "notStarted"}, status=201)

    async def gone(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "NotFound"}}, status=404)

    async def go(client: PurviewSearchClient) -> None:
        state = await client.create_query("t1", T0, T0, display_name="x")
        assert state.status is QueryStatus.NOT_STARTED and state.url.endswith(f"{QUERIES}/q1")
        with pytest.raises(QueryGoneError):
            await client.get_query("t1", state.url)

    _with_server({("POST", QUERIES): create, ("GET", QUERIES + "/q1"): gone}, go)
    assert calls["n"] == 2


def test_a_next_link_off_the_graph_host_is_refused() -> None:
    async def records(request: web.Request) -> web.Response:
        return web.json_response({"value": [], "@odata.nextLink": "https://elsewhere.example/records?x=1"})

    async def go(client: PurviewSearchClient) -> None:
        async for _ in client.records("t1", client.queries_url + "/q1"):
            pass

    with pytest.raises(PermanentApiError, match="away from the Graph host"):
        _with_server({("GET", QUERIES + "/q1/records"): records}, go)
