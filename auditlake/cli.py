"""`auditlake`: collect the Microsoft 365 audit log into a local lake and query it with KQL.

Exit status: 0 success, 1 failure (one line saying what and why), 2 usage, 130 interrupted
(Ctrl-C, SIGINT or SIGTERM: what was collected is kept, blobs not settled are collected by the next run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import errno
import logging
import os
import re
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import orjson

from function_app.config import Settings, SettingsError, adx_insecure_http_allowed, is_guid, parse_content_types
from function_app.core.model import CONTENT_TYPES, BlobStatus
from function_app.entra.poller import EntraRules
from function_app.entra.streams import SHORT_NAMES, STREAMS, Stream, parse_streams
from function_app.logredact import install_log_redaction

LAKE_SETTING = "AUDITLAKE_LAKE"
DEFAULT_LAKE = ".auditlake/lake.duckdb"
DEMO_TENANT = "8f3c2a1e-5b4d-4c6e-9a7b-1d2e3f4a5b6c"
# Mild faults so the demo shows recovery: throttling, a 5xx, late-listed blobs, shuffled
# pages, and one blob expired and one cut off so the ledger shows what it never hides.
DEMO_FAULTS = "throttle=0.02,5xx=0.01,late=0.05,shuffle,expired=1,cutoff=1"

# Three days of Entra ID logs hold the incident (two days back) and a day of the principals' habits
# before it, at Graph's pace of 5 requests per 10 s (a week would double the demo's time).
DEMO_ENTRA_RULES = EntraRules(initial_lookback=timedelta(days=3))


if TYPE_CHECKING:
    # Imported where used: it brings aiohttp and azure-identity, a second of start-up `query` does not need.
    from function_app.compose import AdxTarget

log = logging.getLogger(__name__)


class CliError(Exception):
    """A failure to report in one line and exit 1."""


class UsageError(Exception):
    """Arguments that do not go together: reported in one line, exit 2."""


_Result = TypeVar("_Result")


def run_to_end(main: Coroutine[Any, Any, _Result]) -> _Result:
    """``asyncio.run(main)``, with the result handed back outside the main task, and SIGTERM taken
    as Ctrl-C is.

    As it finishes, ``asyncio.Runner`` asks ``signal.getsignal`` for SIGINT's handler, a partial
    holding the main task, and the signal module formats that handler's repr while failing to
    make it an enum: the task's repr, result included, and dataclass reprs are not cut short.
    A 7-day backfill's report (7,810 blob outcomes) made that 0.6 s of a 40 s run.

    SIGTERM is what ``kill``, service managers and container runtimes send to stop a process. It
    cancels the main task as asyncio's own SIGINT handler does, so the command stops the same
    clean way: what was committed stays, blobs not settled stay pending in the ledger, and
    KeyboardInterrupt comes out (exit 130 and the summary). Left at its default, SIGTERM killed a
    collect outright, with nothing printed. A second SIGTERM stops at once, as a second Ctrl-C does.
    """
    box: list[_Result] = []
    terminated: list[int] = []

    async def run() -> None:
        before = _cancel_on_sigterm(asyncio.current_task(), terminated)
        try:
            box.append(await main)
        finally:
            if before is not None:
                # remove_signal_handler leaves the default (termination), not what was there before.
                asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
                signal.signal(signal.SIGTERM, before)

    try:
        asyncio.run(run())
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None
        raise
    return box[0]


def _cancel_on_sigterm(task: asyncio.Task[Any] | None, terminated: list[int]) -> Any:
    """Make SIGTERM cancel *task* (once; a second raises KeyboardInterrupt) and return the handler it
    had, to be put back; None where the loop cannot take signals (not the main thread, not Unix)."""
    if task is None or threading.current_thread() is not threading.main_thread():
        return None
    before = signal.getsignal(signal.SIGTERM)

    def on_sigterm() -> None:
        if terminated or task.done():
            raise KeyboardInterrupt
        terminated.append(signal.SIGTERM)
        log.info("SIGTERM: stopping as on Ctrl-C")
        task.cancel()

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):
        return None
    return signal.SIG_DFL if before is None else before  # None: set outside Python


def _since(value: str) -> datetime:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([dhm])", value.strip())
    now = datetime.now(UTC)
    if m:
        amount = float(m.group(1))
        unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
        return now - timedelta(**{unit: amount})
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--since: expected 7d, 12h, 30m or an ISO datetime, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _guid(value: str) -> str:
    if not is_guid(value):
        raise argparse.ArgumentTypeError(f"not a tenant GUID: {value!r}")
    return value.lower()


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0: {value!r}")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value!r}")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value!r}")
    return number


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: any free port), got {value!r}")
    return number


def _sources(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in value.split(",") if n.strip()))
    known = ("feed", "entra", *SHORT_NAMES)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown source {', '.join(unknown) or repr(value)}; "
                                         f"choose from {', '.join(known)}")
    return names


def entra_streams(sources: Sequence[str]) -> list[Stream]:
    """The Entra ID streams *sources* names (``entra``: all five), in their fixed order."""
    return list(parse_streams(",".join(n for n in sources if n != "feed")))


def _api_root(value: str) -> str:
    root = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", root):
        # No example here: the option's own help gives the one that fits (an API root, a Graph root).
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return root


def default_lake() -> str:
    """``--lake``'s default: ``AUDITLAKE_LAKE``, else ``.auditlake/lake.duckdb`` under the working directory."""
    return os.environ.get(LAKE_SETTING, "").strip() or DEFAULT_LAKE


def lake_to_read(value: str) -> Path:
    """The lake a reading command opens; a folder is a mistake worth naming before DuckDB does."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise CliError(f"--lake {value} is a folder: give the lake file inside it (e.g. {path / 'lake.duckdb'})")
    return path


def lake_to_write(value: str) -> Path:
    """The lake a writing command opens or creates: its folder must exist or be creatable, and be writable."""
    path = lake_to_read(value)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--lake {value}: cannot create the folder {folder} ({exc.strerror or exc}); "
                       f"choose a writable place, or set {LAKE_SETTING}") from None
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"--lake {value}: not writable by this user; choose a writable place, or set {LAKE_SETTING}")
    return path


def iso_z(dt: datetime) -> str:
    """Datetimes in output: ISO 8601 UTC ending in Z (naive values are UTC already)."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.isoformat(timespec="microseconds" if dt.microsecond else "seconds") + "Z"


# ---------------------------------------------------------------------------------------
# query


def run_kql(con: Any, text: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    """(column names, DuckDB type names, rows) of a KQL query on a lake connection.

    The functions of the KQL library (auditlake/kql/functions) are callable by name, as they are on ADX.
    """
    import duckdb_kql

    from auditlake.lake.kql_functions import KqlFunctionsError, register_functions
    from auditlake.lake.kql_reach import KqlReachError, assertion_line, prepare

    try:
        register_functions(text)
        # What duckdb-kql lacks for Sentinel content, supplied; `text` itself when nothing is needed.
        rel = duckdb_kql.kql(con, prepare(con, text))
    except KqlFunctionsError as exc:
        raise CliError(f"KQL functions: {exc}") from exc
    except KqlReachError as exc:
        raise CliError(str(exc)) from exc
    except duckdb_kql.KqlError as exc:
        raise CliError(f"KQL: {exc}") from exc
    except AssertionError as exc:  # an internal check of duckdb-kql: never a traceback
        raise CliError(assertion_line(exc)) from exc
    return list(rel.columns), [str(t) for t in rel.types], rel.fetchall()


def query_error_line(exc: BaseException) -> str:
    """One line for a query DuckDB refused (unknown table or column, a type it cannot convert):
    its first sentence and DuckDB's hint, without the generated SQL it quotes."""
    missing = re.match(r"Catalog Error: Table with name (\S+) does not exist", str(exc))
    if missing:
        from function_app.lake.schema import TABLES

        return (f"query: no table or function named {missing.group(1)} in the lake; tables: "
                f"{', '.join(t.name for t in TABLES)}; functions: docs/investigations.md")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept: list[str] = []
    for line in lines:
        # DuckDB lists every overload of an operator it could not match: dozens, none of them KQL.
        if line.startswith("Candidate functions"):
            break
        if not line.startswith("LINE ") and set(line) != {"^"}:
            kept.append(line)
    text = "; ".join(kept) or type(exc).__name__
    return f"query: {text if len(text) <= 500 else text[:499] + '…'}"


def _jsonable(value: Any, type_name: str) -> Any:
    if isinstance(value, datetime):
        return iso_z(value)
    if type_name == "JSON" and isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def human_duration(value: timedelta) -> str:
    """``3d 4h``, ``1h 14m 13s``, ``42.5s``: a duration as a person reads it (two units are enough past a day)."""
    seconds = value.total_seconds()
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        if seconds == int(seconds):
            return f"{sign}{int(seconds)}s"
        return f"{sign}{seconds:.3g}s" if seconds < 10 else f"{sign}{seconds:.1f}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    parts = [f"{hours}h"] if hours else []
    parts.append(f"{minutes}m")
    if secs:
        parts.append(f"{secs}s")
    return sign + " ".join(parts)


def print_result(columns: list[str], types: list[str], rows: list[tuple[Any, ...]], fmt: str,
                 out: Any = None, *, width: int = 0) -> None:
    """Rows as a table, JSON or CSV. In a table durations read as ``1h 14m`` and values are whole
    unless *width* (> 0) cuts each cell to that many characters; JSON and CSV are always whole."""
    out = out or sys.stdout
    if fmt == "json":
        objs = [{c: _jsonable(v, t) for c, t, v in zip(columns, types, row, strict=True)} for row in rows]
        out.write(orjson.dumps(objs, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
        return
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_text(_jsonable(v, t)) for t, v in zip(types, row, strict=True)])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    widths = [len(c) for c in columns]
    for row in rows:
        cells = []
        for i, (t, v) in enumerate(zip(types, row, strict=True)):
            text = human_duration(v) if isinstance(v, timedelta) else _text(_jsonable(v, t))
            cell = text if width <= 0 or len(text) <= width else text[: width - 1] + "…"
            widths[i] = max(widths[i], len(cell))
            cells.append(cell)
        table.add_row(*cells)
    # As wide as the cells need, so values (addresses, UPNs) are not folded mid-word.
    Console(file=out, width=max(80, sum(widths) + 3 * len(widths) + 1)).print(table)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


Result = tuple[list[str], list[str], list[tuple[Any, ...]]]


def query_lake(value: str, queries: Sequence[str]) -> list[Result]:
    """Run *queries* on the lake at *value*: opened read-only, or through the collector that holds it."""
    import duckdb

    from auditlake.lake.duckdb_lake import LakeCause, LakeUnavailableError, LocalLake, lake_failure

    path = lake_to_read(value)
    try:
        lake = LocalLake(path, read_only=True)
    except FileNotFoundError:
        raise CliError(f"no lake at {value}; run `auditlake collect` or `auditlake demo` first") from None
    except LakeUnavailableError as exc:
        if exc.cause is not LakeCause.LOCKED:
            raise CliError(lake_error_line(exc, "query")) from None
        # A collector holds the file; it serves the same lake over Kusto REST, so ask it.
        return [_query_collector(path, kql, exc) for kql in queries]
    try:
        return [run_kql(lake.connection, kql) for kql in queries]
    except duckdb.Error as exc:
        failure = lake_failure(lake.path, exc, action="read")
        if failure is None:
            raise CliError(query_error_line(exc)) from None
        raise CliError(lake_error_line(failure, "query")) from None
    finally:
        lake.close()


def cmd_query(args: argparse.Namespace) -> int:
    [(columns, types, rows)] = query_lake(args.lake, [args.kql])
    print_result(columns, types, rows, args.format, width=args.width)
    return 0


def _query_collector(path: Path, kql: str, locked: Any) -> Result:
    from auditlake.lake.serve import EndpointError, find_endpoint, query_endpoint

    url = find_endpoint(path)
    if url is None:
        raise CliError(f"{locked}; the process holding it serves no queries (a collect started with --no-serve, "
                       "or another program): stop it, or query a copy")
    log.info("the lake is held by a running collector: querying it at %s", url)
    try:
        return query_endpoint(url, kql)
    except EndpointError as exc:
        raise CliError(str(exc)) from None


# ---------------------------------------------------------------------------------------
# flatten


def _read_input(name: str) -> bytes:
    path = Path(name).expanduser()
    if path.is_dir():
        raise CliError(f"--input {name} is a folder: give one file of records (a JSON array or JSON lines)")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"--input {name}: no such file") from None
    except OSError as exc:
        raise CliError(f"--input {name}: cannot be read ({exc.strerror or exc})") from None


def cmd_flatten(args: argparse.Namespace) -> int:
    from function_app.lake.schema import RECORD_TABLES
    from function_app.records.flatten import BlobContext
    from function_app.records.reader import read_records
    from function_app.records.tables import flatten_tables

    if args.table not in RECORD_TABLES:
        raise CliError(f"--table {args.table}: flatten produces {', '.join(RECORD_TABLES)}; "
                       "ContentLedger and CollectorRun record collection, not records")
    data = sys.stdin.buffer.read() if args.input in (None, "-") else _read_input(args.input)
    try:
        records = read_records(data)
    except ValueError as exc:
        raise CliError(f"input: {exc}") from exc
    ctx = BlobContext(tenant_id=args.tenant_id or "", content_type=args.content_type or "",
                      content_id=args.content_id or "", content_created=None, ingested_at=datetime.now(UTC))
    out = sys.stdout.buffer
    # The input is one batch, as a content blob is: SchemaObservation rows fold all its records.
    for row in flatten_tables(records, ctx, (args.table,))[args.table]:
        out.write(orjson.dumps(row, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC))
        out.write(b"\n")
    return 0


# ---------------------------------------------------------------------------------------
# schema, emulator


def cmd_schema(args: argparse.Namespace) -> int:
    from function_app.lake.schema import render_adx, render_duckdb

    sys.stdout.write(render_adx() if args.target == "adx" else render_duckdb())
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    from auditlake.emulator.faults import FaultSpec
    from auditlake.emulator.server import run_forever

    try:
        faults = FaultSpec.parse(args.faults or "")
    except ValueError as exc:
        raise CliError(f"--faults: {exc}") from exc
    try:
        run_forever(host=args.host, port=args.port, tenant_ids=args.tenant_id or [DEMO_TENANT], seed=args.seed,
                    days=args.days, records_per_day=args.records_per_day, scenario=args.scenario, faults=faults,
                    token=args.token, signins_per_day=args.signins_per_day)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"--port {args.port}: in use by another program; choose another port, "
                           "or --port 0 for any free one") from None
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            raise CliError(f"--host {args.host}: not an address of this machine ({exc.strerror or exc})") from None
        raise
    return 0


# ---------------------------------------------------------------------------------------
# collect, demo


class _ProgressView:
    """A rich progress bar on stderr counting blobs settled out of blobs listed."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled = enabled
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled,
                                  transient=False)
        self._task = self._progress.add_task("blobs", total=0)

    def __enter__(self) -> _ProgressView:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def listed(self, n: int) -> None:
        task = self._progress.tasks[0]
        self._progress.update(self._task, total=(task.total or 0) + n)

    def settled(self, outcome: Any) -> None:
        self._progress.advance(self._task)

    def print(self, line: str) -> None:
        """A status line on stderr, above the bar while it is drawn."""
        if self.enabled:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines to whatever ``sys.stderr`` is when they are written: rich swaps it while a
    progress bar is live, and lines written there print above the bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


def _fmt_secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


def print_summary(con: Any, since: datetime, out: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from auditlake.lake.report import problem_blobs, summarise

    console = Console(file=out or sys.stdout, width=200)
    table = Table(title="collected (this run)")
    for col in ("content type", "blobs ingested", "failed", "expired", "records", "rows kept",
                "duplicates dropped", "event→available p50/p95/max", "available→queryable p50/p95/max"):
        table.add_column(col)
    summaries = summarise(con, since)
    for s in summaries:
        table.add_row(s.content_type, str(s.blobs_ingested), str(s.blobs_failed), str(s.blobs_expired),
                      str(s.records), str(s.rows), str(s.duplicates),
                      "/".join(_fmt_secs(v) for v in s.event_to_available),
                      "/".join(_fmt_secs(v) for v in s.available_to_ingested))
    console.print(table)
    problems = problem_blobs(con, since)
    for ctype, cid, status, error in problems:
        console.print(f"[bold red]{status}[/] {ctype} {cid}: {error}", highlight=False, markup=True)


def _settings(args: argparse.Namespace) -> Settings:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        raise CliError(str(exc)) from exc
    overrides: dict[str, Any] = {}
    if args.cloud:
        overrides["cloud"] = args.cloud
    if args.api_root:
        overrides["api_root"] = args.api_root.rstrip("/")
    if args.publisher_id:
        overrides["publisher_id"] = args.publisher_id
    if args.concurrency:
        overrides["concurrency"] = args.concurrency
    if getattr(args, "graph_root", None):
        overrides["graph_root"] = args.graph_root
    if not overrides:
        return settings
    from dataclasses import replace

    return replace(settings, **overrides)


def lake_error_line(exc: Any, command: str) -> str:
    """One line for a LakeUnavailableError: what failed, why, and what to do about it."""
    from auditlake.lake.duckdb_lake import LakeCause

    cause = exc.cause
    if cause in (LakeCause.NOT_A_LAKE, LakeCause.DAMAGED):
        advice = "restore it from a backup, or choose another --lake"
    elif cause is LakeCause.LOCKED:
        from auditlake.lake.serve import find_endpoint

        url = find_endpoint(exc.path)
        if url is not None:
            # The holder is a collector serving the lake: say who can still be asked, and how.
            return (f"--lake {exc.path} is being collected into by another `auditlake collect` (serving queries "
                    f"at {url}): `auditlake query` works meanwhile; stop that collector before running {command} "
                    "on this lake")
        advice = "another process has it open: stop it, or choose another --lake"
    elif command == "query":
        advice = "nothing was changed"
    elif cause is LakeCause.DISK_FULL:
        advice = f"nothing was lost: rerun {command} after freeing space"
    elif cause is LakeCause.OUT_OF_MEMORY:
        advice = f"nothing was lost: rerun {command} with more memory free"
    else:
        advice = f"nothing was lost: rerun {command}"
    return f"{exc}; {advice}"


def _adx_target(args: argparse.Namespace) -> AdxTarget | None:
    """ADX as the sink when ``--adx-ingest-uri`` and ``--adx-database`` are given (both or neither)."""
    if not (args.adx_ingest_uri or args.adx_database):
        return None
    if not (args.adx_ingest_uri and args.adx_database):
        raise UsageError("--adx-ingest-uri and --adx-database go together")
    uri = args.adx_ingest_uri.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+$", uri):
        raise UsageError(f"--adx-ingest-uri: not a cluster URL (https://ingest-<cluster>.<region>.kusto.windows.net): "
                         f"{args.adx_ingest_uri!r}")
    if uri.startswith("http://"):
        try:
            allowed = adx_insecure_http_allowed(os.environ)
        except SettingsError as exc:
            raise CliError(str(exc)) from None
        if not allowed:
            raise UsageError(f"--adx-ingest-uri {uri} is plain http: no authentication, for a local test endpoint "
                             "only; set ADX_ALLOW_INSECURE_HTTP=true to allow it")
        log.warning("ADX at %s over plain http: no authentication (ADX_ALLOW_INSECURE_HTTP is set)", uri)
    from function_app.compose import AdxTarget

    return AdxTarget(uri, args.adx_database)


def pass_line(report: Any, next_in: float | None, *, now: datetime | None = None) -> str:
    """One line per pass of a long-running collect: what it settled and when the next pass runs."""
    from function_app.core.pipeline import CollectReport

    assert isinstance(report, CollectReport)
    stamp = (now or datetime.now(UTC)).strftime("%H:%M:%S")
    records = sum(o.inserted for o in report.outcomes)
    parts = [f"{len(report.outcomes):,} blob(s) settled, {records:,} new record(s)"]
    failed, expired = report.count(BlobStatus.FAILED), report.count(BlobStatus.EXPIRED)
    if failed or expired:
        parts.append(f"{failed} failed, {expired} expired (see ContentLedger)")
    errors = [e for r in report.runs for e in r.errors]
    if errors:
        parts.append(f"{len(errors)} pass error(s): {errors[0]}")
    if report.worker_errors:
        parts.append(f"{len(report.worker_errors)} blob(s) left pending after write errors")
    tail = f"; next pass in {human_duration(timedelta(seconds=next_in))}" if next_in is not None else ""
    return f"{stamp} pass: " + "; ".join(parts) + tail


def grouped_errors(errors: Sequence[str]) -> list[str]:
    """*errors* with one line per cause: ``Entra.SignInLogs window W: X`` for five logs refused for
    the same reason (a licence, a permission) is one line naming the five, not five lines."""
    causes: dict[str, list[str]] = {}
    for error in errors:
        match = re.match(r"(Entra\.\w+) window \S+: (.*)", error, re.S)
        where, cause = (match.group(1), match.group(2)) if match else ("", error)
        causes.setdefault(cause, [])
        if where and where not in causes[cause]:
            causes[cause].append(where)
    return [f"{', '.join(where)}: {cause}" if where else cause for cause, where in causes.items()]


def entra_line(outcomes: Sequence[Any]) -> str:
    """One status line for a pass's Entra ID polls: windows, records, new and late ones, the first error."""
    from function_app.entra.poller import summary_of

    total = summary_of(outcomes)
    line = (f"entra: {total['windows']:,} window(s), {total['records']:,} record(s) read, "
            f"{total['inserted']:,} new, {total['late']:,} late")
    if total["errors"]:
        line += f"; {len(total['errors'])} error(s): {grouped_errors(total['errors'])[0]}"
    return line


def _open_lake_for_writing(value: str, command: str) -> Any:
    from auditlake.lake.duckdb_lake import LakeUnavailableError, LocalLake

    try:
        return LocalLake(lake_to_write(value))
    except LakeUnavailableError as exc:
        raise CliError(lake_error_line(exc, command)) from None


def _settings_to_collect(args: argparse.Namespace) -> Settings:
    """The settings of a command that calls the APIs (collect, backfill): a tenant and a whole credential."""
    settings = _settings(args)
    if not (args.tenant_id or settings.tenants):
        raise CliError("no tenant: pass --tenant-id GUID or set AUDITLAKE_TENANTS")
    _check_credential_env(settings)
    return settings


def _check_credential_env(settings: Settings) -> None:
    """A credential half set up is a mistake to name before the lake is opened or served, not mid-pass."""
    from function_app.o365.auth import token_provider_from_env
    from function_app.o365.clouds import Cloud

    try:
        # Choosing the credential creates none (that happens per tenant, at the first token): nothing to close.
        token_provider_from_env(os.environ, Cloud.parse(settings.cloud))
    except ValueError as exc:
        raise CliError(f"{exc}: the app registration's application (client) id (docs/quickstart.md)") from None


def cmd_collect(args: argparse.Namespace) -> int:
    from auditlake.lake.duckdb_lake import LakeUnavailableError
    from auditlake.lake.serve import EndpointError, LakeEndpoint
    from auditlake.localrun import Progress, collect

    settings = _settings_to_collect(args)
    try:
        # None keeps each configured tenant's own content types (AUDITLAKE_TENANTS).
        content_types = parse_content_types(args.content_type, "--content-type") if args.content_type else None
    except SettingsError as exc:
        raise UsageError(str(exc)) from exc
    adx = _adx_target(args)
    streams = entra_streams(args.source)
    lake = _open_lake_for_writing(args.lake, "collect")
    started = datetime.now(UTC)

    def on_pass(report: Any, next_in: float | None) -> None:
        view.print(pass_line(report, next_in))

    def on_entra(outcomes: Sequence[Any]) -> None:
        # With --once the line joins the run's summary on stdout; a long run's go with its pass lines.
        if args.once:
            print(entra_line(outcomes), flush=True)
        else:
            view.print(entra_line(outcomes))

    try:
        serving: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if args.no_serve else LakeEndpoint(lake, port=args.serve_port))
        with serving as endpoint, _ProgressView(enabled=sys.stderr.isatty() and not args.quiet) as view:
            if endpoint is not None:
                view.print(f"serving the lake for queries at {endpoint.url} (`auditlake query --lake {lake.path}` "
                           "uses it; Kusto tools connect there without authentication)")
            report = run_to_end(collect(settings, lake, args.tenant_id or (), content_types, adx=adx,
                                         since=args.since, once=args.once, interval=args.interval,
                                         progress=Progress(view.listed, view.settled, on_pass, on_entra),
                                         feed="feed" in args.source, entra=streams))
        print_summary(lake.connection, started)
    except EndpointError as exc:
        raise CliError(str(exc)) from None
    except LakeUnavailableError as exc:
        # Every blob not settled is still listed or queued in the ledger: the next run re-drives it.
        raise CliError(lake_error_line(exc, "collect")) from None
    except KeyboardInterrupt:
        # What was written is committed; blobs not settled are pending in the ledger for the next run.
        try:
            with lake.locked() as con:
                print_summary(con, started)
        except Exception as exc:  # the interruption is what to report; a summary that cannot be read is not
            log.warning("no summary after the interruption: %s", failure_line(exc))
        raise
    finally:
        lake.close()
    failed, expired = report.count(BlobStatus.FAILED), report.count(BlobStatus.EXPIRED)
    listing_errors = [e for r in report.runs for e in r.errors]
    if failed or expired or listing_errors or report.worker_errors:
        parts = []
        if failed or expired:
            parts.append(f"{failed} blob(s) failed and {expired} expired (see ContentLedger)")
        if listing_errors:
            parts.append(f"listing errors: {'; '.join(grouped_errors(listing_errors)[:3])}")
        if report.worker_errors:
            parts.append(f"{len(report.worker_errors)} blob(s) left pending after write errors")
        raise CliError(", ".join(parts))
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from auditlake.lake.duckdb_lake import LakeUnavailableError
    from auditlake.localrun import backfill

    settings = _settings_to_collect(args)
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UsageError("--since must be before --until")
    adx = _adx_target(args)
    lake = _open_lake_for_writing(args.lake, "backfill")
    progress = _ProgressView(enabled=sys.stderr.isatty() and not args.quiet)

    def on_slice(slice_id: str, status: str) -> None:
        if status == "listed":
            progress.listed(1)
        elif status in ("ingested", "failed"):
            progress.settled(status)

    try:
        with progress:
            report = run_to_end(backfill(settings, lake, args.tenant_id or (), since=args.since, until=args.until,
                                          adx=adx, on_slice=on_slice))
    except LakeUnavailableError as exc:
        # Slices not settled stay in the ledger; the next run re-polls or redoes their days.
        raise CliError(lake_error_line(exc, "backfill")) from None
    finally:
        lake.close()
    print(report.summary())
    errors = [e for t in report.tenants for e in t.errors]
    if errors:
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        raise CliError(f"the backfill is not complete: {errors[0]}{more}")
    if not report.ok:
        raise CliError("the backfill is not complete: some slices failed; run it again to continue "
                       "(`ContentLedger | where ContentType == 'Purview.Search'` shows each slice and why)")
    return 0


# A spray: one address failing with a bad password (AADSTS 50126) against many users
# within an hour. Office NAT addresses fail often too, but spread over days.
_SPRAY = """let spray = AuditRecord
| where Operation == "UserLoginFailed" and tostring(AuditData.ErrorCode) == "50126"
| summarize UsersTried = dcount(UserPrincipal), Failures = count(), FirstFailure = min(TimeGenerated)
    by ClientIP, Hour = bin(TimeGenerated, 1h)
| where UsersTried >= 10;
"""

DEMO_INVESTIGATIONS: tuple[tuple[str, str], ...] = (
    (
        "Password spray from one address, then a successful sign-in from it",
        _SPRAY + """AuditRecord
| where Operation == "UserLoggedIn"
| join kind=inner spray on ClientIP
| project SprayHour = Hour, ClientIP, UsersTried, Failures, SignedIn = TimeGenerated, UserPrincipal,
    UserAgent = tostring(Properties.ExtendedProperties.UserAgent)""",
    ),
    (
        "Mail read from the spraying address (MailItemsAccessed, per message)",
        _SPRAY + """AuditRecord
| where Operation == "MailItemsAccessed"
| join kind=inner (spray | distinct ClientIP) on ClientIP
| mv-expand Folder = AuditData.Folders
| mv-expand Item = Folder.FolderItems
| summarize Messages = dcount(tostring(Item.InternetMessageId)), Folders = make_set(tostring(Folder.Path))
    by UserPrincipal, ClientIP, AccessType = tostring(Properties.OperationProperties.MailAccessType)""",
    ),
    (
        "Inbox rules forwarding mail, and mailbox auditing switched off",
        """AuditRecord
| where Operation in ("New-InboxRule", "Set-InboxRule", "Set-Mailbox")
| extend ForwardTo = tostring(Properties.Parameters.ForwardTo),
         RedirectTo = tostring(Properties.Parameters.RedirectTo),
         AuditEnabled = tostring(Properties.Parameters.AuditEnabled)
| where isnotempty(ForwardTo) or isnotempty(RedirectTo) or AuditEnabled =~ "False"
| project TimeGenerated, UserPrincipal, Operation, ClientIP, ForwardTo, RedirectTo, AuditEnabled""",
    ),
    (
        "Identity: service principals failing to sign in (Entra sign-in logs), by principal, address and error",
        """ServicePrincipalSignInFailures
| project ServicePrincipalName, IPAddress, ResultType, Failures, LastFailure, ResultDescription""",
    ),
    (
        "Identity: a credential added to an application, then that principal signing in from a new address",
        """CredentialThenSignIns
| where NewAddress and ResultType == "0"
| summarize SignIns = count(), FirstSignIn = min(SignInTime), Resources = make_set(ResourceDisplayName)
    by CredentialAt, AddedBy, ServicePrincipalName, IPAddress, UsesNewKey""",
    ),
    (
        "Identity: directory changes a service principal made itself, with the address recovered from its sign-ins",
        """ServicePrincipalChangesWithIP
| where isnotempty(IPAddress)
| project ChangeTime, ServicePrincipalName, OperationName, IPAddress, Location, MatchedBy""",
    ),
    (
        "Identity: what managed identities signed in to",
        """ManagedIdentityAccess
| project ServicePrincipalName, ResourceDisplayName, ResourceIdentity, SignIns, LocationDetails""",
    ),
    (
        "What the log itself got wrong: blobs by outcome",
        """ContentLedger
| summarize Blobs = count(), Records = sum(Records) by ContentType, Status
| order by ContentType asc, Status asc""",
    ),
)


def _prepare_demo_lake(path: Path) -> None:
    """The demo starts from an empty lake; it only ever replaces a lake the demo made."""
    if not path.exists():
        return
    from auditlake.lake.duckdb_lake import LocalLake

    try:
        lake = LocalLake(path, read_only=True)
        kind = lake.get_info("kind")
        lake.close()
    except Exception as exc:
        raise CliError(f"--lake {path}: exists and cannot be opened as a lake ({exc})") from exc
    if kind != "demo":
        raise CliError(f"--lake {path}: exists and was not made by the demo; choose another path")
    path.unlink()
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        wal.unlink()


async def _demo(args: argparse.Namespace, lake_path: Path) -> int:
    from auditlake.emulator.faults import FaultSpec
    from auditlake.emulator.server import EmulatorServer
    from auditlake.lake.duckdb_lake import LocalLake
    from auditlake.localrun import Progress, collect
    from function_app.o365.auth import StaticTokenProvider

    print(f"Starting the Management Activity API emulator: tenant {DEMO_TENANT}, {args.days} days, "
          f"seed {args.seed}, faults {DEMO_FAULTS}")
    async with EmulatorServer(tenant_ids=[DEMO_TENANT], seed=args.seed, days=args.days,
                              scenario="default", faults=FaultSpec.parse(DEMO_FAULTS)) as emu:
        settings = Settings(api_root=emu.api_root, graph_root=emu.graph_root, retry_base=0.05, retry_max=1.0,
                            concurrency=8)
        lake = LocalLake(lake_path)
        lake.set_info("kind", "demo")
        started = datetime.now(UTC)
        print(f"Collecting every content type into {lake_path} (backfill, catch-up, sweep), and the Entra ID "
              f"sign-in and audit logs of the last {DEMO_ENTRA_RULES.initial_lookback.days} days from Graph...")
        entra_lines: list[str] = []

        def on_entra(outcomes: Sequence[Any]) -> None:
            entra_lines.append(entra_line(outcomes))

        try:
            with _ProgressView(enabled=sys.stderr.isatty()) as view:
                report = await collect(settings, lake, [DEMO_TENANT], CONTENT_TYPES, once=True,
                                       tokens=StaticTokenProvider("demo-token"),
                                       progress=Progress(view.listed, view.settled, entra=on_entra),
                                       entra=STREAMS, entra_rules=DEMO_ENTRA_RULES)
            pages = sum(r.pages for r in report.runs)
            throttled = sum(r.throttled for r in report.runs)
            print(f"Listed {sum(r.blobs_listed for r in report.runs)} blob entries on {pages} pages, "
                  f"{sum(r.blobs_new for r in report.runs)} of them new (the overlap and the sweep re-list); "
                  f"{throttled} throttled answers retried; settled {len(report.outcomes)} blobs.")
            for line in entra_lines:
                print(line.replace("entra:", "Entra ID logs:", 1))
            print_summary(lake.connection, started)
            for title, kql in DEMO_INVESTIGATIONS:
                print(f"\n== {title}\n{kql}\n")
                columns, types, rows = run_kql(lake.connection, kql)
                print_result(columns, types, rows, "table", width=args.width)
        finally:
            lake.close()
    print(f"\nThe lake is {lake_path}; try: auditlake query --lake {lake_path} "
          "\"AuditRecord | summarize count() by Workload\"")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if not args.verbose:
        # The summary names every failed or expired blob; keep the log to what goes wrong.
        logging.getLogger().setLevel(logging.ERROR)
    from auditlake.lake.duckdb_lake import LakeUnavailableError

    lake_path = lake_to_write(args.lake)
    _prepare_demo_lake(lake_path)
    try:
        return run_to_end(_demo(args, lake_path))
    except LakeUnavailableError as exc:
        raise CliError(lake_error_line(exc, "demo")) from None


def cmd_replay(args: argparse.Namespace) -> int:
    from auditlake.lake.duckdb_lake import LakeUnavailableError
    from auditlake.replay import replay

    settings = _settings(args)
    lake_path = None if args.azure else lake_to_read(args.lake)
    if lake_path is not None and not lake_path.exists():
        raise CliError(f"no lake at {args.lake}; nothing to replay (run `auditlake collect` first)")
    try:
        summary = run_to_end(replay(
            lake=lake_path, azure=args.azure, settings=settings,
            tenant_id=args.tenant_id, content_ids=args.content_id or (), from_deadletter=args.from_deadletter,
            dry_run=args.dry_run,
        ))
    except LakeUnavailableError as exc:
        raise CliError(lake_error_line(exc, "replay")) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.format == "json":
        sys.stdout.write(orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        rows = [(i.tenant_id, i.content_type, i.content_id, i.action, i.detail or "") for i in summary.items]
        print_result(["TenantId", "ContentType", "ContentId", "Action", "Detail"], ["VARCHAR"] * 5, rows, "table",
                     width=args.width)
    problem = summary.problem()
    if problem:
        raise CliError(problem)
    return 0


# ---------------------------------------------------------------------------------------


def cmd_health(args: argparse.Namespace) -> int:
    from auditlake.health import HealthThresholds, findings, health_query, verdict_line

    thresholds = HealthThresholds(gap_hours=args.gap_hours, near_expiry_hours=args.near_expiry_hours,
                                  failed_runs=args.failed_runs, lookback_hours=args.lookback_hours)
    [(columns, types, rows)] = query_lake(args.lake, [health_query(thresholds)])
    found = findings(columns, rows)
    if found:
        print_result(columns, types, rows, args.format, width=args.width)
    elif args.format == "json":
        print_result(columns, types, rows, args.format)
    verdict = verdict_line(found)
    if found:
        # The table says what; the line is what cron mails and what a script greps.
        raise CliError(verdict)
    print(verdict, file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from auditlake.lake.html_report import render_html, report_queries

    queries = report_queries(args.days)
    results = dict(zip(queries, query_lake(args.lake, list(queries.values())), strict=True))
    page = render_html(results, title=f"AuditLake: {lake_to_read(args.lake).name}", generated_at=datetime.now(UTC))
    out = Path(args.html).expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(page, encoding="utf-8")
        partial.replace(out)
    except OSError as exc:
        raise CliError(f"--html {args.html}: cannot be written ({exc.strerror or exc})") from None
    print(f"wrote {out} ({len(page.encode()):,} bytes): open it in a browser", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from auditlake.export import ExportError, export_lake
    from auditlake.lake.duckdb_lake import LakeUnavailableError

    path = lake_to_read(args.lake)
    try:
        exported = export_lake(path, Path(args.out).expanduser(), args.format, args.table or None)
    except ExportError as exc:
        raise CliError(str(exc)) from None
    except LakeUnavailableError as exc:
        raise CliError(lake_error_line(exc, "export")) from None
    rows = [(e.table, e.rows, str(e.path)) for e in exported]
    print_result(["Table", "Rows", "File"], ["VARCHAR", "BIGINT", "VARCHAR"], rows, "table")
    return 0


# ---------------------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    python = sys.version.split()[0]
    return f"auditlake {of('auditlake')} (duckdb {of('duckdb')}, duckdb-kql {of('duckdb-kql')}, Python {python})"


_LAKE_HELP = f"the lake file (default: ${LAKE_SETTING}, else {DEFAULT_LAKE} under the working directory)"
_WIDTH_HELP = "cut each table cell to N characters (default: 0, whole values)"
_CLOUDS = ["Enterprise", "GCC", "GCCHigh", "DoD"]
# The emulator's scenarios (auditlake.emulator.tenant.SCENARIOS, a test keeps them equal), spelled out
# because importing the emulator to build the parser would cost every command half a second.
EMULATOR_SCENARIOS = ("default", "quiet")
_CLOUD_HELP = "the tenant's cloud (default: $AUDITLAKE_CLOUD, else Enterprise)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming it (``--help`` has the synopsis), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"auditlake: usage: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # Every subcommand also takes -v, so it works after the command name as well as before it.
    verbosity = _Parser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                           help="log more (-v info and tracebacks of failures, -vv debug)")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = _Parser(prog="auditlake", description=__doc__.splitlines()[0], epilog=(
        "Exit status: 0 success, 1 failure (one line saying what and why; -v adds the traceback), "
        "2 usage, 130 interrupted. Docs: docs/cli.md, docs/quickstart.md."))
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info and tracebacks of failures, -vv debug)")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, helptext: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=helptext, description=helptext, parents=[verbosity], formatter_class=fmt)

    lake = default_lake()
    p = command("demo", "emulated tenant → collector → local lake → KQL investigations")
    p.add_argument("--lake", default=lake, help=_LAKE_HELP + "; the demo only ever replaces a lake it made")
    p.add_argument("--days", type=_positive_float, default=7, help="days of history the emulated tenant serves")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic tenant (same seed, same records)")
    p.add_argument("--width", type=_count, default=60, metavar="N",
                   help="cut each table cell to N characters, so the investigations fit a terminal (0: whole values)")
    p.set_defaults(func=cmd_demo)

    p = command("collect", "collect audit content into the lake (or into ADX)")
    p.add_argument("--tenant-id", action="append", type=_guid, metavar="GUID",
                   help="tenant to collect (repeatable; default: $AUDITLAKE_TENANTS)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cloud", choices=_CLOUDS, help=_CLOUD_HELP)
    where.add_argument("--api-root", type=_api_root, metavar="URL",
                       help="Management API root instead of the cloud's, e.g. an emulator's "
                            "http://127.0.0.1:8765/api/v1.0 (default: $AUDITLAKE_API_ROOT)")
    p.add_argument("--graph-root", type=_api_root, metavar="URL",
                   help="Microsoft Graph root instead of the cloud's, for --source entra, e.g. an emulator's "
                        "http://127.0.0.1:8765/graph (default: $AUDITLAKE_GRAPH_ROOT)")
    p.add_argument("--source", type=_sources, default=("feed",), metavar="NAMES",
                   help="what to collect, comma-separated: feed (the Management Activity API), entra (all five Entra "
                        f"ID logs from Microsoft Graph), or one of {', '.join(SHORT_NAMES)} (default: feed)")
    p.add_argument("--content-type", action="append", metavar="TYPE",
                   help=f"one of {', '.join(CONTENT_TYPES)} (repeatable; default: all five)")
    p.add_argument("--since", type=_since, metavar="WHEN",
                   help="where a content type or Entra log without a checkpoint starts: 7d, 12h, 30m or an ISO "
                        "datetime (default: 7 days ago, as far back as the feed serves)")
    p.add_argument("--lake", default=lake,
                   help=_LAKE_HELP + "; with --adx-ingest-uri it keeps only the ledger and checkpoints")
    p.add_argument("--adx-ingest-uri", metavar="URL", help="write the records into ADX instead: its data-management "
                                                           "URI (https://ingest-<cluster>.<region>.kusto.windows.net)")
    p.add_argument("--adx-database", metavar="NAME", help="the ADX database (with --adx-ingest-uri)")
    p.add_argument("--once", action="store_true", help="catch up, sweep, and exit (default: run until Ctrl-C)")
    p.add_argument("--interval", type=_positive_float, default=120.0, metavar="SECONDS",
                   help="seconds from the start of one pass to the next, without --once (a pass that "
                        "takes longer is followed at once)")
    p.add_argument("--publisher-id", type=_guid, metavar="GUID",
                   help="PublisherIdentifier sent to the API (default: $AUDITLAKE_PUBLISHER_ID, else the first tenant)")
    p.add_argument("--concurrency", type=_positive_int, metavar="N",
                   help="blobs fetched at once (default: $AUDITLAKE_CONCURRENCY, else 32)")
    p.add_argument("--serve-port", type=_port, default=0, metavar="PORT",
                   help="serve the lake for queries over Kusto REST on 127.0.0.1:PORT while collecting "
                        "(0: any free port)")
    p.add_argument("--no-serve", action="store_true", help="do not serve the lake while collecting")
    p.add_argument("--quiet", action="store_true", help="no progress bar (the per-pass status lines stay)")
    p.set_defaults(func=cmd_collect)

    p = command("backfill", "fetch history past the feed's 7 days from the Purview audit search, "
                            "and what the feed never delivered")
    p.add_argument("--tenant-id", action="append", type=_guid, metavar="GUID",
                   help="tenant to backfill (repeatable; default: $AUDITLAKE_TENANTS)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cloud", choices=_CLOUDS, help=_CLOUD_HELP)
    where.add_argument("--graph-root", type=_api_root, metavar="URL",
                       help="Microsoft Graph root instead of the cloud's, e.g. an emulator's "
                            "http://127.0.0.1:8765/graph (default: $AUDITLAKE_GRAPH_ROOT)")
    p.add_argument("--since", type=_since, metavar="WHEN",
                   help="how far back: 90d, 12h or an ISO datetime, from its UTC midnight (default: "
                        "$AUDITLAKE_SEARCH_HISTORY_DAYS days, else 180: Purview's standard retention)")
    p.add_argument("--until", type=_since, metavar="WHEN", help="where to stop (default: now)")
    p.add_argument("--lake", default=lake, help=_LAKE_HELP + "; with --adx-ingest-uri it keeps only the ledger")
    p.add_argument("--adx-ingest-uri", metavar="URL", help="write the records into ADX instead (as collect)")
    p.add_argument("--adx-database", metavar="NAME", help="the ADX database (with --adx-ingest-uri)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_backfill, api_root=None, publisher_id=None, concurrency=None)

    p = command("replay", "re-drive failed blobs that have not expired")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--lake", default=lake, help=_LAKE_HELP)
    target.add_argument("--azure", action="store_true",
                        help="the deployed app: Table Storage ledger, content queue, dead-letter container")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cloud", choices=_CLOUDS, help=_CLOUD_HELP)
    where.add_argument("--api-root", type=_api_root, metavar="URL",
                       help="the Management API root the blobs were collected from; replay sends the token "
                            "nowhere else (default: $AUDITLAKE_API_ROOT, else the cloud's)")
    p.add_argument("--tenant-id", type=_guid, metavar="GUID", help="only this tenant's blobs (default: every tenant)")
    p.add_argument("--content-id", action="append", metavar="ID", help="only these blobs (repeatable)")
    p.add_argument("--from-deadletter", action="store_true",
                   help="re-ingest from the raw copy kept in the dead-letter container (with --azure)")
    p.add_argument("--dry-run", action="store_true", help="say what would be replayed, change nothing")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    p.add_argument("--width", type=_count, default=0, metavar="N", help=_WIDTH_HELP)
    p.set_defaults(func=cmd_replay, publisher_id=None, concurrency=None)

    p = command("query", "run KQL on the lake (through the collector when one is running)")
    p.add_argument("--lake", default=lake, help=_LAKE_HELP)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    p.add_argument("--width", type=_count, default=0, metavar="N", help=_WIDTH_HELP)
    p.add_argument("kql", help="the query, e.g. \"AuditRecord | summarize count() by Workload\"")
    p.set_defaults(func=cmd_query)

    p = command("export", "copy the lake's tables to files (Parquet, CSV or JSON lines), for backup or other tools")
    p.add_argument("--lake", default=lake, help=_LAKE_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write <Table>.<format> files into")
    p.add_argument("--format", choices=["parquet", "csv", "jsonl"], default="parquet", help="file format")
    p.add_argument("--table", action="append", metavar="NAME", help="only these tables (repeatable; default: all)")
    p.set_defaults(func=cmd_export)

    from auditlake.health import HealthThresholds

    # The defaults of HealthChecks, which the Azure alert rules default to as well.
    health = HealthThresholds()
    p = command("health", "check the lake as the Azure alerts check ADX; exit 1 when a check fails (for cron)")
    p.add_argument("--lake", default=lake, help=_LAKE_HELP)
    p.add_argument("--gap-hours", type=_positive_float, default=health.gap_hours, metavar="HOURS",
                   help="a tenant and content type silent this long is a log-flow gap")
    p.add_argument("--near-expiry-hours", type=_positive_float, default=health.near_expiry_hours, metavar="HOURS",
                   help="a blob not settled this close to its expiry is flagged")
    p.add_argument("--failed-runs", type=_positive_int, default=health.failed_runs, metavar="N",
                   help="this many failed passes in a row for a content type is a failing collector")
    p.add_argument("--lookback-hours", type=_positive_float, default=health.lookback_hours, metavar="HOURS",
                   help="how far back expired and failed blobs and tampering count")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    p.add_argument("--width", type=_count, default=0, metavar="N", help=_WIDTH_HELP)
    p.set_defaults(func=cmd_health)

    p = command("report", "write the dashboards' views of the lake as one self-contained HTML page")
    p.add_argument("--lake", default=lake, help=_LAKE_HELP)
    p.add_argument("--html", required=True, metavar="FILE", help="the page to write")
    p.add_argument("--days", type=_positive_float, default=7.0, help="days the charts cover")
    p.set_defaults(func=cmd_report)

    p = command("flatten", "records (JSON array or lines) → rows as JSON lines")
    p.add_argument("--input", default="-", metavar="FILE", help="file of records, or - for stdin")
    p.add_argument("--table", default="AuditRecord", help="which table's rows to produce")
    p.add_argument("--content-type", default="", metavar="TYPE", help="ContentType written into the rows")
    p.add_argument("--tenant-id", default="", metavar="GUID", help="TenantId written into the rows")
    p.add_argument("--content-id", default="", metavar="ID", help="ContentId written into the rows")
    p.set_defaults(func=cmd_flatten)

    p = command("emulator", "serve the Management Activity API emulator")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_port, default=8765, help="port to listen on (0: any free port)")
    p.add_argument("--tenant-id", action="append", type=_guid, metavar="GUID",
                   help=f"tenant to emulate (repeatable; default: {DEMO_TENANT})")
    p.add_argument("--scenario", choices=EMULATOR_SCENARIOS, default="default", help="what the synthetic tenant does")
    p.add_argument("--faults", default="", metavar="SPEC",
                   help="faults to inject, e.g. throttle=0.05,5xx=0.01,late=0.1,expired=1 (docs/fault-suite.md)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic tenant")
    p.add_argument("--days", type=_positive_float, default=7, help="days of history served")
    p.add_argument("--records-per-day", type=_count, default=3000, metavar="N", help="records per tenant per day")
    p.add_argument("--signins-per-day", type=_count, default=100, metavar="N",
                   help="interactive Entra ID sign-ins per tenant per day; the other sign-in kinds and the directory "
                        "audits scale from it")
    p.add_argument("--token", help="require exactly this bearer token (default: any)")
    p.set_defaults(func=cmd_emulator)

    p = command("schema", "print the DDL of the lake's tables")
    p.add_argument("--target", choices=["adx", "duckdb"], required=True, help="ADX (KQL commands) or DuckDB (SQL)")
    p.set_defaults(func=cmd_schema)
    return parser


def _stdout_gone() -> None:
    """The reader closed our stdout (``| head``): send what is left nowhere, so exiting does not complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def failure_line(exc: BaseException) -> str:
    """One line for a failure nobody anticipated: its type when that says something, and its message."""
    message = " ".join(str(exc).split()) or "(no message)"
    if isinstance(exc, ValueError | OSError):
        return message
    return f"{type(exc).__name__}: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = int(getattr(args, "verbose", 0) or 0)
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    # Before any client logs: SAS signatures and tokens never reach the terminal, at any level.
    install_log_redaction()
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if verbose < 2:
        # The Azure SDKs log each failed token request and HTTP exchange over several lines; the
        # collector reports the same failure in one line of its own. -vv shows theirs as well.
        logging.getLogger("azure").setLevel(logging.ERROR)
    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except CliError as exc:
        if verbose:
            # The failure the line describes, not the line's own raise.
            traceback.print_exception(exc.__cause__ or exc.__context__ or exc)
        print(f"auditlake: error: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"auditlake: usage: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("auditlake: interrupted; what was collected is kept, and blobs not settled are collected by the next run",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        _stdout_gone()
        return 0
    except Exception as exc:  # the error boundary: anything unforeseen is still one line
        if verbose:
            traceback.print_exc()
            hint = ""
        else:
            hint = " (run with -v for the traceback)"
        print(f"auditlake: error: {failure_line(exc)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
