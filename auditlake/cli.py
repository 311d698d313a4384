"""`auditlake`: demo, collect, query, flatten, emulator, schema.

Exit status: 0 success, 1 failure (one line saying what and why), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from function_app.compose import AdxTarget
from function_app.config import Settings, SettingsError, adx_insecure_http_allowed, is_guid, parse_content_types
from function_app.core.model import CONTENT_TYPES, BlobStatus
from function_app.logredact import install_log_redaction

DEFAULT_LAKE = ".auditlake/lake.duckdb"
DEMO_TENANT = "8f3c2a1e-5b4d-4c6e-9a7b-1d2e3f4a5b6c"
# Mild faults so the demo shows recovery: throttling, a 5xx, late-listed blobs, shuffled
# pages, and one blob expired and one cut off so the ledger shows what it never hides.
DEMO_FAULTS = "throttle=0.02,5xx=0.01,late=0.05,shuffle,expired=1,cutoff=1"


log = logging.getLogger(__name__)


class CliError(Exception):
    """A failure to report in one line and exit 1."""


class UsageError(Exception):
    """Arguments that do not go together: reported in one line, exit 2."""


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

    try:
        register_functions(text)
        rel = duckdb_kql.kql(con, text)
    except KqlFunctionsError as exc:
        raise CliError(f"KQL functions: {exc}") from exc
    except duckdb_kql.KqlError as exc:
        raise CliError(f"KQL: {exc}") from exc
    return list(rel.columns), [str(t) for t in rel.types], rel.fetchall()


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


def print_result(columns: list[str], types: list[str], rows: list[tuple[Any, ...]], fmt: str,
                 out: Any = None, *, width: int = 60) -> None:
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
            text = _text(_jsonable(v, t))
            cell = text if len(text) <= width else text[: width - 1] + "…"
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


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from auditlake.lake.duckdb_lake import LakeUnavailableError, LocalLake, lake_failure

    try:
        lake = LocalLake(args.lake, read_only=True)
    except FileNotFoundError:
        raise CliError(f"no lake at {args.lake}; run `auditlake collect` or `auditlake demo` first") from None
    except LakeUnavailableError as exc:
        raise CliError(lake_error_line(exc, "query")) from None
    try:
        columns, types, rows = run_kql(lake.connection, args.kql)
    except duckdb.Error as exc:
        failure = lake_failure(lake.path, exc, action="read")
        if failure is None:
            raise
        raise CliError(lake_error_line(failure, "query")) from None
    finally:
        lake.close()
    print_result(columns, types, rows, args.format)
    return 0


# ---------------------------------------------------------------------------------------
# flatten


def cmd_flatten(args: argparse.Namespace) -> int:
    from function_app.lake.schema import RECORD_TABLES
    from function_app.records.flatten import BlobContext
    from function_app.records.reader import read_records
    from function_app.records.tables import flatten_tables

    if args.table not in RECORD_TABLES:
        raise CliError(f"--table {args.table}: flatten produces {', '.join(RECORD_TABLES)}; "
                       "ContentLedger and CollectorRun record collection, not records")
    data = sys.stdin.buffer.read() if args.input in (None, "-") else Path(args.input).read_bytes()
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
    run_forever(host=args.host, port=args.port, tenant_ids=args.tenant_id or [DEMO_TENANT], seed=args.seed,
                days=args.days, records_per_day=args.records_per_day, scenario=args.scenario, faults=faults,
                token=args.token)
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
    return AdxTarget(uri, args.adx_database)


def cmd_collect(args: argparse.Namespace) -> int:
    from auditlake.lake.duckdb_lake import LakeUnavailableError, LocalLake
    from auditlake.localrun import Progress, collect

    settings = _settings(args)
    if not (args.tenant_id or settings.tenants):
        raise CliError("no tenant: pass --tenant-id GUID or set AUDITLAKE_TENANTS")
    try:
        # None keeps each configured tenant's own content types (AUDITLAKE_TENANTS).
        content_types = parse_content_types(args.content_type, "--content-type") if args.content_type else None
    except SettingsError as exc:
        raise CliError(str(exc)) from exc
    adx = _adx_target(args)
    try:
        lake = LocalLake(args.lake)
    except LakeUnavailableError as exc:
        raise CliError(lake_error_line(exc, "collect")) from None
    started = datetime.now(UTC)
    try:
        with _ProgressView(enabled=sys.stderr.isatty() and not args.quiet) as view:
            report = asyncio.run(collect(settings, lake, args.tenant_id or (), content_types, adx=adx,
                                         since=args.since, once=args.once, interval=args.interval,
                                         progress=Progress(view.listed, view.settled)))
        print_summary(lake.connection, started)
    except LakeUnavailableError as exc:
        # Every blob not settled is still listed or queued in the ledger: the next run re-drives it.
        raise CliError(lake_error_line(exc, "collect")) from None
    finally:
        lake.close()
    failed, expired = report.count(BlobStatus.FAILED), report.count(BlobStatus.EXPIRED)
    listing_errors = [e for r in report.runs for e in r.errors]
    if failed or expired or listing_errors or report.worker_errors:
        parts = []
        if failed or expired:
            parts.append(f"{failed} blob(s) failed and {expired} expired (see ContentLedger)")
        if listing_errors:
            parts.append(f"listing errors: {'; '.join(listing_errors[:3])}")
        if report.worker_errors:
            parts.append(f"{len(report.worker_errors)} blob(s) left pending after write errors")
        raise CliError(", ".join(parts))
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
        settings = Settings(api_root=emu.api_root, retry_base=0.05, retry_max=1.0, concurrency=8)
        lake = LocalLake(lake_path)
        lake.set_info("kind", "demo")
        started = datetime.now(UTC)
        print(f"Collecting every content type into {lake_path} (backfill, catch-up, sweep)...")
        try:
            with _ProgressView(enabled=sys.stderr.isatty()) as view:
                report = await collect(settings, lake, [DEMO_TENANT], CONTENT_TYPES, once=True,
                                       tokens=StaticTokenProvider("demo-token"),
                                       progress=Progress(view.listed, view.settled))
            pages = sum(r.pages for r in report.runs)
            throttled = sum(r.throttled for r in report.runs)
            print(f"Listed {sum(r.blobs_listed for r in report.runs)} blob entries on {pages} pages, "
                  f"{sum(r.blobs_new for r in report.runs)} of them new (the overlap and the sweep re-list); "
                  f"{throttled} throttled answers retried; settled {len(report.outcomes)} blobs.")
            print_summary(lake.connection, started)
            for title, kql in DEMO_INVESTIGATIONS:
                print(f"\n== {title}\n{kql}\n")
                columns, types, rows = run_kql(lake.connection, kql)
                print_result(columns, types, rows, "table")
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

    lake_path = Path(args.lake)
    _prepare_demo_lake(lake_path)
    try:
        return asyncio.run(_demo(args, lake_path))
    except LakeUnavailableError as exc:
        raise CliError(lake_error_line(exc, "demo")) from None


def cmd_replay(args: argparse.Namespace) -> int:
    from auditlake.lake.duckdb_lake import LakeUnavailableError
    from auditlake.replay import replay

    settings = _settings(args)
    try:
        summary = asyncio.run(replay(
            lake=None if args.azure else args.lake, azure=args.azure, settings=settings,
            tenant_id=args.tenant_id, content_ids=args.content_id or (), from_deadletter=args.from_deadletter,
            dry_run=args.dry_run,
        ))
    except LakeUnavailableError as exc:
        raise CliError(lake_error_line(exc, "replay")) from None
    except ValueError as exc:
        print(f"auditlake: usage: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        sys.stdout.write(orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        rows = [(i.tenant_id, i.content_type, i.content_id, i.action, i.detail or "") for i in summary.items]
        print_result(["TenantId", "ContentType", "ContentId", "Action", "Detail"], ["VARCHAR"] * 5, rows, "table")
    if not summary.ok:
        counts = summary.counts()
        raise CliError(f"{counts.get('failed', 0)} failed again, {counts.get('expired', 0)} expired")
    return 0


# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auditlake", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="emulated tenant → collector → local lake → KQL investigations")
    p.add_argument("--lake", default=DEFAULT_LAKE)
    p.add_argument("--days", type=float, default=7)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("collect", help="collect audit content into the lake")
    p.add_argument("--tenant-id", action="append", type=_guid, help="tenant to collect (repeatable)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cloud", choices=["Enterprise", "GCC", "GCCHigh", "DoD"])
    where.add_argument("--api-root", help="Management API root, e.g. http://127.0.0.1:8000/api/v1.0")
    p.add_argument("--content-type", action="append", help=f"one of {', '.join(CONTENT_TYPES)} (repeatable)")
    p.add_argument("--since", type=_since, help="where to start without a checkpoint: 7d, 12h or ISO")
    p.add_argument("--lake", default=DEFAULT_LAKE,
                   help="the local lake; with --adx-ingest-uri it keeps only the ledger and checkpoints")
    p.add_argument("--adx-ingest-uri", help="write the records into ADX instead: its data-management URI "
                                            "(https://ingest-<cluster>.<region>.kusto.windows.net)")
    p.add_argument("--adx-database", help="the ADX database (with --adx-ingest-uri)")
    p.add_argument("--once", action="store_true", help="catch up, sweep, and exit")
    p.add_argument("--interval", type=float, default=120.0, help="seconds between passes without --once")
    p.add_argument("--publisher-id", type=_guid, help="PublisherIdentifier (default: the first tenant)")
    p.add_argument("--concurrency", type=int, help="blobs fetched at once")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("replay", help="re-drive failed blobs that have not expired")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--lake", default=DEFAULT_LAKE, help="local lake (default)")
    target.add_argument("--azure", action="store_true",
                        help="the deployed app: Table Storage ledger, content queue, dead-letter container")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cloud", choices=["Enterprise", "GCC", "GCCHigh", "DoD"])
    where.add_argument("--api-root")
    p.add_argument("--tenant-id", type=_guid)
    p.add_argument("--content-id", action="append", help="only these blobs (repeatable)")
    p.add_argument("--from-deadletter", action="store_true",
                   help="re-ingest from the raw copy kept in the dead-letter container (with --azure)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_replay, publisher_id=None, concurrency=None)

    p = sub.add_parser("query", help="run KQL on the lake")
    p.add_argument("--lake", default=DEFAULT_LAKE)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("kql")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("flatten", help="records (JSON array or lines) → rows as JSON lines")
    p.add_argument("--input", help="file, or - for stdin (default)")
    p.add_argument("--table", default="AuditRecord")
    p.add_argument("--content-type", default="")
    p.add_argument("--tenant-id", default="")
    p.add_argument("--content-id", default="")
    p.set_defaults(func=cmd_flatten)

    p = sub.add_parser("emulator", help="serve the Management Activity API emulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--tenant-id", action="append", type=_guid)
    p.add_argument("--scenario", default="default")
    p.add_argument("--faults", default="")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--days", type=float, default=7)
    p.add_argument("--records-per-day", type=int, default=3000)
    p.add_argument("--token", help="require exactly this bearer token (default: any)")
    p.set_defaults(func=cmd_emulator)

    p = sub.add_parser("schema", help="print the DDL")
    p.add_argument("--target", choices=["adx", "duckdb"], required=True)
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    # Before any client logs: SAS signatures and tokens never reach the terminal, at any level.
    install_log_redaction()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"auditlake: error: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"auditlake: usage: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("auditlake: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
