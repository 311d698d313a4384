"""LeanTableClient(coalesce=True) against real Azurite: the ledger writes of concurrent callers on
one partition go as one transaction, and each caller still sees exactly what it would alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

from function_app.azure.signed_rest import RETRIES
from function_app.azure.table_rest import MAX_COALESCED_OPS, LeanTableClient
from tests.adapters.test_table_rest import FlakyTable, served
from tests.azurite import Azurite

PK = "tenant|Audit.Exchange"


def row(rk: str, status: str = "queued", pk: str = PK) -> dict[str, Any]:
    return {"PartitionKey": pk, "RowKey": rk, "Status": status, "Error": "e" * 200}


def guarded(etag: str) -> dict[str, Any]:
    return {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified}


async def with_coalescing(azurite: Azurite,
                          body: Callable[[LeanTableClient, TableClient, list[str]], Awaitable[None]]) -> None:
    name = f"Co{uuid.uuid4().hex[:10]}"
    sent: list[str] = []
    async with aiohttp.ClientSession(trust_env=False) as session:
        sdk = TableClient.from_connection_string(azurite.connection_string, name)
        await sdk.create_table()
        lean = LeanTableClient(sdk, lambda: session, coalesce=True,
                               request_hook=lambda method, path: sent.append(f"{method} {path.rsplit('/', 1)[-1]}"))
        try:
            await body(lean, sdk, sent)
        finally:
            await sdk.delete_table()
            await lean.close()


async def etags(sdk: TableClient, keys: list[str], pk: str = PK) -> list[str]:
    return [str((await sdk.get_entity(pk, rk)).metadata["etag"]) for rk in keys]


async def created(sdk: TableClient, keys: list[str]) -> list[str]:
    """Rows *keys*, ``queued``, written through the SDK; their ETags."""
    for rk in keys:
        await sdk.create_entity(row(rk))
    return await etags(sdk, keys)


def test_concurrent_guarded_updates_of_one_partition_go_as_one_transaction(azurite: Azurite) -> None:
    async def body(lean: LeanTableClient, sdk: TableClient, sent: list[str]) -> None:
        keys = [f"blob{i}" for i in range(12)]
        before = await created(sdk, keys)
        sent.clear()
        metas = await asyncio.gather(*(lean.update_entity(row(rk, "ingested"), **guarded(etag))
                                       for rk, etag in zip(keys, before, strict=True)))
        assert sent == ["POST $batch"]
        assert [m["etag"] for m in metas] == await etags(sdk, keys)  # each caller gets its own row's ETag
        assert {(await sdk.get_entity(PK, rk))["Status"] for rk in keys} == {"ingested"}

    asyncio.run(with_coalescing(azurite, body))


def test_a_refused_caller_gets_its_own_error_and_the_others_are_written(azurite: Azurite) -> None:
    async def body(lean: LeanTableClient, sdk: TableClient, sent: list[str]) -> None:
        keys = [f"blob{i}" for i in range(6)]
        before = await created(sdk, keys)
        await sdk.update_entity(row("blob3", "claimed elsewhere"), mode=UpdateMode.REPLACE)  # blob3's ETag moves
        await sdk.create_entity({"PartitionKey": PK, "RowKey": "%O:blob5"})
        sent.clear()
        marker_gone = {"PartitionKey": PK, "RowKey": "%O:missing"}
        calls: list[Awaitable[Any]] = [lean.update_entity(row(rk, "ingested"), **guarded(etag))
                 for rk, etag in zip(keys[:5], before[:5], strict=True)]
        calls.append(lean.submit_transaction([("update", row("blob5", "ingested"), guarded(before[5])),
                                              ("delete", {"PartitionKey": PK, "RowKey": "%O:blob5"}, {})]))
        calls.append(lean.submit_transaction([("upsert", row("blob6", "listed"), {"mode": UpdateMode.REPLACE}),
                                              ("delete", marker_gone, {"etag": "W/\"datetime'2020-01-01'\"",
                                                                       "match_condition":
                                                                           MatchConditions.IfNotModified})]))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        # blob3 alone was refused, as update_entity refuses: ResourceModifiedError, not a transaction error.
        assert isinstance(outcomes[3], ResourceModifiedError)
        # The last transaction was refused at its own second operation (the marker it deletes is not there).
        assert isinstance(outcomes[6], TableTransactionError) and outcomes[6].index == 1
        for i in (0, 1, 2, 4, 5):
            assert not isinstance(outcomes[i], BaseException), outcomes[i]
        statuses = {rk: (await sdk.get_entity(PK, rk))["Status"] for rk in keys}
        assert statuses == {"blob0": "ingested", "blob1": "ingested", "blob2": "ingested",
                            "blob3": "claimed elsewhere", "blob4": "ingested", "blob5": "ingested"}
        with pytest.raises(ResourceNotFoundError):
            await sdk.get_entity(PK, "%O:blob5")
        with pytest.raises(ResourceNotFoundError):  # nothing of the refused transaction was written
            await sdk.get_entity(PK, "blob6")
        # Merged attempts, less each refused caller, then each refused caller alone: 7 callers, 5 requests.
        # Merged, less each refused caller in turn, and each refused caller once alone: 5 requests for 7 callers.
        assert sorted("PUT row" if "(" in s else s for s in sent) == ["POST $batch"] * 4 + ["PUT row"]

    asyncio.run(with_coalescing(azurite, body))


def test_writes_of_one_entity_or_of_other_partitions_are_not_merged(azurite: Azurite) -> None:
    async def body(lean: LeanTableClient, sdk: TableClient, sent: list[str]) -> None:
        await sdk.create_entity(row("same"))
        (etag,) = await etags(sdk, ["same"])
        other = "tenant|Audit.SharePoint"
        await sdk.create_entity(row("elsewhere", pk=other))
        (other_etag,) = await etags(sdk, ["elsewhere"], other)
        sent.clear()
        outcomes: list[Any] = await asyncio.gather(
            lean.update_entity(row("same", "first"), **guarded(etag)),
            lean.update_entity(row("same", "second"), **guarded(etag)),
            lean.update_entity(row("elsewhere", "ingested", pk=other), **guarded(other_etag)),
            return_exceptions=True)
        first, second, third = outcomes
        # Two guarded writers of one row go apart, and exactly one wins, as if each had gone alone.
        refused = [isinstance(o, ResourceModifiedError) for o in (first, second)]
        assert sorted(refused) == [False, True], (first, second)
        winner = "second" if refused[0] else "first"
        assert (await sdk.get_entity(PK, "same"))["Status"] == winner
        assert not isinstance(third, BaseException)
        assert (await sdk.get_entity(other, "elsewhere"))["Status"] == "ingested"
        assert len(sent) == 3

    asyncio.run(with_coalescing(azurite, body))


def test_more_writers_than_a_transaction_holds_go_in_several(azurite: Azurite) -> None:
    async def body(lean: LeanTableClient, sdk: TableClient, sent: list[str]) -> None:
        keys = [f"r{i:03d}" for i in range(MAX_COALESCED_OPS + 30)]
        await asyncio.gather(*(lean.submit_transaction([("upsert", row(rk), {"mode": UpdateMode.REPLACE})])
                               for rk in keys))
        assert sent.count("POST $batch") == 2
        assert len([e async for e in sdk.list_entities()]) == len(keys)

    asyncio.run(with_coalescing(azurite, body))


async def against_server(handler: FlakyTable, body: Callable[[LeanTableClient], Awaitable[None]]) -> None:
    async for endpoint in served(handler):
        async with aiohttp.ClientSession(trust_env=False) as session:
            sdk = TableClient(endpoint, "Ledger", credential=AzureNamedKeyCredential("acct", "a2V5"))
            lean = LeanTableClient(sdk, lambda: session, backoff_s=0.001, coalesce=True)
            try:
                await body(lean)
            finally:
                await lean.close()


def concurrent_updates(lean: LeanTableClient, n: int) -> Awaitable[list[Any]]:
    return asyncio.gather(*(lean.update_entity(row(f"r{i}"), **guarded(f'W/"datetime\'{i}\'"')) for i in range(n)),
                          return_exceptions=True)


def test_an_outage_answers_every_merged_caller_once_and_a_refused_merge_goes_one_by_one() -> None:
    busy = FlakyTable([503] * (RETRIES + 1))

    async def outage(lean: LeanTableClient) -> None:
        outcomes = await concurrent_updates(lean, 5)
        assert all(isinstance(o, HttpResponseError) and o.status_code == 503 for o in outcomes), outcomes

    asyncio.run(against_server(busy, outage))
    assert len(busy.seen) == RETRIES + 1  # the merged request retried, not five callers each retrying

    # A 400 for the merged request as a whole (not naming an operation): each caller is sent alone.
    refused = FlakyTable([400])

    async def one_by_one(lean: LeanTableClient) -> None:
        outcomes = await concurrent_updates(lean, 5)
        assert not any(isinstance(o, BaseException) for o in outcomes), outcomes

    asyncio.run(against_server(refused, one_by_one))
    assert len(refused.seen) == 1 + 5
