"""The emulated Graph audit log query API (Purview audit search) over real HTTP."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from auditlake.emulator import EmulatorServer
from auditlake.emulator.faults import FaultSpec
from auditlake.emulator.purview import RECORD_TYPE_GRAPH, USER_TYPE_GRAPH, graph_name
from function_app.core.model import iso_z
from tests.unit.emulator.helpers import NOW, TENANT, Api, FakeClock, Reply, run, windows

DAY = timedelta(days=1)
OTHER = "7d1e2f3a-2222-4b4b-8c8c-0123456789cd"
Key = tuple[str, int, str]


class Search:
    """Just enough of a Graph client for the query API."""

    def __init__(self, emu: EmulatorServer, api: Api, token: str = "token") -> None:
        self.root = f"{emu.graph_root}/beta/security/auditLog/queries"
        self.api = api
        self.token = token

    async def call(self, method: str, url: str, body: Any = None, *, token: str | None = None) -> Reply:
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = orjson.dumps(body) if body is not None else None
        async with self.api.session.request(method, url, data=data, headers=headers) as resp:
            return Reply(resp.status, dict(resp.headers), await resp.read())

    async def create(self, start: datetime | None, end: datetime | None, **filters: Any) -> Reply:
        body: dict[str, Any] = {"displayName": "test", **filters}
        if start is not None:
            body["filterStartDateTime"] = iso_z(start)
        if end is not None:
            body["filterEndDateTime"] = iso_z(end)
        return await self.call("POST", self.root, body)

    async def poll(self, query_id: str) -> Reply:
        return await self.call("GET", f"{self.root}/{query_id}")

    async def finish(self, query_id: str, polls: int = 10) -> dict[str, Any]:
        for _ in range(polls):
            reply = await self.poll(query_id)
            assert reply.status == 200, reply.body
            query: dict[str, Any] = reply.json()
            if query["status"] not in ("notStarted", "running"):
                return query
        return query

    async def records(self, query_id: str) -> tuple[list[dict[str, Any]], list[str]]:
        """Every record of one paging, following @odata.nextLink verbatim; and the links followed."""
        url: str | None = f"{self.root}/{query_id}/records"
        out: list[dict[str, Any]] = []
        links: list[str] = []
        while url is not None:
            reply = await self.call("GET", url)
            assert reply.status == 200, reply.body
            page = reply.json()
            out.extend(page["value"])
            url = page.get("@odata.nextLink")
            if url is not None:
                links.append(url)
        return out, links

    async def search(self, start: datetime | None, end: datetime | None, **filters: Any) -> tuple[
            dict[str, Any], list[dict[str, Any]]]:
        created = await self.create(start, end, **filters)
        assert created.status == 201, created.body
        query = await self.finish(created.json()["id"])
        assert query["status"] == "succeeded", query
        records, _ = await self.records(query["id"])
        return query, records


def keys(records: list[dict[str, Any]]) -> list[Key]:
    return [(str(r["auditData"]["Id"]), int(r["auditData"]["RecordType"]), str(r["auditData"]["Operation"]))
            for r in records]


async def truth(api: Api, start: datetime | None = None, end: datetime | None = None,
                tenant: str | None = None) -> dict[str, set[Key]]:
    params = {}
    if start is not None:
        params["start"] = iso_z(start)
    if end is not None:
        params["end"] = iso_z(end)
    if tenant is not None:
        params["tenant"] = tenant
    reply = await api.control("search_truth", params)
    assert reply.status == 200, reply.body
    body = reply.json()
    return {name: {(k[0], k[1], k[2]) for k in body[name]} for name in ("records", "feedMissing")}


def run_search(body: Any, **kw: Any) -> Any:
    kw.setdefault("days", 10)
    kw.setdefault("records_per_day", 150)
    return run(body, **kw)


# ------------------------------------------------------------------------------ contract


def test_query_lifecycle_and_paging_give_exactly_the_truth() -> None:
    start, end = NOW - 3 * DAY, NOW - DAY

    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        s = Search(emu, api)
        created = await s.create(start, end)
        query_id = created.json()["id"]
        polls = [(await s.poll(query_id)).json() for _ in range(3)]
        records, links = await s.records(query_id)
        again, _ = await s.records(query_id)
        return {"created": created, "polls": polls, "records": records, "links": links, "again": again,
                "truth": await truth(api, start, end), "graph_root": emu.graph_root, "base": emu.base_url,
                "stats": (await api.control("stats")).json()}

    out = run_search(body, search_page_size=40)
    created: Reply = out["created"]
    assert created.status == 201
    query = created.json()
    assert query["status"] == "notStarted" and query["id"]
    assert query["filterStartDateTime"] == iso_z(start) and query["filterEndDateTime"] == iso_z(end)
    assert query["recordCountLimit"] == 1_000_000 and query["isRecordCountLimitExceeded"] is False
    assert query["approximateReturnedRecordCount"] is None
    assert [p["status"] for p in out["polls"]] == ["running", "succeeded", "succeeded"]
    done = out["polls"][1]
    records = out["records"]
    assert done["approximateReturnedRecordCount"] == len(records) and done["isRecordCountLimitExceeded"] is False
    assert out["graph_root"] == out["base"] + "/graph"
    assert out["links"] and all(link.startswith(out["graph_root"] + "/beta/security/auditLog/queries/")
                                for link in out["links"])
    assert len(out["links"]) == (len(records) - 1) // 40
    found = keys(records)
    assert len(found) == len(set(found))
    assert set(found) == out["truth"]["records"] and out["truth"]["records"]
    assert keys(out["again"]) == found
    created_at = [r["createdDateTime"] for r in records]
    assert created_at == sorted(created_at)
    for r in records:
        data = r["auditData"]
        assert r["id"] == data["Id"]
        assert r["createdDateTime"] == data["CreationTime"] + "Z"
        assert iso_z(start) <= r["createdDateTime"] < iso_z(end)
        assert r["auditLogRecordType"] == RECORD_TYPE_GRAPH[int(data["RecordType"])]
        assert r["service"] == data["Workload"] and r["operation"] == data["Operation"]
        assert r["organizationId"] == TENANT and r["userId"] == data["UserId"] == r["userPrincipalName"]
        assert r["userType"] == USER_TYPE_GRAPH[int(data["UserType"])]
        assert r["clientIp"] == data.get("ClientIP") and r["objectId"] == data.get("ObjectId")
        assert r["administrativeUnits"] == []
    search = out["stats"]["search"]
    assert search["requests"]["CreateAuditLogQuery"] == 1 and search["queries"] == 1
    assert search["requests"]["GetAuditLogQuery"] == 3 and search["faults"] == {}


def test_audit_data_is_the_record_as_its_blob_holds_it() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[list[dict[str, Any]], dict[Key, dict[str, Any]]]:
        s = Search(emu, api)
        _, records = await s.search(NOW - 2 * DAY, NOW)
        tenant = emu.state.tenants[TENANT]
        served: dict[Key, dict[str, Any]] = {}
        for blob in tenant.blobs:
            for rec in orjson.loads(blob.body):
                served.setdefault((str(rec["Id"]), int(rec["RecordType"]), str(rec["Operation"])), rec)
        return records, served

    records, served = run_search(body)
    for r in records:
        key = keys([r])[0]
        assert r["auditData"] == served[key]
        # Key order too: the bytes are the blob's, not a re-serialisation.
        assert list(r["auditData"]) == list(served[key])


def test_history_older_than_the_feed_is_searchable_while_the_feed_refuses_it() -> None:
    start, end = NOW - 10 * DAY, NOW - 8 * DAY

    async def body(emu: EmulatorServer, api: Api) -> tuple[list[Key], set[Key], Reply]:
        s = Search(emu, api)
        _, records = await s.search(start, end)
        await api.start_all()
        feed = await api.list_page("Audit.Exchange", iso_z(NOW - 9 * DAY), iso_z(NOW - 8 * DAY))
        return keys(records), (await truth(api, start, end))["records"], feed

    found, expected, feed = run_search(body)
    assert found and set(found) == expected
    assert (feed.status, feed.code) == (400, "AF20030")


def test_filters_on_record_type_service_and_operation() -> None:
    start, end = NOW - 4 * DAY, NOW

    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        s = Search(emu, api)
        _, everything = await s.search(start, end)
        _, typed = await s.search(start, end, recordTypeFilters=["azureActiveDirectoryStsLogon", "ExchangeItem"])
        _, service = await s.search(start, end, serviceFilters=["exchange"])
        _, single = await s.search(start, end, serviceFilter="SharePoint")
        _, ops = await s.search(start, end, operationFilters=["userloggedin"])
        bad = await s.create(start, end, recordTypeFilters=["notARecordType"])
        return {"all": everything, "typed": typed, "service": service, "single": single, "ops": ops, "bad": bad}

    out = run_search(body)
    everything = out["all"]

    def expect(pred: Any) -> list[Key]:
        return [k for r, k in zip(everything, keys(everything), strict=True) if pred(r["auditData"])]

    assert keys(out["typed"]) == expect(lambda d: int(d["RecordType"]) in (15, 2)) != []
    assert keys(out["service"]) == expect(lambda d: d["Workload"] == "Exchange") != []
    assert keys(out["single"]) == expect(lambda d: d["Workload"] == "SharePoint") != []
    assert keys(out["ops"]) == expect(lambda d: d["Operation"] == "UserLoggedIn") != []
    bad: Reply = out["bad"]
    assert (bad.status, bad.code) == (400, "BadRequest")


def test_feedmissing_records_are_searchable_but_in_no_blob_the_feed_serves() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        s = Search(emu, api)
        _, records = await s.search(None, NOW + timedelta(minutes=1))
        await api.start_all()
        fed: set[Key] = set()
        for ct in ("Audit.AzureActiveDirectory", "Audit.Exchange", "Audit.SharePoint", "Audit.General", "DLP.All"):
            for w_start, w_end in windows(NOW, days=7):
                items, _ = await api.list_all(ct, w_start, w_end)
                for item in items:
                    blob = await api.fetch(item["contentUri"])
                    assert blob.status == 200
                    fed.update((str(r["Id"]), int(r["RecordType"]), str(r["Operation"])) for r in blob.json())
        feed_truth = (await api.control("truth")).json()["records"]
        return {"records": keys(records), "truth": await truth(api), "fed": fed,
                "feed_truth": {(k[0], k[1], k[2]) for k in feed_truth}}

    out = run_search(body, faults="feedmissing=4", days=8, records_per_day=100)
    missing = out["truth"]["feedMissing"]
    assert len(missing) == 4
    assert missing <= set(out["records"]) and set(out["records"]) == out["truth"]["records"]
    assert missing.isdisjoint(out["fed"]) and missing.isdisjoint(out["feed_truth"])
    # Nothing else is missing: what the feed served in its 7 days is in the search.
    assert out["fed"] <= out["truth"]["records"]


def test_feedmissing_is_reproducible_and_undone_when_applied_again() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[set[Key], set[Key], bytes, bytes]:
        tenant = emu.state.tenants[TENANT]
        first = {w.key for w in tenant.feed_missing}
        blob = tenant.blob(tenant.feed_missing[0].content_id)
        assert blob is not None
        served = blob.body
        tenant.withhold_from_feed(0, 11)
        whole = blob.body
        tenant.withhold_from_feed(3, 11)
        return first, {w.key for w in tenant.feed_missing}, served, whole

    first, again, served, whole = run(body, faults="feedmissing=3")
    assert first == again and len(first) == 3
    assert len(whole) > len(served)


# ------------------------------------------------------------------------------- tenants, auth


def test_token_is_checked_and_chooses_the_tenant() -> None:
    async def main() -> dict[str, Any]:
        async with (
            EmulatorServer([TENANT, OTHER], clock=FakeClock(), scenario="quiet", records_per_day=100, seed=3,
                           token="s3cret") as emu,
            aiohttp.ClientSession() as session,
        ):
            api = Api(emu, session)
            s = Search(emu, api, token="s3cret")
            out: dict[str, Any] = {}
            for name, token in (("none", ""), ("wrong", "wrong"), ("unknown", f"s3cret@{TENANT[:-1]}0"),
                                ("wrong_secret", f"nope@{OTHER}")):
                out[name] = await s.call("POST", s.root, {}, token=token)
            _, out["first"] = await s.search(NOW - DAY, NOW)
            other = Search(emu, api, token=f"s3cret@{OTHER}")
            query, out["other"] = await other.search(NOW - DAY, NOW)
            out["cross"] = await s.poll(query["id"])
            out["truth_other"] = await truth(api, NOW - DAY, NOW, tenant=OTHER)
            return out

    out = asyncio.run(main())
    for name in ("none", "wrong", "unknown", "wrong_secret"):
        reply: Reply = out[name]
        assert (reply.status, reply.code) == (401, "InvalidAuthenticationToken"), name
        assert reply.header("WWW-Authenticate") == "Bearer"
    assert {r["organizationId"] for r in out["first"]} == {TENANT}
    assert {r["organizationId"] for r in out["other"]} == {OTHER}
    assert set(keys(out["other"])) == out["truth_other"]["records"]
    assert (out["cross"].status, out["cross"].code) == (404, "NotFound")


def test_bad_requests_answer_graph_errors() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[Reply]:
        s = Search(emu, api)
        created = (await s.create(NOW - DAY, NOW)).json()["id"]
        return [
            await s.call("POST", s.root, {"filterStartDateTime": "yesterday"}),
            await s.create(NOW, NOW - DAY),
            await s.call("POST", s.root, {"operationFilters": "Set-Mailbox"}),
            await s.poll("00000000-0000-0000-0000-000000000000"),
            await s.call("GET", f"{s.root}/{created}/records"),
        ]

    replies = run(body)
    assert [(r.status, r.code) for r in replies] == [(400, "BadRequest")] * 3 + [(404, "NotFound"),
                                                                                  (400, "BadRequest")]
    assert all(set(r.json()["error"]) == {"code", "message", "innerError"} for r in replies)


# --------------------------------------------------------------------------------------- faults


def test_search_stuck_and_fail_take_the_first_queries_in_turn() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[list[str], list[Reply], dict[str, Any]]:
        s = Search(emu, api)
        ids = [(await s.create(NOW - DAY, NOW)).json()["id"] for _ in range(4)]
        statuses = [(await s.finish(query_id, polls=6))["status"] for query_id in ids]
        records = [await s.call("GET", f"{s.root}/{query_id}/records") for query_id in ids[:3]]
        return statuses, records, (await api.control("stats")).json()["search"]

    statuses, records, stats = run(body, faults="search_stuck=1,search_fail=2")
    assert statuses == ["running", "failed", "failed", "succeeded"]
    assert all((r.status, r.code) == (400, "BadRequest") for r in records)
    assert stats["faults"] == {"search_stuck": 1, "search_fail": 2}


def test_search_limit_serves_the_earliest_records() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        s = Search(emu, api)
        big, big_records = await s.search(NOW - 3 * DAY, NOW)
        small, small_records = await s.search(NOW - timedelta(hours=2), NOW)
        index = await emu.state.search.index(emu.state.tenants[TENANT])
        return {"big": big, "big_records": big_records, "small": small, "small_records": small_records,
                "earliest": [e.key for e in index.between(NOW - 3 * DAY, NOW)][:30]}

    out = run_search(body, faults="search_limit=30")
    assert out["big"]["isRecordCountLimitExceeded"] is True and out["big"]["recordCountLimit"] == 30
    assert out["big"]["approximateReturnedRecordCount"] == 30
    assert keys(out["big_records"]) == out["earliest"]
    assert out["small"]["isRecordCountLimitExceeded"] is False
    assert 0 < len(out["small_records"]) <= 30


def test_search_flaky_drops_records_from_the_first_paging_only() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        s = Search(emu, api)
        query, first = await s.search(NOW - 2 * DAY, NOW)
        second, _ = await s.records(query["id"])
        _, other = await s.search(NOW - 2 * DAY, NOW)
        return {"query": query, "first": first, "second": second, "other": other,
                "stats": (await api.control("stats")).json()["search"]}

    out = run_search(body, faults="search_flaky=1")
    full = keys(out["second"])
    assert out["query"]["approximateReturnedRecordCount"] == len(full)
    first = keys(out["first"])
    dropped = len(full) - len(first)
    assert 1 <= dropped <= len(full) // 50 + 1
    assert set(first) < set(full)
    assert keys(out["other"]) == full
    assert out["stats"]["faults"] == {"search_flaky": 1, "search_flaky_records": dropped}


def test_search_throttle_answers_429_with_retry_after() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[list[Reply], dict[str, Any], str]:
        s = Search(emu, api)
        replies = [await s.create(NOW - DAY, NOW) for _ in range(20)]
        created = next(r for r in replies if r.status == 201).json()["id"]
        status = "notStarted"
        while status not in ("succeeded", "failed"):
            poll = await s.poll(created)
            replies.append(poll)
            if poll.status == 200:
                status = poll.json()["status"]
        return replies, (await api.control("stats")).json()["search"], status

    replies, stats, status = run(body, faults="search_throttle=0.4")
    throttled = [r for r in replies if r.status == 429]
    assert throttled and len(throttled) < len(replies)
    assert all(r.header("Retry-After") == "1" and r.code == "TooManyRequests" for r in throttled)
    assert stats["faults"]["search_throttle"] == len(throttled)
    assert status == "succeeded"


def test_search_max_days_fails_long_and_open_ranges_as_timeouts() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[str]:
        s = Search(emu, api)
        out = []
        for start, end in ((NOW - 3 * DAY, NOW), (None, NOW), (NOW - DAY, NOW), (NOW - 2 * DAY, None)):
            query_id = (await s.create(start, end)).json()["id"]
            out.append((await s.finish(query_id))["status"])
        return out

    assert run(body, faults="search_max_days=2,search_fail=1") == ["failed", "failed", "failed", "succeeded"]


def test_the_search_polls_setting_sets_how_long_a_query_runs() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[str]:
        s = Search(emu, api)
        query_id = (await s.create(NOW - DAY, NOW)).json()["id"]
        return [(await s.poll(query_id)).json()["status"] for _ in range(5)]

    assert run(body, search_polls=4) == ["running", "running", "running", "succeeded", "succeeded"]


# ---------------------------------------------------------------------------------- fault spec


def test_search_fault_keys_parse_and_round_trip() -> None:
    spec = FaultSpec.parse("search_stuck=1,search_fail=2,search_limit=500,search_flaky=3,search_throttle=0.1,"
                           "search_max_days=31,feedmissing=5")
    assert (spec.search_stuck, spec.search_fail, spec.search_limit, spec.search_flaky) == (1, 2, 500, 3)
    assert (spec.search_throttle, spec.search_max_days, spec.feedmissing) == (0.1, 31.0, 5)
    assert FaultSpec.parse(str(spec)) == spec and spec.active


@pytest.mark.parametrize(
    ("text", "named"),
    [("search_limit=0", "search_limit"), ("search_max_days=0", "search_max_days"),
     ("search_max_days=soon", "search_max_days"), ("search_throttle=2", "search_throttle"),
     ("feedmissing=-1", "feedmissing"), ("search_stuck", "search_stuck")],
)
def test_bad_search_fault_values_name_the_key(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        FaultSpec.parse(text)


def test_graph_names_follow_the_enum() -> None:
    assert [graph_name(n) for n in ("ExchangeAdmin", "MIPLabel", "CRM", "DCAdmin", "PowerBIAudit", "AeD")] == [
        "exchangeAdmin", "mipLabel", "crm", "dcAdmin", "powerBIAudit", "aeD"]
    assert RECORD_TYPE_GRAPH[15] == "azureActiveDirectoryStsLogon" and RECORD_TYPE_GRAPH[22] == "yammer"
    assert RECORD_TYPE_GRAPH[11] == "complianceDLPSharePoint" and USER_TYPE_GRAPH[6] == "servicePrincipal"
