"""The Azure path's client cost: CPU per record and ADX ingestions per blob of the Functions app.

``part_azure`` runs in a process of its own (``python -m tests.bench.run --part azure``), which is
the Functions worker here and nothing else:

* Azurite (``tests.azurite``), the emulator (``auditlake emulator``) and the fake ADX
  (``tests.adapters.fake_adx.FakeAdx``, started by ``python -m tests.bench.azure_path --fake-adx``)
  each run in a child process of their own, so none of their CPU is counted. The fake ADX only
  answers the ingest client's two management commands; the SDK uploads to Azurite, as it would to
  ADX's storage.
* The app is indexed as the worker indexes it (``main.app.get_functions()``) and called as the
  host calls it: the ``collect`` timer with a real ``TimerRequest``, then the messages it put on
  the Azurite content queue to ``process_content`` as real ``QueueMessage`` objects, concurrently
  on one event loop as the host's queue listener runs them in one worker process: host.json's
  ``batchSize`` messages at a time, the next batch started once the messages still running fall
  to ``newBatchThreshold`` (so at most the sum run at once). A message that raises goes back to
  the end of the line with its dequeue count raised (the host shows it again after the
  visibility timeout; here at once), up to host.json's ``maxDequeueCount``. The messages are
  taken off the queue before the measured span starts: polling the queue is the host's work, not
  the worker's.
* CPU is the whole process's user+sys time (``getrusage(RUSAGE_SELF)``), not one thread's: the
  ADX sink runs the ingest SDK in worker threads (``asyncio.to_thread``), and that CPU is the
  client cost being measured. Nothing else runs in the process while the functions run. The CPU
  per record is the timer's plus the content messages' (the process's CPU over the span they
  run in, since they overlap), over the records the ledger (the app's Table Storage ``Ledger``)
  says the blobs had; both parts are reported too. The timer's share is not a start-up cost to
  leave out: it grows with the blobs it hands on (measured at 61 and 304 blobs: ~1 ms of CPU per
  blob on top of ~0.24 s, which is all a cold instance adds: imports, clients; ~19 µs per record
  at this size, included).
* The app logs as it does in Azure: the Python worker's handler on the root logger gets every record at
  Information and above (host.json keeps the app's categories at Information) and formats it for the host
  (``_WorkerLogHandler``), and the Azure SDKs' loggers are held at Warning as ``function_app/app.py`` holds
  them there (~2.2 lines a blob: its claim, its ingestion, the timer's listings; ``log_lines``).
* The sink's staging ingestions are counted from its per-batch debug line, the only debug line
  turned on (``staging_batches``, ``blobs_per_batch``, and how long each batch waited for its
  blobs from its first one,
  ``batch_wait_ms_p50``/``p95``); ``message_ms_p50``/``p95`` is the wall time of one delivery,
  the batch's wait included.
* Ingestions are every message the ingest client queued for ADX (the fake's ready-for-aggregation
  queue on Azurite), whatever table it names, the ledger mirror included, plus any streaming
  ingestion the fake received; divided by the blobs the app settled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[2]
TENANT = "2f4e6a8c-1b3d-4f5a-9c7e-0d2b4a6c8e1f"
DATABASE = "auditlake"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _azurite_from(spec: dict[str, str]) -> Any:
    from tests.azurite import Azurite

    # The fake only needs the endpoints; the Azurite process belongs to the bench part.
    return Azurite(cast("subprocess.Popen[str]", None), spec["blob"], spec["queue"], spec["table"],
                   Path(spec["workdir"]))


def fake_adx_main(spec: str) -> int:
    """The fake ADX in a process of its own: print its URI, serve until stdin closes, then print
    what it saw outside Azurite (streaming ingestions, management commands) as JSON."""
    from tests.adapters.fake_adx import FakeAdx

    adx = FakeAdx(_azurite_from(json.loads(spec))).start()
    print(adx.uri, flush=True)
    sys.stdin.read()
    adx.stop()
    print(json.dumps({"streamed": len(adx.streamed), "streamed_rows": sum(len(s.rows) for s in adx.streamed),
                      "commands": len(adx.requests)}), flush=True)
    return 0


def _receive_all(connection: str, queue: str) -> list[tuple[str, str]]:
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

    from tests.azure.conftest import drain_queue

    return drain_queue(QueueClient.from_connection_string(connection, queue,
                                                          message_encode_policy=TextBase64EncodePolicy(),
                                                          message_decode_policy=TextBase64DecodePolicy()))


def _queued_ingestions(connection: str) -> list[tuple[str, int]]:
    """(table, rows) of every ingestion the ingest client queued, as it queued them: the messages on
    the fake's ready-for-aggregation queue and the line count of each message's blob. Read here, not
    through ``FakeAdx.read_ingestions``, which may expand a staging ingestion into its targets."""
    from tests.adapters.fake_adx import pop_ingestions

    return [(i.table, len(i.rows)) for i in pop_ingestions(connection)]


def _ledger(connection: str, table: str) -> dict[str, dict[str, Any]]:
    from azure.data.tables import TableClient

    with TableClient.from_connection_string(connection, table) as client:
        return {str(e["ContentId"]): dict(e) for e in client.list_entities() if "Status" in e}


class _BatchLog(logging.Filter):
    """Keeps the ADX sink's per-batch debug line (blobs, bytes, mirror rows, ms the batch waited)
    and lets no other record below the logger's former level through: the bench needs the sink's
    numbers without printing every debug line."""

    def __init__(self, floor: int) -> None:
        super().__init__()
        self.floor = floor
        self.batches: list[tuple[int, int]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == BATCH_LOG and isinstance(record.args, tuple):
            blobs, _, _, waited_ms = cast(tuple[int, int, int, int], record.args)
            self.batches.append((blobs, waited_ms))
        return record.levelno >= self.floor


BATCH_LOG = "adx batch ingestion queued blobs=%d bytes=%d mirror_rows=%d waited_ms=%d"


class _WorkerLogHandler(logging.Handler):
    """What the Python worker does with each record the app logs: host.json keeps the app's own
    categories at Information, and the worker's handler on the root logger formats each record and
    queues it for the host. Without it the bench's process would drop the app's Information lines
    before they are made, which the app in Azure does not."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines = 0
        self.shipped: deque[dict[str, Any]] = deque(maxlen=1000)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1
        self.shipped.append({"level": record.levelno, "message": self.format(record), "category": record.name})


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _drive(connection: str, queue: str, queues: dict[str, Any]) -> dict[str, Any]:
    from azure.functions.queue import QueueMessage

    import main
    from function_app.app import quiet_sdk_logging

    max_dequeue, batch_size, threshold = (int(queues[k]) for k in ("maxDequeueCount", "batchSize",
                                                                      "newBatchThreshold"))
    functions = {f.get_function_name(): f.get_user_function() for f in main.app.get_functions()}
    message = cast(Callable[..., QueueMessage], QueueMessage)  # azure.functions is untyped
    root, sdks, worker_log = logging.getLogger(), logging.getLogger("azure"), _WorkerLogHandler()
    levels = root.level, sdks.level
    root.addHandler(worker_log)
    root.setLevel(logging.INFO)
    quiet_sdk_logging()  # as the app does in Azure (FUNCTIONS_WORKER_RUNTIME is unset here)
    try:
        return await _run_functions(functions, message, connection, queue, max_dequeue, batch_size, threshold,
                                    worker_log)
    finally:
        root.removeHandler(worker_log)
        root.setLevel(levels[0])
        sdks.setLevel(levels[1])


async def _run_functions(functions: dict[str, Any], message: Callable[..., Any], connection: str, queue: str,
                         max_dequeue: int, batch_size: int, threshold: int,
                         worker_log: _WorkerLogHandler) -> dict[str, Any]:
    from azure.functions.timer import TimerRequest

    t0 = _cpu()
    await functions["collect"](TimerRequest(past_due=False))
    timer_cpu = _cpu() - t0
    messages = await asyncio.to_thread(_receive_all, connection, queue)
    if len(messages) < 2:
        raise RuntimeError(f"the timer queued {len(messages)} messages")
    waiting: deque[tuple[str, str, int]] = deque((message_id, body, 1) for message_id, body in messages)
    in_flight: set[asyncio.Task[None]] = set()
    failures: list[str] = []
    latencies: list[float] = []
    poisoned = 0

    async def deliver(message_id: str, body: str, count: int) -> None:
        nonlocal poisoned
        began = time.perf_counter()
        try:
            await functions["process_content"](message(id=message_id, body=body, dequeue_count=count))
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}"[:300])
            if count < max_dequeue:
                waiting.append((message_id, body, count + 1))
            else:
                poisoned += 1
        latencies.append(time.perf_counter() - began)

    # Only the sink's per-batch line is turned on: its per-blob debug lines would cost the measured
    # process CPU (a LogRecord each, redacted) that the app at its normal level does not spend.
    batch_log = _BatchLog(logging.getLogger("function_app.lake.adx.batches").getEffectiveLevel())
    adx_log = logging.getLogger("function_app.lake.adx.batches")
    former = adx_log.level
    adx_log.addFilter(batch_log)
    adx_log.setLevel(logging.DEBUG)
    t1 = _cpu()
    started = time.perf_counter()
    try:
        while waiting or in_flight:
            # The host's queue listener: a batch of batchSize messages, and the next one once the
            # messages still running fall to newBatchThreshold.
            if waiting and len(in_flight) <= threshold:
                for _ in range(min(batch_size, len(waiting))):
                    task = asyncio.create_task(deliver(*waiting.popleft()))
                    in_flight.add(task)
            if in_flight:
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                in_flight -= done
    finally:
        content_cpu = _cpu() - t1
        wall = time.perf_counter() - started
        adx_log.removeFilter(batch_log)
        adx_log.setLevel(former)
    return {"messages": len(messages), "timer_cpu_s": timer_cpu, "content_cpu_s": content_cpu, "wall_s": wall,
            "failures": failures, "poisoned": poisoned, "latencies": latencies, "batches": batch_log.batches,
            "log_lines": worker_log.lines}


def part_azure(records_per_day: int, days: float = 0.3) -> dict[str, Any]:
    """*days* of one tenant at *records_per_day* through the Functions app (see the module docstring)."""
    from tests.azurite import start_azurite
    from tests.flows.conftest import start_emulator

    queues = json.loads((REPO / "host.json").read_text())["extensions"]["queues"]
    azurite = start_azurite()
    emu = None
    adx_proc: subprocess.Popen[str] | None = None
    try:
        emu = start_emulator("--tenant-id", TENANT, "--days", str(days), "--records-per-day", str(records_per_day),
                             "--seed", "13")
        spec = {"blob": azurite.blob_endpoint, "queue": azurite.queue_endpoint, "table": azurite.table_endpoint,
                "workdir": str(azurite.workdir)}
        adx_proc = subprocess.Popen([sys.executable, "-m", "tests.bench.azure_path", "--fake-adx", json.dumps(spec)],
                                    cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert adx_proc.stdout is not None and adx_proc.stdin is not None
        adx_uri = adx_proc.stdout.readline().strip()
        if not adx_uri.startswith("http://"):
            raise RuntimeError(f"the fake ADX did not start: {adx_uri!r}")
        suffix = uuid.uuid4().hex[:8]
        queue, prefix = f"content-{suffix}", f"T{suffix}"
        for name in ("FUNCTIONS_WORKER_RUNTIME",):
            os.environ.pop(name, None)
        os.environ.update({
            "AzureWebJobsStorage": azurite.connection_string,
            "CONTENT_QUEUE": queue,
            "STATE_TABLE_PREFIX": prefix,
            "DEADLETTER_CONTAINER": f"deadletter-{suffix}",
            "ADX_INGEST_URI": adx_uri,
            "ADX_ALLOW_INSECURE_HTTP": "true",  # the fake ADX speaks plain http, without authentication
            "ADX_DATABASE": DATABASE,
            "AUDITLAKE_API_TOKEN": "bench",
            "AUDITLAKE_TENANTS": TENANT,
            "AUDITLAKE_API_ROOT": emu.api_root,
        })
        drive = asyncio.run(_drive(azurite.connection_string, queue, queues))
        adx_proc.stdin.close()
        outside = json.loads(adx_proc.stdout.readline() or "{}")
        adx_proc.wait(timeout=30)
        ingestions = _queued_ingestions(azurite.connection_string)
        ledger = _ledger(azurite.connection_string, f"{prefix}Ledger")
    finally:
        if adx_proc is not None and adx_proc.poll() is None:
            adx_proc.kill()
            adx_proc.wait()
        if emu is not None:
            emu.process.terminate()
            try:
                emu.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                emu.process.kill()
        azurite.stop()

    statuses = Counter(str(r.get("Status")) for r in ledger.values())
    # Int64 values come back as EntityProperty (its .value is the number).
    records = {cid: int(getattr(r.get("Records"), "value", r.get("Records")) or 0) for cid, r in ledger.items()}
    total_records = sum(records.values())
    per_record = 1e6 / max(total_records, 1)
    blobs = len(ledger)
    queued = len(ingestions)
    count = queued + int(outside.get("streamed", 0))
    by_table = Counter(table for table, _ in ingestions)
    rows_by_table = Counter[str]()
    for table, rows in ingestions:
        rows_by_table[table] += rows
    return {
        "days": days, "records_per_day": records_per_day, "blobs": blobs, "messages": drive["messages"],
        "ledger_status": dict(statuses), "records": total_records,
        "records_per_blob": round(total_records / max(blobs, 1), 1),
        "cpu_us_per_record": round((drive["timer_cpu_s"] + drive["content_cpu_s"]) * per_record),
        "timer_us_per_record": round(drive["timer_cpu_s"] * per_record),
        "content_us_per_record": round(drive["content_cpu_s"] * per_record),
        "cpu_s": round(drive["timer_cpu_s"] + drive["content_cpu_s"], 2),
        "wall_s": round(drive["wall_s"], 1),
        "ingestions": count, "ingestions_per_blob": round(count / max(blobs, 1), 2),
        "ingestions_by_table": dict(by_table), "rows_by_table": dict(rows_by_table),
        "streamed": int(outside.get("streamed", 0)), "adx_commands": int(outside.get("commands", 0)),
        "staging_batches": len(drive["batches"]),
        "blobs_per_batch": round(sum(b for b, _ in drive["batches"]) / max(len(drive["batches"]), 1), 1),
        "batch_wait_ms_p50": _percentile([w for _, w in drive["batches"]], 0.5),
        "batch_wait_ms_p95": _percentile([w for _, w in drive["batches"]], 0.95),
        "message_ms_p50": round(_percentile(drive["latencies"], 0.5) * 1000),
        "message_ms_p95": round(_percentile(drive["latencies"], 0.95) * 1000),
        "log_lines": drive["log_lines"],
        "failed_deliveries": len(drive["failures"]), "poisoned": drive["poisoned"],
        "first_failure": drive["failures"][0] if drive["failures"] else None,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--fake-adx":
        sys.exit(fake_adx_main(sys.argv[2]))
    sys.exit("usage: python -m tests.bench.azure_path --fake-adx SPEC")
