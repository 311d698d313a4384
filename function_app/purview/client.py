"""The Purview audit search API over aiohttp: create a query, poll it, page its records.

Every request goes through the same ``RetryPolicy`` as the Management API (429 and 5xx retried,
``Retry-After`` honoured, network failures retried) and turns an error answer into a
``core.errors`` exception. Graph's error body is ``{"error": {"code", "message"}}``, which
``o365.errors.classify`` already reads; what differs is said here: a 403 names the permission
the app lacks, and a 404 on the queries collection means the API is not offered where we asked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

import aiohttp
import orjson
from yarl import URL

from function_app.core.errors import PermanentApiError, RetryableError
from function_app.o365.auth import TokenProvider
from function_app.o365.clouds import Cloud
from function_app.o365.graph import GraphRoot, NextLinks, graph_time, json_object, page_of
from function_app.o365.http import Answer, bearer_headers, error_of, send
from function_app.o365.retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

QUERIES_PATH = "beta/security/auditLog/queries"
"""Where the queries live under a Graph root. Beta: Microsoft moved the API back from v1.0 in
April 2025 (MC1052169), and the record-count fields exist only there."""

PERMISSION = "AuditLogsQuery.Read.All"

# The audit log query API is documented for the global service only: US Government L4/L5 and
# 21Vianet are marked unavailable. GCC tenants sit on the global service, so they are tried; a
# 404 on the queries route then says plainly that the API is not there.
SEARCH_CLOUDS = frozenset({Cloud.ENTERPRISE, Cloud.GCC})



class SearchUnavailableError(PermanentApiError):
    """The Purview audit search API does not exist where it was asked for (cloud, or route)."""


class QueryGoneError(PermanentApiError):
    """A query the ledger remembers is no longer known to Graph (404): create a new one."""


class QueryStatus(StrEnum):
    NOT_STARTED = "notStarted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @classmethod
    def of(cls, raw: Any) -> QueryStatus:
        for status in cls:
            if isinstance(raw, str) and raw.lower() == status.value.lower():
                return status
        return cls.UNKNOWN


@dataclass(frozen=True, slots=True)
class QueryState:
    """An ``auditLogQuery`` as the collector needs it."""

    url: str
    status: QueryStatus
    record_count_limit: int | None = None
    limit_exceeded: bool = False
    approximate_count: int | None = None

    @property
    def finished(self) -> bool:
        return self.status in (QueryStatus.SUCCEEDED, QueryStatus.FAILED, QueryStatus.CANCELLED)


class PurviewSearchClient:
    """A client of one Graph root's audit log query API, shared by every tenant of that root.

    Tokens are asked of *tokens* per tenant inside each attempt (for Graph's scope). Redirects
    are not followed and ``@odata.nextLink`` must stay on the root's host: the bearer token goes
    wherever the request goes.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        graph_root: str,
        tokens: TokenProvider,
        retry: RetryPolicy,
        cloud: str = Cloud.ENTERPRISE.value,
        timeout: float = 120,
    ) -> None:
        self._graph = GraphRoot(graph_root)
        self._session = session
        self._root = self._graph.url
        self._tokens = tokens
        self._retry = retry
        self._cloud = cloud
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    @property
    def queries_url(self) -> str:
        return f"{self._root}/{QUERIES_PATH}"

    # -- the three calls -------------------------------------------------------------------------

    async def create_query(
        self,
        tenant_id: str,
        start: datetime,
        end: datetime,
        *,
        display_name: str,
        services: Sequence[str] = (),
        record_types: Sequence[str] = (),
    ) -> QueryState:
        """POST a query for ``start <= createdDateTime < end``; returns it with its URL.

        Not retried blindly on a lost answer: a POST that timed out may have created a query,
        and a second one only costs a query slot (the first is abandoned), never records."""
        body: dict[str, Any] = {
            "displayName": display_name,
            "filterStartDateTime": graph_time(start),
            "filterEndDateTime": graph_time(end),
        }
        if services:
            body["serviceFilters"] = list(services)
        if record_types:
            body["recordTypeFilters"] = list(record_types)
        payload = orjson.dumps(body)

        async def attempt() -> QueryState:
            answer = await self._send("POST", URL(self.queries_url, encoded=True), tenant_id, body=payload)
            if answer.status == 404:
                raise SearchUnavailableError(self._unavailable(), status=404)
            self._check(answer)
            item = json_object(answer, "created query")
            query_id = item.get("id")
            if not isinstance(query_id, str) or not query_id.strip():
                raise PermanentApiError(f"the created query has no id: {str(item)[:200]}")
            return _state_of(item, f"{self.queries_url}/{query_id}")

        return await self._call(attempt, f"create_query tenant_id={tenant_id} name={display_name}")

    async def get_query(self, tenant_id: str, query_url: str) -> QueryState:
        """The query's status and, once it succeeded, its record-count fields.

        QueryGoneError when Graph no longer knows it (the caller creates a new one)."""
        url = self._own_url(query_url)

        async def attempt() -> QueryState:
            answer = await self._send("GET", url, tenant_id)
            if answer.status == 404:
                raise QueryGoneError(f"query {query_url} is gone (HTTP 404)", status=404)
            self._check(answer)
            return _state_of(json_object(answer, "query"), query_url)

        return await self._call(attempt, f"get_query tenant_id={tenant_id}")

    async def records(self, tenant_id: str, query_url: str) -> AsyncIterator[list[dict[str, Any]]]:
        """The query's records, one list per page, following ``@odata.nextLink`` to the end."""
        url: URL | None = self._own_url(f"{query_url}/records")
        links = NextLinks()
        page = 0
        while url is not None:
            page += 1
            items, next_link = await self._records_page(tenant_id, url, page)
            if next_link is None:
                url = None
            else:
                links.check(next_link)
                url = self._own_url(next_link)
            yield items

    async def _records_page(self, tenant_id: str, url: URL, page: int) -> tuple[list[dict[str, Any]], str | None]:
        async def attempt() -> tuple[list[dict[str, Any]], str | None]:
            answer = await self._send("GET", url, tenant_id)
            if answer.status == 404:
                raise QueryGoneError(f"the records of {url.path} are gone (HTTP 404)", status=404)
            self._check(answer)
            return page_of(json_object(answer, f"records page {page}"), f"records page {page}")

        return await self._call(attempt, f"records page {page} tenant_id={tenant_id}")

    # -- plumbing ----------------------------------------------------------------------------------

    def _unavailable(self) -> str:
        return (f"the Purview audit search API does not exist in cloud {self._cloud} "
                f"({self.queries_url} answered 404); the feed keeps working")

    def _own_url(self, raw: str) -> URL:
        return self._graph.own_url(raw)

    async def _send(self, method: str, url: URL, tenant_id: str, *, body: bytes | None = None) -> Answer:
        headers = await bearer_headers(self._tokens, tenant_id)
        return await send(self._session, method, url, headers, timeout=self._timeout, body=body)

    def _check(self, answer: Answer) -> None:
        if answer.status < 300:
            return
        error = error_of(answer)
        if answer.status == 403 and not isinstance(error, RetryableError):
            # Graph says "Forbidden" and little else; what fixes it is the application permission.
            raise PermanentApiError(
                f"the app lacks the Microsoft Graph application permission {PERMISSION} (or a per-service "
                f"AuditLogsQuery-*.Read.All) with admin consent: {error}", code=error.code, status=403)
        raise error

    async def _call(self, fn: Callable[[], Awaitable[T]], label: str) -> T:
        return await self._retry.call_for_core(fn, label)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _state_of(item: Mapping[str, Any], url: str) -> QueryState:
    return QueryState(
        url=url,
        status=QueryStatus.of(item.get("status")),
        record_count_limit=_int_or_none(item.get("recordCountLimit")),
        limit_exceeded=item.get("isRecordCountLimitExceeded") is True,
        approximate_count=_int_or_none(item.get("approximateReturnedRecordCount")),
    )
