"""The emulator over real HTTP: auth, tenants, subscriptions, windows, paging, retrieval, control plane."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import orjson
import pytest

from auditlake.emulator import EmulatorServer
from auditlake.emulator.server import LATE_HORIZON
from function_app.core.model import CONTENT_TYPES, iso_z
from function_app.records.reader import RecoveredRecord, parse_content
from tests.unit.emulator.helpers import NOW, PUBLISHER, TENANT, Api, FakeClock, Reply, run, windows

EX = "Audit.Exchange"
DAY = timedelta(days=1)


def test_bearer_token_is_required_and_checked() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[Reply]:
        url = f"{api.feed}/subscriptions/list"
        return [
            await api.call("GET", url, token=None),
            await api.call("GET", url, token="wrong"),
            await api.call("GET", url, token="s3cret"),
        ]

    missing, wrong, right = run(body, token="s3cret")
    assert (missing.status, missing.code) == (401, "AF10001")
    assert missing.header("WWW-Authenticate") == "Bearer"
    assert (wrong.status, wrong.code) == (401, "AF10001")
    assert right.status == 200 and right.json() == []


def test_any_token_is_accepted_when_none_is_configured() -> None:
    async def body(emu: EmulatorServer, api: Api) -> Reply:
        return await api.call("GET", f"{api.feed}/subscriptions/list", token="anything")

    assert run(body).status == 200


def test_tenant_must_be_a_known_guid() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[Reply]:
        bad = f"{emu.api_root}/contoso.onmicrosoft.com/activity/feed/subscriptions/list"
        unknown = f"{emu.api_root}/00000000-0000-0000-0000-000000000001/activity/feed/subscriptions/list"
        upper = f"{emu.api_root}/{TENANT.upper()}/activity/feed/subscriptions/list"
        return [await api.call("GET", bad), await api.call("GET", unknown), await api.call("GET", upper)]

    bad, unknown, upper = run(body)
    assert (bad.status, bad.code) == (400, "AF20013")
    assert "contoso.onmicrosoft.com" in bad.json()["error"]["message"]
    assert (unknown.status, unknown.code) == (400, "AF20011")
    assert upper.status == 200


def test_content_type_is_validated() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[Reply]:
        return [
            await api.start("Audit.Nonexistent"),
            await api.call("POST", f"{api.feed}/subscriptions/start"),
            await api.start("audit.sharepoint"),
        ]

    invalid, missing, lower = run(body)
    assert (invalid.status, invalid.code) == (400, "AF20020")
    assert invalid.json()["error"]["message"] == "The specified content type is not valid."
    assert (missing.status, missing.code) == (400, "AF20001")
    assert lower.status == 200 and lower.json()["contentType"] == "Audit.SharePoint"


def test_subscription_lifecycle() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Reply]:
        window = (iso_z(NOW - DAY), iso_z(NOW))
        steps: dict[str, Reply] = {}
        steps["list_before"] = await api.list_page(EX, *window)
        steps["stop_before"] = await api.stop(EX)
        steps["start"] = await api.start(EX)
        steps["start_again"] = await api.start(EX)
        steps["subs"] = await api.call("GET", f"{api.feed}/subscriptions/list")
        steps["list_enabled"] = await api.list_page(EX, *window)
        steps["stop"] = await api.stop(EX)
        steps["list_disabled"] = await api.list_page(EX, *window)
        steps["subs_disabled"] = await api.call("GET", f"{api.feed}/subscriptions/list")
        steps["restart"] = await api.start(EX)
        steps["list_restarted"] = await api.list_page(EX, *window)
        return steps

    s = run(body)
    assert (s["list_before"].status, s["list_before"].code) == (400, "AF20022")
    assert s["stop_before"].code == "AF20022"
    assert s["start"].status == 200
    assert s["start"].json() == {"contentType": EX, "status": "enabled", "webhook": None}
    assert s["start"].header("Content-Type") == "application/json; charset=utf-8"
    assert (s["start_again"].status, s["start_again"].code) == (400, "AF20024")
    assert s["subs"].json() == [{"contentType": EX, "status": "enabled", "webhook": None}]
    assert s["list_enabled"].status == 200
    assert s["stop"].status == 200 and s["stop"].body == b""
    assert (s["list_disabled"].status, s["list_disabled"].code) == (400, "AF20023")
    assert s["subs_disabled"].json()[0]["status"] == "disabled"
    assert s["restart"].status == 200 and s["list_restarted"].status == 200


def test_subscriptions_can_start_enabled() -> None:
    async def body(emu: EmulatorServer, api: Api) -> Reply:
        return await api.list_page(EX, None, None)

    assert run(body, subscriptions_enabled=True).status == 200


def test_webhook_change_on_enabled_subscription_is_not_af20024() -> None:
    async def body(emu: EmulatorServer, api: Api) -> Reply:
        await api.start(EX)
        async with api.session.post(
            f"{api.feed}/subscriptions/start", params={"contentType": EX},
            headers={"Authorization": "Bearer t"},
            data=orjson.dumps({"webhook": {"address": "https://hook.example/x", "authId": "a"}}),
        ) as resp:
            return Reply(resp.status, dict(resp.headers), await resp.read())

    reply = run(body)
    assert reply.status == 200
    assert reply.json()["webhook"] == {"status": "enabled", "address": "https://hook.example/x", "authId": "a",
                                       "expiration": None}


WINDOW_CASES: list[tuple[str, str | None, str | None, int, str | None]] = [
    ("only start", iso_z(NOW - DAY), None, 400, "AF20030"),
    ("only end", None, iso_z(NOW), 400, "AF20030"),
    ("over 24 h", iso_z(NOW - DAY - timedelta(seconds=1)), iso_z(NOW), 400, "AF20030"),
    ("start beyond 7 days", iso_z(NOW - timedelta(days=7, seconds=1)), iso_z(NOW - timedelta(days=6, hours=12)),
     400, "AF20030"),
    ("start equals end", iso_z(NOW - DAY), iso_z(NOW - DAY), 400, "AF20055"),
    ("start after end", iso_z(NOW), iso_z(NOW - DAY), 400, "AF20055"),
    ("garbage", "yesterday", iso_z(NOW), 400, "AF20002"),
    ("exactly 7 days back", iso_z(NOW - timedelta(days=7)), iso_z(NOW - timedelta(days=6)), 200, None),
    ("date only", (NOW - DAY).strftime("%Y-%m-%d"), NOW.strftime("%Y-%m-%d"), 200, None),
    ("minutes", (NOW - DAY).strftime("%Y-%m-%dT%H:%M"), NOW.strftime("%Y-%m-%dT%H:%M"), 200, None),
    ("seconds", (NOW - DAY).strftime("%Y-%m-%dT%H:%M:%S"), NOW.strftime("%Y-%m-%dT%H:%M:%S"), 200, None),
    ("fractions and Z", (NOW - DAY).strftime("%Y-%m-%dT%H:%M:%S.1234567Z"), iso_z(NOW), 200, None),
    ("both omitted", None, None, 200, None),
]


@pytest.mark.parametrize(("name", "start", "end", "status", "code"), WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
def test_window_rules(name: str, start: str | None, end: str | None, status: int, code: str | None) -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[Reply, Reply]:
        reply = await api.list_page(EX, start, end)
        return reply, await api.control("stats")

    reply, stats = run(body, subscriptions_enabled=True)
    assert (reply.status, reply.code) == (status, code)
    assert stats.json()["window_rejected"] == (1 if code else 0)
    if code in ("AF20030", "AF20055"):
        assert reply.json()["error"]["message"].startswith("Start time and end time must both be specified")


def test_widest_window_is_recorded() -> None:
    async def body(emu: EmulatorServer, api: Api) -> Any:
        await api.list_page(EX, iso_z(NOW - timedelta(hours=30)), iso_z(NOW))
        await api.list_page(EX, iso_z(NOW - timedelta(hours=2)), iso_z(NOW))
        return (await api.control("stats")).json()

    stats = run(body, subscriptions_enabled=True)
    assert stats["max_window_seconds"] == 30 * 3600
    assert stats["window_rejected"] == 1


def test_range_is_start_inclusive_end_exclusive_and_clock_bound() -> None:
    clock = FakeClock()

    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[TENANT]
        blob = next(b for b in tenant.blobs if b.content_type == EX and NOW - DAY < b.content_created < NOW)
        at = iso_z(blob.content_created)
        hour = timedelta(hours=1)
        inclusive = (await api.list_page(EX, at, iso_z(blob.content_created + hour))).json()
        exclusive = (await api.list_page(EX, iso_z(blob.content_created - hour), at)).json()
        assert blob.content_id in {i["contentId"] for i in inclusive}
        assert blob.content_id not in {i["contentId"] for i in exclusive}

        future = next(b for b in tenant.blobs if b.content_type == EX and b.content_created > NOW)
        window = (iso_z(NOW - timedelta(hours=12)), iso_z(NOW + timedelta(hours=12)))
        before = {i["contentId"] for i in (await api.list_page(EX, *window)).json()}
        uri = f"{api.feed}/audit/{future.content_id}"
        not_yet = await api.call("GET", uri)
        clock.advance(future.content_created - NOW)
        after = {i["contentId"] for i in (await api.list_page(EX, *window)).json()}
        now_there = await api.call("GET", uri)
        assert future.content_id not in before and future.content_id in after
        assert (not_yet.status, not_yet.code) == (404, "AF20050")
        assert now_there.status == 200

    run(body, clock=clock, subscriptions_enabled=True)


def test_items_have_the_documented_shape() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[list[Any], list[Any]]:
        window = (iso_z(NOW - DAY), iso_z(NOW))
        return (await api.list_page(EX, *window)).json(), (
            await api.list_page(EX, *window, kind="notifications")
        ).json()

    content, notifications = run(body, subscriptions_enabled=True, page_size=1000)
    assert content and len(content) == len(notifications)
    item = content[0]
    assert set(item) == {"contentType", "contentId", "contentUri", "contentCreated", "contentExpiration"}
    assert item["contentUri"].endswith(f"/api/v1.0/{TENANT}/activity/feed/audit/{item['contentId']}")
    assert item["contentCreated"].endswith("Z") and len(item["contentCreated"]) == 24
    assert set(notifications[0]) == set(item) | {"notificationSent", "notificationStatus"}
    assert notifications[0]["notificationStatus"] == "success"


def test_paging_yields_every_blob_once() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[TENANT]
        start, end = NOW - DAY, NOW
        expected = [b.content_id for b in tenant.blobs_between(EX, start, end)]
        assert len(expected) > 12
        pages: list[Reply] = []
        reply = await api.list_page(EX, iso_z(start), iso_z(end))
        pages.append(reply)
        while reply.header("NextPageUri"):
            reply = await api.call("GET", reply.header("NextPageUri") or "")
            pages.append(reply)
        listed = [i["contentId"] for p in pages for i in p.json()]
        assert listed == expected, "ordered by contentCreated, each blob once"
        assert all(len(p.json()) == 5 for p in pages[:-1]) and 0 < len(pages[-1].json()) <= 5
        assert all("NextPageUri" in p.headers for p in pages[:-1]) and "NextPageUri" not in pages[-1].headers
        first_next = pages[0].header("NextPageUri") or ""
        assert f"startTime={iso_z(start)}" in first_next and f"endTime={iso_z(end)}" in first_next
        assert "nextPage=" in first_next and first_next.startswith(api.feed)

    run(body, subscriptions_enabled=True, page_size=5)


def test_omitted_window_pages_carry_explicit_times() -> None:
    async def body(emu: EmulatorServer, api: Api) -> Reply:
        return await api.list_page(EX, None, None)

    reply = run(body, subscriptions_enabled=True, page_size=2)
    next_uri = reply.header("NextPageUri") or ""
    assert f"startTime={iso_z(NOW - DAY)}" in next_uri and f"endTime={iso_z(NOW)}" in next_uri


def test_bad_next_page_tokens_are_af20031() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[Reply]:
        window = (iso_z(NOW - DAY), iso_z(NOW))
        first = await api.list_page(EX, *window)
        next_uri = first.header("NextPageUri") or ""
        token = next_uri.rsplit("nextPage=", 1)[1]
        url = f"{api.feed}/subscriptions/content"
        return [
            await api.call("GET", url, {"contentType": EX, "startTime": window[0], "endTime": window[1],
                                        "nextPage": "garbage"}),
            await api.call("GET", url, {"contentType": EX, "startTime": iso_z(NOW - timedelta(hours=2)),
                                        "endTime": window[1], "nextPage": token}),
            await api.call("GET", url, {"contentType": "Audit.SharePoint", "startTime": window[0],
                                        "endTime": window[1], "nextPage": token}),
            await api.call("GET", next_uri),
        ]

    garbage, other_window, other_type, good = run(body, subscriptions_enabled=True, page_size=3)
    assert (garbage.status, garbage.code) == (400, "AF20031")
    assert garbage.json()["error"]["message"] == "Invalid nextPage Input: garbage."
    assert other_window.code == "AF20031" and other_type.code == "AF20031"
    assert good.status == 200


def test_publisher_identifier_accounting() -> None:
    async def body(emu: EmulatorServer, api: Api) -> Any:
        await api.call("POST", f"{api.feed}/subscriptions/start", {"contentType": EX})
        await api.call("GET", f"{api.feed}/subscriptions/list", publisher=None)
        items = (await api.list_page(EX, iso_z(NOW - DAY), iso_z(NOW))).json()
        await api.call("GET", items[0]["contentUri"], publisher=None)
        await api.call("GET", items[0]["contentUri"])
        await api.control("stats")
        return (await api.control("stats")).json()

    stats = run(body)
    assert stats["requests_total"] == 5
    assert stats["requests"] == {"StartSubscription": 1, "ListSubscriptions": 1, "ListContent": 1, "GetBlob": 2}
    assert stats["missing_publisher_identifier"] == 2
    assert stats["publisher_identifiers"] == {PUBLISHER: 3}


def test_retrieval() -> None:
    clock = FakeClock()

    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[TENANT]
        blob = next(b for b in tenant.blobs if b.content_created < NOW - timedelta(days=6))
        good = await api.call("GET", f"{api.feed}/audit/{blob.content_id}")
        assert good.status == 200 and good.body == blob.body
        assert good.header("Content-Type") == "application/json; charset=utf-8"
        assert isinstance(good.json(), list)
        unknown = await api.call("GET", f"{api.feed}/audit/20250101000000000000000$20250101000000000000000$x$y")
        assert (unknown.status, unknown.code) == (404, "AF20050")
        malformed = await api.call("GET", f"{api.feed}/audit/not-an-id")
        assert (malformed.status, malformed.code) == (400, "AF20052")
        assert malformed.json()["error"]["message"] == "Content ID not-an-id in the URL is invalid."
        clock.advance(timedelta(days=1))
        expired = await api.call("GET", f"{api.feed}/audit/{blob.content_id}")
        assert (expired.status, expired.code) == (400, "AF20051")
        assert expired.json()["error"]["message"] == (
            f"Content requested with the key {blob.content_id} has already expired. "
            "Content older than 7 days cannot be retrieved."
        )
        listed = await api.list_page(blob.content_type, iso_z(clock.now - timedelta(days=7)),
                                     iso_z(clock.now - timedelta(days=6)))
        assert blob.content_id not in {i["contentId"] for i in listed.json()}

    run(body, clock=clock, subscriptions_enabled=True)


# ---------------------------------------------------------------------- faults


def test_throttle_is_403_af429_with_method_and_publisher() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[Reply]:
        return [
            await api.list_page(EX, None, None),
            await api.list_page(EX, None, None, publisher=None),
            await api.control("stats"),
        ]

    with_pub, without_pub, stats = run(body, faults="throttle=1", subscriptions_enabled=True)
    assert (with_pub.status, with_pub.code) == (403, "AF429")
    assert with_pub.json()["error"]["message"] == f"Too many requests. Method=ListContent, PublisherId={PUBLISHER}"
    assert without_pub.json()["error"]["message"].endswith("PublisherId=00000000-0000-0000-0000-000000000000")
    assert stats.status == 200, "the control plane is never faulted"
    assert stats.json()["faults"] == {"throttle": 2}


def test_throttle429_has_retry_after() -> None:
    async def body(emu: EmulatorServer, api: Api) -> Reply:
        return await api.call("GET", f"{api.feed}/audit/a$b")

    reply = run(body, faults="throttle429=1")
    assert (reply.status, reply.code, reply.header("Retry-After")) == (429, "AF429", "1")
    assert "Method=GetBlob" in reply.json()["error"]["message"]


def test_server_errors_alternate() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[Reply]:
        return [await api.call("GET", f"{api.feed}/subscriptions/list") for _ in range(3)]

    replies = run(body, faults="5xx=1")
    assert [r.status for r in replies] == [500, 503, 500]
    message = "An internal error occurred. Retry the request."
    assert replies[0].json() == {"error": {"code": "AF50000", "message": message}}


def test_slow_delays_the_answer() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[float, Reply]:
        started = time.monotonic()
        await api.call("GET", f"{api.feed}/subscriptions/list")
        return time.monotonic() - started, await api.control("stats")

    elapsed, stats = run(body, faults="slow=1:0.2")
    assert elapsed >= 0.19
    assert stats.json()["faults"] == {"slow": 1}


def test_truncate_cuts_the_body_transiently() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        blob = next(b for b in emu.state.tenants[TENANT].blobs if b.content_created < NOW)
        uri = f"{api.feed}/audit/{blob.content_id}"
        served = []
        for _ in range(5):
            reply = await api.call("GET", uri)
            assert reply.status == 200
            assert int(reply.header("Content-Length") or -1) == len(reply.body)
            served.append(reply.body)
        first, *retries = served
        assert blob.body.startswith(first) and len(first) < len(blob.body)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(first)
        # Transient: the blob is cut once, so every retry gets it whole.
        assert retries == [blob.body] * 4

    run(body, faults="truncate=1")


def test_shuffle_reorders_but_keeps_each_blob_once() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[TENANT]
        start, end = NOW - DAY, NOW
        expected = [b.content_id for b in tenant.blobs_between(EX, start, end)]
        items, pages = await api.list_all(EX, start, end)
        listed = [i["contentId"] for i in items]
        assert pages > 1
        assert sorted(listed) == sorted(expected) and len(set(listed)) == len(listed)
        assert listed != expected

    run(body, faults="shuffle", subscriptions_enabled=True, page_size=4)


def test_headercase_rotates_names_and_rewrites_endtime() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[TENANT]
        start, end = NOW - DAY, NOW
        expected = {b.content_id for b in tenant.blobs_between(EX, start, end)}
        items, pages = await api.list_all(EX, start, end)
        assert {i["contentId"] for i in items} == expected and len(items) == len(expected)
        assert pages >= 4
        assert set(api.header_names) == {"nextpageuri", "NEXTPAGEURI", "NextPageUri"}
        stats = (await api.control("stats")).json()
        assert stats["faults"]["headercase"] == pages - 1

    run(body, faults="headercase", subscriptions_enabled=True, page_size=2)


def test_late_blobs_are_hidden_from_the_first_listing_only() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[TENANT]
        start, end = NOW - DAY, NOW
        expected = {b.content_id for b in tenant.blobs_between(EX, start, end) if b.content_created <= NOW}
        fresh = {b.content_id for b in tenant.blobs_between(EX, start, end)
                 if NOW - LATE_HORIZON < b.content_created <= NOW}
        first, _ = await api.list_all(EX, start, end)
        second, _ = await api.list_all(EX, start, end)
        # Only blobs young enough to be listed late are missing, and only the first time.
        assert fresh and {i["contentId"] for i in first} == expected - fresh
        assert {i["contentId"] for i in second} == expected
        truth = (await api.control("truth", {"contentType": EX, "start": iso_z(start), "end": iso_z(end)})).json()
        assert len(truth["records"]) == len(tenant.truth(EX, start, end, NOW)) > 0
        assert (await api.control("stats")).json()["faults"]["late"] == len(fresh)

    run(body, faults="late=1", subscriptions_enabled=True)


def test_expired_and_cutoff_blobs_never_succeed() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[TENANT]
        truth = (await api.control("truth")).json()
        reasons = {u["contentId"]: u["reason"] for u in truth["undeliverable"]}
        assert sorted(reasons.values()) == ["cutoff", "expired", "expired"]
        for cid, reason in reasons.items():
            blob = tenant.blob(cid)
            assert blob is not None
            uri = f"{api.feed}/audit/{cid}"
            first, second = await api.call("GET", uri), await api.call("GET", uri)
            if reason == "expired":
                assert (first.status, first.code) == (400, "AF20051") and second.code == "AF20051"
            else:
                assert first.status == 200 and first.body == second.body
                assert blob.body.startswith(first.body) and first.body != blob.body
            elsewhere = {k for b in tenant.blobs if b is not blob and b.content_created <= NOW
                         and b.undeliverable_reason is None for k in b.record_keys}
            only_here = set(blob.record_keys) - elsewhere
            assert only_here and only_here.isdisjoint({tuple(r) for r in truth["records"]})

    run(body, faults="expired=2,cutoff=1")


# --------------------------------------------------------------- control plane


def test_truth_equals_a_correct_full_collection() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        await api.start_all()
        collected: set[tuple[str, int, str]] = set()
        for ct in CONTENT_TYPES:
            for start, end in windows(NOW):
                items, _ = await api.list_all(ct, start, end)
                for item in items:
                    reply = await api.fetch(item["contentUri"])
                    assert reply.status == 200, reply.body
                    for rec in reply.json():
                        collected.add((rec["Id"], int(rec["RecordType"]), rec["Operation"]))
        truth = (await api.control("truth")).json()
        assert {tuple(r) for r in truth["records"]} == collected
        assert truth["undeliverable"] == [] and truth["damaged"] == 0 and truth["added"] == {}
        assert len(collected) > 500

    run(body, records_per_day=150)


def test_truth_equals_collection_through_every_fault() -> None:
    faults = "throttle=0.15,throttle429=0.05,5xx=0.1,truncate=0.2,shuffle,late=0.2,expired=1,cutoff=1,headercase"

    async def body(emu: EmulatorServer, api: Api) -> None:
        for ct in CONTENT_TYPES:
            for _ in range(20):
                reply = await api.start(ct)
                if reply.status == 200 or reply.code == "AF20024":
                    break
        collected: set[tuple[str, int, str]] = set()
        failed: dict[str, str] = {}
        damaged: dict[str, int] = {}
        for _sweep in range(2):  # the second pass is the overlap that catches late blobs
            for ct in CONTENT_TYPES:
                for start, end in windows(NOW):
                    items, _ = await api.list_all(ct, start, end, retries=30)
                    for item in items:
                        reply = await api.fetch(item["contentUri"], retries=30)
                        if reply.status != 200:
                            failed[item["contentId"]] = str(reply.code)
                            continue
                        try:
                            records = reply.json()
                        except orjson.JSONDecodeError:
                            # Cut off for good: what a collector keeps is what lies before the cut,
                            # as the collector's own reader reads it (a check on the truth's spans).
                            failed[item["contentId"]] = "cut"
                            content = parse_content(reply.body)
                            assert not content.complete
                            records = [r for r in content.records if type(r) is not RecoveredRecord]
                            damaged[item["contentId"]] = len(content.records) - len(records)
                        collected.update((r["Id"], int(r["RecordType"]), r["Operation"]) for r in records)
        truth = (await api.control("truth")).json()
        assert {tuple(r) for r in truth["records"]} == collected
        assert truth["damaged"] == sum(damaged.values())
        assert {u["contentId"]: u["reason"] for u in truth["undeliverable"]} == {
            cid: "expired" if code == "AF20051" else "cutoff" for cid, code in failed.items()
        }
        faults_seen = (await api.control("stats")).json()["faults"]
        assert {"throttle", "throttle429", "5xx", "truncate", "shuffle", "late", "expired", "cutoff",
                "headercase"} <= set(faults_seen)

    run(body, faults=faults, records_per_day=150, page_size=5)


def test_incident_endpoint() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[Reply, Any]:
        return await api.control("incident", {"tenantId": TENANT}), emu.state.tenants[TENANT].incident

    reply, incident = run(body, scenario="default", records_per_day=300)
    assert reply.status == 200
    assert reply.json() == incident.to_json()

    async def quiet(emu: EmulatorServer, api: Api) -> Reply:
        return await api.control("incident")

    assert run(quiet).status == 404


def test_emulator_server_defaults_and_addresses() -> None:
    async def body(emu: EmulatorServer, api: Api) -> Reply:
        assert emu.base_url.startswith("http://127.0.0.1:")
        assert emu.api_root == f"{emu.base_url}/api/v1.0"
        assert emu.state.page_size == 100
        return await api.control("tenants")

    reply = run(body)
    assert reply.json()[0]["tenant_id"] == TENANT
