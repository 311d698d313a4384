"""The fault kinds added for the fault suite, over real HTTP: gateway, reset, burst, malformed,
oversize, dupblobs, pagesize."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from itertools import groupby

import aiohttp
import orjson
import pytest

from auditlake.emulator import EmulatorServer
from auditlake.emulator.faults import OVERSIZE_BYTES, malformed_body
from auditlake.emulator.server import DUP_REACH, RETRY_AFTER_SECONDS
from tests.unit.emulator.helpers import NOW, Api, run

EX = "Audit.Exchange"
DAY = timedelta(days=1)


def test_gateway_answers_are_html_without_an_af_code() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[tuple[int, str | None, str]]:
        replies = [await api.call("GET", f"{api.feed}/subscriptions/list") for _ in range(2)]
        return [(r.status, r.code, r.header("Content-Type") or "") for r in replies]

    answers = run(body, faults="gateway=1")
    assert [status for status, _, _ in answers] == [502, 504]
    assert all(code is None and kind.startswith("text/html") for _, code, kind in answers)


def test_reset_drops_the_connection_before_the_answer_or_halfway_through_the_body() -> None:
    async def body(emu: EmulatorServer, api: Api) -> Counter[str]:
        blob = next(b for b in emu.state.tenants[api.tenant].blobs if b.content_created < NOW)
        seen: Counter[str] = Counter()
        for _ in range(30):
            # A fresh session each time: a dropped connection must not be reused.
            async with aiohttp.ClientSession() as session:
                try:
                    async with session.get(f"{api.feed}/audit/{blob.content_id}",
                                           headers={"Authorization": "Bearer t"}) as resp:
                        await resp.read()
                    seen["answered"] += 1
                except aiohttp.ServerDisconnectedError:
                    seen["before"] += 1
                except aiohttp.ClientPayloadError as exc:
                    assert "Not enough data" in str(exc)
                    seen["mid-body"] += 1
        stats = (await api.control("stats")).json()
        # aiohttp itself re-sends a GET once when the server hung up before answering.
        assert 30 <= stats["faults"]["reset"] <= 60, "the control plane is never reset"
        return seen

    seen = run(body, faults="reset=1")
    assert seen["answered"] == 0 and seen["before"] > 0 and seen["mid-body"] > 0


def test_throttling_comes_in_bursts() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[list[int], int]:
        statuses = [(await api.call("GET", f"{api.feed}/subscriptions/list")).status for _ in range(120)]
        return statuses, (await api.control("stats")).json()["faults"]["burst"]

    statuses, bursts = run(body, faults="throttle=0.1,burst=4")
    runs = [(status, len(list(group))) for status, group in groupby(statuses)]
    if runs[-1][0] == 403:
        runs.pop()  # the requests stopped before that burst ended
    throttled = [n for status, n in runs if status == 403]
    # A burst may start again right after one ends, so a run is a whole number of bursts.
    assert len(throttled) > 3 and all(n % 4 == 0 for n in throttled), runs
    assert bursts == -(-statuses.count(403) // 4)


def test_malformed_blobs_are_whole_but_never_json() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[api.tenant]
        truth = (await api.control("truth")).json()
        # Whole blobs: a collector keeps every record around the corruption, and one damaged row.
        assert truth["undeliverable"] == [] and truth["damaged"] == 2
        records = {tuple(r) for r in truth["records"]}
        bad = [b for b in tenant.blobs if b.malformed]
        assert len(bad) == 2
        for blob in bad:
            cid = blob.content_id
            replies = [await api.call("GET", f"{api.feed}/audit/{cid}") for _ in range(2)]
            assert all(r.status == 200 and r.body == malformed_body(blob.body, cid) for r in replies)
            with pytest.raises(orjson.JSONDecodeError):
                replies[0].json()
            assert len(replies[0].body) >= len(blob.body)
            # At most one record, the one the corruption touches, is not served whole.
            assert len(set(blob.record_keys) - records) <= 1
        assert (await api.control("stats")).json()["faults"]["malformed"] == 4

    run(body, faults="malformed=2")


def test_oversize_blobs_are_padded_valid_json_with_and_without_a_length() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[api.tenant]
        truth = (await api.control("truth")).json()
        assert [u["reason"] for u in truth["undeliverable"]] == ["oversize"] * 6
        framing = set()
        for item in truth["undeliverable"]:
            blob = tenant.blob(item["contentId"])
            assert blob is not None
            reply = await api.call("GET", f"{api.feed}/audit/{blob.content_id}")
            assert reply.status == 200 and len(reply.body) >= OVERSIZE_BYTES
            assert reply.json() == orjson.loads(blob.body)
            framing.add("chunked" if reply.header("Transfer-Encoding") == "chunked" else reply.header("Content-Length"))
        assert "chunked" in framing and len(framing) > 1

    run(body, faults="oversize=6")


def test_dupblobs_lists_a_blob_twice_and_again_in_the_next_window() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[api.tenant]
        start, end = NOW - DAY, NOW
        own = {b.content_id for b in tenant.blobs_between(EX, start, end) if b.content_created <= NOW}
        twice = {b.content_id for b in tenant.blobs_between(EX, start, end) if b.duplicated}
        earlier = {b.content_id for b in tenant.blobs_between(EX, start - DUP_REACH, start) if b.duplicated}
        items, pages = await api.list_all(EX, start, end)
        counts = Counter(i["contentId"] for i in items)
        assert pages > 1 and twice and earlier
        assert set(counts) == own | earlier
        assert {cid for cid, n in counts.items() if n == 2} == twice
        assert all(counts[cid] == 1 for cid in earlier)
        faults = (await api.control("stats")).json()["faults"]
        assert (faults["dupblobs"], faults["dupblobs_window"]) == (len(twice), len(earlier))
        # The truth counts each record once, whatever the listing repeats.
        truth = (await api.control("truth", {"contentType": EX})).json()["records"]
        assert len(truth) == len({tuple(r) for r in truth})

    run(body, faults="dupblobs=0.4,pagesize=4", subscriptions_enabled=True, days=2, records_per_day=400)


def test_pagesize_overrides_the_servers_page_size() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[int, int]:
        items, pages = await api.list_all(EX, NOW - DAY, NOW)
        return len(items), pages

    items, pages = run(body, faults="pagesize=3", subscriptions_enabled=True, page_size=100)
    assert items > 6 and pages == -(-items // 3)


def test_a_repeat_sooner_than_retry_after_is_counted() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[int]:
        uri = f"{api.feed}/subscriptions/list"
        first = await api.call("GET", uri)
        assert (first.status, first.header("Retry-After")) == (429, str(RETRY_AFTER_SECONDS))
        await api.call("GET", uri)  # at once: ignores the Retry-After
        counts = [(await api.control("stats")).json()["retry_after_ignored"]]
        await api.call("GET", f"{api.feed}/subscriptions/list?other=1")  # another request: not a repeat
        await asyncio.sleep(RETRY_AFTER_SECONDS + 0.1)
        await api.call("GET", uri)  # waited it out
        counts.append((await api.control("stats")).json()["retry_after_ignored"])
        return counts

    assert run(body, faults="throttle429=1") == [1, 1]
