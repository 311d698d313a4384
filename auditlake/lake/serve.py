"""The collector's lake over the Kusto REST protocol, so it can be queried while it is collected into.

DuckDB lets one process open a lake file for writing and nobody else open it at all, so while
``auditlake collect`` runs, ``auditlake query`` cannot read the file. The collector serves it
instead: :class:`LakeEndpoint` runs duckdb-kql's Kusto REST server (loopback only, no
authentication, writes refused) in a thread of the collector, on a cursor of the lake's
connection, and writes a discovery file beside the lake naming the URL. ``auditlake query``
finds it with :func:`find_endpoint` and asks it with :func:`query_endpoint`; Kusto Explorer, the
Azure Data Explorer web UI and ``azure-kusto-data``'s ``KustoClient`` connect to the same URL.

The cursor is a connection of its own into the same in-process database. LocalLake writes only
on its own connection, under its own lock, in the thread its commits run in; the endpoint never
touches that connection after making the cursor, so a query and a commit run side by side, the
query reading the last committed state (DuckDB's MVCC). Queries are serialised on the cursor.

Any local user can query the endpoint while it runs: it answers whoever reaches 127.0.0.1 on its
port, as duckdb-kql's server does. ``--no-serve`` is how a collector keeps its lake to itself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
from duckdb_kql.control import is_control_command
from duckdb_kql.errors import KqlError
from duckdb_kql.server import CLUSTER_NAME, KustoRestServer, Result

from auditlake.lake.kql_functions import KqlFunctionsError, library_functions, resolve_functions
from auditlake.lake.kql_reach import KqlReachError, assertion_line, prepare

if TYPE_CHECKING:
    from duckdb_kql.stored_functions import ResolvedFunctions

    from auditlake.lake.duckdb_lake import LocalLake

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# The database a client names. duckdb-kql reads `default` as "whatever the connection is on",
# which is how `auditlake query` runs its queries locally: names unqualified.
DATABASE = "default"
# A probe of a live endpoint is answered without waiting for the query lock; this only bounds
# how long a wedged or foreign listener can hold up `auditlake query`.
PROBE_TIMEOUT = 3.0

# Kusto's type names -> what DuckDB calls them, so the CLI formats an answer from the endpoint as
# it formats one from the lake (it turns JSON text back into values; timestamps into ISO text).
_DUCKDB_TYPES = {
    "bool": "BOOLEAN",
    "boolean": "BOOLEAN",
    "int": "INTEGER",
    "long": "BIGINT",
    "real": "DOUBLE",
    "double": "DOUBLE",
    "decimal": "DECIMAL",
    "string": "VARCHAR",
    "guid": "UUID",
    "datetime": "TIMESTAMP",
    "timespan": "INTERVAL",
    "dynamic": "JSON",
}
_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class EndpointError(Exception):
    """The endpoint cannot be started, or cannot answer a query; the message is one line."""


def endpoint_file(lake_path: Path) -> Path:
    """The discovery file of the lake at *lake_path*: ``<lake>.endpoint.json`` beside it."""
    return lake_path.with_name(lake_path.name + ".endpoint.json")


# -- the server ------------------------------------------------------------------------------


def _functions_for(csl: str) -> ResolvedFunctions:
    """The library functions *csl* may call, as `auditlake query` registers them for a query; a
    control command (`.show functions`, the schema a Kusto tool loads) sees the whole library."""
    try:
        if is_control_command(csl):
            loaded, broken = library_functions()
            if broken:
                log.warning("KQL functions left out of the endpoint: %s", "; ".join(map(str, broken.values())))
            return {None: loaded}
        return resolve_functions(csl)
    except KqlFunctionsError as exc:
        raise KqlError(f"KQL functions: {exc}") from exc


class _LakeServer(KustoRestServer):
    """duckdb-kql's server, made safe to stop while a query or a kept-alive connection is open."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection, *, port: int, source: str) -> None:
        super().__init__(cursor, port=port, host=HOST, source=source, quiet=True, functions={})
        self._cursor = cursor
        # Held around everything that uses the cursor: closing takes it, so the cursor is never
        # closed under a statement. Re-entrant in case duckdb-kql ever nests one use in another.
        self._gate = threading.RLock()
        self._closed = False
        # Clients keep their connection alive; its handler thread outlives serve_forever, so a
        # stop must cut those connections or they would go on being answered.
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()

    def run(self, csl: str, parameters: dict[str, Any] | None = None, database: str | None = None,
            options: dict[str, Any] | None = None) -> Result:
        with self._gate:
            if self._closed:
                raise KqlError("the collector has stopped serving this lake")
            # Parsed under the gate too: duckdb-kql's parser is not known to be safe in two threads at once.
            self.functions = _functions_for(csl)
            if not is_control_command(csl):
                try:
                    # What duckdb-kql lacks for Sentinel content, as `auditlake query` supplies it.
                    csl = prepare(self._cursor, csl)
                except KqlReachError as exc:
                    raise KqlError(str(exc)) from None
            try:
                return super().run(csl, parameters, database, options)
            except AssertionError as exc:  # an internal check of duckdb-kql: a one-line answer
                raise KqlError(assertion_line(exc)) from None

    def databases(self) -> list[str]:
        # Asked before each request that names a database, outside run(): on the cursor too.
        with self._gate:
            return [] if self._closed else super().databases()

    def get_request(self) -> tuple[Any, Any]:
        request, address = super().get_request()
        with self._open_lock:
            self._open.add(request)
        return request, address

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback on the collector's stderr, e.g. for a client that hung up.
        log.debug("endpoint request failed client=%s", client_address, exc_info=True)

    def close(self) -> None:
        """Stop answering: cut open connections, interrupt a running query, close the cursor."""
        with self._open_lock:
            open_requests = list(self._open)
        for request in open_requests:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)
        # A query that started just before the interrupt is interrupted again until it ends. Some
        # cannot be interrupted (a KQL `range` is one list built by one call), so this waits: the
        # cursor refuses to close while busy, and so would the lake's connection.
        waited = 0
        while not self._gate.acquire(timeout=0.1):
            with contextlib.suppress(duckdb.Error):
                self._cursor.interrupt()
            waited += 1
            if waited == 50:
                log.warning("waiting for a query on the lake's endpoint to stop path=%s", self.source)
        try:
            self._closed = True
            try:
                self._cursor.close()
            except duckdb.Error as exc:  # the lake closed first, or failed: nothing left to release
                log.debug("closing the endpoint's cursor error=%s", exc)
        finally:
            self._gate.release()


class LakeEndpoint:
    """Context manager: serves `lake` (a LocalLake opened read-write by the collector) over Kusto REST on 127.0.0.1.

    ``url`` is set on entry. Queries run on a cursor of the lake's connection (never on the
    connection LocalLake writes with), one at a time, beside the collector's commits; the KQL
    library's functions are callable by name, as with ``auditlake query``. Leave the endpoint
    before closing the lake.
    """

    def __init__(self, lake: LocalLake, port: int = 0) -> None:
        self.lake = lake
        self.port = port
        self.url = ""
        self._server: _LakeServer | None = None
        self._thread: threading.Thread | None = None
        self._file = endpoint_file(lake.path)
        self._written: dict[str, Any] | None = None

    def __enter__(self) -> LakeEndpoint:
        source = str(self.lake.path.resolve())
        with self.lake.locked() as con:
            cursor = con.cursor()
        try:
            cursor.execute("SET TimeZone='UTC'")
            self._server = _LakeServer(cursor, port=self.port, source=source)
        except OSError as exc:
            cursor.close()
            raise EndpointError(self._bind_error(exc)) from None
        except BaseException:
            cursor.close()
            raise
        self.url = self._server.url
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="auditlake-endpoint", daemon=True)
        self._thread.start()
        # duckdb-kql loads its parser on first use (about half a second): done now, not in a user's first query.
        threading.Thread(target=self._warm_up, name="auditlake-endpoint-warm-up", daemon=True).start()
        try:
            self._write_file(source)
        except OSError as exc:
            self._stop()
            raise EndpointError(f"cannot write {self._file} ({exc.strerror or exc}): the lake's folder must be "
                                "writable") from None
        log.info("serving the lake for queries path=%s url=%s", self.lake.path, self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove_file()
        self._stop()
        log.info("stopped serving the lake path=%s", self.lake.path)

    def _warm_up(self) -> None:
        server = self._server
        try:
            if server is not None:
                server.run("print warm_up = 1")
        except Exception as exc:  # a query would meet the same failure and report it
            log.debug("endpoint warm-up failed error=%s", exc)

    def _bind_error(self, exc: OSError) -> str:
        if exc.errno == errno.EADDRINUSE:
            return (f"--serve-port {self.port}: in use by another program; choose another port, "
                    "or 0 for any free one")
        return f"--serve-port {self.port}: cannot listen on {HOST} ({exc.strerror or exc})"

    def _write_file(self, source: str) -> None:
        content = {"url": self.url, "pid": os.getpid(), "lake": source,
                   "started": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
        # Replaced whole, so a reader never sees half a file.
        tmp = self._file.with_name(f"{self._file.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(content))
            os.replace(tmp, self._file)
        finally:
            tmp.unlink(missing_ok=True)
        self._written = content

    def _remove_file(self) -> None:
        if self._written is None:
            return
        # Only ours: a later collector of the same lake may have replaced it.
        if _read_file(self._file) == self._written:
            with contextlib.suppress(FileNotFoundError):
                self._file.unlink()
        self._written = None

    def _stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        try:
            server.shutdown()
            server.server_close()
        finally:
            server.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- finding and asking a collector ---------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        # Elsewhere os.kill(pid, 0) would terminate the process; the probe of the URL decides.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def find_endpoint(lake_path: Path) -> str | None:
    """The URL of a live collector serving the lake at *lake_path*, or None: no discovery file, or
    a stale one (its process is gone, or its URL does not answer as an endpoint of this lake)."""
    content = _read_file(endpoint_file(lake_path))
    if content is None:
        return None
    url, pid = content.get("url"), content.get("pid")
    if not isinstance(url, str) or not url.startswith(f"http://{HOST}:") or not isinstance(pid, int):
        return None
    if not _pid_alive(pid):
        return None
    try:
        with urllib.request.urlopen(url + "/", timeout=PROBE_TIMEOUT) as response:
            landing = json.loads(response.read())
    except (OSError, ValueError):
        return None
    # The port may have been taken since by another program, even another duckdb-kql server.
    if not isinstance(landing, dict) or landing.get("name") != CLUSTER_NAME:
        return None
    if landing.get("source") != str(lake_path.resolve()):
        return None
    return url


def _one_line(message: str) -> str:
    # DuckDB's errors quote the generated SQL on further lines, with a caret under the fault.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith("LINE ") and set(line) != {"^"}]
    return "; ".join(kept) or "the query failed"


def query_endpoint(url: str, kql: str, *, timeout: float = 120.0) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    """(column names, type names, rows) of *kql* run by the collector at *url*, shaped as the CLI's
    ``run_kql`` shapes a local answer: DuckDB's type names, dynamic values as JSON text, datetimes
    as naive UTC datetimes, timespans as timedeltas. Raises EndpointError with one line."""
    from azure.kusto.data import ClientRequestProperties, KustoClient, KustoConnectionStringBuilder
    from azure.kusto.data.exceptions import KustoError, KustoNetworkError

    properties = ClientRequestProperties()  # type: ignore[no-untyped-call]
    properties.set_option(ClientRequestProperties.request_timeout_option_name, timedelta(seconds=timeout))
    try:
        with KustoClient(KustoConnectionStringBuilder.with_no_authentication(url)) as client:
            response = client.execute_query(DATABASE, kql, properties)
    except KustoNetworkError as exc:
        import requests

        if isinstance(exc.__cause__, requests.Timeout):
            raise EndpointError(f"the collector at {url} did not answer within {timeout:g} s") from None
        raise EndpointError(f"the collector at {url} stopped answering") from None
    except KustoError as exc:
        raise EndpointError(_one_line(str(exc))) from None
    tables = response.primary_results
    if not tables:
        return [], [], []
    table = tables[0]
    kinds = [str(c.column_type).lower() for c in table.columns]
    columns = [str(c.column_name) for c in table.columns]
    types = [_DUCKDB_TYPES.get(k, k.upper()) for k in kinds]
    rows = [tuple(_value(v, k) for v, k in zip(row.to_list(), kinds, strict=True)) for row in table]
    return columns, types, rows


def _value(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "dynamic":
        # DuckDB hands a JSON column over as its text; the CLI parses it back. Not orjson: a
        # dynamic value may hold an integer wider than 64 bits.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if kind in ("real", "double") and isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if kind == "guid" and isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return value
    if kind == "decimal" and not isinstance(value, Decimal):
        return Decimal(str(value))
    return value

