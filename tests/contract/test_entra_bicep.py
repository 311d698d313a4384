"""Entra ID logs into ADX without code: infra/entra-diagnostics.bicep (the tenant's diagnostic setting),
infra/modules/entra-stream.bicep (Event Hub and the ADX data connection) and their wiring in main.bicep
hold together with each other, with the KQL that creates the raw table, and with the documented command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.contract.bicep_support import (
    INFRA,
    KQL_DIR,
    KQL_FUNCTIONS_DIR,
    REPO,
    accessor_path,
    bicep_files,
    body,
    declared_resources,
    decorator,
    extensions_declared,
    function_calls,
    load_text_targets,
    parsed,
    rel,
    resolve,
    resources,
    run_checkov,
    tree_sitter_errors,
)

MAIN = INFRA / "main.bicep"
DIAGNOSTICS = INFRA / "entra-diagnostics.bicep"
STREAM = INFRA / "modules" / "entra-stream.bicep"
ADX_DATABASE = INFRA / "modules" / "adx-database.bicep"
ENTRA_KQL = KQL_DIR / "entra.kql"
TEMPLATES = [DIAGNOSTICS, STREAM]

# The categories infra/kql/entra.kql expands, with the names Entra's diagnostic settings use
# (MicrosoftDocs/entra-docs concept-diagnostic-settings-logs-options.md).
EXPANDED_CATEGORIES = {
    "AuditLogs",
    "SignInLogs",
    "NonInteractiveUserSignInLogs",
    "ServicePrincipalSignInLogs",
    "ManagedIdentitySignInLogs",
}
RAW_TABLE = "EntraActivityRaw"
RAW_MAPPING = "EntraActivityRawMapping"
# Azure Event Hubs Data Receiver, "ID" column of the built-in roles reference
# (MicrosoftDocs/azure-docs articles/role-based-access-control/built-in-roles.md).
EVENT_HUBS_DATA_RECEIVER = "a638d3c7-ab3a-418d-83e6-5f17a39d4fde"

NAMESPACE = "Microsoft.EventHub/namespaces"
HUB = "Microsoft.EventHub/namespaces/eventhubs"
CONSUMER_GROUP = "Microsoft.EventHub/namespaces/eventhubs/consumergroups"
NAMESPACE_RULE = "Microsoft.EventHub/namespaces/authorizationRules"
HUB_RULE = "Microsoft.EventHub/namespaces/eventhubs/authorizationRules"
DATA_CONNECTION = "Microsoft.Kusto/clusters/databases/dataConnections"
ROLE_ASSIGNMENT = "Microsoft.Authorization/roleAssignments"

# Where the tenant-level deployment is spelled out for the administrator who runs it.
COMMAND_SOURCES = [DIAGNOSTICS, INFRA / "README.md", REPO / "docs" / "entra.md"]


def _one(path: Path, kind: str) -> tuple[str, dict[str, Any]]:
    """The symbol and body of the only *kind* resource *path* declares."""
    found = declared_resources(path, kind)
    assert len(found) == 1, f"{rel(path)}: expected one {kind}, found {sorted(found)}"
    symbol, resource = next(iter(found.items()))
    return symbol, body(resource)


def _existing(path: Path, kind: str) -> str:
    found = [s for s, r in resources(path).items() if r["type"] == kind and r.get("existing")]
    assert len(found) == 1, f"{rel(path)}: expected one existing {kind}, found {found}"
    return found[0]


def _output_of(path: Path, value: list[Any]) -> str:
    """The name of the one output of *path* whose value is the accessor *value* (``[symbol, "id"]``)."""
    names = [n for n, o in (parsed(path).get("outputs") or {}).items() if accessor_path(o["value"]) == value]
    assert len(names) == 1, f"{rel(path)}: expected one output equal to {'.'.join(map(str, value))}, found {names}"
    return str(names[0])


def _stream_module() -> tuple[str, dict[str, Any]]:
    modules = parsed(MAIN).get("modules") or {}
    found = [(s, m) for s, m in modules.items() if (MAIN.parent / m["detail"]["path"]).resolve() == STREAM.resolve()]
    assert len(found) == 1, f"main.bicep deploys {rel(STREAM)} {len(found)} times"
    return found[0]


def _database_module_symbol() -> str:
    modules = parsed(MAIN).get("modules") or {}
    found = [s for s, m in modules.items() if (MAIN.parent / m["detail"]["path"]).resolve() == ADX_DATABASE.resolve()]
    assert len(found) == 1, f"main.bicep deploys {rel(ADX_DATABASE)} {len(found)} times"
    return str(found[0])


# -- parsing and scanning ----------------------------------------------------------------------


def test_the_entra_templates_are_among_the_files_every_bicep_test_checks() -> None:
    # test_bicep.py parses, scans and wire-checks bicep_files(); these must be in it.
    assert set(TEMPLATES) <= set(bicep_files())


@pytest.mark.parametrize("path", TEMPLATES, ids=[rel(p) for p in TEMPLATES])
def test_parses_with_pycep_and_tree_sitter(path: Path) -> None:
    assert parsed(path).get("resources"), f"{rel(path)} declares nothing"
    assert tree_sitter_errors(path) == []
    # No Bicep extension: checkov must be able to read the file.
    assert extensions_declared(path) == []


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    extension_files = [p for p in bicep_files() if extensions_declared(p)]
    return run_checkov(skip=extension_files)


def test_checkov_reads_the_entra_templates_and_fails_nothing_in_them(checkov_report: dict[str, Any]) -> None:
    summary, results = checkov_report["summary"], checkov_report["results"]
    # checkov exits 0 on a file it cannot parse: the report is the only place that says so.
    assert summary["parsing_errors"] == 0 and not results.get("parsing_errors"), results.get("parsing_errors")
    ours = {"/" + p.relative_to(INFRA).as_posix() for p in TEMPLATES}
    failed = [f"{c['check_id']} {c['file_path']} {c['resource']}" for c in results["failed_checks"]
              if c["file_path"] in ours]
    assert failed == [], failed
    for check in results.get("skipped_checks", []):
        if check["file_path"] in ours:
            comment = (check.get("check_result") or {}).get("suppress_comment", "")
            assert comment.strip(), f"{check['check_id']} in {check['file_path']} is skipped without a reason"
    # The namespace was really read: checkov's TLS check ran on it and passed.
    tls = [c for c in results["passed_checks"]
           if c["check_id"] == "CKV_AZURE_223" and c["file_path"] == "/" + STREAM.relative_to(INFRA).as_posix()]
    assert tls, "checkov did not evaluate the Event Hubs namespace of entra-stream.bicep"


# -- the tenant-level diagnostic setting --------------------------------------------------------


def test_the_diagnostic_setting_streams_the_expanded_categories_and_nothing_else() -> None:
    tree = parsed(DIAGNOSTICS)
    assert tree["globals"]["scope"]["value"] == "tenant", "an Entra diagnostic setting is a tenant-level resource"
    symbol, setting = _one(DIAGNOSTICS, "Microsoft.AADIAM/diagnosticSettings")
    assert resources(DIAGNOSTICS)[symbol]["api_version"] == "2017-04-01"
    properties = setting["properties"]
    # The event hub only: no storage account, workspace or partner destination beside it.
    assert set(properties) == {"eventHubAuthorizationRuleId", "eventHubName", "logs"}
    parameters = tree["parameters"]
    for name in ("eventHubAuthorizationRuleId", "eventHubName"):
        assert properties[name] == name and parameters[name].get("default") is None, f"{name}: a required parameter"
    # Without a hub name the setting would create hubs of its own and need a Manage rule.
    assert decorator(parameters["eventHubName"], "min_length") == 1

    logs = properties["logs"]
    loop = logs["loop_type"]["detail"]
    assert logs["config"] == {"category": loop["item_name"], "enabled": True}
    categories = parameters[loop["array_name"]]
    assert categories["type"] == "array"
    default = categories["default"]
    assert len(default) == len(set(default)) and set(default) == EXPANDED_CATEGORIES, default
    # A category no update policy expands would be dropped from the raw table (soft-delete 0).
    assert set(decorator(categories, "allowed")) == EXPANDED_CATEGORIES
    assert decorator(categories, "min_length") == 1


# -- the Event Hub --------------------------------------------------------------------------------


def test_the_namespace_is_standard_tls_1_2_with_keys_only_for_the_send_rule() -> None:
    namespace_symbol, namespace = _one(STREAM, NAMESPACE)
    assert namespace["sku"]["name"] == "Standard" and namespace["sku"]["tier"] == "Standard"
    properties = namespace["properties"]
    assert properties["minimumTlsVersion"] == "1.2"
    # Shared access stays on only because a diagnostic setting sends with an authorization rule.
    assert properties["disableLocalAuth"] is False
    assert declared_resources(STREAM, HUB_RULE) == {}, "no hub-level rule: the one rule is the namespace's"
    _, rule = _one(STREAM, NAMESPACE_RULE)
    assert rule["parent"] == namespace_symbol
    assert rule["properties"]["rights"] == ["Send"], "the diagnostic setting's key may send and nothing else"
    assert rule["name"] != "RootManageSharedAccessKey"


def _stream_outputs_in_main() -> dict[str, str]:
    """``{entra-stream output: main.bicep output}`` for the outputs main.bicep passes on, each as
    ``entraStreaming ? entraStream.outputs.<x> : ''``."""
    module_symbol, _ = _stream_module()
    passed_on = {}
    for name, output in parsed(MAIN)["outputs"].items():
        branch = _conditional_branch(output["value"], "entraStreaming", True)
        if branch is not None and accessor_path(branch)[:2] == [module_symbol, "outputs"]:
            passed_on[accessor_path(branch)[2]] = name
            assert _conditional_branch(output["value"], "entraStreaming", False) == "", name
    return passed_on


def _diagnostic_inputs() -> dict[str, str]:
    """``{entra-diagnostics parameter: the main.bicep output that fills it}``."""
    rule_symbol, _ = _one(STREAM, NAMESPACE_RULE)
    hub_symbol, _ = _one(STREAM, HUB)
    passed_on = _stream_outputs_in_main()
    rule_output = _output_of(STREAM, [rule_symbol, "id"])
    hub_output = _output_of(STREAM, [hub_symbol, "name"])
    assert {rule_output, hub_output} <= set(passed_on), f"main.bicep passes on only {sorted(passed_on)}"
    return {"eventHubAuthorizationRuleId": passed_on[rule_output], "eventHubName": passed_on[hub_output]}


def test_main_outputs_the_rule_and_hub_the_diagnostic_setting_takes() -> None:
    inputs = _diagnostic_inputs()
    required = {n for n, p in parsed(DIAGNOSTICS)["parameters"].items() if p.get("default") is None}
    assert set(inputs) == required, f"entra-diagnostics.bicep requires {sorted(required)}"


def test_partitions_and_retention_are_parameters_within_standard_limits() -> None:
    tree = parsed(STREAM)
    hub_symbol, hub = _one(STREAM, HUB)
    partitions = tree["parameters"][hub["properties"]["partitionCount"]]
    retention = tree["parameters"][hub["properties"]["messageRetentionInDays"]]
    assert (decorator(partitions, "min_value"), decorator(partitions, "max_value")) == (1, 32)
    assert (decorator(retention, "min_value"), decorator(retention, "max_value")) == (1, 7)
    # The count is fixed at creation on Standard: a single partition would cap the stream at ~1 MB/s,
    # short of the non-interactive sign-ins (5-10 times the interactive ones).
    assert partitions["default"] > 1 and retention["default"] == 7
    _, group = _one(STREAM, CONSUMER_GROUP)
    assert group["parent"] == hub_symbol and group["name"] != "$Default", "ADX reads with a consumer group of its own"


# -- the ADX side ---------------------------------------------------------------------------------


def test_the_data_connection_reads_the_hub_into_the_raw_table_with_the_cluster_identity() -> None:
    tree = parsed(STREAM)
    cluster = _existing(STREAM, "Microsoft.Kusto/clusters")
    database = _existing(STREAM, "Microsoft.Kusto/clusters/databases")
    assert resources(STREAM)[database]["config"]["parent"] == cluster
    hub_symbol, _ = _one(STREAM, HUB)
    group_symbol, _ = _one(STREAM, CONSUMER_GROUP)
    role_symbol, _ = _one(STREAM, ROLE_ASSIGNMENT)
    _, connection = _one(STREAM, DATA_CONNECTION)
    assert connection["parent"] == database and connection["kind"] == "EventHub"
    properties = connection["properties"]
    assert accessor_path(properties["eventHubResourceId"]) == [hub_symbol, "id"]
    assert accessor_path(properties["consumerGroup"]) == [group_symbol, "name"]
    assert resolve(properties["tableName"], tree) == RAW_TABLE
    assert resolve(properties["mappingRuleName"], tree) == RAW_MAPPING
    # One {"records": [...]} object per event, whatever its line breaks (JSON would want one per line).
    assert properties["dataFormat"] == "MULTIJSON"
    assert properties["compression"] == "None" and properties["databaseRouting"] == "Single"
    # The system-assigned identity is named by the cluster's own resource id.
    assert accessor_path(properties["managedIdentityResourceId"]) == [cluster, "id"]
    assert role_symbol in connection.get("dependsOn", []), "the identity needs its role before ADX checks the hub"


def test_the_cluster_identity_is_event_hubs_data_receiver_on_the_hub_only() -> None:
    cluster = _existing(STREAM, "Microsoft.Kusto/clusters")
    hub_symbol, _ = _one(STREAM, HUB)
    _, assignment = _one(STREAM, ROLE_ASSIGNMENT)
    assert assignment["scope"] == hub_symbol
    (role,) = function_calls(assignment["properties"]["roleDefinitionId"], "subscription_resource_id")
    assert role["resource_type"] == "Microsoft.Authorization/roleDefinitions"
    assert role["resource_name_1"] == EVENT_HUBS_DATA_RECEIVER
    assert accessor_path(assignment["properties"]["principalId"]) == [cluster, "identity", "principalId"]
    assert assignment["properties"]["principalType"] == "ServicePrincipal"


def test_the_raw_table_is_created_by_the_scripts_before_the_connection() -> None:
    # The script runs after views (it may use their tables) and before the function library.
    targets = [t for t in load_text_targets(ADX_DATABASE) if t.suffix == ".kql"]
    assert ENTRA_KQL.resolve() in targets, "adx-database.bicep does not deploy kql/entra.kql"
    position = targets.index(ENTRA_KQL.resolve())
    assert targets[position - 1] == (KQL_DIR / "views.kql").resolve()
    assert all(t.parent == KQL_FUNCTIONS_DIR.resolve() for t in targets[position + 1:])
    # The data connection is refused while the table or mapping is missing: the module that creates it
    # waits for the whole database deployment, scripts included.
    _, module = _stream_module()
    database_module = _database_module_symbol()
    params = body(module)["params"]
    waits = accessor_path(params["databaseName"])[:2] == [database_module, "outputs"] or database_module in (
        body(module).get("dependsOn") or [])
    assert waits, "entraStream must depend on the adxDatabase module"


def test_the_connection_names_the_table_and_mapping_entra_kql_creates() -> None:
    assert ENTRA_KQL.is_file(), f"{rel(ENTRA_KQL)} does not exist"
    text = ENTRA_KQL.read_text(encoding="utf-8")
    assert re.search(rf"\.create(-merge)?\s+table\s+{RAW_TABLE}\s*\(\s*Records\s*:\s*dynamic\s*\)", text), \
        f"{rel(ENTRA_KQL)} does not create {RAW_TABLE} (Records: dynamic)"
    mapping = re.search(rf"\.create(-or-alter)?\s+table\s+{RAW_TABLE}\s+ingestion\s+json\s+mapping\s+"
                        rf"['\"]{RAW_MAPPING}['\"]\s*(.*)", text)
    assert mapping, f"{rel(ENTRA_KQL)} does not create the json mapping {RAW_MAPPING} of {RAW_TABLE}"
    assert "$.records" in mapping.group(2), "the mapping must read the payload's records array"


def test_every_category_the_setting_may_send_has_a_transactional_update_policy() -> None:
    # The raw table keeps nothing: a category that no update policy expands is lost, and an update policy
    # that is not transactional can drop rows that failed to expand.
    text = ENTRA_KQL.read_text(encoding="utf-8")
    bodies = {m.group(1): m.group(2) for m in re.finditer(
        r"^\.create-or-alter function\b[^\n]*?\b(\w+)\(\)\s*\{(.*?)^\}", text, re.MULTILINE | re.DOTALL)}
    expanded: set[str] = set()
    for target, policy in re.findall(r"^\.alter table (\w+) policy update @'(\[.*?\])'\s*$", text, re.MULTILINE):
        for entry in json.loads(policy):
            if entry["Source"] != RAW_TABLE:
                continue
            assert entry["IsTransactional"] is True, f"{target}: its update policy must be transactional"
            function = re.fullmatch(r"\s*(\w+)\(\)\s*", entry["Query"])
            assert function and function.group(1) in bodies, f"{target}: {entry['Query']} is not an entra.kql function"
            expanded |= set(re.findall(r"category\)?\s*==\s*[\"'](\w+)[\"']", bodies[function.group(1)]))
    categories = parsed(DIAGNOSTICS)["parameters"]["categories"]
    assert expanded == set(decorator(categories, "allowed")), f"entra.kql expands {sorted(expanded)}"


# -- main.bicep ----------------------------------------------------------------------------------


def _conditional_branch(value: Any, condition: str, branch: bool) -> Any:
    """The *branch* of ``condition ? a : b``, or None when *value* is not that conditional."""
    operator = value.get("operator") if isinstance(value, dict) else None
    if not operator or operator.get("type") != "conditional" or operator["operands"]["condition"] != condition:
        return None
    return operator["operands"]["true_value" if branch else "false_value"]


def test_main_deploys_the_stream_only_with_entra_streaming() -> None:
    tree = parsed(MAIN)
    switch = tree["parameters"]["entraStreaming"]
    assert switch["type"] == "bool" and switch["default"] is False
    symbol, module = _stream_module()
    assert module["config"].get("condition") == "entraStreaming"
    # Beside the database: the data connection is one of its children.
    database_module = (tree.get("modules") or {})[_database_module_symbol()]
    assert body(module)["scope"] == body(database_module)["scope"]
    # Outside the module itself, its outputs are read only behind the same switch.
    text = MAIN.read_text(encoding="utf-8")
    for line in text.splitlines():
        if f"{symbol}.outputs" in line:
            assert "entraStreaming ?" in line, f"main.bicep reads {symbol} without entraStreaming: {line.strip()}"
    # Every tuning parameter of the module is a main.bicep parameter, so none is fixed by accident.
    for name, value in body(module)["params"].items():
        if name in ("partitionCount", "retentionDays", "throughputUnits", "maximumThroughputUnits",
                    "retrievalStartDate"):
            assert value in tree["parameters"], f"{name} must come from a main.bicep parameter"


# -- the documented command -----------------------------------------------------------------------


def _tenant_commands(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    # Continuation lines, in shell (``\`` newline) and inside a Bicep comment (``\`` newline ``//``).
    joined = re.sub(r"\\\n\s*(//)?\s*", " ", text)
    return re.findall(r"az deployment tenant create[^\n`|]*", joined)


@pytest.mark.parametrize("path", COMMAND_SOURCES, ids=[rel(p) for p in COMMAND_SOURCES])
def test_the_documented_tenant_deployment_passes_the_right_main_outputs(path: Path) -> None:
    commands = _tenant_commands(path)
    assert commands, f"{rel(path)} does not show the az deployment tenant create command"
    expected = _diagnostic_inputs()
    for command in commands:
        assert "--location" in command, "a tenant deployment needs --location"
        (template,) = re.findall(r"--template-file\s+(\S+)", command)
        assert (REPO / template).resolve() == DIAGNOSTICS.resolve(), template
        given = dict(re.findall(r"(\w+)=<(\w+)>", command))
        assert given == expected, f"{rel(path)}: passes {given}, should pass {expected}"
