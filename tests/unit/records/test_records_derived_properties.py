"""Property tests: derived builders and the schema observer never raise and never change the record."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from auditlake.lake.duckdb_lake import to_arrow
from function_app.lake.schema import RECORD_TABLES, TABLES_BY_NAME
from function_app.records.derived import BUILDERS
from function_app.records.flatten import flatten_record
from function_app.records.schema_observation import SchemaObserver, field_paths
from function_app.records.tables import flatten_tables

from ._samples import blob_context
from .test_records_properties import SETTINGS, json_values, name_value_entries, records

CTX = blob_context("b86ab9d4-fcf1-4b11-8a06-7a8f91b47fbd")

identities = st.lists(
    st.one_of(
        st.fixed_dictionaries({"ID": st.one_of(st.sampled_from(["User_1", "ServicePrincipal_2", "User", "a@b.c"]),
                                               json_values),
                               "Type": st.one_of(st.sampled_from([0, 1, 2, 5, "5"]), json_values)}),
        json_values,
    ),
    max_size=5,
)
items = st.lists(
    st.one_of(
        st.fixed_dictionaries({}, optional={"Id": json_values, "ImmutableId": json_values,
                                            "InternetMessageId": json_values, "SizeInBytes": json_values}),
        json_values,
    ),
    max_size=4,
)
folders = st.lists(
    st.one_of(st.fixed_dictionaries({}, optional={"Path": json_values, "FolderItems": st.one_of(items, json_values),
                                                  "MessageItems": st.one_of(items, json_values)}),
              json_values),
    max_size=3,
)
derived_fields = st.fixed_dictionaries(
    {
        "RecordType": st.sampled_from([8, 9, 15, 50, "8", "15"]),
        "Operation": st.sampled_from(["MailItemsAccessed", "UserLoggedIn", "UserLoginFailed", "Update user.",
                                      "Change user license."]),
    },
    optional={
        "Folders": st.one_of(folders, json_values, st.just('[{"Path": "x", "FolderItems": [{"Id": 1}]}]')),
        "Messages": st.one_of(folders, json_values),
        "Actor": st.one_of(identities, json_values),
        "Target": st.one_of(identities, json_values),
        "ModifiedProperties": st.one_of(name_value_entries, json_values, st.just([
            {"Name": "AssignedLicense", "OldValue": "[]", "NewValue": '["[SkuName=E5, SkuId=x]", {"SkuId": "y"}]'},
            {"Name": "Included Updated Properties", "OldValue": "", "NewValue": "AssignedLicense, Other"},
        ])),
        "ExtendedProperties": st.one_of(name_value_entries, json_values),
        "DeviceProperties": st.one_of(name_value_entries, json_values),
        "OperationProperties": st.one_of(name_value_entries, json_values),
        "ErrorCode": json_values,
        "LoginStatus": json_values,
        "LogonError": json_values,
        "ApplicationId": json_values,
        "MailboxOwnerUPN": json_values,
        "ClientInfoString": json_values,
        "LogonType": json_values,
    },
)
derived_records = st.one_of(
    st.builds(lambda base, extra: {**base, **extra} if isinstance(base, dict) else extra, records, derived_fields),
    records,
)


def check_rows(table_name: str, rows: list[dict[str, Any]]) -> None:
    table = TABLES_BY_NAME[table_name]
    for row in rows:
        assert set(row) == set(table.column_names)
        assert all(row[k] is not None for k in table.key)
    to_arrow(table, rows)  # the lake can write them: types and ranges fit the columns


@settings(SETTINGS, max_examples=300)
@given(derived_records)
def test_builders_never_raise_nor_change_the_record(record: Any) -> None:
    before = copy.deepcopy(record)
    row = flatten_record(record, CTX)
    for table, builder in BUILDERS:
        check_rows(table, builder(record, row))
    assert record == before


@settings(SETTINGS, max_examples=200)
@given(st.lists(derived_records, max_size=6))
def test_the_observer_and_one_pass_never_raise_nor_change_records(batch: list[Any]) -> None:
    before = copy.deepcopy(batch)
    observer = SchemaObserver(CTX.ingested_at)
    for record in batch:
        observer.add(record, flatten_record(record, CTX))
        field_paths(record)
    check_rows("SchemaObservation", observer.rows())
    out = flatten_tables(batch, CTX)
    assert len(out["AuditRecord"]) == len(batch)
    for name in RECORD_TABLES:
        check_rows(name, out[name])
    assert batch == before


@settings(SETTINGS)
@given(st.dictionaries(st.one_of(st.text(max_size=5), st.integers(-5, 5)), json_values, max_size=5))
def test_keys_that_are_not_strings_are_observed_as_text(record: dict[Any, Any]) -> None:
    paths = field_paths(record)
    assert all(isinstance(path, str) for path in paths)
    observer = SchemaObserver(CTX.ingested_at)
    observer.add(record, flatten_record(record, CTX))
    check_rows("SchemaObservation", observer.rows())


def test_name_value_entries_of_one_count_but_other_names_are_observed_as_their_own_fields() -> None:
    def update(names: list[str]) -> dict[str, Any]:
        return {"Id": f"id-{'-'.join(names)}", "RecordType": 8, "Operation": "Update user.",
                "CreationTime": "2026-11-20T08:00:00", "Workload": "AzureActiveDirectory",
                "ModifiedProperties": [{"Name": n, "NewValue": "[]", "OldValue": "[]"} for n in names]}

    observer = SchemaObserver(CTX.ingested_at)
    batch = [update(["Department", "Included Updated Properties"])] * 3 + \
        [update(["StrongAuthenticationMethod", "Included Updated Properties"])] * 2
    for record in batch:
        observer.add(record, flatten_record(record, CTX))
    counts = {r["FieldPath"]: r["Records"] for r in observer.rows() if "[" in r["FieldPath"]}
    assert counts["ModifiedProperties[Department]"] == 3
    assert counts["ModifiedProperties[StrongAuthenticationMethod]"] == 2
