"""LeanTableClient against real Azurite, and against a small HTTP server for what Azurite cannot
be made to do (fail transiently, want a bearer token): it must read and write exactly what
azure-data-tables does, and fail the same way."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from azure.core import MatchConditions
from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableTransactionError, UpdateMode
from azure.data.tables._serialize import _add_entity_properties  # the reference encoding
from azure.data.tables.aio import TableClient
from hypothesis import given, settings
from hypothesis import strategies as st

from function_app.azure.signed_rest import RETRIES, STORAGE_SCOPE
from function_app.azure.table_rest import LeanTableClient, encode_entity
from tests.azurite import Azurite

PK = "tenant|Audit.Exchange"
# Keys the ledger can produce (encode_key escapes with %XX) and some it cannot, which must still work.
KEYS = ["plain", "with'quote", "pct%2Fescaped", "sp ace", "ünïcødé", "a|b,c=(d)", "%O:open"]


def entity(rk: str) -> dict[str, Any]:
    return {"PartitionKey": PK, "RowKey": rk, "Status": "queued", "Attempts": 3,
            "Records": EntityProperty(2 ** 40 + 7, EdmType.INT64), "Score": 0.5, "Open": True,
            "ListedAt": datetime(2026, 12, 4, 10, 11, 12, 345678, tzinfo=UTC), "Error": None,
            "Text": "x" * 3000 + "\u2603"}


async def with_clients(azurite: Azurite, body: Callable[[LeanTableClient, TableClient], Awaitable[None]]) -> None:
    name = f"Lean{uuid.uuid4().hex[:10]}"
    async with aiohttp.ClientSession(trust_env=False) as session:
        sdk = TableClient.from_connection_string(azurite.connection_string, name)
        await sdk.create_table()
        lean = LeanTableClient(sdk, lambda: session)
        try:
            await body(lean, sdk)
        finally:
            await sdk.delete_table()
            await lean.close()


def test_what_the_lean_client_writes_the_sdk_reads_and_the_other_way_round(azurite: Azurite) -> None:
    async def body(lean: LeanTableClient, sdk: TableClient) -> None:
        for rk in KEYS:
            meta = await lean.create_entity(entity(rk))
            by_sdk = await sdk.get_entity(PK, rk)
            assert dict(by_sdk) == {k: v for k, v in entity(rk).items() if v is not None}
            assert by_sdk.metadata["etag"] == meta["etag"]
            await sdk.upsert_entity({**entity(rk), "Status": "ingested"}, mode=UpdateMode.REPLACE)
            by_lean = await lean.get_entity(PK, rk)
            assert by_lean == await sdk.get_entity(PK, rk)
            assert by_lean.metadata["etag"] == (await sdk.get_entity(PK, rk)).metadata["etag"]
            assert by_lean["Status"] == "ingested" and by_lean["Records"].value == 2 ** 40 + 7

    asyncio.run(with_clients(azurite, body))


def test_updates_guarded_by_the_etag_and_the_errors_the_store_relies_on(azurite: Azurite) -> None:
    async def body(lean: LeanTableClient, sdk: TableClient) -> None:
        with pytest.raises(ResourceNotFoundError):
            await lean.get_entity(PK, "missing")
        first = await lean.create_entity(entity("r"))
        with pytest.raises(ResourceExistsError):
            await lean.create_entity(entity("r"))
        second = await lean.update_entity({**entity("r"), "Status": "claimed"}, mode=UpdateMode.REPLACE,
                                          etag=first["etag"], match_condition=MatchConditions.IfNotModified)
        assert second["etag"] != first["etag"]
        with pytest.raises(ResourceModifiedError):  # the ETag moved: the guarded update is refused
            await lean.update_entity({**entity("r"), "Status": "stale"}, mode=UpdateMode.REPLACE,
                                     etag=first["etag"], match_condition=MatchConditions.IfNotModified)
        assert (await sdk.get_entity(PK, "r"))["Status"] == "claimed"
        # REPLACE drops a property set to None; MERGE keeps what it does not name.
        await lean.update_entity({"PartitionKey": PK, "RowKey": "r", "Status": "merged"}, mode=UpdateMode.MERGE)
        assert (await sdk.get_entity(PK, "r"))["Attempts"] == 3
        await lean.upsert_entity({"PartitionKey": PK, "RowKey": "r", "Status": "replaced", "Attempts": None},
                                 mode=UpdateMode.REPLACE)
        assert dict(await sdk.get_entity(PK, "r")) == {"PartitionKey": PK, "RowKey": "r", "Status": "replaced"}
        with pytest.raises(ResourceNotFoundError):
            await lean.update_entity(entity("gone"), mode=UpdateMode.REPLACE, etag=first["etag"],
                                     match_condition=MatchConditions.IfNotModified)
        await lean.delete_entity(PK, "r")
        await lean.delete_entity(PK, "r")  # a missing entity is deleted already, as in the SDK
        with pytest.raises(ResourceNotFoundError):
            await sdk.get_entity(PK, "r")

    asyncio.run(with_clients(azurite, body))


def test_a_transaction_writes_all_or_nothing_and_names_the_operation_refused(azurite: Azurite) -> None:
    async def body(lean: LeanTableClient, sdk: TableClient) -> None:
        await sdk.create_entity(entity("exists"))
        marker = {"PartitionKey": PK, "RowKey": "%O:exists", "ContentId": "exists"}
        await sdk.create_entity(marker)
        ops: list[Any] = [("create", entity("new'one"), {}), ("upsert", {**marker, "RowKey": "%O:new"},
                                                               {"mode": UpdateMode.REPLACE}),
                          ("update", {**entity("exists"), "Status": "ingested"}, {"mode": UpdateMode.REPLACE}),
                          ("delete", marker, {})]
        results = await lean.submit_transaction(ops)
        assert len(results) == 4
        assert results[0]["etag"] == (await sdk.get_entity(PK, "new'one")).metadata["etag"]
        assert (await sdk.get_entity(PK, "exists"))["Status"] == "ingested"
        with pytest.raises(ResourceNotFoundError):
            await sdk.get_entity(PK, "%O:exists")

        refused: list[Any] = [("create", entity("third"), {}), ("create", entity("new'one"), {})]
        with pytest.raises(TableTransactionError) as caught:
            await lean.submit_transaction(refused)
        assert caught.value.index == 1
        with pytest.raises(ResourceNotFoundError):  # nothing of the refused transaction was written
            await sdk.get_entity(PK, "third")
        stale = await sdk.get_entity(PK, "exists")
        await sdk.update_entity({**entity("exists"), "Status": "moved"}, mode=UpdateMode.REPLACE)
        guarded: list[Any] = [("upsert", entity("fourth"), {"mode": UpdateMode.REPLACE}),
                   ("update", entity("exists"), {"mode": UpdateMode.REPLACE, "etag": stale.metadata["etag"],
                                                 "match_condition": MatchConditions.IfNotModified})]
        with pytest.raises(TableTransactionError) as caught:
            await lean.submit_transaction(guarded)
        assert caught.value.index == 1 and caught.value.status_code == 412

    asyncio.run(with_clients(azurite, body))


class FlakyTable:
    """A Table endpoint over real HTTP that answers each request with the next of *answers*
    (then 204), and keeps what it was sent."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.seen: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        status = self.answers.pop(0) if self.answers else 204
        if status == 204:
            return web.Response(status=204, headers={"ETag": f'W/"datetime\'{len(self.seen)}\'"'})
        error = {"odata.error": {"code": "ServerBusy", "message": {"lang": "en-US", "value": "try later"}}}
        return web.json_response(error, status=status)


async def served(handler: FlakyTable) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class StaticToken:
    """A managed identity stand-in: hands out tokens and counts how often it was asked."""

    def __init__(self, expires_in_s: int) -> None:
        self.expires_in_s = expires_in_s
        self.asked: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.asked.append(scopes)
        return AccessToken(f"token{len(self.asked)}", int(datetime.now(UTC).timestamp()) + self.expires_in_s)

    async def close(self) -> None:
        return None


async def against(handler: FlakyTable, credential: Any,
                  body: Callable[[LeanTableClient], Awaitable[None]]) -> None:
    async for endpoint in served(handler):
        async with aiohttp.ClientSession(trust_env=False) as session:
            sdk = TableClient(endpoint, "Ledger", credential=AzureNamedKeyCredential("acct", "a2V5"))
            # The SDK refuses a token credential over plain http, which this server speaks; the lean
            # client takes whichever credential the SDK client holds.
            sdk.credential = credential
            lean = LeanTableClient(sdk, lambda: session, backoff_s=0.001)
            try:
                await body(lean)
            finally:
                await lean.close()


def test_transient_answers_are_retried_and_a_refusal_is_not() -> None:
    key = AzureNamedKeyCredential("acct", "a2V5")
    busy = FlakyTable([503, 500])

    async def retried(lean: LeanTableClient) -> None:
        await lean.upsert_entity(entity("r"))

    asyncio.run(against(busy, key, retried))
    assert len(busy.seen) == 3 and busy.seen[-1]["Authorization"].startswith("SharedKeyLite acct:")

    always = FlakyTable([503] * (RETRIES + 1))

    async def gives_up(lean: LeanTableClient) -> None:
        with pytest.raises(HttpResponseError, match="ServerBusy") as caught:
            await lean.upsert_entity(entity("r"))
        assert caught.value.status_code == 503

    asyncio.run(against(always, key, gives_up))
    assert len(always.seen) == RETRIES + 1

    bad = FlakyTable([400])

    async def refused(lean: LeanTableClient) -> None:
        with pytest.raises(HttpResponseError, match="try later"):
            await lean.upsert_entity(entity("r"))

    asyncio.run(against(bad, key, refused))
    assert len(bad.seen) == 1


def test_a_managed_identity_signs_with_a_bearer_token_fetched_once_and_renewed_before_it_expires() -> None:
    lasting, expiring = StaticToken(3600), StaticToken(60)

    async def three_calls(lean: LeanTableClient) -> None:
        for rk in ("a", "b", "c"):
            await lean.upsert_entity(entity(rk))

    first = FlakyTable([])
    asyncio.run(against(first, lasting, three_calls))
    assert [h["Authorization"] for h in first.seen] == ["Bearer token1"] * 3
    assert lasting.asked == [(STORAGE_SCOPE,)]
    second = FlakyTable([])
    asyncio.run(against(second, expiring, three_calls))
    assert [h["Authorization"] for h in second.seen] == ["Bearer token1", "Bearer token2", "Bearer token3"]


_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
_VALUES = st.one_of(
    st.text(max_size=20), st.booleans(), st.none(),
    st.datetimes(min_value=datetime(1, 1, 1), timezones=_ZONES),
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: EntityProperty(n, EdmType.INT64)),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True), st.uuids(),
    st.sampled_from([EntityProperty(None, EdmType.INT64), EntityProperty("7", "Edm.Int64"),
                     EntityProperty(3, EdmType.INT32), EntityProperty(b"x", EdmType.BINARY)]),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), _VALUES, max_size=8))
def test_entities_are_encoded_exactly_as_the_sdk_encodes_them(entity: dict[str, Any]) -> None:
    try:
        expected: Any = _add_entity_properties(entity)
    except Exception as exc:  # the SDK refuses it: so must we, with the same error
        with pytest.raises(type(exc)):
            encode_entity(entity)
        return
    assert encode_entity(entity) == expected
