"""The Management API client against a local scripted fake of the API."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from function_app.core.budget import MemoryBudget
from function_app.core.errors import (
    ContentExpiredError,
    ContentNotFoundError,
    MalformedContentError,
    MemoryWaitError,
    PermanentApiError,
    RetryableError,
    SubscriptionMissingError,
    ThrottledError,
    UntrustedMessageError,
)
from function_app.core.model import ContentBlob, FetchedContent
from function_app.core.ports import ActivityApi
from function_app.o365.client import ManagementApiClient, format_time
from tests.unit.o365.fake_api import (
    PUBLISHER,
    TENANT,
    TOKEN,
    Harness,
    Reply,
    af_reply,
    harness,
    json_reply,
)

CT = "Audit.SharePoint"
START = datetime(2015, 10, 1, tzinfo=UTC)
END = datetime(2015, 10, 2, tzinfo=UTC)
CONTENT_ID = "20151001180051748005825$20151001180051748005825$audit_sharepoint$Audit_SharePoint"


def item(h: Harness, content_id: str = CONTENT_ID, **overrides: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "contentType": CT,
        "contentId": content_id,
        "contentUri": h.blob_uri(content_id),
        "contentCreated": "2015-10-01T17:35:00.000Z",
        "contentExpiration": "2015-10-08T17:35:00.000Z",
    }
    entry.update(overrides)
    return {k: v for k, v in entry.items() if v is not None}


async def collect(h: Harness, content_type: str = CT) -> list[list[ContentBlob]]:
    return [page async for page in h.client.list_content(TENANT, content_type, START, END)]


def publisher_values(h: Harness) -> list[list[str]]:
    return [seen.query.getall("PublisherIdentifier", []) for seen in h.api.seen]


def as_port(client: ManagementApiClient) -> ActivityApi:
    """Fails type checking if the client stops satisfying the core's port."""
    return client


def test_implements_the_activity_api_port() -> None:
    for name in ("start_subscription", "list_content", "fetch_content"):
        assert callable(getattr(ManagementApiClient, name))
    assert as_port.__annotations__["return"] in {"ActivityApi", ActivityApi}


def test_publisher_identifier_and_bearer_on_every_request() -> None:
    async def scenario() -> tuple[Harness, FetchedContent]:
        async with harness([]) as h:
            next_uri = h.feed_url(f"subscriptions/content?contentType={CT}&startTime=2015-10-01&nextPage=2")
            h.api.replies.extend(
                [
                    Reply(200, b""),  # start
                    json_reply([item(h, "a")], headers={"NextPageUri": next_uri}),
                    json_reply([item(h, "b")]),
                    json_reply([{"Id": "r1"}, {"Id": "r2"}]),
                    json_reply([]),  # list subscriptions
                    Reply(200, b""),  # stop
                ]
            )
            await h.client.start_subscription(TENANT, CT)
            pages = await collect(h)
            fetched = await h.client.fetch_content(TENANT, pages[0][0].content_uri)
            await h.client.list_subscriptions(TENANT)
            await h.client.stop_subscription(TENANT, CT)
            return h, fetched

    h, fetched = asyncio.run(scenario())
    assert fetched == FetchedContent([{"Id": "r1"}, {"Id": "r2"}], len(b'[{"Id":"r1"},{"Id":"r2"}]'))
    assert [s.method for s in h.api.seen] == ["POST", "GET", "GET", "GET", "GET", "POST"]
    assert publisher_values(h) == [[PUBLISHER]] * 6
    assert all(s.headers["Authorization"] == f"Bearer {TOKEN}" for s in h.api.seen)
    paths = [s.raw_path.split("?")[0] for s in h.api.seen]
    assert paths == [
        f"/api/v1.0/{TENANT}/activity/feed/subscriptions/start",
        f"/api/v1.0/{TENANT}/activity/feed/subscriptions/content",
        f"/api/v1.0/{TENANT}/activity/feed/subscriptions/content",
        f"/api/v1.0/{TENANT}/activity/feed/audit/a",
        f"/api/v1.0/{TENANT}/activity/feed/subscriptions/list",
        f"/api/v1.0/{TENANT}/activity/feed/subscriptions/stop",
    ]
    assert h.api.seen[0].query["contentType"] == CT


def test_window_is_sent_in_the_documented_format() -> None:
    async def scenario() -> Harness:
        async with harness([json_reply([])]) as h:
            plus_two = timezone(timedelta(hours=2))
            start = datetime(2015, 10, 1, 2, 30, 15, 123456, tzinfo=plus_two)
            pages = [p async for p in h.client.list_content(TENANT, CT, start, start + timedelta(hours=24))]
            assert pages == [[]]
            return h

    query = asyncio.run(scenario()).api.seen[0].query
    assert query["startTime"] == "2015-10-01T00:30:15"
    assert query["endTime"] == "2015-10-02T00:30:15"
    assert query["contentType"] == CT
    assert format_time(datetime(2024, 2, 29, 23, 59, 59)) == "2024-02-29T23:59:59"


@pytest.mark.parametrize(
    "header", ["NextPageUri", "nextpageuri", "NEXTPAGEURI", "NextPageUrl", "nextPageUrl"]
)
@pytest.mark.parametrize("with_publisher", [True, False])
def test_next_page_uri_is_followed_verbatim(header: str, with_publisher: bool) -> None:
    query = (
        f"contentType={CT}&startTime=2015-10-01&endtime=2015-10-02"
        "&nextPage=2015101900R022885001761$abc%24def~x"
    )
    if with_publisher:
        query += f"&PublisherIdentifier={PUBLISHER}"

    async def scenario() -> tuple[Harness, list[list[ContentBlob]]]:
        async with harness([]) as h:
            h.api.replies.extend(
                [
                    json_reply(
                        [item(h, "p1")], headers={header: h.feed_url(f"subscriptions/content?{query}")}
                    ),
                    json_reply([item(h, "p2")]),
                ]
            )
            return h, await collect(h)

    h, pages = asyncio.run(scenario())
    assert [[b.content_id for b in page] for page in pages] == [["p1"], ["p2"]]
    expected = f"/api/v1.0/{TENANT}/activity/feed/subscriptions/content?{query}"
    if not with_publisher:
        expected += f"&PublisherIdentifier={PUBLISHER}"
    assert h.api.seen[1].raw_path == expected
    assert publisher_values(h) == [[PUBLISHER], [PUBLISHER]]


def test_the_same_next_page_twice_stops_the_loop() -> None:
    async def scenario() -> Harness:
        async with harness([]) as h:
            again = h.feed_url(f"subscriptions/content?contentType={CT}&nextPage=1")
            h.api.replies.extend(
                [
                    json_reply([item(h, "a")], headers={"NextPageUri": again}),
                    json_reply([item(h, "b")], headers={"NextPageUri": again}),
                ]
            )
            with pytest.raises(PermanentApiError, match="same NextPageUri twice"):
                await collect(h)
            return h

    assert len(asyncio.run(scenario()).api.seen) == 2


def test_next_page_on_another_host_is_not_followed() -> None:
    async def scenario() -> Harness:
        async with harness([]) as h:
            elsewhere = "https://evil.example/api/v1.0/x/activity/feed/subscriptions/content?nextPage=1"
            h.api.replies.append(json_reply([item(h)], headers={"NextPageUri": elsewhere}))
            with pytest.raises(PermanentApiError, match="away from the API host"):
                await collect(h)
            return h

    assert len(asyncio.run(scenario()).api.seen) == 1


def test_listing_items_are_parsed_tolerantly() -> None:
    async def scenario() -> list[ContentBlob]:
        async with harness([]) as h:
            h.api.replies.append(
                json_reply(
                    [
                        item(h, "ms", contentType="Audit.Sharepoint"),
                        item(h, "no-ms", contentCreated="2015-10-01T17:35:00Z"),
                        item(h, "naive", contentCreated="2015-10-01T17:35:00", contentExpiration=None),
                        item(h, "ticks", contentCreated="2015-10-01T17:35:00.1234567Z"),
                    ]
                )
            )
            return (await collect(h))[0]

    blobs = asyncio.run(scenario())
    created = datetime(2015, 10, 1, 17, 35, tzinfo=UTC)
    assert [b.content_id for b in blobs] == ["ms", "no-ms", "naive", "ticks"]
    assert all(b.content_type == CT and b.tenant_id == TENANT for b in blobs)
    assert [b.content_created for b in blobs[:3]] == [created] * 3
    assert blobs[3].content_created == created + timedelta(microseconds=123456)
    assert blobs[2].content_expiration == created + timedelta(days=7)
    assert blobs[0].content_expiration == datetime(2015, 10, 8, 17, 35, tzinfo=UTC)


@pytest.mark.parametrize("missing", ["contentId", "contentUri", "contentCreated"])
def test_listing_item_without_a_required_field(missing: str) -> None:
    async def scenario() -> None:
        async with harness([]) as h:
            incomplete = item(h)
            del incomplete[missing]
            h.api.replies.append(json_reply([incomplete, item(h, "fine")]))
            with pytest.raises(PermanentApiError, match=f"without {missing}"):
                await collect(h)

    asyncio.run(scenario())


def test_throttled_403_af429_then_success() -> None:
    async def scenario() -> tuple[Harness, list[list[ContentBlob]]]:
        async with harness([]) as h:
            h.api.replies.extend(
                [
                    af_reply("AF429", 403, "Too many requests. Method=GET, PublisherId=" + PUBLISHER),
                    Reply(429, b"", {"Retry-After": "0.02"}),
                    json_reply([item(h)]),
                ]
            )
            return h, await collect(h)

    h, pages = asyncio.run(scenario())
    assert len(pages[0]) == 1
    assert len(h.api.seen) == 3
    assert h.sleeps == [0.01, 0.02]  # backoff, then the Retry-After value
    assert h.client.stats.throttled == 2
    assert h.client.stats.retries == 2


def test_throttling_that_never_ends_raises_throttled_error() -> None:
    async def scenario() -> Harness:
        async with harness([af_reply("AF429", 403)] * 4) as h:
            with pytest.raises(ThrottledError) as caught:
                await collect(h)
            assert caught.value.code == "AF429"
            assert caught.value.status == 403
            return h

    h = asyncio.run(scenario())
    assert len(h.api.seen) == 4
    assert h.client.stats.throttled == 4


def test_server_errors_then_success() -> None:
    async def scenario() -> tuple[Harness, FetchedContent]:
        async with harness([]) as h:
            h.api.replies.extend(
                [
                    af_reply("AF50000", 500, "An internal error occurred. Retry the request."),
                    Reply(503, b"<html>Service Unavailable</html>"),
                    json_reply([{"Id": "1"}]),
                ]
            )
            return h, await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))

    h, fetched = asyncio.run(scenario())
    assert fetched.records == [{"Id": "1"}]
    assert len(h.api.seen) == 3


def test_already_enabled_start_is_success() -> None:
    async def scenario() -> Harness:
        async with harness(
            [af_reply("AF20024", 400, "The subscription is already enabled. No property change.")]
        ) as h:
            await h.client.start_subscription(TENANT, CT)
            return h

    assert len(asyncio.run(scenario()).api.seen) == 1


def test_start_with_webhook_sends_the_body() -> None:
    async def scenario() -> Harness:
        async with harness([json_reply({"contentType": CT, "status": "enabled", "webhook": None})]) as h:
            await h.client.start_subscription(
                TENANT, CT, webhook={"address": "https://hook.example", "authId": "x"}
            )
            return h

    seen = asyncio.run(scenario()).api.seen[0]
    assert seen.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("code", ["AF20022", "AF20023"])
def test_listing_without_subscription(code: str) -> None:
    async def scenario() -> Harness:
        async with harness([af_reply(code, 400)]) as h:
            with pytest.raises(SubscriptionMissingError) as caught:
                await collect(h)
            assert caught.value.code == code
            return h

    assert len(asyncio.run(scenario()).api.seen) == 1  # not retried: the core starts the subscription


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (af_reply("AF20051", 400), ContentExpiredError),
        (af_reply("AF20051", 404), ContentExpiredError),
        (af_reply("AF20050", 404), ContentNotFoundError),
        (af_reply("AF20052", 400), ContentNotFoundError),
        (af_reply("AF10001", 401), PermanentApiError),
        (Reply(302, b"", {"Location": "https://elsewhere.example/"}), PermanentApiError),
    ],
)
def test_blob_error_answers(reply: Reply, error: type[Exception]) -> None:
    async def scenario() -> Harness:
        async with harness([reply]) as h:
            with pytest.raises(error):
                await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))
            return h

    assert len(asyncio.run(scenario()).api.seen) == 1


def test_blob_get_keeps_the_content_uri_and_adds_the_publisher_and_refuses_a_query() -> None:
    refused: list[str] = []

    async def scenario() -> Harness:
        async with harness([json_reply([]), json_reply([])]) as h:
            await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))
            # The API's content URIs carry no query: one that does is not ours to send a token to.
            for suffix in ("?keep=1%2B1", f"?PublisherIdentifier={PUBLISHER}", "#frag"):
                with pytest.raises(UntrustedMessageError) as caught:
                    await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID) + suffix)
                refused.append(str(caught.value))
            return h

    seen = asyncio.run(scenario()).api.seen
    base = f"/api/v1.0/{TENANT}/activity/feed/audit/{CONTENT_ID}"
    assert [s.raw_path for s in seen] == [f"{base}?PublisherIdentifier={PUBLISHER}"]
    assert refused == ["contentUri carries a query string or fragment"] * 3


def test_truncated_body_is_refetched_then_declared_malformed() -> None:
    cut = b'[{"Id": "1", "Operation": "FileAccessed"}, {"Id": "2", "Oper'

    async def scenario() -> Harness:
        async with harness([Reply(200, cut)] * 5, malformed_attempts=3) as h:
            with pytest.raises(
                MalformedContentError, match=f"{len(cut)} bytes is not valid JSON.*"
            ) as caught:
                await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))
            assert "unexpected" in str(caught.value).lower() or "eof" in str(caught.value).lower()
            return h

    assert len(asyncio.run(scenario()).api.seen) == 3


def test_truncated_body_then_a_whole_one() -> None:
    whole = orjson.dumps([{"Id": str(i)} for i in range(100)])

    async def scenario() -> FetchedContent:
        async with harness(
            [Reply(200, whole[:-10]), Reply(200, whole, cut_after=50), Reply(200, whole)]
        ) as h:
            return await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))

    fetched = asyncio.run(scenario())
    assert len(fetched.records) == 100
    assert fetched.size == len(whole)


def test_a_body_that_is_not_an_array_is_not_refetched() -> None:
    async def scenario() -> Harness:
        async with harness([json_reply({"value": []})]) as h:
            with pytest.raises(MalformedContentError, match="a JSON dict, not an array"):
                await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))
            return h

    assert len(asyncio.run(scenario()).api.seen) == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_blob_is_refused(chunked: bool) -> None:
    body = orjson.dumps([{"Id": str(i), "pad": "x" * 100} for i in range(2000)])

    async def scenario() -> Harness:
        async with harness([Reply(200, body, chunked=chunked)], max_blob_bytes=10_000) as h:
            with pytest.raises(MalformedContentError, match="bytes exceeds the limit of 10000 bytes"):
                await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))
            return h

    assert len(asyncio.run(scenario()).api.seen) == 1


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.example/api/v1.0/{tenant}/activity/feed/audit/x",
        "{root}/00000000-0000-0000-0000-000000000000/activity/feed/audit/x",
        "{root}/{tenant}/activity/feed/subscriptions/list",
        "{root}/{tenant}/activity/feed/audit/../../x",
    ],
)
def test_untrusted_content_uri_is_refused_before_any_request(uri: str) -> None:
    async def scenario() -> Harness:
        async with harness([json_reply([])]) as h:
            with pytest.raises(UntrustedMessageError):
                await h.client.fetch_content(TENANT, uri.format(root=h.root, tenant=TENANT))
            return h

    assert asyncio.run(scenario()).api.seen == []


def test_connection_cut_mid_body_is_refetched_then_malformed() -> None:
    async def scenario() -> Harness:
        async with harness([Reply(200, b"[" + b"1," * 100 + b"1]", cut_after=20)] * 4) as h:
            with pytest.raises(MalformedContentError, match="cut off after 20 bytes"):
                await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))
            return h

    assert len(asyncio.run(scenario()).api.seen) == 3  # malformed_attempts by default


def test_transport_failure_outliving_the_retries() -> None:
    async def scenario() -> None:
        import aiohttp

        from function_app.o365.auth import StaticTokenProvider
        from function_app.o365.retry import RetryPolicy

        async def no_sleep(_: float) -> None:
            return None

        async with aiohttp.ClientSession() as session:
            client = ManagementApiClient(
                session,
                api_root="http://127.0.0.1:9/api/v1.0",  # discard port: nothing listens
                publisher_id=PUBLISHER,
                tokens=StaticTokenProvider(TOKEN),
                retry=RetryPolicy(max_attempts=2, sleep=no_sleep),
            )
            with pytest.raises(RetryableError, match="transport failure"):
                await client.start_subscription(TENANT, CT)

    asyncio.run(scenario())


def test_the_token_never_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> list[BaseException]:
        errors: list[BaseException] = []
        async with harness([], max_attempts=2) as h:
            h.api.replies.extend(
                [
                    af_reply("AF429", 403),
                    Reply(500, b""),
                    af_reply("AF20022", 400),
                    af_reply("AF10001", 401),
                    Reply(200, b"[{"),
                    Reply(200, b"[{"),
                    af_reply("AF20024", 400),
                ]
            )
            for call in (
                lambda: collect(h),
                lambda: collect(h),
                lambda: h.client.list_subscriptions(TENANT),
                lambda: h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID)),
                lambda: h.client.start_subscription(TENANT, CT),
                lambda: h.client.fetch_content(TENANT, "https://evil.example/steal"),
            ):
                try:
                    await call()
                except Exception as exc:
                    errors.append(exc)
        return errors

    errors = asyncio.run(scenario())
    assert len(errors) == 5
    assert caplog.records, "expected some log output to check"
    assert TOKEN not in caplog.text
    assert "Bearer" not in caplog.text
    assert all(TOKEN not in str(e) and TOKEN not in repr(e) for e in errors)


def test_a_blob_waiting_for_memory_longer_than_its_request_may_last_is_fetched_once_memory_frees() -> None:
    # A body far larger than the socket buffers, so it cannot sit whole in the client before the read.
    whole = orjson.dumps([{"Id": str(i), "pad": "x" * 200} for i in range(20_000)])
    budget = MemoryBudget(len(whole))

    async def scenario() -> tuple[Harness, FetchedContent, float]:
        async with harness([Reply(200, whole), Reply(200, whole)], memory=budget, timeout=0.5) as h:
            neighbour = await budget.reserve(1)  # another blob holds memory for longer than a request may last

            async def neighbour_done() -> None:
                await asyncio.sleep(1.5)
                neighbour.release()

            freed = asyncio.create_task(neighbour_done())
            started = asyncio.get_running_loop().time()
            fetched = await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))
            waited = asyncio.get_running_loop().time() - started
            await freed
            return h, fetched, waited

    h, fetched, waited = asyncio.run(scenario())
    assert len(fetched.records) == 20_000 and waited >= 1.5
    # The first answer only named the size; the wait held no request open, so nothing timed out
    # and nothing was retried; the second answer was read.
    assert len(h.api.seen) == 2 and h.sleeps == []
    assert budget.in_use == len(whole)  # held for the blob until its rows are written
    fetched.reservation.release()
    assert budget.in_use == 0


def test_a_blob_whose_memory_is_free_is_fetched_with_one_request() -> None:
    whole = orjson.dumps([{"Id": str(i)} for i in range(100)])
    budget = MemoryBudget(10 * len(whole))

    async def scenario() -> tuple[Harness, FetchedContent]:
        async with harness([Reply(200, whole)], memory=budget) as h:
            return h, await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))

    h, fetched = asyncio.run(scenario())
    assert len(fetched.records) == 100 and len(h.api.seen) == 1 and budget.in_use == len(whole)


def test_a_blob_that_may_wait_only_so_long_for_memory_gives_up_with_one_clear_error_and_holds_nothing() -> None:
    whole = orjson.dumps([{"Id": str(i)} for i in range(100)])
    budget = MemoryBudget(len(whole))

    async def scenario() -> Harness:
        async with harness([Reply(200, whole)], memory=budget, memory_wait=0.2) as h:
            neighbour = await budget.reserve(1)
            with pytest.raises(MemoryWaitError, match=rf"waited 0.2 s for {len(whole)} bytes of memory"):
                await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))
            neighbour.release()
            assert budget.in_use == 0, "the blob that gave up still holds memory"
            again = budget.try_reserve(len(whole))
            assert again is not None, "the blob that gave up still waits in the queue"
            again.release()
            return h

    h = asyncio.run(scenario())
    assert len(h.api.seen) == 1 and h.sleeps == []  # handed back, not retried here


def test_a_blob_larger_than_the_whole_budget_waits_for_all_of_it_once_and_keeps_its_place() -> None:
    whole = orjson.dumps([{"Id": str(i), "pad": "x" * 200} for i in range(2_000)])
    budget = MemoryBudget(len(whole) // 2)  # it runs alone, holding the whole budget

    async def scenario() -> tuple[Harness, FetchedContent, bool]:
        async with harness([Reply(200, whole)] * 3, memory=budget) as h:
            neighbour = await budget.reserve(1)
            asyncio.get_running_loop().call_later(0.3, neighbour.release)

            async def later_blob() -> None:  # queues behind the big one while it waits
                await asyncio.sleep(0.1)
                held = await budget.reserve(1)
                await asyncio.sleep(0.5)
                held.release()

            later = asyncio.create_task(later_blob())
            fetched = await h.client.fetch_content(TENANT, h.blob_uri(CONTENT_ID))
            overtaken = later.done() or budget.in_use != budget.limit
            fetched.reservation.release()
            await later
            return h, fetched, overtaken

    h, fetched, overtaken = asyncio.run(scenario())
    assert len(fetched.records) == 2_000
    # The memory it waited for (all of the budget) was kept for the second answer: not given up to the
    # blob queued behind it, and not asked for a third time.
    assert not overtaken and len(h.api.seen) == 2
