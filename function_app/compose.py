"""The one place a run's parts are built from settings: clients, state, sink, ledger mirror, rules.

Every entry point assembles its run here and nowhere else: the Functions triggers
(``azure.deps``), ``auditlake collect`` (into the local lake, or straight into ADX), ``replay``
(local and Azure) and ``demo``. Before this module each of them built its own clients, state
and sinks, and they disagreed (a replay into ADX left ADX's ledger saying ``failed``; the local
path ignored each tenant's cloud and content types).

What is built:

* one Management API client per API root (the cloud of each tenant, or the override), all on one
  HTTP session and one memory budget, routed by tenant (``TenantRouter``), so a source is one
  ``ActivityApi`` whichever tenants and clouds it serves;
* the state store and the sink the caller chose: the local lake for both, the local lake for
  state with ADX as the sink, or Azure's Table Storage with ADX (plus the content queue and the
  dead-letter container);
* whenever the sink is ADX, the state store is wrapped so every ledger change and planning pass
  is also written to ADX's ``ContentLedger`` and ``CollectorRun``: which ledger ADX holds never
  depends on which entry point ran;
* with ``search=True``, the Purview audit search clients (``backfill``): one per Graph root, on
  the same HTTP session, with tokens for Graph's scope, routed by tenant (``SearchRouter``);
* with ``entra=True``, the Entra ID sign-in and audit log clients (``entra.poller``): one per Graph
  root, routed by tenant (``EntraRouter``), each keeping Graph's per-tenant request budget.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from function_app.config import AzureSettings, Settings, TenantConfig
from function_app.core.budget import (
    AZURE_MEMORY_WAIT_SECONDS,
    BLOB_MEMORY_FACTOR,
    LAKE_BLOB_MEMORY_FACTOR,
    MemoryBudget,
)
from function_app.core.delivery import TenantApi
from function_app.core.errors import UntrustedMessageError
from function_app.core.model import CONTENT_TYPES, ContentBlob, FetchedContent
from function_app.core.ports import ContentQueue, DeadLetterStore, Sink, StateStore
from function_app.core.process import RowBuilder
from function_app.core.windows import PlanningRules
from function_app.entra.client import EntraLogClient, RequestBudget
from function_app.entra.streams import Stream
from function_app.lake.derived_tables import BODIES
from function_app.lake.schema import RECORD_TABLES
from function_app.o365.auth import TokenProvider, token_provider_from_env
from function_app.o365.client import ManagementApiClient
from function_app.o365.clouds import Cloud
from function_app.o365.graph import graph_root_of, graph_scope
from function_app.o365.retry import RetryPolicy
from function_app.purview.client import (
    SEARCH_CLOUDS,
    PurviewSearchClient,
    QueryState,
    SearchUnavailableError,
)
from function_app.records.flatten import BlobContext
from function_app.records.schema_observation import SchemaObserver
from function_app.records.tables import flatten_tables


def utcnow() -> datetime:
    return datetime.now(UTC)


def build_rows(
    records: list[Any], blob: ContentBlob, fetched_at: datetime, *, tables: Sequence[str] = RECORD_TABLES,
    delivered_text: bool = True,
) -> Mapping[str, Sequence[Mapping[str, Any]]]:
    """The rows of *tables* (default: every table built from records: ``AuditRecord``, one row per
    record, ``MailItemAccess``, ``DirectoryChange``, ``SignIn`` and ``SchemaObservation``) for one
    blob's records; never raises on record content."""
    ctx = BlobContext(
        tenant_id=blob.tenant_id,
        content_type=blob.content_type,
        content_id=blob.content_id,
        content_created=blob.content_created,
        ingested_at=fetched_at,
    )
    observer = SchemaObserver(fetched_at)
    built: dict[str, Sequence[Mapping[str, Any]]] = dict(flatten_tables(records, ctx, tables, observer=observer,
                                                                      delivered_text=delivered_text))
    # The observer reads as its rows; the local lake folds the observers of a commit's blobs first.
    built["SchemaObservation"] = observer
    return built


ADX_BUILT_TABLES: tuple[str, ...] = tuple(t for t in RECORD_TABLES if t not in BODIES)
"""What the collector builds for ADX: its update policies build the others from the AuditRecord rows
(``function_app.lake.derived_tables``). The local lake is handed every table built here: the same
KQL run by DuckDB through duckdb-kql costs several times the Python builders (measured there), which
a test keeps in lock-step with it."""


def build_rows_for_adx(
    records: list[Any], blob: ContentBlob, fetched_at: datetime
) -> Mapping[str, Sequence[Mapping[str, Any]]]:
    """``build_rows`` of the tables ADX does not build itself (``ADX_BUILT_TABLES``).

    ``AuditData`` goes to ADX as the parsed record written again, not as its delivered text (what
    the local lake keeps): a text may repeat a key, which JSON allows and a DuckDB JSON value keeps,
    and ADX is reported to refuse such a value at ingestion, where one record would fail the
    ingestion that carries many blobs. Written again, a repeated key is its last value, as in the
    record's columns."""
    return build_rows(records, blob, fetched_at, tables=ADX_BUILT_TABLES, delivered_text=False)


def rules_of(settings: Settings) -> PlanningRules:
    return PlanningRules(overlap=settings.overlap, safety_lag=settings.safety_lag, sweep_every=settings.sweep_every)


def api_root_of(settings: Settings, tenant: TenantConfig) -> str:
    """The API root a tenant is collected from: the override, else its cloud's."""
    return (settings.api_root or Cloud.parse(tenant.cloud).api_root).rstrip("/")


def feeds_of(settings: Settings, tenant_ids: Sequence[str] = (),
             content_types: Sequence[str] | None = None) -> tuple[TenantConfig, ...]:
    """The tenants to collect, each with its cloud and content types.

    *tenant_ids* (the CLI's ``--tenant-id``) narrows or extends the configured tenants: a tenant
    configured in ``AUDITLAKE_TENANTS`` keeps its own cloud and content types, another gets every
    content type and the default cloud. *content_types* (``--content-type``) replaces the content
    types of every tenant.
    """
    configured = {t.tenant_id.lower(): t for t in settings.tenants}
    chosen = ([configured.get(tid.lower(), TenantConfig(tid.lower(), CONTENT_TYPES, settings.cloud))
               for tid in dict.fromkeys(tenant_ids)] if tenant_ids else list(settings.tenants))
    if content_types is not None:
        chosen = [replace(t, content_types=tuple(content_types)) for t in chosen]
    return tuple(chosen)


class TenantRouter:
    """An ``ActivityApi`` over several tenants: every call goes to the client of its tenant's cloud."""

    def __init__(self, apis: Mapping[str, TenantApi]) -> None:
        self.apis = {tid.lower(): api for tid, api in apis.items()}

    def api_for(self, tenant_id: str) -> TenantApi:
        """The client of a configured tenant; UntrustedMessageError for any other tenant."""
        found = self.apis.get(tenant_id.lower())
        if found is None:
            raise UntrustedMessageError("tenantId: not a monitored tenant", field="tenantId")
        return found

    async def start_subscription(self, tenant_id: str, content_type: str) -> None:
        await self.api_for(tenant_id).api.start_subscription(tenant_id, content_type)

    def list_content(
        self, tenant_id: str, content_type: str, start: datetime, end: datetime
    ) -> AsyncIterator[list[ContentBlob]]:
        return self.api_for(tenant_id).api.list_content(tenant_id, content_type, start, end)

    async def fetch_content(self, tenant_id: str, content_uri: str) -> FetchedContent:
        return await self.api_for(tenant_id).api.fetch_content(tenant_id, content_uri)


class SearchRouter:
    """The Purview audit search over several tenants (``purview.backfill.SearchApi``): every call
    goes to the client of its tenant's Graph root. A tenant whose cloud has no such API (and no
    ``AUDITLAKE_GRAPH_ROOT`` override) gets SearchUnavailableError, one line naming the cloud."""

    def __init__(self, clients: Mapping[str, PurviewSearchClient | str]) -> None:
        self.clients = {tid.lower(): c for tid, c in clients.items()}

    def client_for(self, tenant_id: str) -> PurviewSearchClient:
        found = self.clients.get(tenant_id.lower())
        if found is None:
            raise UntrustedMessageError("tenantId: not a monitored tenant", field="tenantId")
        if isinstance(found, str):
            raise SearchUnavailableError(found)
        return found

    async def create_query(
        self, tenant_id: str, start: datetime, end: datetime, *, display_name: str,
        services: Sequence[str] = (), record_types: Sequence[str] = (),
    ) -> QueryState:
        return await self.client_for(tenant_id).create_query(
            tenant_id, start, end, display_name=display_name, services=services, record_types=record_types)

    async def get_query(self, tenant_id: str, query_url: str) -> QueryState:
        return await self.client_for(tenant_id).get_query(tenant_id, query_url)

    def records(self, tenant_id: str, query_url: str) -> AsyncIterator[list[dict[str, Any]]]:
        return self.client_for(tenant_id).records(tenant_id, query_url)


class EntraRouter:
    """The Entra log clients of every tenant, as one ``entra.poller.EntraLogs``: routed by tenant."""

    def __init__(self, clients: Mapping[str, EntraLogClient]) -> None:
        self._clients = dict(clients)

    def client_for(self, tenant_id: str) -> EntraLogClient:
        try:
            return self._clients[tenant_id]
        except KeyError:
            raise KeyError(f"no Entra log client for tenant {tenant_id}") from None

    def first_url(self, stream: Stream, start: datetime, end: datetime) -> str:
        # Every client builds the same path and query; only the root differs, and a window's URL
        # in the ledger is for reading, so the first client's root is as good as any tenant's.
        return next(iter(self._clients.values())).first_url(stream, start, end)

    def pages(self, tenant_id: str, stream: Stream, start: datetime, end: datetime
              ) -> AsyncIterator[list[dict[str, object]]]:
        return self.client_for(tenant_id).pages(tenant_id, stream, start, end)


class Lake(Sink, Protocol):
    """A local lake (the local tool's DuckDB file): a sink that also keeps the run's state.

    A protocol, so this module (which Azure runs) never imports the local tool."""

    def state_store(self) -> StateStore:
        """The ledger, checkpoints and runs kept in the lake."""
        ...


@dataclass(frozen=True, slots=True)
class AdxTarget:
    """ADX as the sink: the data-management URI and the database (``--adx-ingest-uri``)."""

    ingest_uri: str
    database: str
    engine_uri: str | None = None
    streaming: bool = False
    client_id: str | None = None


@dataclass(slots=True)
class Parts:
    """Everything one run uses. ``queue`` and ``deadletter`` exist on the Azure path only."""

    settings: Settings
    feeds: tuple[TenantConfig, ...]
    api: TenantRouter
    state: StateStore
    sink: Sink
    rules: PlanningRules
    build_rows: Callable[[list[Any], ContentBlob, datetime], Mapping[str, Sequence[Mapping[str, Any]]]]
    clock: Callable[[], datetime]
    queue: ContentQueue | None = None
    deadletter: DeadLetterStore | None = None
    search: SearchRouter | None = None
    entra: EntraRouter | None = None


def _retry_of(settings: Settings) -> RetryPolicy:
    return RetryPolicy(max_attempts=settings.retry_attempts, base_delay=settings.retry_base,
                       max_delay=settings.retry_max)


def _graph_tokens(root: str, cloud: Cloud, tokens: TokenProvider | None, env: Mapping[str, str],
                  stack: AsyncExitStack) -> TokenProvider:
    """*tokens*, else a credential from the environment for Graph's scope at *root*, closed with *stack*
    (azure-identity credentials hold their own HTTP sessions)."""
    if tokens is not None:
        return tokens
    provider = token_provider_from_env(env, cloud, scope=graph_scope(root))
    close = getattr(provider, "close", None)
    if close is not None:
        stack.push_async_callback(close)
    return provider


def _open_search(
    settings: Settings, feeds: Sequence[TenantConfig], session: aiohttp.ClientSession, stack: AsyncExitStack,
    *, tokens: TokenProvider | None, env: Mapping[str, str],
) -> SearchRouter:
    """One search client per Graph root; a tenant in a cloud without the API gets the reason instead."""
    clients: dict[str, PurviewSearchClient] = {}
    routed: dict[str, PurviewSearchClient | str] = {}
    for tenant in feeds:
        cloud = Cloud.parse(tenant.cloud)
        if settings.graph_root is None and cloud not in SEARCH_CLOUDS:
            routed[tenant.tenant_id] = (f"the Purview audit search API does not exist in cloud {cloud.value} "
                                        f"(Microsoft Graph offers it in the global service only); "
                                        f"no backfill for tenant {tenant.tenant_id}, the feed keeps working")
            continue
        root = graph_root_of(cloud, settings.graph_root)
        client = clients.get(root)
        if client is None:
            client = PurviewSearchClient(session, graph_root=root,
                                         tokens=_graph_tokens(root, cloud, tokens, env, stack),
                                         retry=_retry_of(settings), cloud=cloud.value, timeout=settings.http_timeout)
            clients[root] = client
        routed[tenant.tenant_id] = client
    return SearchRouter(routed)


def _open_entra(
    settings: Settings, feeds: Sequence[TenantConfig], session: aiohttp.ClientSession, stack: AsyncExitStack,
    *, tokens: TokenProvider | None, env: Mapping[str, str],
) -> EntraRouter:
    """One Entra log client per Graph root (every cloud has the sign-in logs), one request budget
    for all: Graph counts requests per app and tenant, whichever root they went to."""
    budget = RequestBudget()
    clients: dict[str, EntraLogClient] = {}
    routed: dict[str, EntraLogClient] = {}
    for tenant in feeds:
        cloud = Cloud.parse(tenant.cloud)
        root = graph_root_of(cloud, settings.graph_root)
        client = clients.get(root)
        if client is None:
            client = EntraLogClient(session, graph_root=root, tokens=_graph_tokens(root, cloud, tokens, env, stack),
                                    retry=_retry_of(settings), budget=budget, timeout=settings.http_timeout)
            clients[root] = client
        routed[tenant.tenant_id] = client
    return EntraRouter(routed)


async def _open_clients(
    settings: Settings, feeds: Sequence[TenantConfig], session: aiohttp.ClientSession, stack: AsyncExitStack, *,
    keep_body: bool, memory_factor: int, tokens: TokenProvider | None, env: Mapping[str, str],
    memory_wait: float | None = None,
) -> TenantRouter:
    # One budget for the process: every blob in flight, whichever tenant, draws from it.
    memory = MemoryBudget(settings.memory_budget_mb * 1024 * 1024)
    publisher = settings.publisher_id or (feeds[0].tenant_id if feeds else "")
    clients: dict[str, ManagementApiClient] = {}
    apis: dict[str, TenantApi] = {}
    for tenant in feeds:
        root = api_root_of(settings, tenant)
        client = clients.get(root)
        if client is None:
            provider = tokens or token_provider_from_env(env, Cloud.parse(tenant.cloud))
            close = getattr(provider, "close", None)
            if close is not None and provider is not tokens:
                # azure-identity credentials hold their own HTTP sessions.
                stack.push_async_callback(close)
            client = ManagementApiClient(
                session, api_root=root, publisher_id=publisher, tokens=provider,
                retry=_retry_of(settings),
                timeout=settings.http_timeout, max_blob_bytes=settings.max_blob_bytes,
                keep_body=keep_body, memory=memory, memory_factor=memory_factor, memory_wait=memory_wait,
            )
            clients[root] = client
        apis[tenant.tenant_id] = TenantApi(client, client.api_root)
    return TenantRouter(apis)


def _adx_sink(target: AdxTarget, stack: AsyncExitStack) -> Sink:
    from function_app.lake.adx import AdxSink

    # A user-assigned identity must be named; without one AdxSink takes the default chain (CLI,
    # environment...), and a plain-http endpoint no token at all.
    credential = None
    if target.client_id and not target.ingest_uri.startswith("http://"):
        from azure.identity import ManagedIdentityCredential

        credential = ManagedIdentityCredential(client_id=target.client_id)
    sink = AdxSink.create(target.ingest_uri, target.database, credential, engine_uri=target.engine_uri,
                          streaming=target.streaming)

    async def close() -> None:
        await asyncio.to_thread(sink.close)

    stack.push_async_callback(close)
    return sink


def _mirrored(state: Any, sink: Sink) -> Any:
    from function_app.azure.mirror import AdxMirroredState

    return AdxMirroredState(state, sink)


@asynccontextmanager
async def open_parts(
    settings: Settings,
    *,
    feeds: Sequence[TenantConfig] | None = None,
    lake: Lake | None = None,
    adx: AdxTarget | None = None,
    azure: AzureSettings | None = None,
    keep_body: bool = False,
    tokens: TokenProvider | None = None,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], datetime] = utcnow,
    search: bool = False,
    entra: bool = False,
) -> AsyncIterator[Parts]:
    """The parts of a run, released when the context ends.

    Exactly one place for state: *lake* (the local lake's ledger and checkpoints) or *azure*
    (Table Storage, with the content queue and the dead-letter container). The sink is *adx* when
    given (for *azure*, its ADX settings), else the lake. Whenever the sink is ADX the state is
    mirrored into ADX's ledger. *feeds* defaults to ``settings.tenants``. With *search*, the
    parts include the Purview audit search clients of the feeds' tenants (``Parts.search``); with
    *entra*, their Entra ID log clients (``Parts.entra``).
    """
    if (lake is None) == (azure is None):
        raise ValueError("a run keeps its state in the local lake or in Azure, exactly one")
    chosen = tuple(feeds if feeds is not None else settings.tenants)
    async with AsyncExitStack() as stack:
        into_lake = adx is None and azure is None
        environ = env if env is not None else os.environ
        connector = aiohttp.TCPConnector(limit=max(16, settings.concurrency * 2))
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        router = await _open_clients(settings, chosen, session, stack, keep_body=keep_body or azure is not None,
                                     memory_factor=LAKE_BLOB_MEMORY_FACTOR if into_lake else BLOB_MEMORY_FACTOR,
                                     tokens=tokens, env=environ,
                                     # A queued delivery has a time limit; the local collector has none.
                                     memory_wait=AZURE_MEMORY_WAIT_SECONDS if azure is not None else None)
        searcher = _open_search(settings, chosen, session, stack, tokens=tokens, env=environ) if search else None
        entra_logs = _open_entra(settings, chosen, session, stack, tokens=tokens, env=environ) if entra else None
        queue: ContentQueue | None = None
        deadletter: DeadLetterStore | None = None
        state: Any
        if azure is not None:
            state, queue, deadletter = await _azure_state(azure, stack, clock)
            adx = adx or AdxTarget(azure.adx_ingest_uri, azure.adx_database, azure.adx_engine_uri,
                                   azure.adx_streaming, azure.adx_client_id or azure.storage.client_id)
        else:
            assert lake is not None
            state = lake.state_store()
        sink: Sink
        if adx is not None:
            sink = _adx_sink(adx, stack)
            state = _mirrored(state, sink)
            rows: RowBuilder = build_rows_for_adx
        else:
            assert lake is not None
            sink = lake
            rows = build_rows
        yield Parts(settings=settings, feeds=chosen, api=router, state=state, sink=sink, rules=rules_of(settings),
                    build_rows=rows, clock=clock, queue=queue, deadletter=deadletter, search=searcher,
                    entra=entra_logs)


async def _azure_state(
    az: AzureSettings, stack: AsyncExitStack, clock: Callable[[], datetime]
) -> tuple[Any, ContentQueue, DeadLetterStore]:
    from function_app.azure.deadletter import BlobDeadLetterStore
    from function_app.azure.queue import StorageContentQueue
    from function_app.azure.storage import container_client, queue_client, storage_credential, table_service
    from function_app.state.table import TableStateStore

    credential = storage_credential(az.storage)
    if credential is not None:
        stack.push_async_callback(credential.close)
    state = TableStateStore(table_service(az.storage, credential), checkpoints_table=az.checkpoints_table,
                            ledger_table=az.ledger_table, runs_table=az.runs_table, clock=clock)
    stack.push_async_callback(state.close)
    queue = StorageContentQueue(queue_client(az.storage, az.content_queue, credential))
    stack.push_async_callback(queue.close)
    deadletter = BlobDeadLetterStore(container_client(az.storage, az.deadletter_container, credential), clock=clock)
    stack.push_async_callback(deadletter.close)
    return state, queue, deadletter
