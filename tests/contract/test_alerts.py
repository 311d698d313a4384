"""Alerts as code, database access and `azd up`: infra/modules/alerts.bicep, the access part of
infra/modules/adx-database.bicep, azure.yaml and infra/README.md hold together.

The alert rules are Azure Monitor log search alerts whose query reads ADX through adx(). The
Kusto language service does not know adx() (a Log Analytics construct), so each rule's query is
checked in two parts: its adx('<cluster>/<database>') prefix by shape, and the query after it
against the ADX database the deployment creates (tables, views and the function library,
HealthChecks.kql included), with kql_check.cjs. The IngestionFailed rule's query is checked
against the FailedIngestion table as Microsoft documents it.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.contract.bicep_support import (
    INFRA,
    KQL_FUNCTIONS_DIR,
    REPO,
    body,
    declared_resources,
    decorator,
    interpolations,
    load_text_targets,
    parsed,
    rel,
    render_string,
    resolve,
)
from tests.contract.test_kql_parse import CHECKER, _installed_checker, describe, run_check

MAIN = INFRA / "main.bicep"
MODULES = INFRA / "modules"
ALERTS = MODULES / "alerts.bicep"
DATABASE = MODULES / "adx-database.bicep"
CLUSTER = MODULES / "adx-cluster.bicep"
FUNCTION_APP = MODULES / "functionapp.bicep"
HEALTH_CHECKS = KQL_FUNCTIONS_DIR / "HealthChecks.kql"
AZURE_YAML = REPO / "azure.yaml"
INFRA_README = INFRA / "README.md"

RULE_KIND = "Microsoft.Insights/scheduledQueryRules"
ASSIGNMENT_KIND = "Microsoft.Kusto/clusters/databases/principalAssignments"
ROLE_ASSIGNMENT_KIND = "Microsoft.Authorization/roleAssignments"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
LOG_ANALYTICS_READER = "73c42c96-874c-492b-b04d-ab87d138a893"

# Every Check HealthChecks reports (the list); each has exactly one rule.
CHECKS = ("LogFlowGap", "BlobExpired", "BlobFailed", "BlobNearExpiry", "AuditTampering", "CollectorRunFailing")

# Where each rule's threshold lives: the module that applies it, its parameter there, and the
# main.bicep parameter that feeds it. The first three are HealthChecks arguments (applied in
# HealthChecksForAlerts, so the rule fires on any row); the others are row counts in the rule.
THRESHOLDS = {
    "LogFlowGap": (DATABASE, "gapHours", "alertGapHours"),
    "BlobNearExpiry": (DATABASE, "nearExpiryHours", "alertNearExpiryHours"),
    "CollectorRunFailing": (DATABASE, "failedRuns", "alertFailedRuns"),
    "BlobExpired": (ALERTS, "expiredBlobs", "alertExpiredBlobs"),
    "BlobFailed": (ALERTS, "failedBlobs", "alertFailedBlobs"),
    "AuditTampering": (ALERTS, "tamperingEvents", "alertTamperingEvents"),
}

# HealthChecks' parameters, in order, and the adx-database.bicep parameter that fills each.
HEALTH_ARGUMENTS = {"gapHours": "gapHours", "nearExpiryHours": "nearExpiryHours", "failedRuns": "failedRuns",
                    "lookback": "lookbackHours"}

# The FailedIngestion table of Log Analytics (Azure Data Explorer's diagnostic log), as
# Microsoft's table reference lists it (azure-monitor-ref/tables/failedingestion).
FAILED_INGESTION_COLUMNS = {
    "Category": "string", "CorrelationId": "string", "Database": "string", "Details": "string",
    "ErrorCode": "string", "FailedOn": "datetime", "FailureStatus": "string", "IngestionSourceId": "string",
    "IngestionSourcePath": "string", "OperationId": "string", "OperationName": "string",
    "OperationVersion": "string", "OriginatesFromUpdatePolicy": "bool", "_ResourceId": "string",
    "ResultType": "string", "RootActivityId": "string", "ShouldRetry": "bool", "SourceSystem": "string",
    "_SubscriptionId": "string", "Table": "string", "TenantId": "string", "TimeGenerated": "datetime",
    "Type": "string",
}

# Values for rendering the rules' queries as Azure would see them.
SAMPLE_CLUSTER = "https://adxauditlakeabcd1234.westeurope.kusto.windows.net"
ADX_PREFIX = re.compile(r"^adx\('(?P<cluster>https://[^'/]+)/(?P<database>[^'/]+)'\)\.(?P<query>.*)$", re.DOTALL)


# -- reading the templates --------------------------------------------------------------------


def _module(symbol_path: Path) -> tuple[str, dict[str, Any]]:
    """main.bicep's module that deploys *symbol_path*: its symbol and body."""
    found = [(s, m) for s, m in (parsed(MAIN).get("modules") or {}).items()
             if (MAIN.parent / m["detail"]["path"]).resolve() == symbol_path.resolve()]
    assert len(found) == 1, f"main.bicep deploys {rel(symbol_path)} {len(found)} times"
    symbol, module = found[0]
    return symbol, module


def _params(path: Path) -> dict[str, Any]:
    module = _module(path)[1]
    params: dict[str, Any] = body(module)["params"]
    return params


def _accessor(node: Any) -> list[Any]:
    """``a.b.c`` as ``["a", "b", "c"]``."""
    path: list[Any] = []
    while isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
        operands = node["operator"]["operands"]
        path.append(operands["operand_1"])
        node = operands["operand_2"]
    return [*path, node]


def _default(path: Path, name: str) -> Any:
    return parsed(path)["parameters"][name]["default"]


def health_rules() -> list[dict[str, Any]]:
    rules = resolve("healthRules", parsed(ALERTS))
    assert isinstance(rules, list) and rules, "alerts.bicep: no healthRules"
    return rules


def rule_resources() -> dict[str, dict[str, Any]]:
    return declared_resources(ALERTS, RULE_KIND)


def health_rule_resource() -> dict[str, Any]:
    """The rule resource that loops over healthRules (the HealthChecks rules)."""
    looped = [r for r in rule_resources().values() if "loop_type" in r["config"]]
    assert len(looped) == 1, "one looped rule resource: one rule per entry of healthRules"
    return looped[0]


def _wrapper_script() -> tuple[dict[str, Any], str]:
    """The kqlScripts entry of HealthChecksForAlerts, and its text as written in Bicep."""
    tree = parsed(DATABASE)
    items = resolve("kqlScripts", tree)
    entry = items[-1]
    text = resolve(entry["content"], tree)
    assert isinstance(text, str), "HealthChecksForAlerts is an interpolated string"
    return entry, text


def rendered_wrapper() -> str:
    """HealthChecksForAlerts as ADX receives it with main.bicep's default thresholds."""
    _, text = _wrapper_script()
    database_params = _params(DATABASE)
    values = {name: _default(MAIN, database_params[name]) for name in HEALTH_ARGUMENTS.values()}
    return render_string(text, values)


def rendered_rule_queries() -> dict[str, str]:
    """Each HealthChecks rule's query as Azure Monitor runs it, by Check."""
    config = body(health_rule_resource())
    template = config["properties"]["criteria"]["allOf"][0]["query"]
    adx_source = render_string(resolve("adxSource", parsed(ALERTS)),
                               {"adxQueryUri": SAMPLE_CLUSTER, "adxDatabase": _default(MAIN, "adxDatabaseName")})
    queries = {}
    for rule in health_rules():
        queries[rule["check"]] = render_string(template, {"adxSource": adx_source,
                                                          "healthFunction": "HealthChecksForAlerts",
                                                          "rule.check": rule["check"]})
    return queries


def health_checks_signature() -> list[str]:
    text = HEALTH_CHECKS.read_text(encoding="utf-8")
    m = re.search(r"^HealthChecks\(([^)]*)\)\s*\{", text, re.MULTILINE)
    assert m, f"{rel(HEALTH_CHECKS)}: no HealthChecks(...) declaration"
    return [p.split(":")[0].strip() for p in m.group(1).split(",")]


def _projected(query: str) -> list[str]:
    m = re.search(r"^\| project (.+)$", query, re.MULTILINE)
    assert m, f"the rule's query projects its columns: {query}"
    return [c.strip() for c in m.group(1).split(",")]


# -- HealthChecks is deployed, and each Check has its rule --------------------------------------


def test_health_checks_is_deployed_before_the_function_the_rules_call() -> None:
    targets = load_text_targets(DATABASE)
    assert HEALTH_CHECKS.resolve() in targets, "adx-database.bicep must deploy HealthChecks.kql"
    entry, text = _wrapper_script()
    assert entry["name"] == "function-HealthChecksForAlerts", "the wrapper runs last: it calls HealthChecks"
    assert text.startswith(".create-or-alter function with (")
    assert "HealthChecksForAlerts() {" in text, "adx() only calls functions without parameters"
    outputs = parsed(DATABASE)["outputs"]
    assert outputs["healthFunctionName"]["value"] == "HealthChecksForAlerts"
    assert _accessor(_params(ALERTS)["healthFunction"]) == ["adxDatabase", "outputs", "healthFunctionName"]


def test_each_check_has_exactly_one_rule() -> None:
    # Each Check is a string literal of HealthChecks.kql (how it assigns them is its own affair).
    literals = set(re.findall(r'"(\w+)"', HEALTH_CHECKS.read_text(encoding="utf-8")))
    assert set(CHECKS) <= literals, f"HealthChecks.kql never names {sorted(set(CHECKS) - literals)}"
    checks = [rule["check"] for rule in health_rules()]
    assert sorted(checks) == sorted(CHECKS), checks
    # One resource loops over them; the only other rule is the ADX ingestion failure rule.
    config = health_rule_resource()["config"]
    loop = config["loop_type"]["detail"]
    operands = loop["array_name"]["operator"]["operands"]
    assert (operands["condition"], operands["true_value"], operands["false_value"]) == (
        "healthRulesEnabled", "healthRules", [])
    assert body(health_rule_resource())["name"] == "${namePrefix}-${rule.check}"
    assert len(rule_resources()) == 2


def test_the_wrapper_calls_health_checks_with_the_threshold_parameters() -> None:
    _, text = _wrapper_script()
    m = re.search(r"HealthChecks\((.*)\)\\n\}", text)
    assert m, text
    arguments = [a.strip() for a in m.group(1).split(",")]
    signature = health_checks_signature()
    assert signature == list(HEALTH_ARGUMENTS), f"HealthChecks({signature}): update HEALTH_ARGUMENTS and the wrapper"
    database_params = parsed(DATABASE)["parameters"]
    module_params = _params(DATABASE)
    for argument, name in zip(arguments, signature, strict=True):
        parameter = HEALTH_ARGUMENTS[name]
        assert interpolations(argument) == [parameter], f"HealthChecks argument {name} must be ${{{parameter}}}"
        assert parameter in database_params
        # Every threshold comes from main.bicep, which passes the same value to alerts.bicep.
        outer = module_params[parameter]
        assert outer in parsed(MAIN)["parameters"], f"main.bicep passes {parameter} from a parameter, not {outer}"
        alerts_params = _params(ALERTS)
        if parameter in alerts_params:
            assert alerts_params[parameter] == outer, f"alerts.bicep describes {parameter} with another value"
    # Reals are passed as reals, the lookback as hours.
    assert arguments[0].startswith("real(") and arguments[1].startswith("real(") and arguments[3].endswith("}h")


@pytest.mark.parametrize("check", CHECKS)
def test_every_rule_queries_health_checks_with_its_threshold_parameter(check: str) -> None:
    query = rendered_rule_queries()[check]
    m = ADX_PREFIX.match(query)
    assert m, f"{check}: the query must start with adx('<cluster>/<database>'): {query}"
    assert (m.group("cluster"), m.group("database")) == (SAMPLE_CLUSTER, _default(MAIN, "adxDatabaseName"))
    assert m.group("query").startswith(f"HealthChecksForAlerts\n| where Check == '{check}'\n"), query
    rule = next(r for r in health_rules() if r["check"] == check)
    config = body(health_rule_resource())
    criterion = config["properties"]["criteria"]["allOf"][0]
    assert _accessor(criterion["threshold"]) == ["rule", "threshold"]
    assert (criterion["timeAggregation"], criterion["operator"]) == ("Count", "GreaterThan")
    path, parameter, main_parameter = THRESHOLDS[check]
    alerts_tree = parsed(ALERTS)
    if path == ALERTS:
        # A row count: the rule fires when the Check reports more rows than the parameter.
        assert rule["threshold"] == parameter and parameter in alerts_tree["parameters"]
        assert decorator(alerts_tree["parameters"][parameter], "min_value") == 0
    else:
        # A HealthChecks argument: applied in HealthChecksForAlerts, so any row fires.
        assert rule["threshold"] == 0
        assert parameter in parsed(DATABASE)["parameters"]
    assert _params(path)[parameter] == main_parameter
    assert main_parameter in parsed(MAIN)["parameters"]
    assert f"${{{parameter}}}" in rule["description"], f"{check}: the description names its threshold"
    # The dimensions are columns the query returns.
    dimensions = rule["dimensions"]
    assert dimensions and set(dimensions) <= set(_projected(query)), (check, dimensions)
    assert "TenantId" in dimensions


def test_the_ingestion_failure_rule_reads_adx_s_diagnostic_log() -> None:
    rules = [r for r in rule_resources().values() if "loop_type" not in r["config"]]
    assert len(rules) == 1
    properties = body(rules[0])["properties"]
    criterion = properties["criteria"]["allOf"][0]
    assert criterion["threshold"] == "ingestionFailures"
    assert _params(ALERTS)["ingestionFailures"] == "alertIngestionFailures"
    query = render_string(criterion["query"], {"adxDatabase": "auditlake"})
    assert query.startswith("FailedIngestion\n| where Database == 'auditlake'\n"), query
    dimensions = [d["name"] for d in criterion["dimensions"]]
    assert set(dimensions) <= set(_projected(query))
    # A new cluster sends FailedIngestion to the workspace, in its own table.
    (setting,) = declared_resources(CLUSTER, "Microsoft.Insights/diagnosticSettings").values()
    settings = body(setting)["properties"]
    assert settings["logAnalyticsDestinationType"] == "Dedicated"
    assert {"category": "FailedIngestion", "enabled": True} in settings["logs"]


def test_rules_are_stateful_unvalidated_and_not_every_minute() -> None:
    for symbol, rule in rule_resources().items():
        config = body(rule)
        properties = config["properties"]
        assert config["kind"] == "LogAlert", symbol
        assert properties["autoMitigate"] is True, symbol
        # The identity's roles and the ADX function may still be propagating at creation.
        assert properties["skipQueryValidation"] is True, symbol
        assert properties["scopes"] == ["workspaceId"], symbol
        assert properties["evaluationFrequency"] == "evaluationFrequency" == properties["windowSize"], symbol
    allowed = decorator(parsed(ALERTS)["parameters"]["evaluationFrequency"], "allowed")
    assert "PT1M" not in allowed, "adx() queries cannot run at a one-minute frequency"


# -- the action group -------------------------------------------------------------------------


def test_the_action_group_receives_from_every_rule() -> None:
    tree = parsed(ALERTS)
    (group,) = declared_resources(ALERTS, "Microsoft.Insights/actionGroups").values()
    properties = body(group)["properties"]
    assert len(properties["groupShortName"]) <= 12
    emails, webhooks = properties["emailReceivers"], properties["webhookReceivers"]
    assert emails["loop_type"]["detail"]["array_name"] == "emailAddresses"
    assert emails["config"]["emailAddress"] == emails["loop_type"]["detail"]["item_name"]
    assert webhooks["loop_type"]["detail"]["array_name"] == "webhookUris"
    assert webhooks["config"]["serviceUri"] == webhooks["loop_type"]["detail"]["item_name"]
    assert emails["config"]["useCommonAlertSchema"] is True and webhooks["config"]["useCommonAlertSchema"] is True
    # No receivers, no action group: the rules then alert in Azure Monitor only.
    text = ALERTS.read_text(encoding="utf-8")
    assert "var receivers = length(emailAddresses) + length(webhookUris)" in text
    assert "= if (receivers > 0) {" in text
    operands = tree["variables"]["actionGroups"]["value"]["operator"]["operands"]
    assert [_accessor(v) for v in operands["true_value"]] == [["actionGroup", "id"]] and operands["false_value"] == []
    for symbol, rule in rule_resources().items():
        assert body(rule)["properties"]["actions"]["actionGroups"] == "actionGroups", symbol
    params = _params(ALERTS)
    assert (params["emailAddresses"], params["webhookUris"]) == ("alertEmailAddresses", "alertWebhookUris")
    assert _default(MAIN, "alertEmailAddresses") == [] and _default(MAIN, "alertWebhookUris") == []


# -- identities and roles ---------------------------------------------------------------------


def _assignments(path: Path) -> dict[str, dict[str, Any]]:
    return {symbol: resource for symbol, resource in declared_resources(path, ASSIGNMENT_KIND).items()}


def _role_assignments(path: Path) -> list[dict[str, Any]]:
    return [body(r) for r in declared_resources(path, ROLE_ASSIGNMENT_KIND).values()]


def test_rules_query_with_an_identity_holding_the_roles_adx_queries_need() -> None:
    for symbol, rule in rule_resources().items():
        identity = body(rule)["identity"]
        assert identity["type"] == "UserAssigned" and list(identity["userAssignedIdentities"]) == ["'${identityId}'"], \
            symbol
    # Its own identity, not the app's (which stays Database Ingestor only).
    modules = parsed(MAIN)["modules"]
    assert modules["alertsIdentity"]["detail"]["path"] == "modules/identity.bicep"
    assert _accessor(body(modules["alertsIdentity"])["params"]["name"]) == ["names", "alertsIdentity"]
    alerts = _params(ALERTS)
    assert _accessor(alerts["identityId"]) == ["alertsIdentity", "outputs", "id"]
    assert _accessor(alerts["identityPrincipalId"]) == ["alertsIdentity", "outputs", "principalId"]
    database = json.dumps(_params(DATABASE))
    assert '"alertsIdentity", "operand_2": {"operator": {"type": "property_accessor", "operands": ' \
           '{"operand_1": "outputs", "operand_2": "clientId"' in database
    # Database Viewer on the database, Reader on the cluster (adx() needs both), Log Analytics
    # Reader on the workspace the rules run in.
    viewers = [body(r)["properties"] for r in _assignments(DATABASE).values()
               if body(r)["properties"]["principalId"] == "alertsClientId"]
    assert viewers == [{"principalId": "alertsClientId", "principalType": "App", "role": "Viewer",
                        "tenantId": "ingestorTenantId"}], viewers
    readers = [a for a in _role_assignments(DATABASE) if READER in json.dumps(a["properties"]["roleDefinitionId"])]
    assert [(a["scope"], a["properties"]["principalId"]) for a in readers] == [("cluster", "alertsPrincipalId")]
    workspace = [a for a in _role_assignments(ALERTS)
                 if LOG_ANALYTICS_READER in json.dumps(a["properties"]["roleDefinitionId"])]
    assert [(a["scope"], a["properties"]["principalId"]) for a in workspace] == [("workspace", "identityPrincipalId")]
    # Off where Azure Monitor cannot run adx() (the government clouds).
    assert alerts["healthRulesEnabled"] == "crossServiceQueries"
    assert "AzureUSGovernment" in json.dumps(parsed(MAIN)["variables"]["crossServiceQueries"])


@pytest.mark.parametrize(("parameter", "role"), [("analystGroupObjectId", "Viewer"), ("adminGroupObjectId", "Admin")])
def test_analyst_and_admin_groups_get_their_database_roles(parameter: str, role: str) -> None:
    found = [(symbol, r) for symbol, r in _assignments(DATABASE).items()
             if body(r)["properties"]["principalId"] == parameter]
    assert len(found) == 1, f"one assignment for {parameter}"
    symbol, resource = found[0]
    properties = body(resource)["properties"]
    assert (properties["principalType"], properties["role"]) == ("Group", role)
    assert properties["tenantId"] == "ingestorTenantId"
    # Empty: no assignment.
    assert resource["config"].get("condition") == {"operator": {"type": "not", "operands": {"bool_value": {
        "function": {"type": "empty", "parameters": {"item_to_test": parameter}}}}}}, \
        f"{symbol} must be `if (!empty({parameter}))`"
    assert parsed(DATABASE)["parameters"][parameter]["default"] == ""
    assert _params(DATABASE)[parameter] == parameter
    assert _default(MAIN, parameter) == ""


def test_database_changes_run_one_after_another() -> None:
    # ADX refuses concurrent changes to one database: each assignment waits for the one before.
    assignments = _assignments(DATABASE)
    order = ["ingestor", "alertsViewer", "analysts", "admins"]
    assert list(assignments) == order
    assert body(assignments["ingestor"])["dependsOn"] == ["scripts"]
    for before, after in itertools.pairwise(order):
        assert body(assignments[after])["dependsOn"] == [before], after


# -- the KQL of the rules ---------------------------------------------------------------------


def test_the_alert_kql_type_checks_against_the_database(tmp_path: Path) -> None:
    wrapper = tmp_path / "HealthChecksForAlerts.kql"
    wrapper.write_text(rendered_wrapper(), encoding="utf-8")
    files = [*sorted(KQL_FUNCTIONS_DIR.glob("*.kql")), wrapper]
    for check, query in rendered_rule_queries().items():
        m = ADX_PREFIX.match(query)
        assert m, query
        # What ADX runs behind adx(): the rest of the query, in the database.
        path = tmp_path / f"rule-{check}.kql"
        path.write_text(m.group("query"), encoding="utf-8")
        files.append(path)
    report = run_check(tmp_path, files)
    errors = describe(report)
    assert not errors, f"{len(errors)} KQL error(s) ({report['package']}):\n" + "\n".join(errors)
    # The wrapper and every rule query were analysed (not skipped as empty).
    analysed = {Path(f["file"]).name: f["commands"] for f in report["files"]}
    assert analysed["HealthChecksForAlerts.kql"][0]["kind"] == "Command"
    assert all(analysed[f"rule-{c}.kql"][0]["kind"] == "Query" for c in CHECKS)


def test_the_ingestion_failure_kql_type_checks_against_the_workspace(tmp_path: Path) -> None:
    node = _installed_checker()
    schema = tmp_path / "workspace.json"
    schema.write_text(json.dumps({"database": "workspace", "tables": [
        {"name": "FailedIngestion", "columns": [{"name": n, "type": t} for n, t in FAILED_INGESTION_COLUMNS.items()]},
    ]}), encoding="utf-8")
    rules = [r for r in rule_resources().values() if "loop_type" not in r["config"]]
    query = render_string(body(rules[0])["properties"]["criteria"]["allOf"][0]["query"], {"adxDatabase": "auditlake"})
    path = tmp_path / "IngestionFailed.kql"
    path.write_text(query, encoding="utf-8")
    done = subprocess.run([node, str(CHECKER), str(schema), str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["files"][0]["commands"][0]["kind"] == "Query"
    assert not describe(report), describe(report)


def test_the_check_catches_a_rule_reading_a_column_health_checks_lacks(tmp_path: Path) -> None:
    # The type check above means something: the same query projecting a column HealthChecks does
    # not return fails it.
    wrapper = tmp_path / "HealthChecksForAlerts.kql"
    wrapper.write_text(rendered_wrapper(), encoding="utf-8")
    query = ADX_PREFIX.match(rendered_rule_queries()["LogFlowGap"])
    assert query
    path = tmp_path / "rule-bad.kql"
    path.write_text(query.group("query").replace("Subject", "Blob"), encoding="utf-8")
    report = run_check(tmp_path, [*sorted(KQL_FUNCTIONS_DIR.glob("*.kql")), wrapper, path])
    assert any("'Blob'" in e for e in describe(report)), describe(report)


# -- azd --------------------------------------------------------------------------------------


def read_simple_yaml(text: str) -> dict[str, Any]:
    """azure.yaml read strictly as the subset it uses: nested block mappings of plain scalars,
    two-space indents, whole-line comments. (PyYAML is not a dependency of the project; anything
    outside the subset fails here rather than being misread.)"""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert "\t" not in line and " #" not in line, f"azure.yaml:{number}: outside the subset: {line!r}"
        indent = len(line) - len(line.lstrip(" "))
        key, colon, value = line.strip().partition(":")
        assert colon and re.fullmatch(r"[A-Za-z0-9_.-]+", key), f"azure.yaml:{number}: not `key: value`: {line!r}"
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        assert key not in parent, f"azure.yaml:{number}: {key} twice"
        value = value.strip()
        if value:
            assert not value.startswith(("[", "{", "&", "*", "|", ">", "!")), f"azure.yaml:{number}: {value!r}"
            parent[key] = value.strip("'\"")
        else:
            child: dict[str, Any] = {}
            parent[key] = child
            stack.append((indent, child))
    return root


def test_azure_yaml_provisions_main_bicep_and_deploys_the_function_app() -> None:
    config = read_simple_yaml(AZURE_YAML.read_text(encoding="utf-8"))
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        assert yaml.safe_load(AZURE_YAML.read_text(encoding="utf-8")) == config
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", config["name"]), config["name"]
    infra = config["infra"]
    assert infra["provider"] == "bicep"
    assert (REPO / infra["path"] / f"{infra['module']}.bicep").resolve() == MAIN.resolve()
    assert (REPO / infra["path"] / f"{infra['module']}.parameters.json").is_file()
    services = config["services"]
    assert len(services) == 1, "one deployable service: the function app"
    [(name, service)] = services.items()
    assert (service["language"], service["host"]) == ("python", "function")
    project = (REPO / service["project"]).resolve()
    for needed in ("main.py", "host.json", "requirements.txt", "function_app", ".funcignore"):
        assert (project / needed).exists(), f"azure.yaml's project {service['project']} has no {needed}"
    # azd finds the app by its azd-service-name tag: on the function app, with this name.
    assert parsed(MAIN)["variables"]["azdServiceName"]["value"] == name
    _, module = _module(FUNCTION_APP)
    assert body(module)["params"]["azdServiceName"] == "azdServiceName"
    tagged = []
    for symbol, resource in parsed(FUNCTION_APP)["resources"].items():
        tags = json.dumps(body(resource).get("tags"))
        if "azd-service-name" in tags:
            tagged.append((symbol, resource["type"]))
            assert "azdServiceName" in tags
    assert tagged == [("site", "Microsoft.Web/sites")], tagged


# -- infra/README.md --------------------------------------------------------------------------


def test_infra_readme_describes_every_module_and_parameter() -> None:
    assert "infra/README.md" in MAIN.read_text(encoding="utf-8")
    text = INFRA_README.read_text(encoding="utf-8")
    for path in sorted(INFRA.rglob("*.bicep")):
        assert path.relative_to(INFRA).as_posix() in text, f"infra/README.md does not describe {rel(path)}"
    missing = [name for name in parsed(MAIN)["parameters"] if f"`{name}`" not in text]
    assert not missing, f"infra/README.md does not list the main.bicep parameters {missing}"
