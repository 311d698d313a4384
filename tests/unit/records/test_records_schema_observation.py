"""SchemaObservation: field paths, types, first/last seen and counts per (Workload, RecordType, Operation)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from function_app.lake.schema import SCHEMA_OBSERVATION
from function_app.records import schema_observation
from function_app.records.flatten import flatten_record
from function_app.records.schema_observation import (
    MAX_ARRAY_ITEMS,
    MAX_DEPTH,
    RECHECK_EVERY,
    SchemaObserver,
    field_paths,
)

from ._samples import all_records, blob_context, require_samples

require_samples()

CTX = blob_context()
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def rec(i: int = 0, op: str = "FileAccessed", **extra: Any) -> dict[str, Any]:
    return {"Id": f"r{i}", "RecordType": 6, "Operation": op, "Workload": "SharePoint",
            "CreationTime": (T0 + timedelta(minutes=i)).isoformat()[:19], **extra}


def observe(*records: Any) -> dict[tuple[str, str, str], dict[str, Any]]:
    observer = SchemaObserver(CTX.ingested_at)
    for record in records:
        observer.add(record, flatten_record(record, CTX))
    rows = observer.rows()
    for row in rows:
        assert tuple(row) == SCHEMA_OBSERVATION.column_names
        assert all(row[k] is not None for k in SCHEMA_OBSERVATION.key)
    out = {(r["Operation"], r["FieldPath"], r["FieldType"]): r for r in rows}
    assert len(out) == len(rows), "two rows with one key"
    return out


def test_paths_of_nested_objects_arrays_and_name_value_entries() -> None:
    record = {
        "Id": "x", "RecordType": 50, "Size": 1.5, "Flag": True, "Gone": None,
        "AppAccessContext": {"ClientAppId": "a", "IssuedAtTime": "t"},
        "Folders": [{"Path": "\\Inbox",
                     "FolderItems": [{"Id": "1", "SizeInBytes": 1}, {"Id": "2", "SizeInBytes": 2.0}]}],
        "Tags": ["a", 1],
        "ExtendedProperties": [{"Name": "UserAgent", "Value": "curl"}, {"Name": "Count", "Value": 3}, {"Value": "?"}],
        "ModifiedProperties": [{"Name": "Department", "OldValue": "[]", "NewValue": "[\"x\"]"}],
    }
    assert field_paths(record) == {
        "Id": ("string",), "RecordType": ("int",), "Size": ("real",), "Flag": ("bool",), "Gone": ("null",),
        "AppAccessContext": ("object",), "AppAccessContext.ClientAppId": ("string",),
        "AppAccessContext.IssuedAtTime": ("string",),
        "Folders": ("array",), "Folders[]": ("object",), "Folders[].Path": ("string",),
        "Folders[].FolderItems": ("array",), "Folders[].FolderItems[]": ("object",),
        "Folders[].FolderItems[].Id": ("string",), "Folders[].FolderItems[].SizeInBytes": ("int", "real"),
        "Tags": ("array",), "Tags[]": ("int", "string"),
        "ExtendedProperties": ("array",), "ExtendedProperties[UserAgent]": ("string",),
        "ExtendedProperties[Count]": ("int",), "ExtendedProperties[]": ("object",),
        "ModifiedProperties": ("array",), "ModifiedProperties[Department]": ("string",),
    }


def test_name_value_arrays_delivered_otherwise_are_plain_paths() -> None:
    assert field_paths({"Parameters": "-Identity x"}) == {"Parameters": ("string",)}
    assert field_paths({"ModifiedProperties": ["Subject", "Body"]}) == {
        "ModifiedProperties": ("array",), "ModifiedProperties[]": ("string",)}
    assert field_paths({"Nested": {"Parameters": [{"Name": "A", "Value": 1}]}}) == {
        "Nested": ("object",), "Nested.Parameters": ("array",), "Nested.Parameters[]": ("object",),
        "Nested.Parameters[].Name": ("string",), "Nested.Parameters[].Value": ("int",)}


def test_depth_and_array_bounds() -> None:
    deep: Any = "leaf"
    for i in reversed(range(MAX_DEPTH + 3)):
        deep = {f"k{i}": deep}
    paths = field_paths(deep)
    longest = max(paths, key=len)
    assert longest.count(".") == MAX_DEPTH - 1 and paths[longest] == ("object",)
    many = {"Items": [{"a": 1}] * MAX_ARRAY_ITEMS + [{"b": 1}]}
    assert "Items[].b" not in field_paths(many)
    assert field_paths({"ExtendedProperties": [{"Name": "x" * 101, "Value": 1}]})["ExtendedProperties[]"] == ("object",)


def test_counts_and_first_last_seen_per_operation() -> None:
    got = observe(rec(0), rec(5, Extra=1), rec(2), rec(3, op="FileDeleted"), [1, 2], "not a record")
    assert got["FileAccessed", "Id", "string"]["Records"] == 3
    assert got["FileAccessed", "Id", "string"]["FirstSeen"] == T0
    assert got["FileAccessed", "Id", "string"]["LastSeen"] == T0 + timedelta(minutes=5)
    extra = got["FileAccessed", "Extra", "int"]
    assert (extra["Records"], extra["FirstSeen"], extra["LastSeen"]) == (1, T0 + timedelta(minutes=5),
                                                                          T0 + timedelta(minutes=5))
    assert got["FileDeleted", "Id", "string"]["Records"] == 1
    assert got["FileAccessed", "Id", "string"]["Workload"] == "SharePoint"
    assert got["FileAccessed", "Id", "string"]["RecordType"] == 6


def test_a_type_change_is_two_rows_for_one_path() -> None:
    got = observe(rec(0, Size=1), rec(1, Size="1"), rec(2, Size=None))
    assert {k[2] for k in got if k[1] == "Size"} == {"int", "string", "null"}


def test_records_without_creation_time_count_at_ingestion() -> None:
    record = rec(0)
    del record["CreationTime"]
    got = observe(record)
    assert got["FileAccessed", "Id", "string"]["FirstSeen"] == CTX.ingested_at


def test_a_nested_field_that_changes_a_size_is_seen_at_once() -> None:
    base = {"Item": {"Id": "1", "Subject": "s"}}
    grown = {"Item": {"Id": "2", "Subject": "s", "Sensitivity": "x"}}
    got = observe(*[rec(i, **base) for i in range(5)], rec(9, **grown))
    assert got["FileAccessed", "Item.Sensitivity", "string"]["Records"] == 1
    assert got["FileAccessed", "Item.Subject", "string"]["Records"] == 6


def test_a_same_size_nested_change_is_seen_within_the_recheck_interval() -> None:
    # Fresh operation name: the shape memory is per process and must not know this one.
    op = "RecheckProbe"
    records = [rec(i, op=op, Item={"Id": "1", "Subject": "s"}) for i in range(RECHECK_EVERY)]
    records += [rec(100 + i, op=op, Item={"Id": "1", "Label": "l"}) for i in range(RECHECK_EVERY)]
    got = observe(*records)
    assert (op, "Item.Label", "string") in got
    total = got[op, "Item.Id", "string"]["Records"]
    assert total == 2 * RECHECK_EVERY  # top-level-driven paths are exact


def test_the_shape_memory_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(schema_observation, "_TOP_MAX", 3)
    got = observe(*[rec(i, **{f"f{i}": i}) for i in range(10)])
    assert len(schema_observation._TOP) <= 3
    assert all(got["FileAccessed", f"f{i}", "int"]["Records"] == 1 for i in range(10))


def test_every_sample_record_is_observed_with_its_top_level_fields() -> None:
    observer = SchemaObserver(CTX.ingested_at)
    expected: set[tuple[str, str]] = set()
    for _, record in all_records():
        row = flatten_record(record, CTX)
        observer.add(record, row)
        if isinstance(record, dict):
            expected |= {(row["Operation"], str(k)) for k in record}
    rows = observer.rows()
    assert expected <= {(r["Operation"], r["FieldPath"]) for r in rows}
    assert all(r["FieldType"] in {"string", "int", "real", "bool", "null", "object", "array"} for r in rows)


def test_an_observer_counts_its_rows_without_making_them() -> None:
    # One operation with several shapes (their paths partly shared), others with one, a record
    # without fields, and every sample record: the count is the number of rows made.
    records: list[Any] = [rec(0), rec(1, Extra=1), rec(2, Extra="text"), rec(3, Nested={"a": [1, 2]}),
                          rec(4, op="FileDeleted"), {}, "not a record"]
    records += [record for _, record in all_records()]
    for upto in (0, 1, 3, 6, len(records)):
        observer = SchemaObserver(CTX.ingested_at)
        for record in records[:upto]:
            observer.add(record, flatten_record(record, CTX))
        counted = len(observer)
        assert observer._rows is None, "counting made the rows"
        assert counted == len(observer.rows()) == len(list(observer))
        assert bool(observer) == (counted > 0)
    folded = SchemaObserver.fold([observer, observer])
    assert len(folded) == len(observer.rows())


def test_an_observer_is_true_only_with_a_row_to_write_and_says_so_without_making_rows() -> None:
    observer = SchemaObserver(CTX.ingested_at)
    assert not observer
    observer.add({}, flatten_record({}, CTX))  # observed, but a record without fields has no path
    assert not observer and len(observer) == 0
    observer.add(rec(0), flatten_record(rec(0), CTX))
    assert observer
    assert observer._rows is None, "answering made the rows"
    assert len(observer.rows()) > 0


def test_the_grouped_form_expands_to_exactly_the_rows() -> None:
    # What ADX's update policy does with SchemaObserver.grouped(): one row per Fields pair, the
    # other columns from the element. Operations seen in one shape and in several (whose shared
    # paths are folded), a record without fields, and every sample record, folded over two blobs.
    records: list[Any] = [rec(0), rec(1, Extra=1), rec(2, Extra="text"), rec(3, Nested={"a": [1, 2]}),
                          rec(4, op="ProbeOneShape"), rec(5, op="ProbeOneShape"), {}]
    records += [record for _, record in all_records()]
    observers = []
    for part in (records[::2], records[1::2]):
        observer = SchemaObserver(CTX.ingested_at)
        for record in part:
            observer.add(record, flatten_record(record, CTX))
        observers.append(observer)
    folded = SchemaObserver.fold(observers)
    grouped = orjson.loads(orjson.dumps(folded.grouped()))
    expanded = [{"Workload": g["Workload"], "RecordType": g["RecordType"], "Operation": g["Operation"],
                 "FieldPath": path, "FieldType": kind, "FirstSeen": g["FirstSeen"], "LastSeen": g["LastSeen"],
                 "Records": g["Records"]} for g in grouped for path, kind in g["Fields"]]
    rows = orjson.loads(orjson.dumps(folded.rows()))
    assert sorted(map(orjson.dumps, expanded)) == sorted(map(orjson.dumps, rows))
    [deleted] = [g for g in grouped if g["Operation"] == "ProbeOneShape"]  # one shape: one element
    assert sorted(path for path, _ in deleted["Fields"]) == sorted(rec(4, op="ProbeOneShape"))
    assert deleted["Records"] == 2
    # The operation of several shapes: the paths all its records have are one element, Extra
    # (int in one record, string in another) two more.
    several = [g for g in grouped if g["Operation"] == "FileAccessed" and g["Workload"] == "SharePoint"
               and g["RecordType"] == 6 and ["Id", "string"] in g["Fields"]]
    assert len(several) == 1 and several[0]["Records"] >= 4
