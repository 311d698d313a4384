"""The Entra tables carry every column Sentinel documents for them, with the documented type.

``sentinel_entra_columns.json`` transcribes the Azure Monitor table reference (path and commit
recorded per table). Queries written for Sentinel run unchanged only if the names and the types
match, down to the documented oddities (LocationDetails dynamic in SigninLogs, string in the
non-interactive table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from function_app.lake.entra_schema import ENTRA_TABLE_NAMES
from function_app.lake.schema import TABLES_BY_NAME

DOCUMENTED: dict[str, Any] = json.loads(
    Path(__file__).with_name("sentinel_entra_columns.json").read_text(encoding="utf-8"))["tables"]

# Computed by Log Analytics for billing and resource scoping, not part of any record.
LOG_ANALYTICS_ONLY = {"_BilledSize", "_IsBillable"}

# Columns AuditLake adds to each table (the record, normalised values, the defect flag).
ADDED = {"ClientIP", "UserPrincipal", "PrincipalId", "IngestedAt", "AuditLakeFlag", "RawRecord"}


def test_the_data_file_covers_the_five_tables_with_their_sources() -> None:
    assert set(DOCUMENTED) == set(ENTRA_TABLE_NAMES)
    for name, table in DOCUMENTED.items():
        source = table["source"]
        assert source["repository"] == "MicrosoftDocs/azure-reference-other"
        assert source["path"] == f"azure-monitor-ref/tables/includes/{name.lower()}-include.md"
        assert len(source["commit"]) == 40
        assert {c for c in table["columns"] if c.startswith("_")} == LOG_ANALYTICS_ONLY


@pytest.mark.parametrize("name", ENTRA_TABLE_NAMES)
def test_every_documented_column_is_present_with_its_documented_type(name: str) -> None:
    table = TABLES_BY_NAME[name]
    ours = {c.name: c.kind.value for c in table.columns}
    documented = {c: k for c, k in DOCUMENTED[name]["columns"].items() if c not in LOG_ANALYTICS_ONLY}
    assert {c: ours.get(c) for c in documented} == documented
    assert set(ours) - set(documented) <= ADDED, "a column neither Sentinel's nor AuditLake's own"
    assert {"ClientIP", "AuditLakeFlag", "RawRecord"} <= set(ours) and ours["RawRecord"] == "dynamic"
    assert table.key == ("Id",) and table.view_name == f"{name}Dedup"


def test_the_documented_type_differences_between_the_sign_in_tables_hold() -> None:
    interactive, non_interactive = TABLES_BY_NAME["SigninLogs"], TABLES_BY_NAME["AADNonInteractiveUserSignInLogs"]
    for column in ("LocationDetails", "DeviceDetail", "Status", "ConditionalAccessPolicies"):
        assert DOCUMENTED["SigninLogs"]["columns"][column] == "dynamic"
        assert DOCUMENTED["AADNonInteractiveUserSignInLogs"]["columns"][column] == "string"
        assert interactive.column(column).kind.value == "dynamic"
        assert non_interactive.column(column).kind.value == "string"


def test_the_principal_columns_fit_each_table() -> None:
    for name in ("SigninLogs", "AADNonInteractiveUserSignInLogs"):
        assert "UserPrincipal" in TABLES_BY_NAME[name].column_names
    for name in ("AADServicePrincipalSignInLogs", "AADManagedIdentitySignInLogs"):
        assert "PrincipalId" in TABLES_BY_NAME[name].column_names
        assert "UserPrincipal" not in TABLES_BY_NAME[name].column_names
    assert {"UserPrincipal", "PrincipalId"} <= set(TABLES_BY_NAME["AuditLogs"].column_names)
