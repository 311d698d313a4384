"""The Office 365 Management Activity API over aiohttp: the ``ActivityApi`` port and a little more."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from yarl import URL

from function_app.core.budget import BLOB_MEMORY_FACTOR, NO_RESERVATION, MemoryBudget, Reservation
from function_app.core.errors import ApiError, MalformedContentError, MemoryWaitError, PermanentApiError, RetryableError
from function_app.core.messages import check_content_uri
from function_app.core.model import ContentBlob, FetchedContent, utc
from function_app.o365.auth import TokenProvider
from function_app.o365.errors import BodyCutOffError, Decision, IncompleteContentError, classify
from function_app.o365.http import Answer, bearer_headers, error_of, send
from function_app.o365.retry import RetryPolicy, RetryStats
from function_app.records.reader import RecoveredRecord, parse_content

log = logging.getLogger(__name__)

T = TypeVar("T")

PUBLISHER_PARAM = "PublisherIdentifier"
# The reference documents ``NextPageUri``; the troubleshooting page spells it ``NextPageUrl``.
NEXT_PAGE_HEADERS = ("NextPageUri", "NextPageUrl")
# Blobs expire 7 days after they become available; used when a listing omits contentExpiration.
CONTENT_LIFETIME = timedelta(days=7)
_ERROR_BODY_LIMIT = 64 * 1024
_CHUNK = 64 * 1024
# GETs of one blob while waiting for the memory it needs: the first answer names its size, the
# second is read; a third only if the body grew meanwhile, and it is read whatever it holds.
_MEMORY_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Subscription:
    """One entry of ``/subscriptions/list``."""

    content_type: str
    status: str | None
    webhook: Mapping[str, Any] | None


class ManagementApiClient:
    """A client of one cloud's Management Activity API, shared by every monitored tenant.

    Every request carries ``PublisherIdentifier`` and a bearer token for the tenant in its URL,
    goes through the one retry policy, and turns an error answer into a ``core.errors`` exception
    through the AF code table. Redirects are not followed: the token must not travel elsewhere.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_root: str,
        publisher_id: str,
        tokens: TokenProvider,
        retry: RetryPolicy,
        timeout: float = 60,
        max_blob_bytes: int | None = None,
        keep_body: bool = False,
        memory: MemoryBudget | None = None,
        memory_factor: int = BLOB_MEMORY_FACTOR,
        memory_wait: float | None = None,
    ) -> None:
        if not publisher_id.strip():
            raise ValueError("publisher_id must be the publisher's tenant GUID, not empty")
        root = urlsplit(api_root)
        if root.scheme not in {"http", "https"} or not root.netloc:
            raise ValueError(f"api_root must be an absolute http(s) URL, not {api_root!r}")
        self._session = session
        self._api_root = api_root.rstrip("/")
        self._root_origin = (root.scheme.lower(), root.netloc.lower())
        self._publisher_id = publisher_id.strip()
        self._tokens = tokens
        self._retry = retry
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_blob_bytes = max_blob_bytes
        # Holding the body for as long as the blob is processed costs its size in memory; only
        # the Azure path needs the exact bytes (for the dead letter of a blob that fails later).
        self._keep_body = keep_body
        self._memory = memory
        self._memory_factor = memory_factor
        self._memory_wait = memory_wait

    @property
    def api_root(self) -> str:
        """The API root every URL is built on (no trailing slash)."""
        return self._api_root

    @property
    def stats(self) -> RetryStats:
        """Retries and throttles seen so far by this client's retry policy."""
        return self._retry.stats

    # -- subscriptions ---------------------------------------------------------------------

    async def start_subscription(
        self, tenant_id: str, content_type: str, *, webhook: Mapping[str, Any] | None = None
    ) -> None:
        """Start or confirm the subscription to *content_type*; "already enabled" (AF20024) is success."""
        url = self._feed_url(tenant_id, "subscriptions", "start").update_query(contentType=content_type)
        body = orjson.dumps({"webhook": dict(webhook)}) if webhook is not None else None

        async def attempt() -> None:
            answer = await self._send("POST", url, tenant_id, body=body)
            if answer.status >= 400:
                verdict = classify(answer.status, answer.body, answer.headers)
                if verdict.decision is Decision.ALREADY_ENABLED:
                    log.info(
                        "subscription already enabled tenant_id=%s content_type=%s", tenant_id, content_type
                    )
                    return
                raise verdict.error
            log.info("subscription started tenant_id=%s content_type=%s", tenant_id, content_type)

        await self._call(attempt, f"start_subscription tenant_id={tenant_id} content_type={content_type}")

    async def stop_subscription(self, tenant_id: str, content_type: str) -> None:
        """Stop the subscription; content made available while stopped is lost for good."""
        url = self._feed_url(tenant_id, "subscriptions", "stop").update_query(contentType=content_type)

        async def attempt() -> None:
            self._check(await self._send("POST", url, tenant_id, body=b""))

        await self._call(attempt, f"stop_subscription tenant_id={tenant_id} content_type={content_type}")
        log.info("subscription stopped tenant_id=%s content_type=%s", tenant_id, content_type)

    async def list_subscriptions(self, tenant_id: str) -> list[Subscription]:
        """The tenant's subscriptions as the API reports them."""
        url = self._feed_url(tenant_id, "subscriptions", "list")

        async def attempt() -> list[Subscription]:
            answer = self._check(await self._send("GET", url, tenant_id))
            items = _json_list(answer, "subscription list", cut_off=RetryableError)
            subscriptions = []
            for item in items:
                content_type = _required_text(item, "contentType", "subscription")
                status = item.get("status")
                webhook = item.get("webhook")
                subscriptions.append(
                    Subscription(
                        content_type,
                        status if isinstance(status, str) else None,
                        webhook if isinstance(webhook, dict) else None,
                    )
                )
            return subscriptions

        return await self._call(attempt, f"list_subscriptions tenant_id={tenant_id}")

    # -- listing -----------------------------------------------------------------------------

    async def list_content(
        self, tenant_id: str, content_type: str, start: datetime, end: datetime
    ) -> AsyncIterator[list[ContentBlob]]:
        """Yield the blobs available in ``start <= contentCreated < end``, one list per page.

        ``NextPageUri`` is followed verbatim until a page has none; AF20022/AF20023 raise
        SubscriptionMissingError; a page that repeats an earlier NextPageUri raises PermanentApiError.
        """
        async for page in self._pages(tenant_id, content_type, start, end, "content"):
            yield [_blob_of(item, tenant_id, content_type) for item in page]

    async def _pages(
        self, tenant_id: str, content_type: str, start: datetime, end: datetime, operation: str
    ) -> AsyncIterator[list[dict[str, Any]]]:
        url: URL | None = self._feed_url(tenant_id, "subscriptions", operation).update_query(
            contentType=content_type, startTime=format_time(start), endTime=format_time(end)
        )
        seen: set[str] = set()
        page_number = 0
        while url is not None:
            page_number += 1
            items, headers = await self._get_page(
                url, tenant_id, f"{operation} page {page_number}", content_type
            )
            next_uri = _next_page_uri(headers)
            log.debug(
                "listed page tenant_id=%s content_type=%s page=%d items=%d more=%s",
                tenant_id,
                content_type,
                page_number,
                len(items),
                next_uri is not None,
            )
            if next_uri is None:
                url = None
            else:
                if next_uri in seen:
                    raise PermanentApiError(
                        f"the API returned the same NextPageUri twice for {content_type}; "
                        "stopping rather than looping"
                    )
                seen.add(next_uri)
                url = self._next_page_url(next_uri)
            yield items

    async def _get_page(
        self, url: URL, tenant_id: str, what: str, content_type: str
    ) -> tuple[list[dict[str, Any]], Mapping[str, str]]:
        async def attempt() -> tuple[list[dict[str, Any]], Mapping[str, str]]:
            answer = self._check(await self._send("GET", url, tenant_id))
            # A listing page cut off in transit is as transient as a dropped connection.
            return _json_list(answer, what, cut_off=RetryableError), answer.headers

        return await self._call(attempt, f"list {what} tenant_id={tenant_id} content_type={content_type}")

    def _next_page_url(self, next_uri: str) -> URL:
        parts = urlsplit(next_uri)
        if (parts.scheme.lower(), parts.netloc.lower()) != self._root_origin:
            # The bearer token goes wherever NextPageUri points; keep it on the API's host.
            raise PermanentApiError(
                f"NextPageUri points away from the API host: {parts.scheme}://{parts.netloc}"
            )
        return URL(_with_publisher(next_uri, self._publisher_id), encoded=True)

    # -- content -------------------------------------------------------------------------------

    async def fetch_content(self, tenant_id: str, content_uri: str) -> FetchedContent:
        """GET one content blob and parse it as a JSON array.

        The URI is validated first (UntrustedMessageError before anything is sent). A body that
        does not parse is re-fetched a few times, then raises MalformedContentError naming its
        byte length and the parser error; a body over ``max_blob_bytes`` is refused while it
        streams. AF20051 raises ContentExpiredError; AF20050/AF20052 ContentNotFoundError.
        """
        check_content_uri(content_uri, self._api_root, tenant_id)
        url = URL(_with_publisher(content_uri, self._publisher_id), encoded=True)

        async def attempt() -> FetchedContent:
            return await self._get_blob(url, tenant_id)

        content_id = urlsplit(content_uri).path.rsplit("/", 1)[-1]
        try:
            content = await self._call(attempt, f"fetch_content tenant_id={tenant_id} content_id={content_id}")
        except BodyCutOffError as exc:
            # Every fetch gave a body that does not close: the service holds it so, and another
            # delivery would only fetch it again. Permanent, with what could be read of it.
            raise MalformedContentError(str(exc), body=exc.body, salvaged=exc.salvaged) from exc
        log.debug(
            "fetched blob tenant_id=%s content_id=%s records=%d bytes=%d",
            tenant_id,
            content_id,
            len(content.records),
            content.size,
        )
        return content

    async def _get_blob(self, url: URL, tenant_id: str) -> FetchedContent:
        # The memory a body will cost is held before it is read (``core.budget``). When it is not
        # free at once, the answer is left unread and the memory waited for with no request open,
        # then the blob asked for again: the request's total timeout would otherwise run out while
        # it waits, and the read of a large body fail, behind a queue of large blobs (the bigger
        # the host's batch, the longer that queue).
        held: Reservation | None = None
        try:
            for asked in range(_MEMORY_ROUNDS):
                headers = await self._headers(tenant_id)
                async with self._session.get(
                    url, headers=headers, timeout=self._timeout, allow_redirects=False
                ) as response:
                    if response.status >= 300:
                        error_body = await response.content.read(_ERROR_BODY_LIMIT)
                        raise error_of(Answer(response.status, response.headers, error_body))
                    needed = self._memory_needed(response.content_length)
                    if held is not None and self._memory is not None and held.amount < min(needed, self._memory.limit):
                        held.release()  # larger than the answer before
                        held = None
                    if held is None and self._memory is not None:
                        held = self._memory.try_reserve(needed)
                    if held is not None or self._memory is None or asked == _MEMORY_ROUNDS - 1:
                        body = await self._read_capped(response)
                        break
                held = await self._wait_for_memory(needed)
            reservation = held if held is not None else NO_RESERVATION
        except BaseException:
            if held is not None:
                held.release()
            raise
        try:
            return self._parsed(body, url, tenant_id, reservation)
        except BaseException:
            reservation.release()
            raise

    async def _wait_for_memory(self, needed: int) -> Reservation:
        assert self._memory is not None  # only a budget makes a blob wait
        if self._memory_wait is None:
            return await self._memory.reserve(needed)
        try:
            async with asyncio.timeout(self._memory_wait):
                return await self._memory.reserve(needed)
        except TimeoutError:
            # Not an API error (the blob is fine) and not retried here (it would only queue again).
            raise MemoryWaitError(f"waited {self._memory_wait:g} s for {needed} bytes of memory behind larger "
                                  f"blobs; handed back to be tried again") from None

    def _memory_needed(self, content_length: int | None) -> int:
        """What a body of *content_length* bytes will cost; a body over the size cap is refused
        first, so it never waits for memory it will not use."""
        limit = self._max_blob_bytes
        if limit is not None and content_length is not None and content_length > limit:
            raise MalformedContentError(f"blob of {content_length} bytes exceeds the limit of {limit} bytes")
        if self._memory is None:
            return 0
        # Without a Content-Length the body may be as large as the cap allows.
        expected = content_length if content_length is not None else (limit or self._memory.limit)
        return self._memory_factor * expected

    def _parsed(self, body: bytes | bytearray, url: URL, tenant_id: str, reservation: Reservation) -> FetchedContent:
        content = parse_content(body)
        if not content.complete:
            whole = sum(1 for r in content.records if type(r) is not RecoveredRecord or r.readable)
            raise BodyCutOffError(
                f"content body of {len(body)} bytes is not valid JSON (cut off or corrupt): {content.problem}; "
                f"{whole} whole records before the cut", body=body, salvaged=content.records)
        if content.not_an_array:
            raise MalformedContentError(f"content body of {len(body)} bytes is {content.not_an_array}", body=body)
        if content.recovered:
            log.warning("content read leniently tenant_id=%s url_path=%s records=%d recovered=%d first_problem=%s",
                        tenant_id, url.path, len(content.records), content.recovered, content.problem)
        return FetchedContent(content.records, len(body), recovered=content.recovered,
                              body=body if self._keep_body else None, reservation=reservation)

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes | bytearray:
        limit = self._max_blob_bytes
        buffer = bytearray()
        try:
            async for chunk in response.content.iter_chunked(_CHUNK):
                buffer.extend(chunk)
                if limit is not None and len(buffer) > limit:
                    raise MalformedContentError(
                        f"blob of at least {len(buffer)} bytes exceeds the limit of {limit} bytes"
                    )
        except aiohttp.ClientPayloadError as exc:
            raise IncompleteContentError(
                f"content body cut off after {len(buffer)} bytes: {exc}", body=bytes(buffer)
            ) from exc
        # The buffer itself, not a bytes copy of it: a copy doubles the largest allocation of
        # the whole blob's life (orjson reads a bytearray as it is).
        return buffer

    # -- plumbing ----------------------------------------------------------------------------------

    def _feed_url(self, tenant_id: str, *segments: str) -> URL:
        if not tenant_id or any(ch in tenant_id for ch in "/?#\\") or tenant_id in {".", ".."}:
            raise ValueError(f"not a tenant id: {tenant_id!r}")
        url = URL(self._api_root).joinpath(tenant_id, "activity", "feed", *segments)
        return url.update_query({PUBLISHER_PARAM: self._publisher_id})

    async def _headers(self, tenant_id: str) -> dict[str, str]:
        return await bearer_headers(self._tokens, tenant_id)

    async def _send(self, method: str, url: URL, tenant_id: str, *, body: bytes | None = None) -> Answer:
        return await send(self._session, method, url, await self._headers(tenant_id), timeout=self._timeout,
                          body=body)

    def _check(self, answer: Answer) -> Answer:
        if answer.status >= 300:
            raise error_of(answer)
        return answer

    async def _call(self, fn: Callable[[], Awaitable[T]], label: str) -> T:
        return await self._retry.call_for_core(fn, label, passthrough=(MalformedContentError,))


def format_time(value: datetime) -> str:
    """A datetime as the API's ``YYYY-MM-DDTHH:MM:SS`` in UTC (a naive value is taken as UTC)."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%S")


def _with_publisher(uri: str, publisher_id: str) -> str:
    """*uri* unchanged except for ``PublisherIdentifier`` appended when its query lacks it."""
    base, _, _fragment = uri.partition("#")
    _, _, query = base.partition("?")
    names = {pair.split("=", 1)[0].lower() for pair in query.split("&") if pair}
    if PUBLISHER_PARAM.lower() in names:
        return base
    separator = "&" if query else ("" if base.endswith("?") else "?")
    return f"{base}{separator}{PUBLISHER_PARAM}={quote(publisher_id, safe='')}"


def _json_list(answer: Answer, what: str, *, cut_off: type[ApiError]) -> list[dict[str, Any]]:
    """The answer's body as a JSON array of objects; an empty body is an empty list.

    A body that does not parse raises *cut_off*; one of the wrong shape raises PermanentApiError.
    """
    if not answer.body.strip():
        return []
    try:
        parsed: Any = orjson.loads(answer.body)
    except orjson.JSONDecodeError as exc:
        raise cut_off(f"{what} of {len(answer.body)} bytes is not JSON: {exc}", status=answer.status) from exc
    if not isinstance(parsed, list):
        raise PermanentApiError(
            f"{what} is a JSON {type(parsed).__name__}, not an array", status=answer.status
        )
    for index, item in enumerate(parsed):
        if not isinstance(item, dict):
            raise PermanentApiError(f"{what} item {index} is a JSON {type(item).__name__}, not an object")
    return parsed


def _next_page_uri(headers: Mapping[str, str]) -> str | None:
    # aiohttp's header mapping is case-insensitive, so "nextpageuri" and "NEXTPAGEURI" match too.
    for name in NEXT_PAGE_HEADERS:
        value = headers.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def _required_text(item: Mapping[str, Any], field: str, what: str) -> str:
    value = item.get(field)
    if not isinstance(value, str) or not value.strip():
        raise PermanentApiError(f"{what} item without {field}: the API answered {value!r}")
    return value


def _parse_time(value: str, field: str) -> datetime:
    text = value.strip().replace(" ", "T", 1)
    try:
        return utc(datetime.fromisoformat(text))
    except ValueError as exc:
        raise PermanentApiError(f"{field} is not a timestamp: {value!r}") from exc


def _blob_of(item: Mapping[str, Any], tenant_id: str, content_type: str) -> ContentBlob:
    """A listing item as a ContentBlob of the requested tenant and content type.

    The API echoes contentType in its own casing (``Audit.Sharepoint``); the requested name is kept.
    """
    content_id = _required_text(item, "contentId", "listing")
    content_uri = _required_text(item, "contentUri", "listing")
    created = _parse_time(_required_text(item, "contentCreated", "listing"), "contentCreated")
    raw_expiration = item.get("contentExpiration")
    if isinstance(raw_expiration, str) and raw_expiration.strip():
        expiration = _parse_time(raw_expiration, "contentExpiration")
    else:
        expiration = created + CONTENT_LIFETIME
    return ContentBlob(
        tenant_id=tenant_id,
        content_type=content_type,
        content_id=content_id,
        content_uri=content_uri,
        content_created=created,
        content_expiration=expiration,
    )
