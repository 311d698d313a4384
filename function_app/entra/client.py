"""The Entra ID sign-in and directory audit logs from Microsoft Graph, over aiohttp.

``GET {root}/beta/auditLogs/signIns`` and ``{root}/v1.0/auditLogs/directoryAudits`` with a
``$filter`` on the time range (and ``signInEventTypes`` for the four kinds of sign-in), 1,000 a
page, every ``@odata.nextLink`` followed to the end. Requests go through the same ``RetryPolicy``
as the other APIs (429 and 5xx retried with ``Retry-After`` honoured; a page cut off in transit is
asked again) and through a per-tenant budget of Graph's documented limit for identity and access
reports, 5 requests per 10 seconds per app and tenant, so a catch-up is paced rather than throttled.

A 403 says what fixes it: a tenant without Entra ID P1/P2 (Graph's
``Authentication_RequestFromNonPremiumTenantOrB2CTenant``) needs the licence, anything else the
application permission ``AuditLog.Read.All``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from function_app.core.errors import PermanentApiError, RetryableError
from function_app.entra.streams import Stream
from function_app.o365.auth import TokenProvider
from function_app.o365.graph import GraphRoot, NextLinks, graph_time, json_object, page_of
from function_app.o365.http import Answer, bearer_headers, error_of, send
from function_app.o365.retry import RetryPolicy

T = TypeVar("T")

PERMISSION = "AuditLog.Read.All"
NON_PREMIUM_CODE = "Authentication_RequestFromNonPremiumTenantOrB2CTenant"
PAGE_SIZE = 1000


class RequestBudget:
    """At most *requests* requests in any *per_seconds* seconds, per tenant: a caller waits its turn.

    Graph throttles identity and access reports at 5 requests per 10 s per app and tenant and
    answers 429 past it; pacing below the limit costs nothing and spares the retry budget."""

    def __init__(self, requests: int = 5, per_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._requests = requests
        self._per = per_seconds
        self._clock = clock
        self._sent: dict[str, deque[float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def take(self, tenant_id: str) -> None:
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            sent = self._sent.setdefault(tenant_id, deque())
            while True:
                now = self._clock()
                while sent and now - sent[0] >= self._per:
                    sent.popleft()
                if len(sent) < self._requests:
                    sent.append(now)
                    return
                await asyncio.sleep(self._per - (now - sent[0]))


def signins_filter(stream: Stream, start: datetime, end: datetime) -> str:
    """``$filter`` of one window: ``start <= time < end``, and the sign-in kind for sign-ins."""
    text = f"{stream.time_field} ge {graph_time(start)} and {stream.time_field} lt {graph_time(end)}"
    if stream.event_type is not None:
        text += f" and signInEventTypes/any(t: t eq '{stream.event_type}')"
    return text


class EntraLogClient:
    """A client of one Graph root's sign-in and directory audit logs, shared by its tenants."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        graph_root: str,
        tokens: TokenProvider,
        retry: RetryPolicy,
        budget: RequestBudget | None = None,
        timeout: float = 120,
    ) -> None:
        self._graph = GraphRoot(graph_root)
        self._session = session
        self._tokens = tokens
        self._retry = retry
        self._budget = budget or RequestBudget()
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def first_url(self, stream: Stream, start: datetime, end: datetime) -> str:
        """The first page's URL of *stream* over ``[start, end)``."""
        query = f"$filter={quote(signins_filter(stream, start, end), safe='')}&$top={PAGE_SIZE}"
        return f"{self._graph.url}/{stream.path}?{query}"

    async def pages(self, tenant_id: str, stream: Stream, start: datetime, end: datetime
                    ) -> AsyncIterator[list[dict[str, object]]]:
        """The records of *stream* with ``start <= time < end``, one list per page, to the last page."""
        url: URL | None = self._graph.own_url(self.first_url(stream, start, end))
        links = NextLinks()
        page = 0
        while url is not None:
            page += 1
            items, next_link = await self._page(tenant_id, url, f"{stream.name} page {page}")
            if next_link is None:
                url = None
            else:
                links.check(next_link)
                url = self._graph.own_url(next_link)
            yield items

    async def _page(self, tenant_id: str, url: URL, what: str) -> tuple[list[dict[str, object]], str | None]:
        async def attempt() -> tuple[list[dict[str, object]], str | None]:
            await self._budget.take(tenant_id)
            headers = await bearer_headers(self._tokens, tenant_id)
            answer = await send(self._session, "GET", url, headers, timeout=self._timeout)
            self._check(answer, tenant_id)
            return page_of(json_object(answer, what), what)

        return await self._call(attempt, f"{what} tenant_id={tenant_id}")

    def _check(self, answer: Answer, tenant_id: str) -> None:
        if answer.status < 300:
            return
        error = error_of(answer)
        if answer.status == 403 and not isinstance(error, RetryableError):
            graph_says = error.args[0] if error.args else ""
            if error.code == NON_PREMIUM_CODE or b"premium license" in answer.body:
                raise PermanentApiError(
                    f"tenant {tenant_id} has no Microsoft Entra ID P1 or P2 licence, which Graph's sign-in logs "
                    f"need (Graph: {graph_says})", code=error.code, status=403)
            raise PermanentApiError(
                f"the app lacks the Microsoft Graph application permission {PERMISSION} with admin consent in "
                f"tenant {tenant_id} (Graph: {graph_says})", code=error.code, status=403)
        raise error

    async def _call(self, fn: Callable[[], Awaitable[T]], label: str) -> T:
        return await self._retry.call_for_core(fn, label)
