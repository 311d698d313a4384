"""Property tests of the whole record path with hostile bodies (issue 17 item 6): no record lost.

body bytes -> ``parse_content`` -> ``flatten_tables`` -> ADX JSON lines and the DuckDB lake.
Bodies come from ``_fuzz_bodies``: deep nesting past orjson's 254-level write limit,
bracket-heavy strings and JSON text inside name/value arrays, lone UTF-16 surrogate escapes,
NaN / Infinity / 1e400, bytes that are not UTF-8, a BOM, odd numbers, keys in odd case,
non-object elements, duplicate keys, a few huge strings, and realistic records around them.

Runs are reproducible (derandomized, no example database) and bounded (max_examples; a
generous per-example deadline that only a pathological slowdown reaches).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from auditlake.lake.duckdb_lake import LocalLake
from function_app.core.model import ContentBlob
from function_app.lake.adx import to_json_lines
from function_app.lake.schema import AUDIT_RECORD, TABLES_BY_NAME, Table
from function_app.records.flatten import BlobContext
from function_app.records.reader import ParsedContent, RecoveredRecord, parse_content
from function_app.records.tables import flatten_tables

from ._fuzz_bodies import HOSTILE, Body, bodies, body_of

F = TypeVar("F", bound=Callable[..., Any])

SETTINGS = settings(
    max_examples=30,
    deadline=timedelta(seconds=30),
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

GROUPS: dict[str, Body] = {
    "deep": body_of("deep-list-300", "deep-object-400", "deep-element-255", "deep-element-1100", "deep-params-object"),
    # Exactly at orjson's write limit: each value alone is writable, inside its row it is not.
    "deep-boundary": body_of("deep-element-254", "deep-field-253", "deep-params-252", "deep-directory-254"),
    "brackets": body_of("brackets-in-name", "brackets-value-balanced", "brackets-value-open", "brackets-modified",
                        "json-in-value", "json-in-modified", "deep-json-text-modified"),
    "surrogates": body_of("surrogate-value", "surrogate-key", "surrogate-operation", "surrogate-id",
                          "surrogate-in-params", "surrogate-json-text"),
    "non-finite": body_of("nan", "infinity", "1e400", "nan-record-type", "nan-element", "minus-infinity-element",
                          "1e400-element"),
    "bad-bytes-bom": body_of("bad-bytes", "bad-bytes-key", "bad-bytes-id", bom=True, gaps=(b"\r\n", b" ")),
    "odd-numbers": body_of("big-int", "big-int-400-digits", "big-int-5000-digits", "minus-zero", "big-record-type"),
    "keys": body_of("odd-case", "duplicate-keys", "duplicate-names", "empty-object", "nul-in-id-1", "nul-in-id-2",
                    "nul-in-operation", bom=True),
    "not-objects": body_of("not-an-object-number", "not-an-object-string", "not-an-object-null",
                           "not-an-object-list"),
    "unreadable": body_of("unreadable-undefined", "unreadable-single-quote", "unreadable-control-char",
                          "unreadable-trailing-comma", "unreadable-token", "control-in-unreadable-string"),
    "huge": body_of("huge-string", "huge-brackets-value", "huge-operation", "huge-key", "huge-bad-bytes",
                    "surrogate-value"),
    "empty": body_of(),
    "empty-bom": body_of(bom=True),
}
# Each group, and each hostile element on its own between two realistic records (so a neighbour
# lost to it would show).
EXAMPLES: list[Body] = [
    *GROUPS.values(),
    *(Body((HOSTILE["odd-case"], element, HOSTILE["json-in-value"]), (b" ",)) for element in HOSTILE.values()),
]


def with_examples(fn: F) -> F:
    for body in EXAMPLES:
        fn = example(body)(fn)
    return fn


def with_groups(fn: F) -> F:
    """The groups only: for the lake, where each example costs a transaction."""
    for body in GROUPS.values():
        fn = example(body)(fn)
    return fn


def context(content_id: str = "fuzz-content") -> BlobContext:
    return BlobContext(
        tenant_id="b86ab9d4-fcf1-4b11-8a06-7a8f91b47fbd",
        content_type="Audit.General",
        content_id=content_id,
        content_created=datetime(2026, 11, 20, 10, 5, tzinfo=UTC),
        ingested_at=datetime(2026, 11, 20, 10, 7, tzinfo=UTC),
    )


def strict(text: bytes) -> tuple[bool, Any]:
    """(True, orjson's value) when *text* is valid strict JSON on its own, else (False, None)."""
    try:
        return True, orjson.loads(text)
    except orjson.JSONDecodeError:
        return False, None


def parsed(body: Body, prefix: bytes = b"fuzz") -> tuple[ParsedContent, list[bytes]]:
    data, _, texts = body.render(prefix)
    return parse_content(data), texts


def assert_whole(record: Any, text: bytes, index: int) -> None:
    """*record* is element *index* read whole: equal to orjson's value when the text is strict
    JSON, else kept as a RecoveredRecord."""
    ok, value = strict(text)
    if ok:
        assert type(record) is not RecoveredRecord, f"element {index}: strict JSON came back recovered"
        assert record == value, f"element {index}: {record!r:.200} != {value!r:.200}"
    else:
        assert type(record) is RecoveredRecord, f"element {index}: not strict JSON, came back as {record!r:.200}"


class _Errors(logging.Handler):
    """Collects the errors ``flatten_tables`` logs (a derived builder or the observer raised)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.getMessage()} {record.exc_info[1]!r:.200}" if record.exc_info else
                         record.getMessage())


@contextmanager
def logged_errors() -> Iterator[list[str]]:
    handler = _Errors()
    logger = logging.getLogger(flatten_tables.__module__)
    logger.addHandler(handler)
    try:
        yield handler.seen
    finally:
        logger.removeHandler(handler)


# -- 1. parse_content: a complete array of N balanced elements is N records, in order ----------


@SETTINGS
@given(bodies())
@with_examples
def test_complete_array_keeps_every_element(body: Body) -> None:
    content, texts = parsed(body)
    assert content.complete, content.problem
    assert content.not_an_array is None
    assert len(content.records) == len(texts)
    for i, (record, text) in enumerate(zip(content.records, texts, strict=True)):
        assert_whole(record, text, i)


# -- 2. flatten_tables: one AuditRecord row per record, with a key and Quality ------------------


@SETTINGS
@given(bodies())
@with_examples
def test_flatten_gives_a_keyed_row_per_record(body: Body) -> None:
    content, texts = parsed(body)
    with logged_errors() as errors:
        tables = flatten_tables(content.records, context())
    assert not errors, f"a derived builder or the schema observer raised: {errors}"
    rows = tables["AuditRecord"]
    assert len(rows) == len(texts)
    for i, row in enumerate(rows):
        assert tuple(row) == AUDIT_RECORD.column_names, f"row {i}"
        assert type(row["Id"]) is str and row["Id"], f"row {i}: Id {row['Id']!r:.100}"
        assert type(row["RecordType"]) is int and -(2**31) <= row["RecordType"] < 2**31, f"row {i}"
        assert type(row["Operation"]) is str, f"row {i}"
        assert type(row["Quality"]) is list and all(type(f) is str for f in row["Quality"]), f"row {i}"
        assert not any(f.startswith("flatten:error:") for f in row["Quality"]), f"row {i}: {row['Quality']}"


# -- 3. ADX sink: N lines of strict JSON, same Id, replaced cells flagged -----------------------

_ADX_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def _writable_in_row(value: Any) -> bool:
    """Whether orjson writes *value* as a cell of a row: one level down, inside the row's object."""
    try:
        orjson.dumps({"cell": value}, option=_ADX_OPTIONS)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def json_lines(table: Table, rows: list[dict[str, Any]]) -> list[Any]:
    """``to_json_lines`` of *rows*: one line of strict JSON per row, with the table's columns."""
    data = to_json_lines(table, rows)
    lines = data.split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert len(lines) == len(rows), table.name
    values = [orjson.loads(line) for line in lines]
    assert all(list(v) == list(table.column_names) for v in values), table.name
    return values


@SETTINGS
@given(bodies())
@with_examples
def test_adx_lines_keep_every_row(body: Body) -> None:
    content, texts = parsed(body)
    tables = flatten_tables(content.records, context())
    rows = tables["AuditRecord"]
    assert len(rows) == len(texts)
    for i, (cells, row) in enumerate(zip(json_lines(AUDIT_RECORD, rows), rows, strict=True)):
        assert cells["Id"] == row["Id"], f"line {i}: Id {cells['Id']!r:.100} != {row['Id']!r:.100}"
        assert (cells["RecordType"], cells["Operation"]) == (row["RecordType"], row["Operation"]), f"line {i}"
        refused = [c for c in AUDIT_RECORD.column_names
                   if c != "Quality" and row[c] is not None and not _writable_in_row(row[c])]
        flags = cells["Quality"]
        assert isinstance(flags, list)
        for column in refused:
            assert any(f.startswith(f"{column}:unserialisable:") for f in flags), f"line {i}: {column} {flags}"
        if not refused:
            assert flags == row["Quality"], f"line {i}"
    # The derived tables go to ADX the same way: a row each, whatever they hold.
    for name, table_rows in tables.items():
        if name != "AuditRecord" and not TABLES_BY_NAME[name].local_only:
            json_lines(TABLES_BY_NAME[name], table_rows)


# -- 4. DuckDB sink: every distinct key stored ---------------------------------------------------


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLake]:
    lake = LocalLake(Path(tmp_path_factory.mktemp("fuzz-lake")) / "lake.duckdb")
    try:
        yield lake
    finally:
        lake.close()


def _stored_keys(lake: LocalLake, keys: list[tuple[str, int, str]]) -> set[tuple[str, int, str]]:
    if not keys:
        return set()
    wanted = pa.table({
        "Id": pa.array([k[0] for k in keys], pa.string()),
        "RecordType": pa.array([k[1] for k in keys], pa.int32()),
        "Operation": pa.array([k[2] for k in keys], pa.string()),
    })
    # A cursor of its own: the lake's connection is left as its last statement left it.
    with lake.locked() as lake_con, lake_con.cursor() as con:
        con.register("_wanted", wanted)
        found = con.execute(
            'SELECT a."Id", a."RecordType", a."Operation" FROM "AuditRecord" a '
            'JOIN _wanted w ON a."Id" = w."Id" AND a."RecordType" = w."RecordType" '
            'AND a."Operation" = w."Operation"').fetchall()
    return {(i, r, o) for i, r, o in found}


def _rows_of(lake: LocalLake, content_id: str) -> int:
    with lake.locked() as lake_con, lake_con.cursor() as con:
        row = con.execute('SELECT count(*) FROM "AuditRecord" WHERE "ContentId" = ?', [content_id]).fetchone()
    assert row is not None
    return int(row[0])


def _lake_check(lake: LocalLake, body: Body, write: Callable[[str, dict[str, list[dict[str, Any]]]], Any]) -> None:
    run = uuid.uuid4().hex
    content, texts = parsed(body, run.encode())
    tables = flatten_tables(content.records, context(run))
    rows = tables["AuditRecord"]
    assert len(rows) == len(texts)
    keys = list(dict.fromkeys((r["Id"], r["RecordType"], r["Operation"]) for r in rows))
    before = _stored_keys(lake, keys)
    result = write(run, tables)
    new = len(keys) - len(before)
    assert (result.inserted, result.duplicates) == (new, len(rows) - new)
    assert _rows_of(lake, run) == new
    missing = set(keys) - _stored_keys(lake, keys)
    assert not missing, f"keys not stored: {sorted(repr(k)[:120] for k in missing)}"


@SETTINGS
@given(bodies())
@with_groups
def test_lake_stores_every_distinct_key(lake: LocalLake, body: Body) -> None:
    _lake_check(lake, body, lambda run, tables: lake.write_tables(tables))


@settings(SETTINGS, max_examples=5)
@given(bodies())
@example(GROUPS["deep"])
@example(GROUPS["deep-boundary"])
@example(GROUPS["surrogates"])
@example(GROUPS["bad-bytes-bom"])
def test_lake_write_blob_stores_every_distinct_key(lake: LocalLake, body: Body) -> None:
    def write(run: str, tables: dict[str, list[dict[str, Any]]]) -> Any:
        blob = ContentBlob(tenant_id="b86ab9d4-fcf1-4b11-8a06-7a8f91b47fbd", content_type="Audit.General",
                           content_id=run, content_uri=f"https://example.invalid/{run}",
                           content_created=datetime(2026, 11, 20, 10, 5, tzinfo=UTC),
                           content_expiration=datetime(2026, 11, 27, 10, 5, tzinfo=UTC))
        return asyncio.run(lake.write_blob(blob, tables))

    _lake_check(lake, body, write)


def test_unreadable_records_never_share_or_take_a_key() -> None:
    """Two records no parser reads never share a key (a nested folder's Id is not theirs), and
    neither takes its own record's key, which a later whole delivery of the record must get."""
    unreadable = (b'{"CreationTime":"2026-11-20T10:00:00","Folders":[{"Id":"@P@-nested","FolderItems":[]}],'
                  b'"Id":"@P@-%d","RecordType":2,"Operation":"MailItemsAccessed","x":undefined}')
    run = uuid.uuid4().hex
    content, _ = parsed(Body((unreadable % 1, unreadable % 2)), run.encode())
    rows = flatten_tables(content.records, context(run))["AuditRecord"]
    ids = [r["Id"] for r in rows]
    assert len(set(ids)) == 2 and all(i.startswith("x-") for i in ids), ids
    assert [(r["RecordType"], r["Operation"]) for r in rows] == [(2, "MailItemsAccessed")] * 2


# -- 5. a cut-off body: never raises, incomplete, every element before the cut whole -------------


@SETTINGS
@given(bodies(min_size=1), st.integers(min_value=0, max_value=2**32))
@example(GROUPS["surrogates"], 10**6)
@example(GROUPS["non-finite"], 10**5)
@example(GROUPS["bad-bytes-bom"], 2)
@example(GROUPS["bad-bytes-bom"], 3)
@example(GROUPS["odd-numbers"], 4321)
@example(GROUPS["unreadable"], 777)
@example(GROUPS["huge"], 3 << 20)
@example(GROUPS["deep-boundary"], 600)
@example(body_of("odd-case", "json-in-value"), 0)
def test_cut_off_body_keeps_what_came_before(body: Body, cut_at: int) -> None:
    data, spans, texts = body.render()
    full = parse_content(data)
    close = data.rindex(b"]")
    cut = cut_at % (close + 1)
    content = parse_content(data[:cut])
    assert not content.complete
    # Wholly before the cut: the byte after the element (separator or bracket) is there too.
    before = [i for i, (_, end) in enumerate(spans) if end < cut]
    assert len(content.records) >= len(before)
    assert len(content.records) <= len(texts)
    for i in before:
        record = content.records[i]
        assert_whole(record, texts[i], i)
        if type(record) is RecoveredRecord and not record.readable:
            # Its end was not seen when the cut falls right after it: it may say cut-off.
            assert record.reason in ("unreadable", "cut-off")
            assert record.raw.strip() == full.records[i].raw.strip()
        else:
            assert record == full.records[i]
