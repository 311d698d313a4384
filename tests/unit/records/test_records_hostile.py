"""One hostile record never costs its neighbours: parse, flatten and serialise keep every record.

Each case is a body of good records with one record an attacker (or a bad day) could produce:
the strict parser refuses it, or it expands past what a writer can write. The body must still
yield one row per record, the hostile one flagged with why, the rest exactly as delivered.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from auditlake.lake.duckdb_lake import to_arrow
from function_app.lake.adx import to_json_lines
from function_app.lake.cells import MAX_FALLBACK_CHARS, repaired_row
from function_app.lake.schema import TABLES_BY_NAME
from function_app.records.flatten import MAX_EMBEDDED_CHARS, MAX_EMBEDDED_DEPTH, BlobContext
from function_app.records.reader import RecoveredRecord, parse_content, read_records
from function_app.records.tables import flatten_tables

AUDIT = TABLES_BY_NAME["AuditRecord"]
CTX = BlobContext("t", "Audit.Exchange", "cid", None, datetime(2026, 12, 1, tzinfo=UTC))


def good(i: int) -> dict[str, Any]:
    return {"Id": f"good-{i}", "RecordType": 1, "Operation": "Set-Mailbox", "CreationTime": "2026-12-01T00:00:00",
            "UserId": "a@contoso.com", "UserType": 2}


def deep(levels: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(levels - 1):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


def body_with(hostile: bytes, before: int = 25, after: int = 25) -> bytes:
    """A JSON array of *before* good records, the hostile element's text, then *after* more."""
    parts = [orjson.dumps(good(i)) for i in range(before)] + [hostile]
    parts += [orjson.dumps(good(i)) for i in range(before, before + after)]
    return b"[" + b",".join(parts) + b"]"


INBOX_RULE = {"Id": "hostile", "RecordType": 1, "Operation": "New-InboxRule", "CreationTime": "2026-12-01T00:00:00",
              "Parameters": [{"Name": "Name", "Value": "[" * 300 + "]" * 300}]}

# element text -> (reason flag on its row, whether its own Id survives)
TOKENS: dict[str, tuple[bytes, str]] = {
    "lone surrogate": (b'{"Id":"hostile","RecordType":1,"Operation":"X","Subject":"\\ud83d"}', "invalid-text"),
    "NaN": (b'{"Id":"hostile","RecordType":1,"Operation":"X","Size":NaN}', "non-finite-number"),
    "Infinity": (b'{"Id":"hostile","RecordType":1,"Operation":"X","Size":-Infinity}', "non-finite-number"),
    "1e400": (b'{"Id":"hostile","RecordType":1,"Operation":"X","Size":1e400}', "non-finite-number"),
    "stray byte": (b'{"Id":"hostile","RecordType":1,"Operation":"X","Subject":"a\xffb"}', "invalid-text"),
}


def rows_of(body: bytes) -> list[dict[str, Any]]:
    content = parse_content(body)
    assert content.complete and content.not_an_array is None
    return flatten_tables(content.records, CTX)["AuditRecord"]


def audit_data(row: dict[str, Any]) -> Any:
    """The record a row keeps: its delivered text (a body read whole) read back, else the value."""
    value = row["AuditData"]
    return orjson.loads(orjson.dumps(value)) if isinstance(value, orjson.Fragment) else value


def assert_neighbours_intact(rows: list[dict[str, Any]], total: int = 51) -> dict[str, Any]:
    assert len(rows) == total
    by_id = {r["Id"]: r for r in rows}
    for i in range(total - 1):
        assert audit_data(by_id[f"good-{i}"]) == good(i)
        assert by_id[f"good-{i}"]["Quality"] == []
    [hostile] = [r for r in rows if not r["Id"].startswith("good-")]
    return hostile


def serialise_both(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    lines = [orjson.loads(line) for line in to_json_lines(AUDIT, rows).splitlines()]
    arrow = to_arrow(AUDIT, rows)
    assert len(lines) == arrow.num_rows == len(rows)
    return lines, arrow.column("Quality").to_pylist()


@pytest.mark.parametrize("kind", sorted(TOKENS))
def test_a_token_the_strict_parser_refuses_costs_only_its_own_record_a_flag(kind: str) -> None:
    element, reason = TOKENS[kind]
    rows = rows_of(body_with(element))
    hostile = assert_neighbours_intact(rows)
    assert f"record:recovered:{reason}" in hostile["Quality"]
    assert hostile["Operation"] == "X" and hostile["RecordType"] == 1
    lines, _ = serialise_both(rows)
    assert [line["Id"] for line in lines] == [r["Id"] for r in rows]


def test_a_lone_surrogate_and_a_stray_byte_become_the_replacement_character() -> None:
    for kind in ("lone surrogate", "stray byte"):
        hostile = assert_neighbours_intact(rows_of(body_with(TOKENS[kind][0])))
        assert "\ufffd" in hostile["AuditData"]["Subject"]


def test_non_finite_numbers_are_kept_as_the_text_that_was_delivered() -> None:
    texts = {kind: assert_neighbours_intact(rows_of(body_with(TOKENS[kind][0])))["AuditData"]["Size"]
             for kind in ("NaN", "Infinity", "1e400")}
    assert texts == {"NaN": "NaN", "Infinity": "-Infinity", "1e400": "1e400"}


def test_an_inbox_rule_named_with_300_brackets_is_kept_as_its_string_and_its_blob_lands() -> None:
    rows = rows_of(body_with(orjson.dumps(INBOX_RULE)))
    hostile = assert_neighbours_intact(rows)
    assert "too-deep:Parameters.Name" in hostile["Quality"]
    assert hostile["Properties"]["Parameters"]["Name"] == "[" * 300 + "]" * 300
    lines, _ = serialise_both(rows)
    written = next(line for line in lines if line["Id"] == "hostile")
    assert written["AuditData"] == INBOX_RULE, "the record itself is written exactly as delivered"


def test_json_inside_a_string_is_expanded_up_to_the_depth_bound_and_no_further() -> None:
    at_bound = "[" * MAX_EMBEDDED_DEPTH + "]" * MAX_EMBEDDED_DEPTH
    past = "[" * (MAX_EMBEDDED_DEPTH + 1) + "]" * (MAX_EMBEDDED_DEPTH + 1)
    record = {**good(0), "Parameters": [{"Name": "A", "Value": at_bound}, {"Name": "B", "Value": past}]}
    row = flatten_tables([record], CTX)["AuditRecord"][0]
    assert row["Properties"]["Parameters"]["A"] == orjson.loads(at_bound)
    assert row["Properties"]["Parameters"]["B"] == past
    assert row["Quality"] == ["too-deep:Parameters.B"]


def test_json_inside_a_string_past_the_size_bound_stays_a_string() -> None:
    big = "[" + ",".join(["1"] * (MAX_EMBEDDED_CHARS // 2 + 1)) + "]"
    record = {**good(0), "Parameters": [{"Name": "Big", "Value": big}]}
    row = flatten_tables([record], CTX)["AuditRecord"][0]
    assert row["Properties"]["Parameters"]["Big"] == big
    assert row["Quality"] == ["too-large:Parameters.Big"]


def test_a_record_deeper_than_orjson_writes_is_written_as_its_text_by_both_sinks() -> None:
    record = {"Id": "hostile", "RecordType": 1, "Operation": "X", "CreationTime": "2026-12-01T00:00:00",
              "Nested": deep(300)}
    body = body_with(b'{"Id":"hostile","RecordType":1,"Operation":"X","CreationTime":"2026-12-01T00:00:00",'
                     b'"Nested":' + b"[" * 300 + b"]" * 300 + b"}")
    rows = rows_of(body)
    hostile = assert_neighbours_intact(rows)
    assert hostile["AuditData"] == record
    lines, quality = serialise_both(rows)
    written = next(line for line in lines if line["Id"] == "hostile")
    # Stored as the record's JSON text: the whole record is still there to read.
    assert orjson.loads(written["AuditData"].encode()) == record
    assert "AuditData:unserialisable:too-deep" in written["Quality"]
    flagged = [q for q in quality if q and "AuditData:unserialisable:too-deep" in q]
    assert len(flagged) == 1
    assert sum(1 for line in lines if any(":unserialisable:" in f for f in line["Quality"])) == 1


def test_an_element_no_parser_reads_is_kept_raw_with_the_fields_written_plainly_in_it() -> None:
    element = b'{"Id":"hostile","RecordType":15,"Operation":"UserLoggedIn","CreationTime":"2026-12-01T01:02:03" "x"=1}'
    rows = rows_of(body_with(element))
    hostile = assert_neighbours_intact(rows)
    assert hostile["Quality"] == ["record:unreadable:unreadable"]
    assert hostile["AuditData"] == element.decode()
    assert (hostile["RecordType"], hostile["Operation"]) == (15, "UserLoggedIn")
    assert hostile["TimeGenerated"] == datetime(2026, 12, 1, 1, 2, 3, tzinfo=UTC)
    # Never the record's own key: a whole copy delivered later must not be dropped as its duplicate.
    assert hostile["Id"].startswith("x-")
    serialise_both(rows)


def test_content_after_the_closing_bracket_is_kept_as_a_row_of_its_own() -> None:
    body = body_with(orjson.dumps({**good(99), "Id": "hostile"})) + b' {"Id":'
    content = parse_content(body)
    assert content.complete and len(content.records) == 52
    tail = content.records[-1]
    assert type(tail) is RecoveredRecord and tail.reason == "after-array" and tail.raw == '{"Id":'


def test_a_bom_before_the_array_costs_nothing() -> None:
    content = parse_content(b"\xef\xbb\xbf" + body_with(orjson.dumps({**good(99), "Id": "hostile"})))
    assert content.complete and content.recovered == 0 and len(content.records) == 51
    assert all(type(r) is dict for r in content.records)


@pytest.mark.parametrize("body", [b"", b"   ", b"[", b'[{"Id":"a"},', b'[{"Id":"a"},{"Id":"b","Op'])
def test_a_body_that_never_closes_is_incomplete_and_keeps_every_whole_record(body: bytes) -> None:
    content = parse_content(body)
    assert not content.complete
    whole = [r for r in content.records if type(r) is dict]
    assert whole == ([{"Id": "a"}] if b'"a"' in body else [])
    assert all(r.reason == "cut-off" for r in content.records if type(r) is RecoveredRecord)


def test_every_cut_of_a_body_keeps_every_record_before_the_cut() -> None:
    records = [{"Id": str(i), "Pad": "x" * i, "List": [i, {"k": "]"}]} for i in range(12)]
    body = orjson.dumps(records)
    ends = []
    position = 1
    for record in records:
        position += len(orjson.dumps(record))
        ends.append(position)
        position += 1
    for cut in range(len(body) - 1):
        content = parse_content(body[:cut])
        assert not content.complete
        whole = [r for r in content.records if type(r) is dict]
        assert whole == [r for r, end in zip(records, ends, strict=True) if end <= cut], cut


@pytest.mark.parametrize(("body", "said"), [(b'{"Id":"a"}', "a JSON dict, not an array"), (b"<html>", "not JSON"),
                                             (b'"text"', "a JSON str, not an array")])
def test_a_body_that_is_not_an_array_is_said_to_be_so(body: bytes, said: str) -> None:
    assert parse_content(body).not_an_array == said


def test_the_flatten_command_keeps_bad_tokens_but_still_names_a_broken_structure() -> None:
    records = read_records(body_with(TOKENS["NaN"][0]))
    assert len(records) == 51 and type(records[25]) is RecoveredRecord
    with pytest.raises(ValueError, match="line 1 column"):
        read_records(body_with(b'{"Id"="x"}'))


def test_a_cell_no_writer_accepts_is_replaced_by_its_bounded_text_and_flagged() -> None:
    huge_deep: list[Any] = deep(400)
    row = {**flatten_tables([good(0)], CTX)["AuditRecord"][0], "Properties": {"x": huge_deep},
           "UserPrincipal": "a\ud83db"}
    repaired = repaired_row(AUDIT, row, orjson.dumps)
    assert repaired["UserPrincipal"] == "a\ufffdb"
    assert json.loads(repaired["Properties"]) == {"x": huge_deep}
    assert repaired["Quality"] == ["UserPrincipal:unserialisable:invalid-text", "Properties:unserialisable:too-deep"]
    assert row["Quality"] == [], "the row given is not changed"
    orjson.dumps(repaired)


def test_fallback_text_is_cut_to_its_bound_and_says_so() -> None:
    row = {**flatten_tables([good(0)], CTX)["AuditRecord"][0],
           "AuditData": {"s": "\ud83d" * (MAX_FALLBACK_CHARS // 6 + 10)}}
    repaired = repaired_row(AUDIT, row, orjson.dumps)
    assert len(repaired["AuditData"]) == MAX_FALLBACK_CHARS
    assert repaired["Quality"] == [f"AuditData:unserialisable:invalid-text;cut-to-{MAX_FALLBACK_CHARS}-chars"]
