"""The emulated Graph Entra ID logs (sign-ins, directory audits) over real HTTP."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from auditlake.emulator import EmulatorServer
from auditlake.emulator.entra import (
    EVENT_TYPES,
    NO_PERMISSION_CODE,
    NON_PREMIUM_CODE,
    EntraEntry,
    EntraLog,
    parse_filter,
)
from auditlake.emulator.faults import FaultSpec
from auditlake.emulator.tenant import SyntheticTenant
from tests.unit.emulator.helpers import NOW, TENANT, Api, FakeClock, Reply, run

DAY = timedelta(days=1)
OTHER = "7d1e2f3a-2222-4b4b-8c8c-0123456789cd"
ALL_KINDS = "signInEventTypes/any(t: " + " or ".join(f"t eq '{k}'" for k in EVENT_TYPES) + ")"
Record = dict[str, Any]


def gtime(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Graph:
    """Just enough of a Graph client: GETs, and paging that follows @odata.nextLink verbatim."""

    def __init__(self, emu: EmulatorServer, api: Api, token: str = "token") -> None:
        self.emu = emu
        self.api = api
        self.token = token
        self.signins = f"{emu.graph_root}/beta/auditLogs/signIns"
        self.audits = f"{emu.graph_root}/v1.0/auditLogs/directoryAudits"

    async def get(self, url: str, params: dict[str, str] | None = None, *, token: str | None = None) -> Reply:
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if params:
            url += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        async with self.api.session.get(url, headers=headers) as resp:
            return Reply(resp.status, dict(resp.headers), await resp.read())

    async def all(self, url: str, params: dict[str, str] | None = None, *, retries: int = 0
                  ) -> tuple[list[list[Record]], list[str], list[Reply]]:
        """Every page to the last; with *retries*, 429, 5xx and unreadable pages are asked again.
        Returns the pages, the links followed and the failed replies seen."""
        pages: list[list[Record]] = []
        links: list[str] = []
        failed: list[Reply] = []
        reply = await self._retrying(url, params, retries, failed)
        while True:
            page = reply.json()
            pages.append(page["value"])
            link = page.get("@odata.nextLink")
            if link is None:
                return pages, links, failed
            links.append(link)
            reply = await self._retrying(link, None, retries, failed)

    async def _retrying(self, url: str, params: dict[str, str] | None, retries: int, failed: list[Reply]) -> Reply:
        for _ in range(retries + 1):
            reply = await self.get(url, params)
            if reply.status == 200 and _parses(reply):
                return reply
            failed.append(reply)
        raise AssertionError(f"no good answer after {retries} retries: {reply.status} {reply.body[:200]!r}")


def _parses(reply: Reply) -> bool:
    try:
        reply.json()
    except orjson.JSONDecodeError:
        return False
    return True


def flat(pages: list[list[Record]]) -> list[Record]:
    return [r for page in pages for r in page]


async def truth(api: Api, **params: str) -> dict[str, Any]:
    reply = await api.control("entra_truth", params)
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json()
    return body


def run_entra(body: Any, **kw: Any) -> Any:
    kw.setdefault("days", 3)
    kw.setdefault("signins_per_day", 30)
    kw.setdefault("entra_budget", 0)
    return run(body, **kw)


def assert_graph_error(reply: Reply, status: int, code: str) -> None:
    assert (reply.status, reply.code) == (status, code), reply.body
    error = reply.json()["error"]
    assert set(error) == {"code", "message", "innerError"} and error["message"]
    assert {"date", "request-id", "client-request-id"} <= set(error["innerError"])


# ------------------------------------------------------------------------------------ sign-ins


def test_signins_page_to_the_end_newest_first_and_give_exactly_the_truth() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        pages, links, _ = await g.all(g.signins, {"$filter": ALL_KINDS, "$top": "50"})
        return {"pages": pages, "links": links, "truth": await truth(api), "root": emu.graph_root}

    out = run_entra(body)
    records = flat(out["pages"])
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) and len(ids) > 200
    assert {(i, k) for i, k in out["truth"]["signIns"]} == {(r["id"], r["signInEventTypes"][0]) for r in records}
    assert all(len(p) == 50 for p in out["pages"][:-1]) and 1 <= len(out["pages"][-1]) <= 50
    assert len(out["pages"]) == math.ceil(len(ids) / 50) == len(out["links"]) + 1
    assert all(link.startswith(out["root"] + "/beta/auditLogs/signIns?") and "$skiptoken=" in link
               for link in out["links"])
    created = [r["createdDateTime"] for r in records]
    assert created == sorted(created, reverse=True)
    assert Counter(r["signInEventTypes"][0] for r in records).keys() == set(EVENT_TYPES)


def test_without_an_event_type_filter_only_interactive_user_signins_come() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        plain, _, _ = await g.all(g.signins)
        dated, _, _ = await g.all(g.signins, {"$filter": f"createdDateTime ge {gtime(NOW - DAY)}"})
        per_kind = {k: flat((await g.all(g.signins, {"$filter": f"signInEventTypes/any(t: t eq '{k}')"}))[0])
                    for k in EVENT_TYPES}
        ored = flat((await g.all(g.signins, {"$filter": "signInEventTypes/any(t: t eq 'servicePrincipal') or "
                                                         "signInEventTypes/any(t: t eq 'managedIdentity')"}))[0])
        negated = flat((await g.all(g.signins, {"$filter": "signInEventTypes/any(t: t ne 'interactiveUser')"}))[0])
        return {"plain": flat(plain), "dated": flat(dated), "per_kind": per_kind, "ored": ored,
                "negated": negated, "truth": await truth(api)}

    out = run_entra(body)
    expected: dict[str, set[str]] = {k: set() for k in EVENT_TYPES}
    for rid, kind in out["truth"]["signIns"]:
        expected[kind].add(rid)
    assert {r["id"] for r in out["plain"]} == expected["interactiveUser"]
    assert out["dated"] and {r["id"] for r in out["dated"]} < expected["interactiveUser"]
    for kind, records in out["per_kind"].items():
        assert {r["id"] for r in records} == expected[kind] and records
        assert all(r["signInEventTypes"] == [kind] for r in records)
        assert all(r["isInteractive"] is (kind == "interactiveUser") for r in records)
    assert {r["id"] for r in out["ored"]} == expected["servicePrincipal"] | expected["managedIdentity"]
    assert {r["id"] for r in out["negated"]} == set().union(*expected.values()) - expected["interactiveUser"]


def test_signin_records_have_the_documented_shapes() -> None:
    async def body(emu: EmulatorServer, api: Api) -> list[Record]:
        g = Graph(emu, api)
        return flat((await g.all(g.signins, {"$filter": ALL_KINDS}))[0])

    records = run_entra(body)
    by_kind: dict[str, list[Record]] = {k: [] for k in EVENT_TYPES}
    for r in records:
        by_kind[r["signInEventTypes"][0]].append(r)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["createdDateTime"])
        assert {"id", "correlationId", "ipAddress", "location", "status", "appId", "resourceId",
                "resourceDisplayName", "conditionalAccessStatus", "deviceDetail"} <= set(r)
        assert isinstance(r["status"]["errorCode"], int)
    users = by_kind["interactiveUser"]
    codes = Counter(r["status"]["errorCode"] for r in users)
    assert codes[0] > len(users) / 2 and codes[50126] and len(codes) >= 3
    assert {"multiFactorAuthentication", "singleFactorAuthentication"} <= {r["authenticationRequirement"]
                                                                           for r in users}
    assert any(len(r["authenticationDetails"]) == 2 for r in users)
    assert all(r["appliedConditionalAccessPolicies"] and r["userPrincipalName"] for r in users)
    assert all(r["authenticationDetails"][0]["authenticationMethod"] == "Previously satisfied"
               for r in by_kind["nonInteractiveUser"])
    for r in by_kind["servicePrincipal"]:
        assert r["servicePrincipalId"] and r["servicePrincipalName"] and r["servicePrincipalCredentialKeyId"]
        assert r["clientCredentialType"] in ("clientSecret", "certificate")
        assert bool(r["servicePrincipalCredentialThumbprint"]) == (r["clientCredentialType"] == "certificate")
        assert r["userPrincipalName"] is None
    for r in by_kind["managedIdentity"]:
        msi = r["managedServiceIdentity"]
        assert msi["msiType"] in ("systemAssigned", "userAssigned") and msi["associatedResourceId"].startswith(
            "/subscriptions/")
        assert r["resourceDisplayName"] in ("Azure Key Vault", "Azure Resource Manager")
        assert r["clientCredentialType"] == "managedIdentity"


def test_time_filters_bound_the_listing() -> None:
    start, end = NOW - 2 * DAY, NOW - DAY

    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        window = flat((await g.all(g.signins, {
            "$filter": f"createdDateTime ge {gtime(start)} and createdDateTime lt {gtime(end)} and {ALL_KINDS}"}))[0])
        one = window[len(window) // 2]["createdDateTime"]
        exact = flat((await g.all(g.signins, {
            "$filter": f"({ALL_KINDS}) and createdDateTime ge {one} and createdDateTime le {one}"}))[0])
        after = flat((await g.all(g.signins, {"$filter": f"{ALL_KINDS} and createdDateTime gt {one}"}))[0])
        asc = flat((await g.all(g.signins, {"$filter": f"{ALL_KINDS} and createdDateTime ge {gtime(start)}",
                                             "$orderby": "createdDateTime asc"}))[0])
        return {"window": window, "one": one, "exact": exact, "after": after, "asc": asc,
                "truth": await truth(api, start=gtime(start), end=gtime(end))}

    out = run_entra(body)
    assert {r["id"] for r in out["window"]} == {i for i, _ in out["truth"]["signIns"]} and out["window"]
    assert all(gtime(start) <= r["createdDateTime"] < gtime(end) for r in out["window"])
    assert out["exact"] and all(r["createdDateTime"] == out["one"] for r in out["exact"])
    assert out["after"] and all(r["createdDateTime"] > out["one"] for r in out["after"])
    created = [r["createdDateTime"] for r in out["asc"]]
    assert created == sorted(created) and created[0] >= gtime(start)


def test_top_defaults_to_1000_and_is_capped_there() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[Reply, Reply, Reply]:
        g = Graph(emu, api)
        return (await g.get(g.signins, {"$filter": ALL_KINDS}),
                await g.get(g.signins, {"$filter": ALL_KINDS, "$top": "5000"}),
                await g.get(g.signins, {"$filter": ALL_KINDS, "$top": "7"}))

    default, big, small = run_entra(body, signins_per_day=120)
    assert len(default.json()["value"]) == 1000 and "@odata.nextLink" in default.json()
    assert len(big.json()["value"]) == 1000
    assert len(small.json()["value"]) == 7 and "$top=7&" in small.json()["@odata.nextLink"]


def test_bad_requests_answer_in_graphs_error_shape() -> None:
    bad_filters = [
        "createdDateTime ge '2025-03-09T00:00:00Z'",
        "createdDateTime ge",
        "createdDateTime ge 2025-13-01T00:00:00Z",
        "signInEventTypes/any(t: t eq 'robot')",
        "signInEventTypes/any(t: t gt 'servicePrincipal')",
        "contains(userPrincipalName, 'admin')",
        "(createdDateTime ge 2025-03-09T00:00:00Z",
        "createdDateTime ge 2025-03-09T00:00:00Z and",
        "userPrincipalName startswith 'a'",
        "createdDateTime ge 2025-03-09T00:00:00Z !",
    ]

    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        first = (await g.get(g.signins, {"$top": "5"})).json()["@odata.nextLink"]
        token = first.split("$skiptoken=")[1]
        return {
            "filters": [await g.get(g.signins, {"$filter": f}) for f in bad_filters],
            "audit_filter": await g.get(g.audits, {"$filter": "createdDateTime ge 2025-03-09T00:00:00Z"}),
            "top": [await g.get(g.signins, {"$top": t}) for t in ("0", "-3", "ten")],
            "select": await g.get(g.signins, {"$select": "id"}),
            "orderby": await g.get(g.signins, {"$orderby": "userPrincipalName"}),
            "skiptoken": [await g.get(g.signins, {"$skiptoken": t}) for t in ("nonsense", token[:-2] + "AA")],
            "wrong_kind": await g.get(g.audits, {"$skiptoken": token}),
            "no_token": await g.get(g.signins, token=""),
            "other_tenant": await g.get(g.signins, token=f"token@{OTHER}"),
            "v1_signins": await g.get(f"{emu.graph_root}/v1.0/auditLogs/signIns"),
        }

    out = run_entra(body)
    for reply in out["filters"] + [out["audit_filter"]]:
        assert_graph_error(reply, 400, "BadRequest")
        assert reply.json()["error"]["message"].startswith("Invalid filter clause")
    for reply in [*out["top"], out["select"], out["orderby"], *out["skiptoken"], out["wrong_kind"]]:
        assert_graph_error(reply, 400, "BadRequest")
    assert "$select" in out["select"].json()["error"]["message"]
    assert_graph_error(out["no_token"], 401, "InvalidAuthenticationToken")
    assert_graph_error(out["other_tenant"], 401, "InvalidAuthenticationToken")
    assert out["v1_signins"].status == 404


def test_paths_are_matched_in_lower_case_too_and_a_tenant_is_chosen_by_token() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[Reply, Reply, Reply]:
        g = Graph(emu, api)
        return (await g.get(f"{emu.graph_root}/beta/auditlogs/signins"),
                await g.get(f"{emu.graph_root}/beta/auditLogs/directoryaudits"),
                await g.get(g.signins, token=f"token@{TENANT}"))

    lower, audits, chosen = run_entra(body)
    assert lower.status == audits.status == chosen.status == 200
    assert lower.json()["value"] == chosen.json()["value"] and lower.json()["value"]


# ------------------------------------------------------------------------------- directory audits


def test_directory_audits_on_v1_and_beta_page_to_the_truth() -> None:
    start, end = NOW - 2 * DAY, NOW

    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        time_filter = f"activityDateTime ge {gtime(start)} and activityDateTime lt {gtime(end)}"
        v1, links, _ = await g.all(g.audits, {"$filter": time_filter, "$top": "20"})
        beta, _, _ = await g.all(f"{emu.graph_root}/beta/auditLogs/directoryAudits", {"$filter": time_filter})
        return {"v1": flat(v1), "links": links, "beta": flat(beta), "root": emu.graph_root,
                "truth": await truth(api, start=gtime(start), end=gtime(end))}

    out = run_entra(body, scenario="default", records_per_day=100, signins_per_day=100)
    ids = [r["id"] for r in out["v1"]]
    assert len(ids) == len(set(ids)) and set(ids) == set(out["truth"]["directoryAudits"]) and len(ids) > 20
    assert [r["id"] for r in out["beta"]] == ids
    assert all(link.startswith(out["root"] + "/v1.0/auditLogs/directoryAudits?") for link in out["links"])
    times = [r["activityDateTime"] for r in out["v1"]]
    assert times == sorted(times, reverse=True)
    for r in out["v1"]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", r["activityDateTime"])
        by = r["initiatedBy"]
        assert (by["user"] is None) != (by["app"] is None)
        assert r["result"] in ("success", "failure") and r["category"] and r["loggedByService"]
        assert r["targetResources"] and all("modifiedProperties" in t for t in r["targetResources"])
        assert r["operationType"] in ("Add", "Assign", "Update", "Unassign", "Delete")
    assert any(r["initiatedBy"]["app"] for r in out["v1"]) and any(r["result"] == "failure" for r in out["v1"])


# ------------------------------------------------------------------------------------ incident


def test_the_incident_is_in_the_logs_and_joinable() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        signins = flat((await g.all(g.signins, {"$filter": ALL_KINDS}))[0])
        audits = flat((await g.all(g.audits))[0])
        tenant = emu.state.tenants[TENANT]
        feed = [rec for blob in tenant.blobs for rec in orjson.loads(blob.body)
                if rec.get("Operation") == "Add service principal credentials."]
        return {"signins": signins, "audits": audits, "feed": feed,
                "incident": (await api.control("incident")).json()}

    out = run_entra(body, scenario="default", records_per_day=100, days=4, signins_per_day=15)
    inc = out["incident"]
    sp_id, sp_ip, attacker, victim = inc["sp_object_id"], inc["sp_ip"], inc["attacker_ip"], inc["victim_upn"]
    cred_time = inc["sp_credential_time"][:19]

    added = [a for a in out["audits"] if a["activityDisplayName"] == "Add service principal credentials."
             and a["targetResources"][0]["id"] == sp_id and a["activityDateTime"][:19] == cred_time]
    assert len(added) == 1
    audit = added[0]
    user = audit["initiatedBy"]["user"]
    assert (user["userPrincipalName"], user["id"], user["ipAddress"]) == (victim, inc["victim_object_id"], attacker)
    portal = [s for s in out["signins"] if s["correlationId"] == audit["correlationId"]]
    assert len(portal) == 1 and portal[0]["userPrincipalName"] == victim and portal[0]["ipAddress"] == attacker
    assert portal[0]["isInteractive"] is True and portal[0]["createdDateTime"][:19] < cred_time
    key_id = re.search(r"KeyIdentifier=([0-9a-f-]{36})", audit["targetResources"][0]["modifiedProperties"][0][
        "newValue"]).group(1)  # type: ignore[union-attr]
    feed_key = [re.search(r"KeyIdentifier=([0-9a-f-]{36})", str(p["NewValue"])) for rec in out["feed"]
                for p in rec["ModifiedProperties"] if rec["ObjectId"] == sp_id]
    assert key_id in {m.group(1) for m in feed_key if m}, "the same credential as the feed's record names"

    own = sorted((s for s in out["signins"] if s["servicePrincipalId"] == sp_id),
                 key=lambda s: s["createdDateTime"])
    from_new = [s for s in own if s["ipAddress"] == sp_ip]
    assert from_new and all(s["createdDateTime"][:19] > cred_time for s in from_new)
    assert all(s["status"]["errorCode"] == 0 and s["servicePrincipalCredentialKeyId"] == key_id for s in from_new)
    assert {s["resourceDisplayName"] for s in from_new} == {"Office 365 Exchange Online", "Microsoft Graph"}
    assert all(s["appId"] == inc["sp_app_id"] for s in own)
    usual = {s["ipAddress"] for s in own if s["createdDateTime"][:19] < cred_time}
    assert usual and sp_ip not in usual
    first_use = from_new[0]["createdDateTime"]
    failures = [s for s in own if cred_time < s["createdDateTime"][:19] < first_use[:19]]
    assert {s["status"]["errorCode"] for s in failures} == {7000222, 7000215}
    assert all(s["ipAddress"] in usual and s["servicePrincipalCredentialKeyId"] != key_id for s in failures)

    by_app = [a for a in out["audits"] if a["initiatedBy"]["app"] and a["initiatedBy"]["app"]["servicePrincipalId"]
              == sp_id]
    assert len(by_app) >= 2 and "Add member to group." in {a["activityDisplayName"] for a in by_app}
    for a in by_app:
        assert a["activityDateTime"][:19] > cred_time
        assert "ipAddress" not in a["initiatedBy"]["app"] and a["initiatedBy"]["app"]["appId"] == inc["sp_app_id"]
        # The address comes back only from the principal's own sign-ins just before the change.
        before = [s for s in own if s["status"]["errorCode"] == 0
                  and s["createdDateTime"][:19] <= a["activityDateTime"][:19]]
        assert before[-1]["ipAddress"] == sp_ip

    users = [s for s in out["signins"] if s["signInEventTypes"] == ["interactiveUser"]]
    spray = [s for s in users if s["ipAddress"] == attacker and s["status"]["errorCode"] == 50126]
    assert {s["userPrincipalName"] for s in spray} == set(inc["sprayed_upns"])
    assert all(inc["spray_start"][:19] <= s["createdDateTime"][:19] <= inc["spray_end"][:19] for s in spray)
    victim_ok = [s for s in users if s["userPrincipalName"] == victim and s["ipAddress"] == attacker
                 and s["status"]["errorCode"] == 0]
    assert inc["victim_login_time"][:19] in {s["createdDateTime"][:19] for s in victim_ok}


# ----------------------------------------------------------------------------- visibility, late


def test_records_become_visible_after_a_delay_and_late_ones_hours_after() -> None:
    clock = FakeClock()

    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        log = await emu.state.entra.log(emu.state.tenants[TENANT])
        at_now = {r["id"] for r in flat((await g.all(g.signins, {"$filter": ALL_KINDS}))[0])}
        truth_now = await truth(api)
        clock.advance(timedelta(hours=5))
        later = {r["id"] for r in flat((await g.all(g.signins, {"$filter": ALL_KINDS}))[0])}
        return {"log": log, "at_now": at_now, "truth_now": truth_now, "later": later,
                "truth_later": await truth(api), "stats": (await api.control("stats")).json()["entra"]}

    out = run_entra(body, clock=clock, faults="entra_late=0.2", signins_per_day=60)
    entries = out["log"].signins
    late = {e.id for e in entries if e.late}
    both = entries + out["log"].audits
    assert late and set(out["truth_now"]["late"]) == {e.id for e in both if e.late and e.visible <= NOW}
    assert all(timedelta(hours=1) <= e.visible - e.created <= timedelta(hours=4) for e in entries if e.late)
    assert all(timedelta(seconds=30) <= e.visible - e.created <= timedelta(minutes=5)
               for e in entries if not e.late)
    hidden = {e.id for e in entries if e.visible > NOW}
    recent_late = {e.id for e in entries if e.late and e.created > NOW - timedelta(hours=1)}
    assert recent_late and recent_late <= hidden
    assert out["at_now"] == {e.id for e in entries} - hidden == {i for i, _ in out["truth_now"]["signIns"]}
    assert out["later"] == {e.id for e in entries} == {i for i, _ in out["truth_later"]["signIns"]}
    assert out["stats"]["faults"]["entra_late_served"] >= len(late)


# ---------------------------------------------------------------------------------------- faults


def test_fault_keys_parse_and_print_back() -> None:
    text = ("entra_throttle=0.1,entra_5xx=0.2,entra_cutoff=0.05,entra_dup=0.3,entra_late=0.04,"
            "entra_drift=0.5,entra_nopremium,entra_noperm")
    spec = FaultSpec.parse(text)
    assert spec == FaultSpec(entra_throttle=0.1, entra_server_error=0.2, entra_cutoff=0.05, entra_dup=0.3,
                             entra_late=0.04, entra_drift=0.5, entra_nopremium=True, entra_noperm=True)
    assert FaultSpec.parse(str(spec)) == spec and spec.active
    with pytest.raises(ValueError, match="entra_dup"):
        FaultSpec.parse("entra_dup=2")


def test_throttle_and_5xx_faults_are_retried_to_the_truth() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        pages, _, failed = await g.all(g.signins, {"$filter": ALL_KINDS, "$top": "25"}, retries=30)
        return {"records": flat(pages), "failed": failed, "truth": await truth(api),
                "stats": (await api.control("stats")).json()["entra"]}

    out = run_entra(body, faults="entra_throttle=0.25,entra_5xx=0.25")
    assert {r["id"] for r in out["records"]} == {i for i, _ in out["truth"]["signIns"]}
    assert len(out["records"]) == len(out["truth"]["signIns"])
    throttled = [r for r in out["failed"] if r.status == 429]
    errors = [r for r in out["failed"] if r.status >= 500]
    assert throttled and errors and len(throttled) + len(errors) == len(out["failed"])
    for reply in throttled:
        assert_graph_error(reply, 429, "TooManyRequests")
        assert reply.header("Retry-After") == "1"
    assert {r.status for r in errors} <= {500, 503, 504} and all(_parses(r) for r in errors)
    assert out["stats"]["faults"]["entra_throttle"] == len(throttled)
    assert out["stats"]["faults"]["entra_5xx"] == len(errors)


def test_cutoff_pages_are_unreadable_and_heal_on_retry() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        pages, _, failed = await g.all(g.audits, {"$top": "10"}, retries=30)
        return {"records": flat(pages), "failed": failed, "truth": await truth(api),
                "stats": (await api.control("stats")).json()["entra"]}

    out = run_entra(body, faults="entra_cutoff=0.3")
    assert [r["id"] for r in out["records"]] == out["truth"]["directoryAudits"]
    assert out["failed"] and all(r.status == 200 and not _parses(r) for r in out["failed"])
    assert all(r.body.startswith(b'{"@odata.context"') for r in out["failed"])
    assert out["stats"]["faults"]["entra_cutoff"] == len(out["failed"])


def test_dup_serves_the_last_record_of_a_page_again_first_on_the_next() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        pages, _, _ = await g.all(g.signins, {"$filter": ALL_KINDS, "$top": "20"})
        return {"pages": pages, "truth": await truth(api), "stats": (await api.control("stats")).json()["entra"]}

    out = run_entra(body, faults="entra_dup=0.5")
    pages = out["pages"]
    repeats = sum(1 for a, b in itertools.pairwise(pages) if a[-1]["id"] == b[0]["id"])
    records = flat(pages)
    assert repeats and len(records) - len({r["id"] for r in records}) == repeats
    assert {r["id"] for r in records} == {i for i, _ in out["truth"]["signIns"]}
    assert out["stats"]["faults"]["entra_dup"] == repeats


def test_drift_adds_properties_no_schema_has_to_some_records() -> None:
    async def body(emu: EmulatorServer, api: Api) -> dict[str, Any]:
        g = Graph(emu, api)
        return {"signins": flat((await g.all(g.signins, {"$filter": ALL_KINDS}))[0]),
                "audits": flat((await g.all(g.audits))[0]), "truth": await truth(api)}

    out = run_entra(body, faults="entra_drift=0.2", scenario="default", records_per_day=100)
    for records in (out["signins"], out["audits"]):
        common = set.intersection(*(set(r) for r in records))
        drifted = {r["id"] for r in records if set(r) - common}
        assert drifted and drifted < {r["id"] for r in records}
        assert drifted == set(out["truth"]["drift"]) & {r["id"] for r in records}
        # Nothing the schema has is taken away.
        assert all(common <= set(r) for r in records)


def test_nopremium_refuses_signins_but_not_directory_audits() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[Reply, Reply]:
        g = Graph(emu, api)
        return await g.get(g.signins, {"$filter": ALL_KINDS}), await g.get(g.audits)

    signins, audits = run_entra(body, faults="entra_nopremium")
    assert_graph_error(signins, 403, NON_PREMIUM_CODE)
    assert signins.json()["error"]["message"] == "Neither tenant is B2C or tenant doesn't have premium license"
    assert audits.status == 200 and audits.json()["value"]


def test_noperm_refuses_both_naming_the_permission() -> None:
    async def body(emu: EmulatorServer, api: Api) -> tuple[Reply, Reply, dict[str, Any]]:
        g = Graph(emu, api)
        return await g.get(g.signins), await g.get(g.audits), (await api.control("stats")).json()["entra"]

    signins, audits, stats = run_entra(body, faults="entra_noperm")
    for reply in (signins, audits):
        assert_graph_error(reply, 403, NO_PERMISSION_CODE)
        assert "AuditLog.Read.All" in reply.json()["error"]["message"]
    assert stats["faults"] == {"entra_noperm": 2} and stats["errors"] == {NO_PERMISSION_CODE: 2}


def test_the_request_budget_is_per_tenant_and_frees_up_after_the_window() -> None:
    async def main() -> dict[str, Any]:
        async with (
            EmulatorServer([TENANT, OTHER], clock=FakeClock(), scenario="quiet", records_per_day=50, seed=11,
                           days=1, signins_per_day=10, entra_budget=3, entra_budget_window=1.0) as emu,
            aiohttp.ClientSession() as session,
        ):
            g = Graph(emu, Api(emu, session), token=f"token@{TENANT}")
            burst = [await g.get(g.audits) for _ in range(4)]
            other = await g.get(g.audits, token=f"token@{OTHER}")
            await asyncio.sleep(1.1)
            after = await g.get(g.audits)
            stats = (await Api(emu, session).control("stats")).json()["entra"]
            return {"burst": burst, "other": other, "after": after, "stats": stats}

    out = asyncio.run(main())
    assert [r.status for r in out["burst"]] == [200, 200, 200, 429]
    assert_graph_error(out["burst"][3], 429, "TooManyRequests")
    assert out["burst"][3].header("Retry-After") == "1"
    assert out["other"].status == 200 and out["after"].status == 200
    assert out["stats"]["budget_exceeded"] == 1 and out["stats"]["requests"] == {"ListDirectoryAudits": 6}


# -------------------------------------------------------------------------------- determinism


def test_the_logs_are_the_same_for_the_same_seed_and_differ_for_another() -> None:
    def ids(seed: int) -> list[str]:
        tenant = SyntheticTenant.generate(TENANT, seed=seed, now=NOW, days=2, records_per_day=100)
        log = EntraLog.build(tenant, seed=seed, faults=FaultSpec(), signins_per_day=20)
        return [e.id for e in log.signins + log.audits]

    first = ids(5)
    assert first == ids(5) and set(first).isdisjoint(ids(6))


def _entry(created: datetime, kind: str, **record: Any) -> EntraEntry:
    return EntraEntry("signIn", kind + created.isoformat(), kind, created, created, False, False, record, b"{}")


def test_the_filter_grammar_keeps_precedence_and_knows_the_kinds() -> None:
    parsed = parse_filter("signInEventTypes/any(t: t eq 'servicePrincipal') and not (createdDateTime lt "
                          "2025-03-09 or createdDateTime ge 2025-03-10T00:00:00.1234567Z)",
                          time_field="createdDateTime", signins=True)
    assert parsed.names_event_types
    inside, early = NOW.replace(day=9, hour=12), NOW.replace(day=8)
    edge = NOW.replace(day=10, hour=0, microsecond=123456)
    assert parsed.predicate(_entry(inside, "servicePrincipal"))
    assert not parsed.predicate(_entry(inside, "managedIdentity"))
    assert not parsed.predicate(_entry(early, "servicePrincipal"))
    assert not parsed.predicate(_entry(edge, "servicePrincipal"))
    assert parsed.predicate(_entry(edge - timedelta(microseconds=1), "servicePrincipal"))
    # "and" binds tighter than "or".
    loose = parse_filter("status/errorCode eq 50126 or appId eq 'a' and ipAddress eq '1.2.3.4'",
                         time_field="createdDateTime", signins=True)
    assert not loose.names_event_types
    assert loose.predicate(_entry(inside, "interactiveUser", status={"errorCode": 50126}, appId="b"))
    assert not loose.predicate(_entry(inside, "interactiveUser", status={"errorCode": 0}, appId="a",
                                      ipAddress="5.6.7.8"))
    assert loose.predicate(_entry(inside, "interactiveUser", status={"errorCode": 0}, appId="a",
                                  ipAddress="1.2.3.4"))
