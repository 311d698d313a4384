"""An aiohttp emulator of the Office 365 Management Activity API, serving synthetic tenants.

It follows the documented contract and the observed behaviour collected in the reference
notes: bearer token, GUID tenant in the path, subscriptions that must be started, listing
windows of at most 24 h starting no more than 7 days back, ``startTime <= contentCreated <
endTime`` filtered by the server's clock, ``NextPageUri`` paging, the AF error codes with the
service's own messages, and optional fault injection (:mod:`auditlake.emulator.faults`).

A control plane under ``/_emulator/`` (no auth, never faulted) exposes the ground truth,
request statistics and the scripted incident for tests.

The same app serves the Graph audit log query API (Purview audit search) over the same tenants
under ``/graph/beta/security/auditLog/queries``: see :mod:`auditlake.emulator.purview`; and the
Entra ID sign-in and directory audit logs under ``/graph/{beta,v1.0}/auditLogs``: see
:mod:`auditlake.emulator.entra`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import signal
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from auditlake.emulator import entra, purview
from auditlake.emulator.faults import (
    FaultInjector,
    FaultSpec,
    apply_blob_faults,
    cutoff_body,
    malformed_body,
    oversize_body,
    stable_seed,
)
from auditlake.emulator.tenant import RETENTION, EmulatedBlob, SyntheticTenant
from function_app.core.model import CONTENT_TYPES, iso_z, utc

log = logging.getLogger(__name__)

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
RETRY_AFTER_SECONDS = 1
# Timer granularity: a client that slept the full Retry-After may arrive a hair early by our clock.
_RETRY_AFTER_SLACK = 0.05
MAX_WINDOW = timedelta(hours=24)
_FEED = "/api/v1.0/{tenant}/activity/feed"
_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_CONTENT_ID_RE = re.compile(r"^[A-Za-z0-9_\-]+(\$[A-Za-z0-9_\-]+)+$")
_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?Z?$", re.IGNORECASE
)
_TOKEN_RE = re.compile(r"^(\d{10})(\d{8})R(\d{8})$")
_MAX_LISTINGS = 4096

# The service's own error texts (reference "Errors" table; AF20024 and the bare AF20023
# text are what live responses carry).
MESSAGES: dict[str, str] = {
    "AF10001": "The permission set ({0}) sent in the request did not include the expected permission "
    "ActivityFeed.Read.",
    "AF20001": "Missing parameter: {0}.",
    "AF20002": "Invalid parameter type: {0}. Expected type: {1}",
    "AF20011": "Specified tenant ID ({0}) does not exist in the system or has been deleted.",
    "AF20013": "The tenant ID passed in the URL ({0}) is not a valid GUID.",
    "AF20020": "The specified content type is not valid.",
    "AF20022": "No subscription found for the specified content type.",
    "AF20023": "The subscription was disabled.",
    "AF20024": "The subscription is already enabled. No property change.",
    "AF20030": "Start time and end time must both be specified (or both omitted) and must be less than or "
    "equal to 24 hours apart, with the start time no more than 7 days in the past.",
    "AF20031": "Invalid nextPage Input: {0}.",
    "AF20050": "The specified content ({0}) does not exist.",
    "AF20051": "Content requested with the key {0} has already expired. Content older than 7 days cannot be "
    "retrieved.",
    "AF20052": "Content ID {0} in the URL is invalid.",
    "AF20055": "Start time and end time must both be specified (or both omitted) and must be less than or "
    "equal to 24 hours apart, with the start time prior to end time and start time no more than 7 days in "
    "the past.",
    "AF429": "Too many requests. Method={0}, PublisherId={1}",
    "AF50000": "An internal error occurred. Retry the request.",
}


class ApiFault(Exception):
    """An error answer: HTTP status plus the ``{"error":{"code","message"}}`` body."""

    def __init__(self, status: int, code: str, *args: object, headers: dict[str, str] | None = None) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.message = MESSAGES[code].format(*args)
        self.headers = headers or {}


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json", charset="utf-8",
        headers=headers,
    )


def _error(fault: ApiFault) -> web.Response:
    return _json({"error": {"code": fault.code, "message": fault.message}}, fault.status, fault.headers)


def parse_api_time(raw: str) -> datetime | None:
    """Parse ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM`` or ``YYYY-MM-DDTHH:MM:SS[.fffffff][Z]`` as UTC; None if invalid."""
    m = _TIME_RE.match(raw.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        return datetime(
            int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0),
            int((frac or "0").ljust(7, "0")[:6]), tzinfo=UTC,
        )
    except ValueError:
        return None


@dataclass(slots=True)
class Subscription:
    """One content type's subscription of one tenant."""

    status: str
    webhook: dict[str, Any] | None = None

    def to_json(self, content_type: str) -> dict[str, Any]:
        """The item shape of ``/subscriptions/list`` and ``/subscriptions/start``."""
        return {"contentType": content_type, "status": self.status, "webhook": self.webhook}


@dataclass(slots=True)
class Listing:
    """A listing's result fixed at its first page, so following NextPageUri yields each blob once."""

    tenant_id: str
    content_type: str
    kind: str
    start: datetime
    end: datetime
    raw_start: str
    raw_end: str
    items: list[EmulatedBlob]


@dataclass(slots=True)
class EmulatorStats:
    """What clients did: requests by operation, rejections, PublisherIdentifier use, widest window."""

    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    publishers: Counter[str] = field(default_factory=Counter)
    missing_publisher: int = 0
    unauthorized: int = 0
    window_rejected: int = 0
    max_window_seconds: float = 0.0
    # Requests repeated sooner than the Retry-After of the 429 that answered them.
    retry_after_ignored: int = 0

    def to_json(self, injected: Counter[str]) -> dict[str, Any]:
        """The ``/_emulator/stats`` body."""
        return {
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "faults": dict(injected),
            "errors": dict(self.errors),
            "missing_publisher_identifier": self.missing_publisher,
            "publisher_identifiers": dict(self.publishers),
            "unauthorized": self.unauthorized,
            "window_rejected": self.window_rejected,
            "max_window_seconds": self.max_window_seconds,
            "retry_after_ignored": self.retry_after_ignored,
        }


def _real_now() -> datetime:
    return datetime.now(UTC)


class EmulatorState:
    """Everything the emulator serves and remembers: tenants, subscriptions, faults, clock, statistics.

    Blob-level faults (late, expired, cutoff, malformed, oversize, dupblobs, hostile, hugestring,
    feedmissing) are applied to the tenants here, from *seed*. A ``pagesize`` fault overrides
    *page_size*. *search_polls* and *search_page_size* shape the audit search (:attr:`search`);
    *signins_per_day*, *entra_budget* and *entra_budget_window* the Entra logs (:attr:`entra`).
    """

    def __init__(
        self,
        tenants: Iterable[SyntheticTenant],
        *,
        faults: FaultSpec | None = None,
        seed: int = 0,
        clock: Callable[[], datetime] | None = None,
        page_size: int = 100,
        token: str | None = None,
        subscriptions_enabled: bool = False,
        base_url: str | None = None,
        search_polls: int = 2,
        search_page_size: int = 100,
        signins_per_day: int = entra.DEFAULT_SIGNINS_PER_DAY,
        entra_budget: int = entra.DEFAULT_BUDGET,
        entra_budget_window: float = entra.DEFAULT_BUDGET_WINDOW,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.tenants: dict[str, SyntheticTenant] = {t.tenant_id.lower(): t for t in tenants}
        self.faults = faults or FaultSpec()
        self.page_size = self.faults.pagesize or page_size
        self.seed = seed
        self.clock = clock or _real_now
        self.token = token
        self.base_url = base_url.rstrip("/") if base_url else None
        self.injector = FaultInjector(self.faults, seed)
        self.stats = EmulatorStats()
        self.subscriptions: dict[str, dict[str, Subscription]] = {
            tid: ({ct: Subscription("enabled") for ct in CONTENT_TYPES} if subscriptions_enabled else {})
            for tid in self.tenants
        }
        self.listings: OrderedDict[int, Listing] = OrderedDict()
        self._listing_seq = 0
        # path_qs -> monotonic time before which a repeat ignores the Retry-After it was sent.
        self.retry_not_before: dict[str, float] = {}
        for tenant in self.tenants.values():
            apply_blob_faults(tenant, self.faults, seed)
        self.search = purview.SearchService(
            self.tenants, faults=self.faults, seed=seed, clock=self.now, token=token, base_url=self.base_url,
            polls=search_polls, page_size=search_page_size,
        )
        self.entra = entra.EntraService(
            self.tenants, faults=self.faults, seed=seed, clock=self.now, token=token, base_url=self.base_url,
            signins_per_day=signins_per_day, budget=entra_budget, budget_window=entra_budget_window,
        )

    def now(self) -> datetime:
        """The server's current time (aware UTC), from the injected clock."""
        return utc(self.clock())

    def remember(self, listing: Listing) -> int:
        """Store *listing* for its later pages; return its sequence number (old ones are forgotten)."""
        self._listing_seq = (self._listing_seq + 1) % 10**8
        self.listings[self._listing_seq] = listing
        while len(self.listings) > _MAX_LISTINGS:
            self.listings.popitem(last=False)
        return self._listing_seq


STATE: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)


def _param(request: web.Request, name: str) -> str | None:
    # Parameter names are case-insensitive, as on the service (and Elastic's mock rewrites
    # endTime to endtime in NextPageUri).
    lname = name.lower()
    for key, value in request.query.items():
        if key.lower() == lname:
            return value if value != "" else None
    return None


def _base(request: web.Request, state: EmulatorState) -> str:
    return state.base_url or f"{request.scheme}://{request.host}"


def _tenant(request: web.Request, state: EmulatorState) -> SyntheticTenant:
    raw = request.match_info["tenant"]
    if not _GUID_RE.match(raw):
        raise ApiFault(400, "AF20013", raw)
    tenant = state.tenants.get(raw.lower())
    if tenant is None:
        raise ApiFault(400, "AF20011", raw)
    return tenant


def _content_type(request: web.Request) -> str:
    raw = _param(request, "contentType")
    if raw is None:
        raise ApiFault(400, "AF20001", "contentType")
    for ct in CONTENT_TYPES:
        if ct.lower() == raw.lower():
            return ct
    raise ApiFault(400, "AF20020")


def _check_auth(request: web.Request, state: EmulatorState) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or (state.token is not None and token != state.token):
        state.stats.unauthorized += 1
        raise ApiFault(401, "AF10001", "", headers={"WWW-Authenticate": "Bearer"})


_GATEWAY_PAGE = "<html><head><title>{0} {1}</title></head><body><h1>{0} {1}</h1></body></html>"
_GATEWAY_REASONS = {502: "Bad Gateway", 504: "Gateway Timeout"}


def _hang_up(request: web.Request) -> web.Response:
    """Drop the connection without an answer; the response returned is never sent."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=200)


async def _cut_mid_body(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send *response*'s status, headers and full Content-Length, then only half its body, then close."""
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes) or len(body) < 2:
        return _hang_up(request)
    cut = web.StreamResponse(status=response.status, headers={
        k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "transfer-encoding")})
    cut.content_length = len(body)
    await cut.prepare(request)
    await cut.write(body[: len(body) // 2])
    if request.transport is not None:
        # close(), not abort(): the half already written must reach the client first.
        request.transport.close()
    return cut


@web.middleware
async def _api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    state = request.app[STATE]
    operation = request.match_info.route.name or "Unknown"
    state.stats.requests[operation] += 1
    publisher = _param(request, "PublisherIdentifier")
    if publisher:
        state.stats.publishers[publisher] += 1
    else:
        state.stats.missing_publisher += 1
    not_before = state.retry_not_before.pop(request.path_qs, None)
    if not_before is not None and time.monotonic() < not_before - _RETRY_AFTER_SLACK:
        state.stats.retry_after_ignored += 1
    fault: str | None = None
    response: web.StreamResponse
    try:
        _check_auth(request, state)
        fault = state.injector.request_fault()
        if fault == "throttle":
            raise ApiFault(403, "AF429", operation, publisher or ZERO_GUID)
        if fault == "throttle429":
            state.retry_not_before[request.path_qs] = time.monotonic() + RETRY_AFTER_SECONDS
            raise ApiFault(429, "AF429", operation, publisher or ZERO_GUID,
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if fault == "5xx":
            raise ApiFault(state.injector.server_error_status(), "AF50000")
        if fault == "gateway":
            status = state.injector.gateway_status()
            state.stats.errors[str(status)] += 1
            return web.Response(status=status, content_type="text/html",
                                text=_GATEWAY_PAGE.format(status, _GATEWAY_REASONS[status]))
        if fault == "reset" and not state.injector.reset_mid_body():
            return _hang_up(request)
        delay = state.injector.delay()
        if delay:
            await asyncio.sleep(delay)
        _tenant(request, state)
        response = await handler(request)
    except ApiFault as fault_answer:
        state.stats.errors[fault_answer.code] += 1
        log.debug("answering %s %s for %s", fault_answer.status, fault_answer.code, request.path_qs)
        response = _error(fault_answer)
    if fault == "reset":
        return await _cut_mid_body(request, response)
    return response


# ---------------------------------------------------------------- subscriptions


async def start_subscription(request: web.Request) -> web.Response:
    """``POST /subscriptions/start``: enable; AF20024 (400) when already enabled and nothing changes."""
    state = request.app[STATE]
    tenant = _tenant(request, state)
    ct = _content_type(request)
    webhook: dict[str, Any] | None = None
    body = await request.read()
    if body.strip():
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiFault(400, "AF20002", "body", "json") from None
        hook = payload.get("webhook") if isinstance(payload, dict) else None
        if isinstance(hook, dict) and hook.get("address"):
            webhook = {"status": "enabled", "address": hook["address"], "authId": hook.get("authId"),
                       "expiration": hook.get("expiration") or None}
    subs = state.subscriptions[tenant.tenant_id]
    current = subs.get(ct)
    if current is not None and current.status == "enabled" and (webhook is None or webhook == current.webhook):
        raise ApiFault(400, "AF20024")
    subs[ct] = Subscription("enabled", webhook if webhook is not None else (current.webhook if current else None))
    log.info("subscription started", extra={"tenant_id": tenant.tenant_id, "content_type": ct})
    return _json(subs[ct].to_json(ct))


async def stop_subscription(request: web.Request) -> web.Response:
    """``POST /subscriptions/stop``: disable; later listings answer AF20023 until started again."""
    state = request.app[STATE]
    tenant = _tenant(request, state)
    ct = _content_type(request)
    subs = state.subscriptions[tenant.tenant_id]
    if ct not in subs:
        raise ApiFault(400, "AF20022")
    subs[ct].status = "disabled"
    return web.Response(status=200)


async def list_subscriptions(request: web.Request) -> web.Response:
    """``GET /subscriptions/list``: every subscription ever started, with its status."""
    state = request.app[STATE]
    tenant = _tenant(request, state)
    subs = state.subscriptions[tenant.tenant_id]
    return _json([subs[ct].to_json(ct) for ct in CONTENT_TYPES if ct in subs])


# --------------------------------------------------------------------- listing


def _window(request: web.Request, state: EmulatorState, now: datetime) -> tuple[datetime, datetime, str, str]:
    raw_start, raw_end = _param(request, "startTime"), _param(request, "endTime")
    if raw_start is None and raw_end is None:
        end = now.replace(microsecond=now.microsecond // 1000 * 1000)
        start = end - MAX_WINDOW
        return start, end, iso_z(start), iso_z(end)
    stats = state.stats
    if raw_start is None or raw_end is None:
        stats.window_rejected += 1
        raise ApiFault(400, "AF20030")
    parsed_start, parsed_end = parse_api_time(raw_start), parse_api_time(raw_end)
    if parsed_start is None or parsed_end is None:
        stats.window_rejected += 1
        raise ApiFault(400, "AF20002", "startTime" if parsed_start is None else "endTime", "datetime")
    start, end = parsed_start, parsed_end
    stats.max_window_seconds = max(stats.max_window_seconds, (end - start).total_seconds())
    if start >= end:
        stats.window_rejected += 1
        raise ApiFault(400, "AF20055")
    if end - start > MAX_WINDOW or start < now - RETENTION:
        stats.window_rejected += 1
        raise ApiFault(400, "AF20030")
    return start, end, raw_start, raw_end


def _item(blob: EmulatedBlob, base: str, tenant_id: str, kind: str) -> dict[str, Any]:
    item = {
        "contentType": blob.content_type,
        "contentId": blob.content_id,
        "contentUri": f"{base}/api/v1.0/{tenant_id}/activity/feed/audit/{blob.content_id}",
        "contentCreated": iso_z(blob.content_created),
        "contentExpiration": iso_z(blob.content_expiration),
    }
    if kind == "notifications":
        sent = blob.content_created + timedelta(seconds=1 + stable_seed(blob.content_id) % 60)
        item["notificationSent"] = iso_z(sent)
        item["notificationStatus"] = "success"
    return item


# How long after contentCreated a "late" blob can still be missing from a listing.
LATE_HORIZON = timedelta(hours=6)
# A "dupblobs" blob is listed again by every listing whose window starts within this long
# after its contentCreated: the same contentId in a second window.
DUP_REACH = timedelta(hours=6)


def _snapshot(state: EmulatorState, tenant: SyntheticTenant, ct: str, start: datetime, end: datetime,
              now: datetime) -> list[EmulatedBlob]:
    items: list[EmulatedBlob] = []
    for blob in tenant.blobs_between(ct, start, end):
        if blob.content_created > now or blob.content_expiration <= now:
            continue
        if blob.late and not blob.late_hidden and now - blob.content_created < LATE_HORIZON:
            # Hidden from the first listing that would have shown it, listed normally after.
            # Only fresh blobs: the real service lists blobs late by minutes to hours, so a
            # blob days old is there by the time anyone asks.
            blob.late_hidden = True
            state.injector.record("late")
            continue
        items.append(blob)
    if state.faults.dupblobs:
        twice = [b for b in items if b.duplicated]
        earlier = [b for b in tenant.blobs_between(ct, start - DUP_REACH, start)
                   if b.duplicated and b.content_created <= now < b.content_expiration]
        state.injector.duplicate(items, twice, earlier)
    state.injector.shuffle(items)
    return items


async def _list(request: web.Request, kind: str) -> web.Response:
    state = request.app[STATE]
    tenant = _tenant(request, state)
    ct = _content_type(request)
    sub = state.subscriptions[tenant.tenant_id].get(ct)
    if sub is None:
        raise ApiFault(400, "AF20022")
    if sub.status != "enabled":
        raise ApiFault(400, "AF20023")
    now = state.now()
    start, end, raw_start, raw_end = _window(request, state, now)
    token = _param(request, "nextPage")
    if token is None:
        listing = Listing(tenant.tenant_id, ct, kind, start, end, raw_start, raw_end,
                          _snapshot(state, tenant, ct, start, end, now))
        seq, offset = state.remember(listing), 0
    else:
        m = _TOKEN_RE.match(token)
        found = state.listings.get(int(m.group(2))) if m else None
        if (
            m is None or found is None or found.tenant_id != tenant.tenant_id or found.content_type != ct
            or found.kind != kind or found.start != start or found.end != end
            or int(m.group(3)) > len(found.items)
        ):
            raise ApiFault(400, "AF20031", token)
        listing, seq, offset = found, int(m.group(2)), int(m.group(3))
    base = _base(request, state)
    page = listing.items[offset : offset + state.page_size]
    body = [_item(b, base, tenant.tenant_id, kind) for b in page]
    headers: dict[str, str] = {}
    following = offset + state.page_size
    if following < len(listing.items):
        next_token = f"{listing.start:%Y%m%d%H}{seq:08d}R{following:08d}"
        next_uri = (
            f"{base}/api/v1.0/{tenant.tenant_id}/activity/feed/subscriptions/{kind}"
            f"?contentType={ct}&startTime={quote(listing.raw_start, safe=':')}"
            f"&endTime={quote(listing.raw_end, safe=':')}&nextPage={next_token}"
        )
        name, value = state.injector.page_header(next_uri)
        headers[name] = value
    return _json(body, headers=headers)


async def list_content(request: web.Request) -> web.Response:
    """``GET /subscriptions/content``: available blobs in the window, paged with NextPageUri."""
    return await _list(request, "content")


async def list_notifications(request: web.Request) -> web.Response:
    """``GET /subscriptions/notifications``: as /content plus notificationSent and notificationStatus."""
    return await _list(request, "notifications")


# -------------------------------------------------------------------- retrieval


async def get_blob(request: web.Request) -> web.StreamResponse:
    """``GET /audit/{contentId}``: the blob's JSON array, or AF20050 / AF20051 / AF20052."""
    state = request.app[STATE]
    tenant = _tenant(request, state)
    content_id = request.match_info["content_id"]
    if not _CONTENT_ID_RE.match(content_id):
        raise ApiFault(400, "AF20052", content_id)
    blob = tenant.blob(content_id)
    now = state.now()
    if blob is None or blob.content_created > now:
        raise ApiFault(404, "AF20050", content_id)
    if blob.expired:
        state.injector.record("expired")
        raise ApiFault(400, "AF20051", content_id)
    if blob.content_expiration <= now:
        raise ApiFault(400, "AF20051", content_id)
    if blob.cutoff:
        state.injector.record("cutoff")
        body = cutoff_body(blob.body, blob.content_id)
    elif blob.malformed:
        state.injector.record("malformed")
        body = malformed_body(blob.body, blob.content_id)
    elif blob.oversize:
        state.injector.record("oversize")
        return await _serve_oversize(request, blob)
    else:
        if blob.added is not None:
            state.injector.record(blob.added.kind)
        served = blob.served_body
        body = state.injector.truncate(blob.content_id, served) or served
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def _serve_oversize(request: web.Request, blob: EmulatedBlob) -> web.StreamResponse:
    """The padded body, with a Content-Length for some blobs and chunked for others, so a
    collector's size limit is met both before reading and while streaming."""
    body = oversize_body(blob.body)
    if stable_seed("oversize", blob.content_id) % 2 == 0:
        return web.Response(body=body, content_type="application/json", charset="utf-8")
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    step = 64 * 1024
    try:
        for offset in range(0, len(body), step):
            await response.write(body[offset : offset + step])
        await response.write_eof()
    except ConnectionError:
        # The collector refused the blob part way, as it should: nothing more to send.
        pass
    return response


# ---------------------------------------------------------------- control plane


def _control_tenant(request: web.Request, state: EmulatorState) -> SyntheticTenant:
    raw = request.query.get("tenantId")
    if raw is None and len(state.tenants) == 1:
        return next(iter(state.tenants.values()))
    tenant = state.tenants.get((raw or "").lower())
    if tenant is None:
        raise web.HTTPNotFound(text=f"unknown tenantId {raw!r}")
    return tenant


def _control_time(request: web.Request, name: str, default: datetime) -> datetime:
    raw = request.query.get(name)
    if raw is None:
        return default
    parsed = parse_api_time(raw)
    if parsed is None:
        raise web.HTTPBadRequest(text=f"{name}: {raw!r} is not a time")
    return parsed


async def control_truth(request: web.Request) -> web.Response:
    """What a perfect collector holds of the blobs available now, and the blobs it never can ingest.

    ``records``: the unique keys ``[Id, RecordType, Operation]`` of every record it holds under
    its own key: served whole (the records before the cut of a cutoff blob and around the
    corruption of a malformed one included), or read only by a lenient parser with the key intact
    (hostile records). ``damaged``: how many rows it keeps flagged ``record:unreadable`` or
    ``record:recovered`` (see :func:`faults.delivery`). ``undeliverable``: the blobs that end
    ``failed`` or ``expired``, with the reason (``expired``, ``cutoff``, ``oversize``). ``added``:
    the keys of the records the ``hostile`` and ``hugestring`` faults put in, by fault.

    ``start`` defaults to now - 7 days, ``end`` to just after now; ``contentType`` to all.
    """
    state = request.app[STATE]
    tenant = _control_tenant(request, state)
    ct = request.query.get("contentType")
    if ct is not None and ct not in CONTENT_TYPES:
        raise web.HTTPBadRequest(text=f"unknown contentType {ct!r}")
    now = state.now()
    start = _control_time(request, "start", now - RETENTION)
    end = _control_time(request, "end", now + timedelta(milliseconds=1))
    deliveries = tenant.deliveries(ct, start, end, now)
    keys = sorted({key for _, d in deliveries for key in d.keys})
    undeliverable = [
        {"contentId": b.content_id, "contentType": b.content_type, "reason": b.undeliverable_reason}
        for b, _ in deliveries if b.undeliverable_reason
    ]
    added: dict[str, list[list[object]]] = {}
    for b, _ in deliveries:
        if b.added is not None:
            added.setdefault(b.added.kind, []).extend(list(k) for k in b.added.keys)
    return _json({"records": [list(k) for k in keys], "damaged": sum(d.damaged for _, d in deliveries),
                  "undeliverable": undeliverable, "added": added})


async def control_stats(request: web.Request) -> web.Response:
    """Request counts, faults injected, PublisherIdentifier use, rejected and widest windows; the
    audit search's own counters under ``search``, the Entra logs' under ``entra``."""
    state = request.app[STATE]
    return _json({**state.stats.to_json(state.injector.injected), "search": state.search.stats.to_json(),
                  "entra": state.entra.stats.to_json()})


async def control_incident(request: web.Request) -> web.Response:
    """The scripted incident's facts (404 for a tenant without one)."""
    state = request.app[STATE]
    tenant = _control_tenant(request, state)
    if tenant.incident is None:
        raise web.HTTPNotFound(text=f"tenant {tenant.tenant_id} has no scripted incident")
    return _json(tenant.incident.to_json())


async def control_tenants(request: web.Request) -> web.Response:
    """Each tenant's scenario, domain and blob/record counts."""
    state = request.app[STATE]
    return _json([{**t.summary(), "domain": t.domain, "now": iso_z(t.now)} for t in state.tenants.values()])


def build_app(state: EmulatorState, middlewares: Sequence[Middleware] = ()) -> web.Application:
    """The aiohttp application serving *state*; *middlewares* run before the emulator's own, in order."""
    app = web.Application(middlewares=[*middlewares, _api_middleware])
    app[STATE] = state
    r = app.router
    r.add_post(f"{_FEED}/subscriptions/start", start_subscription, name="StartSubscription")
    r.add_post(f"{_FEED}/subscriptions/stop", stop_subscription, name="StopSubscription")
    r.add_get(f"{_FEED}/subscriptions/list", list_subscriptions, name="ListSubscriptions")
    r.add_get(f"{_FEED}/subscriptions/content", list_content, name="ListContent")
    r.add_get(f"{_FEED}/subscriptions/notifications", list_notifications, name="ListNotifications")
    r.add_get(f"{_FEED}/audit/{{content_id}}", get_blob, name="GetBlob")
    r.add_get("/_emulator/truth", control_truth)
    r.add_get("/_emulator/stats", control_stats)
    r.add_get("/_emulator/incident", control_incident)
    r.add_get("/_emulator/tenants", control_tenants)
    purview.add_routes(app, state.search)
    entra.add_routes(app, state.entra)
    return app


# --------------------------------------------------------------- running it


def default_tenant_id(seed: int) -> str:
    """A tenant GUID derived from *seed*, for when none is given."""
    digest = hashlib.sha256(f"auditlake-emulator-tenant:{seed}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


class EmulatorServer:
    """Generate tenants, serve them on a real port, and stop on exit: ``async with EmulatorServer(...) as emu``.

    ``emu.base_url`` is ``http://HOST:PORT``, ``emu.api_root`` is ``{base_url}/api/v1.0``,
    ``emu.graph_root`` is ``{base_url}/graph`` (the audit search is ``{graph_root}/beta/security/auditLog/queries``).
    Tenants are generated with ``now = clock()`` at entry; ``days`` beyond 7 is history only the
    audit search serves. ``search_polls`` is how many GETs a query takes to end, ``search_page_size``
    the records per page of its results. ``signins_per_day`` is the interactive user sign-ins a tenant
    has a day in the Entra logs (the other kinds in proportion, :data:`entra.KIND_SHARE`);
    ``entra_budget`` requests per ``entra_budget_window`` seconds per tenant are served there (Graph's
    5 per 10 s by default; 0 for no limit). ``middlewares`` are aiohttp middlewares run before the
    emulator's own, as a test's way to hold or watch requests.
    """

    def __init__(
        self,
        tenant_ids: Sequence[str] | None = None,
        *,
        seed: int = 7,
        days: float = 7,
        records_per_day: int = 3000,
        scenario: str = "default",
        faults: FaultSpec | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        page_size: int = 100,
        token: str | None = None,
        clock: Callable[[], datetime] | None = None,
        subscriptions_enabled: bool = False,
        search_polls: int = 2,
        search_page_size: int = 100,
        signins_per_day: int = entra.DEFAULT_SIGNINS_PER_DAY,
        entra_budget: int = entra.DEFAULT_BUDGET,
        entra_budget_window: float = entra.DEFAULT_BUDGET_WINDOW,
        middlewares: Sequence[Middleware] = (),
    ) -> None:
        self.tenant_ids = [str(uuid.UUID(t)) for t in tenant_ids] if tenant_ids else [default_tenant_id(seed)]
        self.seed = seed
        self.days = days
        self.records_per_day = records_per_day
        self.scenario = scenario
        self.faults = FaultSpec.parse(faults) if isinstance(faults, str) else (faults or FaultSpec())
        self.host = host
        self.port = port
        self.page_size = page_size
        self.token = token
        self.clock = clock or _real_now
        self.subscriptions_enabled = subscriptions_enabled
        self.search_polls = search_polls
        self.search_page_size = search_page_size
        self.signins_per_day = signins_per_day
        self.entra_budget = entra_budget
        self.entra_budget_window = entra_budget_window
        self.middlewares = tuple(middlewares)
        self._runner: web.AppRunner | None = None
        self._state: EmulatorState | None = None
        self.base_url = ""

    @property
    def state(self) -> EmulatorState:
        """The running emulator's state (only inside the ``async with``)."""
        if self._state is None:
            raise RuntimeError("the emulator is not running")
        return self._state

    @property
    def api_root(self) -> str:
        """``{base_url}/api/v1.0``: where a client's tenant paths start."""
        return f"{self.base_url}/api/v1.0"

    @property
    def graph_root(self) -> str:
        """``{base_url}/graph``: where a Graph client's version paths (``/beta/...``) start."""
        return f"{self.base_url}/graph"

    def _generate(self, now: datetime) -> list[SyntheticTenant]:
        return [
            SyntheticTenant.generate(
                tid, seed=self.seed, now=now, days=self.days, records_per_day=self.records_per_day,
                scenario=self.scenario,
            )
            for tid in self.tenant_ids
        ]

    async def __aenter__(self) -> EmulatorServer:
        now = utc(self.clock())
        tenants = await asyncio.to_thread(self._generate, now)
        self._state = EmulatorState(
            tenants, faults=self.faults, seed=self.seed, clock=self.clock, page_size=self.page_size,
            token=self.token, subscriptions_enabled=self.subscriptions_enabled,
            search_polls=self.search_polls, search_page_size=self.search_page_size,
            signins_per_day=self.signins_per_day, entra_budget=self.entra_budget,
            entra_budget_window=self.entra_budget_window,
        )
        self._runner = web.AppRunner(build_app(self._state, self.middlewares), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        port = self._runner.addresses[0][1]
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{host}:{port}"
        log.info("emulator listening on %s faults=%s", self.api_root, self.faults)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def run_forever(
    host: str = "127.0.0.1",
    port: int = 0,
    tenant_ids: Sequence[str] = (),
    seed: int = 7,
    days: float = 7,
    records_per_day: int = 3000,
    scenario: str = "default",
    faults: FaultSpec | str | None = None,
    token: str | None = None,
    *,
    page_size: int = 100,
    subscriptions_enabled: bool = False,
    signins_per_day: int = entra.DEFAULT_SIGNINS_PER_DAY,
) -> None:
    """Serve until SIGINT or SIGTERM; print ``emulator listening on URL tenants=...`` once ready.
    *signins_per_day* sizes the Entra logs (see :class:`EmulatorServer`)."""

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with EmulatorServer(
            list(tenant_ids) or None, seed=seed, days=days, records_per_day=records_per_day, scenario=scenario,
            faults=faults, host=host, port=port, page_size=page_size, token=token,
            subscriptions_enabled=subscriptions_enabled, signins_per_day=signins_per_day,
        ) as emu:
            print(f"emulator listening on {emu.api_root} tenants={','.join(emu.tenant_ids)}", flush=True)
            await stop.wait()

    asyncio.run(serve())
