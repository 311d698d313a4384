"""Sentinel constructs duckdb-kql lacks run on the local lake (auditlake.lake.kql_reach), each giving
the answer Kusto gives, worked out by hand from Kusto's documentation; what cannot run says so in
one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest

from auditlake.cli import CliError, run_kql
from auditlake.lake.kql_reach import rewrite
from function_app.lake.schema import TABLES, duckdb_ddl

# (Id, UserId, Operation, RecordType, Parameters as the record carries it)
RECORDS = [
    ("r1", "ann@contoso.test", "New-InboxRule", 1,
     [{"Name": "From", "Value": "x@y"}, {"Name": "Move", "Value": "Junk"}]),
    ("r2", "bob@contoso.test", "Set-Mailbox", 1, [{"Name": "Identity", "Value": "bob"}]),
    ("r3", "ann@contoso.test", "FileAccessed", 6, None),
    ("r4", "ann@contoso.test", "FileDeleted", 6, None),
]


@pytest.fixture(scope="module")
def lake() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone='UTC'")
    for table in TABLES:
        con.execute(duckdb_ddl(table))
    for i, (rid, user, operation, record_type, parameters) in enumerate(RECORDS):
        audit: dict[str, Any] = {"Id": rid, "UserId": user, "Operation": operation, "RecordType": record_type}
        if parameters is not None:
            audit["Parameters"] = parameters
        con.execute(
            'INSERT INTO "AuditRecord" ("TimeGenerated", "Id", "RecordType", "Operation", "UserId", "AuditData") '
            "VALUES (TIMESTAMP '2026-01-01 00:00:00' + INTERVAL (?) MINUTE, ?, ?, ?, ?, ?)",
            [i, rid, record_type, operation, user, json.dumps(audit)],
        )
    yield con
    con.close()


def rows(con: duckdb.DuckDBPyConnection, query: str) -> list[tuple[Any, ...]]:
    return run_kql(con, query)[2]


def test_an_ordinary_query_is_not_rewritten() -> None:
    query = ("OfficeActivity\n| where Operation == 'FileAccessed' // a comment\n"
             "| summarize make_set(UserId) by RecordType")
    assert rewrite(query) == query
    assert rewrite("let f = (n:long) { n + 1 }; print f(2)") == "let f = (n:long) { n + 1 }; print f(2)"


def test_legacy_makeset_makelist_names_and_limits(lake: duckdb.DuckDBPyConnection) -> None:
    columns, _, got = run_kql(lake, "OfficeActivity | where RecordType == '6' | summarize makeset(UserId), "
                                    "makelist(Operation), two = makelist(Operation, 1), makeset(Operation, 1)")
    assert columns == ["set_UserId", "list_Operation", "two", "set_Operation"]
    (users, operations, two, one_set), = got
    assert json.loads(users) == ["ann@contoso.test"]
    assert sorted(operations) == ["FileAccessed", "FileDeleted"]
    assert len(two) == 1 and len(json.loads(one_set)) == 1


def test_make_set_if_and_make_list_if(lake: duckdb.DuckDBPyConnection) -> None:
    columns, _, got = run_kql(lake, "OfficeActivity | summarize make_set_if(UserId, RecordType == '1'), "
                                    "make_list_if(Operation, UserId == 'bob@contoso.test')")
    assert columns == ["set_UserId", "list_Operation"]
    assert sorted(json.loads(got[0][0])) == ["ann@contoso.test", "bob@contoso.test"]
    assert list(got[0][1]) == ["Set-Mailbox"]


def test_make_bag_merges_the_bags_of_a_group(lake: duckdb.DuckDBPyConnection) -> None:
    columns, _, got = run_kql(lake, "OfficeActivity | extend p = bag_pack(Operation, toint(RecordType)) "
                                    "| summarize make_bag(p), only = make_bag_if(p, RecordType == '6') by UserId "
                                    "| order by UserId asc")
    assert columns == ["UserId", "bag_p", "only"]
    assert [(u, json.loads(b), json.loads(o)) for u, b, o in got] == [
        ("ann@contoso.test", {"New-InboxRule": 1, "FileAccessed": 6, "FileDeleted": 6},
         {"FileAccessed": 6, "FileDeleted": 6}),
        ("bob@contoso.test", {"Set-Mailbox": 1}, {}),
    ]


def test_make_bag_keeps_one_value_of_a_repeated_key(lake: duckdb.DuckDBPyConnection) -> None:
    (bag,), = rows(lake, "OfficeActivity | summarize b = make_bag(bag_pack('k', toint(RecordType)))")
    assert list(json.loads(bag)) == ["k"] and json.loads(bag)["k"] in (1, 6)


def test_hash_is_xxhash64_as_adx_documents(lake: duckdb.DuckDBPyConnection) -> None:
    # The values of Kusto's hash()/hash_xxhash64() documentation, and XXH64 test vectors (signed long).
    got = rows(lake, 'print a = hash("World"), b = hash("World", 100), c = hash_xxhash64(""), '
                     'd = hash("Nobody inspects the spammish repetition")')
    assert got == [(1846988464401551951, 51, 0xEF46DB3751D8E999 - 2**64, 0xFBCEA83C8A378BF1 - 2**64)]


def test_hash_over_rows(lake: duckdb.DuckDBPyConnection) -> None:
    got = rows(lake, "OfficeActivity | where UserId startswith 'bob' | project h = hash(UserId, 7), "
                     "same = hash(UserId, 7) == hash('bob@contoso.test', 7)")
    assert len(got) == 1 and 0 <= got[0][0] < 7 and got[0][1] is True


def test_extractjson_with_a_type_converts(lake: duckdb.DuckDBPyConnection) -> None:
    got = rows(lake, 'print a = extractjson("$.n", "{\\"n\\":\\"12\\"}", typeof(long)), '
                     'b = extract_json("$.m", "{\\"n\\":1}"), c = extractjson("$.n", "{\\"n\\":\\"x\\"}")')
    assert got == [(12, "", "x")]


def test_project_reorder_puts_the_named_columns_first(lake: duckdb.DuckDBPyConnection) -> None:
    columns = run_kql(lake, "OfficeActivity | project Operation, UserId, RecordType, UserKey, TimeGenerated "
                            "| project-reorder User* desc, RecordType")[0]
    assert columns == ["UserKey", "UserId", "RecordType", "Operation", "TimeGenerated"]


def test_project_reorder_of_a_missing_column_is_one_line(lake: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(CliError, match=r"^KQL: project-reorder: no column named Nope in its input$"):
        run_kql(lake, "OfficeActivity | project UserId | project-reorder Nope")


def test_tabular_let_function_called_and_invoked(lake: duckdb.DuckDBPyConnection) -> None:
    define = ("let ByUser = (T:(UserId:string), who:string, n:long = 10) "
              "{ let k = T | where UserId == who; k | take n };")
    assert rows(lake, define + " ByUser(OfficeActivity, 'ann@contoso.test') | count") == [(3,)]
    assert rows(lake, define + " OfficeActivity | invoke ByUser('ann@contoso.test', 2) | count") == [(2,)]


def test_a_parenthesised_query_as_a_source(lake: duckdb.DuckDBPyConnection) -> None:
    assert rows(lake, "(OfficeActivity | where RecordType == '6') | count") == [(2,)]


def test_mv_expand_of_an_expression_of_one_column_is_named_after_it(lake: duckdb.DuckDBPyConnection) -> None:
    columns, _, got = run_kql(lake, "OfficeActivity | where Operation == 'New-InboxRule' "
                                    "| mv-expand todynamic(Parameters) | project Name = tostring(Parameters.Name)")
    assert columns == ["Name"]
    assert got == [("From",), ("Move",)]


def test_iff_with_a_dynamic_and_a_string_branch_is_a_string(lake: duckdb.DuckDBPyConnection) -> None:
    # Kusto's language service types iff(c, <dynamic>, <string>) as string: the dynamic branch converts.
    columns, types, got = run_kql(lake, "OfficeActivity | where RecordType == '1' | order by UserId asc "
                                        "| project p = iff(UserId startswith 'ann', todynamic(Parameters)[0].Name, "
                                        "Operation), q = iif(UserId has 'bob', (split(UserId, '@')[1]), UserId)")
    assert columns == ["p", "q"] and types == ["VARCHAR", "VARCHAR"]
    assert got == [("From", "ann@contoso.test"), ("Set-Mailbox", "contoso.test")]
    assert rows(lake, 'print c = case(false, dynamic([1]), "x"), n = iff(true, dynamic({"a": 2}).a, 0) + 1') == [
        ("x", 3)]


def test_mv_apply_with_a_row_level_subquery(lake: duckdb.DuckDBPyConnection) -> None:
    got = rows(lake, "OfficeActivity | where Operation == 'New-InboxRule' "
                     "| mv-apply p = todynamic(Parameters) to typeof(dynamic) on "
                     "(extend n = tostring(p.Name) | where n == 'Move') | project n, v = tostring(p.Value)")
    assert got == [("Move", "Junk")]


@pytest.mark.parametrize(("query", "line"), [
    ("OfficeActivity | mv-apply p = todynamic(Parameters) on (top 1 by tostring(p.Name))",
     "KQL: mv-apply with top in its subquery does not run on the local lake; run this query in ADX"),
    ("OfficeActivity | mv-apply p = todynamic(Parameters) on (summarize make_set(p) by tostring(p.Name))",
     "KQL: mv-apply with summarize ... by in its subquery does not run on the local lake; run this query in ADX"),
    ("OfficeActivity | make-series n = count() default = 0 on TimeGenerated step 1h by UserId",
     "KQL: make-series does not run on the local lake; run this query in ADX"),
    ("print s = series_fit_line(dynamic([1, 2, 3]))",
     "KQL: series_fit_line() does not run on the local lake; run this query in ADX"),
])
def test_what_runs_only_on_adx_says_so_in_one_line(lake: duckdb.DuckDBPyConnection, query: str, line: str) -> None:
    with pytest.raises(CliError) as caught:
        run_kql(lake, query)
    assert str(caught.value) == line


def test_mv_apply_with_summarize_gives_each_input_row_one_row(lake: duckdb.DuckDBPyConnection) -> None:
    # A row with no array still gets its row: the summarize of nothing (an empty bag, count 0).
    columns, _, got = run_kql(lake, "OfficeActivity | where RecordType == '1' or Operation == 'FileAccessed' "
                                    "| project Operation, Parameters "
                                    "| mv-apply p = todynamic(Parameters) on (where tostring(p.Name) != 'Move' "
                                    "| summarize b = make_bag(bag_pack(tostring(p.Name), p.Value)), count()) "
                                    "| order by Operation asc")
    assert columns == ["Operation", "Parameters", "b", "count_"]
    assert [(o, json.loads(b), n) for o, _, b, n in got] == [
        ("FileAccessed", {}, 0), ("New-InboxRule", {"From": "x@y"}, 1), ("Set-Mailbox", {"Identity": "bob"}, 1)]


def test_bag_unpack_and_column_ifexists(lake: duckdb.DuckDBPyConnection) -> None:
    columns, _, got = run_kql(lake, "OfficeActivity | where RecordType == '1' | project Operation, Parameters "
                                    "| mv-apply p = todynamic(Parameters) on "
                                    "(summarize b = make_bag(bag_pack(tostring(p.Name), p.Value))) "
                                    "| project-away Parameters | evaluate bag_unpack(b, 'k_') "
                                    "| extend f = column_ifexists('k_From', ''), z = column_ifexists('Nope', 'none') "
                                    "| order by Operation asc")
    assert columns == ["Operation", "k_From", "k_Identity", "k_Move", "f", "z"]
    assert [(o, json.loads(a) if a else a, str(z)) for o, a, *_, z in got] == [
        ("New-InboxRule", "x@y", "none"), ("Set-Mailbox", None, "none")]
    with pytest.raises(CliError, match=r"^KQL: bag_unpack\(\): the key 'Operation' is already a column"):
        run_kql(lake, "OfficeActivity | project Operation | extend b = bag_pack('Operation', 1) "
                      "| evaluate bag_unpack(b)")
    replaced = rows(lake, "OfficeActivity | where RecordType == '6' | project Operation "
                          "| extend b = bag_pack('Operation', 1) "
                          "| evaluate bag_unpack(b, columnsConflict='replace_source')")
    assert [json.loads(r[0]) for r in replaced] == [1, 1]


def test_bag_keys(lake: duckdb.DuckDBPyConnection) -> None:
    got = rows(lake, 'print k = bag_keys(dynamic({"a": 1, "b": [2]})), n = bag_keys(dynamic([1]))')
    assert [(sorted(json.loads(k)), n) for k, n in got] == [(["a", "b"], None)]


def test_extract_all_selects_capture_groups_by_name(lake: duckdb.DuckDBPyConnection) -> None:
    got = rows(lake, 'print r = extract_all(@"(?P<k>[a-z]+)=(\\d)?(?P<v>\\d+)", dynamic(["v", "k"]), "a=1 b=22")')
    assert [json.loads(r) for r, in got] == [[["1", "a"], ["2", "b"]]]
    with pytest.raises(CliError, match=r"^KQL: extract_all\(\): the regex has no capture group named 'w'$"):
        run_kql(lake, 'print r = extract_all(@"(?P<k>a)", dynamic(["w"]), "a")')


def test_tabular_let_function_of_a_scalar_with_lets_and_union(lake: duckdb.DuckDBPyConnection) -> None:
    define = ("let ByKind = (rt:string) { let picked = OfficeActivity | where RecordType == rt; "
              "union (picked | project UserId), (picked | where UserId startswith 'bob' | project UserId) };")
    assert rows(lake, define + " ByKind('1') | count") == [(3,)]
    assert rows(lake, define + " let a = ByKind('6'); let b = ByKind('1'); a | join kind=inner (b) on UserId "
                               "| count") == [(2,)]
