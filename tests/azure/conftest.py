"""The Functions app driven the way the host drives it, against Azurite and a fake ADX.

``FunctionsHost`` indexes ``main.app`` like the worker does (``get_functions()``), calls the
timer with a real ``TimerRequest``, reads the messages the timer put on the Azurite queue and
calls the queue function with real ``QueueMessage`` objects, redelivering a message that
raised (dequeue count + 1) and moving it to the poison queue after ``maxDequeueCount``, as
the host's queue listener does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from function_app.config import reset_app_settings
from tests.adapters.fake_adx import FakeAdx
from tests.azurite import Azurite

REPO = Path(__file__).resolve().parents[2]
DATABASE = "auditlake"
MAX_DEQUEUE_COUNT = int(json.loads((REPO / "host.json").read_text())["extensions"]["queues"]["maxDequeueCount"])


_indexed: list[Any] = []


def drain_queue(client: QueueClient) -> list[tuple[str, str]]:
    """(id, content) of every message on *client*'s queue, each deleted once read, as the host's
    listener takes them; closes the client. A queue that does not exist holds nothing."""
    out: list[tuple[str, str]] = []
    try:
        while True:
            try:
                batch = list(client.receive_messages(messages_per_page=32, max_messages=32))
            except ResourceNotFoundError:
                return out
            if not batch:
                return out
            for m in batch:
                out.append((str(m.id), str(m.content)))
                client.delete_message(m)
    finally:
        client.close()


def indexed_functions() -> list[Any]:
    """``main.app.get_functions()``, called once per process as the worker does (a second
    call on the same app raises: it remembers the names it has seen)."""
    if not _indexed:
        import main

        _indexed.extend(main.app.get_functions())
    return list(_indexed)


async def flush_mirror() -> int:
    """Ingest the ledger mirror rows the running loop's sink holds back (``AdxSink.defer``: they
    ride on the next staging ingestion, or go within seconds, or at close); a test reading ADX's
    ledger mid-run calls this first. Returns the rows flushed."""
    from function_app.azure.deps import runtime
    from function_app.lake.adx import AdxSink

    sink = (await runtime()).sink
    assert isinstance(sink, AdxSink)
    return await sink.flush()


@pytest.fixture(scope="module")
def fake_adx(azurite: Azurite) -> Iterator[FakeAdx]:
    adx = FakeAdx(azurite).start()
    yield adx
    adx.stop()


@dataclass
class Harness:
    """Names and connections of one test's storage resources (unique per test)."""

    azurite: Azurite
    adx: FakeAdx
    monkeypatch: pytest.MonkeyPatch
    queue: str
    prefix: str
    container: str

    @property
    def poison(self) -> str:
        return f"{self.queue}-poison"

    def configure(self, **settings: str) -> None:
        """Set app settings and drop the cached ones, as a restart of the app would."""
        for name, value in settings.items():
            self.monkeypatch.setenv(name, value)
        reset_app_settings()

    def queue_client(self, name: str | None = None) -> QueueClient:
        return QueueClient.from_connection_string(
            self.azurite.connection_string, name or self.queue,
            message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy())

    def container_client(self) -> ContainerClient:
        return ContainerClient.from_connection_string(self.azurite.connection_string, self.container)

    def ledger(self) -> dict[str, dict[str, Any]]:
        """Every ledger row by content id (open markers left out)."""
        table = TableClient.from_connection_string(self.azurite.connection_string, f"{self.prefix}Ledger")
        return {str(e["ContentId"]): dict(e) for e in table.list_entities() if "Status" in e}


@pytest.fixture
def harness(azurite: Azurite, fake_adx: FakeAdx, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    suffix = uuid.uuid4().hex[:8]
    h = Harness(azurite, fake_adx, monkeypatch, queue=f"content-{suffix}", prefix=f"T{suffix}",
                container=f"deadletter-{suffix}")
    monkeypatch.delenv("FUNCTIONS_WORKER_RUNTIME", raising=False)
    monkeypatch.delenv("AUDITLAKE_TENANTS", raising=False)
    h.configure(
        AzureWebJobsStorage=azurite.connection_string,
        CONTENT_QUEUE=h.queue,
        STATE_TABLE_PREFIX=h.prefix,
        DEADLETTER_CONTAINER=h.container,
        ADX_INGEST_URI=fake_adx.uri,
        ADX_ALLOW_INSECURE_HTTP="true",  # the fake ADX speaks plain http, without authentication
        ADX_DATABASE=DATABASE,
        AUDITLAKE_API_TOKEN="test-token",
        AUDITLAKE_RETRY_BASE_SECONDS="0.01",
        AUDITLAKE_RETRY_MAX_SECONDS="0.05",
        AUDITLAKE_RETRY_ATTEMPTS="10",
        AUDITLAKE_SAFETY_LAG_SECONDS="0",
    )
    fake_adx.read_ingestions()  # what earlier tests left behind
    fake_adx.raw_ingestions.clear()
    yield h
    reset_app_settings()


@dataclass
class Delivery:
    message_id: str
    body: str
    dequeue_count: int
    error: str | None = None


@dataclass
class FunctionsHost:
    """Calls ``main.app``'s functions as the Functions host would (see the module docstring)."""

    harness: Harness
    deliveries: list[Delivery] = field(default_factory=list)
    poisoned: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.functions = {f.get_function_name(): f.get_user_function() for f in indexed_functions()}

    async def timer(self, *, past_due: bool = False) -> None:
        await self.functions["collect"](TimerRequest(past_due=past_due))

    async def deliver(self, body: str, *, dequeue_count: int = 1, message_id: str | None = None) -> None:
        msg = QueueMessage(id=message_id or uuid.uuid4().hex, body=body, dequeue_count=dequeue_count)
        await self.functions["process_content"](msg)

    async def deliver_poison(self, body: str, *, dequeue_count: int = 1, message_id: str | None = None) -> None:
        msg = QueueMessage(id=message_id or uuid.uuid4().hex, body=body, dequeue_count=dequeue_count)
        await self.functions["record_dead_letter"](msg)

    def _receive(self, queue: str) -> list[tuple[str, str]]:
        return drain_queue(self.harness.queue_client(queue))

    async def receive(self, queue: str | None = None) -> list[tuple[str, str]]:
        """Take every message off *queue* (default: the content queue), decoded from base64."""
        return await asyncio.to_thread(self._receive, queue or self.harness.queue)

    async def run_message(self, message_id: str, body: str, *, first_dequeue: int = 1) -> bool:
        """Deliver until the function returns, up to maxDequeueCount; then poison. True if it succeeded."""
        for count in range(first_dequeue, MAX_DEQUEUE_COUNT + 1):
            try:
                await self.deliver(body, dequeue_count=count, message_id=message_id)
                self.deliveries.append(Delivery(message_id, body, count))
                return True
            except Exception as exc:
                self.deliveries.append(Delivery(message_id, body, count, f"{type(exc).__name__}: {exc}"))
        poison = self.harness.queue_client(self.harness.poison)
        with contextlib.suppress(ResourceExistsError):
            poison.create_queue()
        await asyncio.to_thread(poison.send_message, body)
        poison.close()
        self.poisoned.append(message_id)
        return False

    async def drain(self) -> int:
        """Process the content queue until it is empty, then the poison queue; returns messages handled."""
        handled = 0
        while True:
            batch = await self.receive()
            if not batch:
                break
            for message_id, body in batch:
                await self.run_message(message_id, body)
                handled += 1
        for message_id, body in await self.receive(self.harness.poison):
            await self.deliver_poison(body, message_id=message_id)
            handled += 1
        return handled
