"""infra/ holds together without the Bicep CLI: every file parses, checkov finds nothing, the
function app's settings are exactly what function_app/ reads, every binding resolves, every
KQL script is deployed in order, and the wiring between main.bicep and its modules is sound."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import pytest

from function_app.config import (
    AZURE_SETTING_NAMES,
    DEFAULT_CONTENT_QUEUE,
    DEFAULT_DEADLETTER_CONTAINER,
    DEFAULT_STATE_TABLE_PREFIX,
    POISON_SUFFIX,
    AppSettings,
    parse_tenants,
)
from function_app.o365.auth import AuthKind, token_provider_from_env
from function_app.o365.clouds import Cloud
from tests.contract.bicep_support import (
    INFRA,
    KQL_DIR,
    KQL_FUNCTIONS_DIR,
    REPO,
    app_settings_by_mode,
    bicep_files,
    body,
    declared_resources,
    decorator,
    diagnostic_settings,
    extensions_declared,
    function_calls,
    is_reference,
    load_text_targets,
    parsed,
    rel,
    resolve,
    resources,
    run_checkov,
    tree_sitter_errors,
)
from tests.contract.code_settings import settings_read_by
from tests.contract.test_kql_schema import KQL as RENDERED_KQL_DIR

MAIN = INFRA / "main.bicep"
ONBOARDING = INFRA / "onboarding" / "main.bicep"
PLACEHOLDER_GUID = "11111111-2222-3333-4444-555555555555"

# App settings the Functions host or the Python worker reads, not function_app/.
PLATFORM_SETTINGS = {
    "PYTHON_SCRIPT_FILE_NAME": "the worker imports this root file (main.py)",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "where the host sends telemetry",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "the host authenticates telemetry with the managed identity",
}

# Settings function_app/ reads that the deployment deliberately leaves unset.
NOT_DEPLOYED = {
    "AzureWebJobsStorage": "a connection string carries the account key and overrides the identity-based one",
    "AzureWebJobsStorage__accountName": "derives *.core.windows.net; the service URIs work in every cloud",
    "AUDITLAKE_API_ROOT": "an override for the emulator; the cloud selects the real root",
    "AUDITLAKE_GRAPH_ROOT": "an override for the emulator's Graph; the cloud selects the real root",
    "AUDITLAKE_API_TOKEN": "a static bearer token for tests and the emulator",
    "AUDITLAKE_MAX_BLOB_BYTES": "follows from AUDITLAKE_MEMORY_BUDGET_MB, which Bicep sets from the instance size",
    "AUDITLAKE_COMMIT_RECORDS": "the local lake's commit size; the Functions app writes to ADX",
    "ADX_ALLOW_INSECURE_HTTP": "a plain-http fake ADX gets no authentication: tests only, never in Azure",
    "AZURE_FEDERATED_TOKEN_FILE": "workload identity on Kubernetes, not on Functions",
    "AZURE_CLIENT_CERTIFICATE_PATH": "Flex Consumption cannot load certificates (WEBSITE_LOAD_CERTIFICATES)",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD": "goes with AZURE_CLIENT_CERTIFICATE_PATH",
    "WEBSITE_INSTANCE_ID": "set by the platform on every instance",
    "FUNCTIONS_WORKER_RUNTIME": "set by the platform; Flex Consumption refuses it as an app setting",
}

# The credential token_provider_from_env must choose for each authMode of the Bicep.
EXPECTED_AUTH = {
    "federated": AuthKind.FEDERATED_MANAGED_IDENTITY,
    "secret": AuthKind.CLIENT_SECRET,
}

# Built-in role definitions the templates assign, by id: the comment above each assignment names it.
KNOWN_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader",
    "73c42c96-874c-492b-b04d-ab87d138a893": "Log Analytics Reader",
    "a638d3c7-ab3a-418d-83e6-5f17a39d4fde": "Azure Event Hubs Data Receiver",
}

# The order ADX must run the scripts in: each uses what the ones before it created.
KQL_ORDER = ["tables.kql", "policies.kql", "views.kql", "entra.kql", "functions"]

FILES = bicep_files()
PLAIN_FILES = [p for p in FILES if not extensions_declared(p)]
EXTENSION_FILES = [p for p in FILES if extensions_declared(p)]


def _ids(paths: list[Path]) -> list[str]:
    return [rel(p) for p in paths]


def _function_app_file() -> Path:
    found = [p for p in FILES if any(r["type"] == "Microsoft.Web/sites" for r in resources(p).values())]
    assert len(found) == 1, f"expected one file declaring the function app, found {_ids(found)}"
    return found[0]


@pytest.fixture(scope="module")
def settings_by_mode() -> dict[str, dict[str, Any]]:
    return app_settings_by_mode(_function_app_file())


@pytest.fixture(scope="module")
def code_settings() -> set[str]:
    scan = settings_read_by([*sorted((REPO / "function_app").rglob("*.py")), REPO / "main.py"])
    assert not scan.unresolved, f"settings the scanner cannot name (make them constants): {scan.unresolved}"
    # The scanner finds at least what config.py declares for the Azure side.
    assert scan.names >= AZURE_SETTING_NAMES, sorted(AZURE_SETTING_NAMES - scan.names)
    return scan.names


def _literal(value: Any, tree: dict[str, Any]) -> str | None:
    return None if is_reference(value, tree) else str(value)


# -- parsing and scanning ----------------------------------------------------------------------


def test_there_is_something_to_check() -> None:
    assert MAIN in FILES and ONBOARDING in FILES
    assert (INFRA / "main.parameters.json").exists()


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_parses_with_pycep(path: Path) -> None:
    tree = parsed(path)
    assert tree.get("resources") or tree.get("modules"), f"{rel(path)} declares nothing"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_parses_with_tree_sitter(path: Path) -> None:
    assert tree_sitter_errors(path) == []


@pytest.mark.parametrize("path", EXTENSION_FILES, ids=_ids(EXTENSION_FILES))
def test_extension_files_hold_only_graph_resources_and_find_their_config(path: Path) -> None:
    # checkov cannot read these files, so nothing it should check may live in them.
    types = {r["type"] for r in resources(path).values()}
    assert types and all(t.startswith("Microsoft.Graph/") for t in types), types
    assert not parsed(path).get("modules")
    for alias in extensions_declared(path):
        configs = [d / "bicepconfig.json" for d in [path.parent, *path.parent.parents] if d.is_relative_to(INFRA)]
        found = [json.loads(c.read_text()) for c in configs if c.exists()]
        assert found, f"{rel(path)}: no bicepconfig.json defines the extension {alias!r}"
        reference = found[0].get("extensions", {}).get(alias, "")
        assert reference.startswith("br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:"), reference


def test_checkov_reports_no_failed_check_and_no_parsing_error() -> None:
    report = run_checkov(skip=EXTENSION_FILES)
    summary, results = report["summary"], report["results"]
    assert summary["parsing_errors"] == 0 and not results.get("parsing_errors"), results.get("parsing_errors")
    failed = [f"{c['check_id']} {c['check_name']}: {c['file_path']} {c['resource']}" for c in results["failed_checks"]]
    assert summary["failed"] == 0 and failed == [], "\n".join(failed)
    assert summary["passed"] > 0 and summary["resource_count"] > 0, summary
    for check in results.get("skipped_checks", []):
        comment = (check.get("check_result") or {}).get("suppress_comment", "")
        assert comment.strip(), f"{check['check_id']} in {check['file_path']} is skipped without a reason"


# -- wiring ----------------------------------------------------------------------------------


def test_main_only_wires_modules() -> None:
    tree = parsed(MAIN)
    assert not tree.get("resources"), "main.bicep declares resources: move them into infra/modules"
    assert tree.get("modules")


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_modules_get_the_parameters_they_declare_and_expose_the_outputs_used(path: Path) -> None:
    tree = parsed(path)
    text = path.read_text(encoding="utf-8")
    for symbol, module in (tree.get("modules") or {}).items():
        target = path.parent / module["detail"]["path"]
        assert target.exists(), f"{symbol}: {target} is missing"
        declared = parsed(target).get("parameters") or {}
        given = body(module).get("params") or {}
        assert set(given) <= set(declared), f"{symbol}: unknown parameters {set(given) - set(declared)}"
        required = {n for n, p in declared.items() if p.get("default") is None and not str(p["type"]).endswith("?")}
        assert required <= set(given), f"{symbol}: missing parameters {required - set(given)}"
        for name, value in given.items():
            outer = (tree.get("parameters") or {}).get(value) if isinstance(value, str) else None
            inner_allowed = decorator(declared[name], "allowed")
            if outer is not None and inner_allowed is not None:
                outer_allowed = decorator(outer, "allowed")
                assert outer_allowed and set(outer_allowed) <= set(inner_allowed), f"{symbol}.{name}: {outer_allowed}"
        outputs = set(parsed(target).get("outputs") or {})
        used = set(re.findall(rf"\b{symbol}\.outputs\.(\w+)", text))
        assert used <= outputs, f"{symbol}: no outputs {used - outputs} in {rel(target)}"


def test_main_outputs_what_a_user_needs() -> None:
    outputs = set(parsed(MAIN)["outputs"])
    assert {"functionAppName", "adxQueryUri", "adxIngestUri", "managedIdentityClientId", "apiClientId"} <= outputs


@pytest.mark.parametrize("path", [MAIN, ONBOARDING], ids=_ids([MAIN, ONBOARDING]))
def test_parameters_file_fits_its_template(path: Path) -> None:
    values = json.loads(path.with_name("main.parameters.json").read_text())["parameters"]
    declared = parsed(path)["parameters"]
    assert set(values) <= set(declared), set(values) - set(declared)
    required = {n for n, p in declared.items() if p.get("default") is None}
    assert required <= set(values), required - set(values)
    for name, entry in values.items():
        allowed = decorator(declared[name], "allowed")
        assert allowed is None or entry["value"] in allowed, (name, entry["value"])
    if "tenants" in values:
        tenants = parse_tenants(json.dumps(values["tenants"]["value"]), "Enterprise")
        assert tenants and all(Cloud.parse(t.cloud) for t in tenants)


def test_cloud_parameters_offer_exactly_the_code_s_clouds() -> None:
    found = [decorator(parsed(p)["parameters"]["cloud"], "allowed") for p in FILES
             if "cloud" in (parsed(p).get("parameters") or {})]
    assert len(found) >= 2  # main.bicep and the onboarding
    for allowed in found:
        assert allowed is None or allowed == [c.value for c in Cloud]


def test_names_the_code_defaults_to_are_the_names_created() -> None:
    variables = {k: v["value"] for k, v in parsed(MAIN)["variables"].items()}
    assert variables["contentQueueName"] == DEFAULT_CONTENT_QUEUE
    assert variables["stateTablePrefix"] == DEFAULT_STATE_TABLE_PREFIX
    assert variables["deadletterContainerName"] == DEFAULT_DEADLETTER_CONTAINER
    storage = (INFRA / "modules" / "storage.bicep").read_text()
    assert f"'${{contentQueueName}}{POISON_SUFFIX}'" in storage, "the poison queue is <content queue>-poison"


# -- app settings ------------------------------------------------------------------------------


def test_every_app_setting_is_read_by_the_code(settings_by_mode: dict[str, dict[str, Any]],
                                               code_settings: set[str]) -> None:
    for mode, settings in settings_by_mode.items():
        unread = set(settings) - code_settings - set(PLATFORM_SETTINGS)
        assert not unread, f"authMode {mode}: app settings nothing reads: {sorted(unread)}"
        assert set(PLATFORM_SETTINGS) <= set(settings), mode


def test_every_setting_the_code_reads_is_deployed(settings_by_mode: dict[str, dict[str, Any]],
                                                  code_settings: set[str]) -> None:
    deployed = set().union(*settings_by_mode.values())
    missing = code_settings - deployed - set(NOT_DEPLOYED)
    assert not missing, f"read by function_app/ but not in the function app's settings: {sorted(missing)}"
    # The exceptions stay true: still read by the code, still not deployed, never a platform setting.
    assert set(NOT_DEPLOYED) <= code_settings, sorted(set(NOT_DEPLOYED) - code_settings)
    assert not set(NOT_DEPLOYED) & deployed, sorted(set(NOT_DEPLOYED) & deployed)
    assert not set(PLATFORM_SETTINGS) & code_settings, "the code reads it now: drop it from PLATFORM_SETTINGS"
    # Outside the authentication settings, every mode deploys the same names.
    common = set.intersection(*(set(s) for s in settings_by_mode.values()))
    auth_only = deployed - common
    assert code_settings - set(NOT_DEPLOYED) - auth_only <= common


def test_each_auth_mode_gives_the_code_its_credential(settings_by_mode: dict[str, dict[str, Any]]) -> None:
    assert set(settings_by_mode) == set(EXPECTED_AUTH)
    tree = parsed(_function_app_file())
    for mode, settings in settings_by_mode.items():
        env = {name: _literal(value, tree) or PLACEHOLDER_GUID for name, value in settings.items()}
        provider = token_provider_from_env(env, Cloud.ENTERPRISE)
        assert getattr(provider, "kind", None) == EXPECTED_AUTH[mode], mode
        for name, value in settings.items():
            if re.search(r"SECRET|PASSWORD", name):
                assert str(value).startswith("@Microsoft.KeyVault("), f"{name} must be a Key Vault reference"


def test_spelled_out_tuning_equals_the_code_s_defaults(settings_by_mode: dict[str, dict[str, Any]]) -> None:
    tree = parsed(_function_app_file())
    common = set.intersection(*(set(s) for s in settings_by_mode.values()))
    any_mode = next(iter(settings_by_mode.values()))
    literals = {n: _literal(any_mode[n], tree) for n in common if n.startswith("AUDITLAKE_")}
    tuning = {n: v for n, v in literals.items() if v is not None}
    assert tuning, "no literal AUDITLAKE_* settings found"
    minimal = {"AUDITLAKE_TENANTS": PLACEHOLDER_GUID, "AzureWebJobsStorage": "UseDevelopmentStorage=true",
               "ADX_INGEST_URI": "https://ingest-example.westeurope.kusto.windows.net", "ADX_DATABASE": "auditlake"}
    assert AppSettings.from_env(minimal | tuning) == AppSettings.from_env(minimal), sorted(tuning)


def test_the_worker_imports_main_py(settings_by_mode: dict[str, dict[str, Any]]) -> None:
    for settings in settings_by_mode.values():
        assert settings["PYTHON_SCRIPT_FILE_NAME"] == "main.py"
    assert (REPO / "main.py").exists()


def test_every_binding_resolves_to_app_settings(settings_by_mode: dict[str, dict[str, Any]]) -> None:
    from tests.azure.conftest import indexed_functions

    bindings = [json.loads(b) for f in indexed_functions() for b in f.get_raw_bindings()]
    named = {n for b in bindings for n in re.findall(r"%([^%]+)%", json.dumps(b))}
    connections = {b["connection"] for b in bindings if b.get("connection")}
    assert named and connections
    for mode, settings in settings_by_mode.items():
        assert named <= set(settings), f"authMode {mode}: missing {named - set(settings)}"
        for connection in connections:
            # Identity-based: no connection string, the service URIs, the managed identity.
            assert connection not in settings, connection
            for suffix in ("__queueServiceUri", "__blobServiceUri", "__tableServiceUri", "__clientId"):
                assert connection + suffix in settings, connection + suffix
            assert settings[connection + "__credential"] == "managedidentity"


# -- ADX and KQL -----------------------------------------------------------------------------


def _deployed_kql() -> list[Path]:
    return [t for p in FILES for t in load_text_targets(p) if t.suffix == ".kql"]


def test_every_load_text_content_target_exists() -> None:
    for path in FILES:
        for target in load_text_targets(path):
            assert target.is_file(), f"{rel(path)} loads {target}, which does not exist"


def test_every_kql_file_is_deployed() -> None:
    deployed = set(_deployed_kql())
    on_disk = {p.resolve() for p in [*KQL_DIR.rglob("*.kql"), *KQL_FUNCTIONS_DIR.glob("*.kql")]}
    assert on_disk, "no KQL under infra/kql or auditlake/kql/functions"
    missing = sorted(rel(p) for p in on_disk - deployed)
    assert not missing, f"add one line per script to kqlScripts in infra/modules/adx-database.bicep: {missing}"
    # The file test_kql_schema holds equal to render_adx() is the one deployed.
    assert (RENDERED_KQL_DIR / "tables.kql").resolve() in deployed


def test_kql_scripts_run_one_at_a_time_in_order() -> None:
    found = 0
    for path in FILES:
        tree = parsed(path)
        for symbol, resource in resources(path).items():
            if resource["type"] != "Microsoft.Kusto/clusters/databases/scripts":
                continue
            found += 1
            assert decorator(resource, "batchSize") == 1, f"{symbol}: scripts must run serially (@batchSize(1))"
            loop = resource["config"]["loop_type"]["detail"]
            items = tree["variables"][loop["array_name"]]["value"]
            fields = [k for k, v in items[0].items() if list(function_calls(v, "load_text_content"))]
            assert len(fields) == 1, "each script item loads exactly one .kql file"
            content = body(resource)["properties"]["scriptContent"]["operator"]["operands"]
            assert (content["operand_1"], content["operand_2"]) == (loop["item_name"], fields[0])
            assert body(resource)["properties"]["continueOnErrors"] is False
            order = [_kql_rank(t) for t in load_text_targets(path) if t.suffix == ".kql"]
            assert order == sorted(order), f"{rel(path)}: scripts must run in the order {KQL_ORDER}"
    assert found == 1


def test_functions_are_deployed_after_the_functions_they_call() -> None:
    # ADX validates a function's body when it is created (skipvalidation="false"): a function
    # calling one of the library (HealthChecks calls LogFlowGaps and AuditTampering) must come
    # after it in kqlScripts.
    functions = [t for t in _deployed_kql() if t.parent == KQL_FUNCTIONS_DIR.resolve()]
    position = {t.stem: i for i, t in enumerate(functions)}
    assert len(position) == len(functions), "a function file is deployed twice"
    for caller in functions:
        text = caller.read_text(encoding="utf-8")
        body_text = text.split("{", 1)[1] if "{" in text else text
        body_text = re.sub(r"//[^\n]*", "", body_text)
        for callee in position:
            if callee != caller.stem and re.search(rf"\b{callee}\s*\(", body_text):
                assert position[callee] < position[caller.stem], f"{caller.name} calls {callee}: deploy {callee} first"


def _kql_rank(path: Path) -> int:
    # The function library ships as the local tool's package data; Bicep deploys it from there.
    first = "functions" if path.parent == KQL_FUNCTIONS_DIR.resolve() else path.relative_to(KQL_DIR.resolve()).parts[0]
    assert first in KQL_ORDER, f"{first}: give it a place in KQL_ORDER (tests/contract/test_bicep.py)"
    return KQL_ORDER.index(first)


def test_the_identity_is_database_ingestor_only() -> None:
    # The app only ingests; a Viewer role would let a stolen token read the whole audit log. Other
    # principals (the alert rules' identity, the analyst and admin groups) get their own roles in
    # tests/contract/test_alerts.py; none of them may be the app's identity.
    kind = "Microsoft.Kusto/clusters/databases/principalAssignments"
    by_principal: dict[str, list[Any]] = {}
    for path in FILES:
        for symbol, resource in declared_resources(path, kind).items():
            assert "loop_type" not in resource["config"], f"{symbol}: one assignment per role, spelled out"
            properties = body(resource)["properties"]
            by_principal.setdefault(str(properties["principalId"]), []).append(properties["role"])
    assert by_principal.get("ingestorClientId") == ["Ingestor"], by_principal
    # main.bicep gives the database module the app's identity as the ingestor and nothing else.
    _, module = _module_of(INFRA / "modules" / "adx-database.bicep")
    app_identity = [name for name, value in module["params"].items()
                    if _accessor_path(value)[:2] == ["identity", "outputs"] and "clientId" in _accessor_path(value)]
    assert app_identity == ["ingestorClientId"], app_identity
    assert "identity.outputs" not in json.dumps({k: v for k, v in module["params"].items() if k != "ingestorClientId"})


# -- security requirements of the issue ------------------------------------------------------

REQUIRED_PROPERTIES = [
    ("Microsoft.Storage/storageAccounts", "allowSharedKeyAccess", False),
    ("Microsoft.Storage/storageAccounts", "minimumTlsVersion", "TLS1_2"),
    ("Microsoft.Storage/storageAccounts", "allowBlobPublicAccess", False),
    ("Microsoft.Storage/storageAccounts", "supportsHttpsTrafficOnly", True),
    ("Microsoft.KeyVault/vaults", "enableRbacAuthorization", True),
    ("Microsoft.KeyVault/vaults", "enablePurgeProtection", True),
    ("Microsoft.Insights/components", "DisableLocalAuth", True),
    ("Microsoft.Web/sites", "httpsOnly", True),
]


@pytest.mark.parametrize(("kind", "name", "expected"), REQUIRED_PROPERTIES,
                         ids=[f"{k.split('/')[-1]}.{n}" for k, n, _ in REQUIRED_PROPERTIES])
def test_required_property(kind: str, name: str, expected: Any) -> None:
    found = [body(r)["properties"] for p in PLAIN_FILES for r in resources(p).values()
             if r["type"] == kind and not r.get("existing")]
    assert found, kind
    assert all(props.get(name) == expected for props in found), (kind, name)


def test_flex_consumption_python_311_with_the_user_assigned_identity() -> None:
    path = _function_app_file()
    for resource in resources(path).values():
        config = body(resource)
        if resource["type"] == "Microsoft.Web/serverfarms":
            assert config["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
        if resource["type"] == "Microsoft.Web/sites":
            app = config["properties"]["functionAppConfig"]
            assert app["runtime"] == {"name": "python", "version": "3.11"}
            assert app["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
            assert config["identity"]["type"] == "UserAssigned"
            assert config["properties"]["keyVaultReferenceIdentity"], "Key Vault references need the identity"


def test_role_assignments_are_named_with_guid_and_commented_by_role() -> None:
    count = 0
    for path in PLAIN_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for symbol, resource in resources(path).items():
            if resource["type"] not in ("Microsoft.Authorization/roleAssignments",
                                        "Microsoft.Kusto/clusters/databases/principalAssignments"):
                continue
            count += 1
            config = body(resource)
            assert list(function_calls(config["name"], "guid")), f"{rel(path)} {symbol}: name it with guid()"
            start = next(i for i, line in enumerate(lines) if line.startswith(f"resource {symbol} "))
            comments = []
            for line in reversed(lines[:start]):
                if line.startswith("@"):
                    continue  # a decorator between the comment and the resource
                if not line.startswith("//"):
                    break
                comments.append(line)
            comment = " ".join(comments)
            if resource["type"] == "Microsoft.Authorization/roleAssignments":
                role = next(g for g in KNOWN_ROLES if g in json.dumps(config["properties"]["roleDefinitionId"]))
                assert KNOWN_ROLES[role] in comment, f"{rel(path)} {symbol}: comment the role by name"
            else:
                role_name = f"Database {config['properties']['role']}"
                assert role_name in comment, f"{rel(path)} {symbol}: comment the role by name ({role_name})"
    assert count >= 5


def test_no_secret_or_key_is_read_into_a_template() -> None:
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        assert "listKeys(" not in text and "listKeys" not in json.dumps(parsed(path)), rel(path)
        for parameter in (parsed(path).get("parameters") or {}).values():
            assert decorator(parameter, "secure") is None, f"{rel(path)}: no secrets as parameters"


def test_funcignore_ships_the_app_and_nothing_else() -> None:
    patterns = [line.strip().rstrip("/") for line in (REPO / ".funcignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    for shipped in ("main.py", "host.json", "requirements.txt", "function_app"):
        assert not ignored(shipped), shipped
    for left_out in ("tests", "infra", ".venv", ".venv-tools", ".git", "node_modules", "local.settings.json"):
        assert ignored(left_out), left_out



# -- hardening: no record lost to a strange neighbour (issue 17) --------------------------------

STORAGE = INFRA / "modules" / "storage.bicep"
MONITORING = INFRA / "modules" / "monitoring.bicep"

# What each resource must send to the workspace: explicit categories (all of them required) or
# a category group (any one of them).
DIAGNOSTICS: dict[str, dict[str, set[str]]] = {
    "Microsoft.Storage/storageAccounts/blobServices": {"categories": {"StorageRead", "StorageWrite", "StorageDelete"}},
    "Microsoft.Storage/storageAccounts/queueServices": {"categories": {"StorageRead", "StorageWrite", "StorageDelete"}},
    "Microsoft.Storage/storageAccounts/tableServices": {"categories": {"StorageRead", "StorageWrite", "StorageDelete"}},
    "Microsoft.KeyVault/vaults": {"groups": {"audit", "allLogs"}},
    "Microsoft.Kusto/clusters": {"categories": {"SucceededIngestion", "FailedIngestion", "IngestionBatching", "Command",
                                                "Query", "Journal"}},
    "Microsoft.Web/sites": {"categories": {"FunctionAppLogs"}},
}

# Data actions the identity's blob role must not have in the dead-letter container.
DEADLETTER_DENIED = {
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/deleteBlobVersion/action",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/permanentDelete/action",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/immutableStorage/runAsSuperUser/action",
}
BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"


def _accessor_path(node: Any) -> list[Any]:
    """``a.b.c`` as ``["a", "b", "c"]`` (pycep nests property accessors to the right)."""
    path: list[Any] = []
    while isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
        operands = node["operator"]["operands"]
        path.append(operands["operand_1"])
        node = operands["operand_2"]
    return [*path, node]


def _module_of(path: Path) -> tuple[str, dict[str, Any]]:
    """main.bicep's module declaration that deploys *path*."""
    found = [(symbol, body(module)) for symbol, module in (parsed(MAIN).get("modules") or {}).items()
             if (MAIN.parent / module["detail"]["path"]).resolve() == path.resolve()]
    assert len(found) == 1, f"main.bicep deploys {rel(path)} {len(found)} times"
    return found[0]


def _workspace_output() -> str:
    outputs = parsed(MONITORING)["outputs"]
    workspaces = declared_resources(MONITORING, "Microsoft.OperationalInsights/workspaces")
    assert len(workspaces) == 1
    names = [n for n, o in outputs.items() if _accessor_path(o["value"]) == [next(iter(workspaces)), "id"]]
    assert len(names) == 1, "monitoring.bicep outputs the workspace id once"
    return str(names[0])


@pytest.mark.parametrize("kind", sorted(DIAGNOSTICS), ids=[k.split("/")[-1] for k in sorted(DIAGNOSTICS)])
def test_diagnostic_setting_sends_logs_and_metrics_to_the_workspace(kind: str) -> None:
    files = [p for p in PLAIN_FILES if declared_resources(p, kind)]
    assert len(files) == 1, f"{kind}: declared in {_ids(files)}"
    path = files[0]
    tree = parsed(path)
    settings = diagnostic_settings(path)
    workspace_output = _workspace_output()
    module_symbol, module = _module_of(path)
    for symbol in declared_resources(path, kind):
        assert len(settings.get(symbol, [])) == 1, f"{rel(path)}: {symbol} needs one diagnostic setting"
        properties = settings[symbol][0]["properties"]
        # To the module's workspace parameter, which main.bicep fills with monitoring's workspace.
        parameter = properties["workspaceId"]
        assert parameter in (tree.get("parameters") or {}), f"{symbol}: workspaceId must be a parameter"
        given = module["params"].get(parameter)
        assert _accessor_path(given) == ["monitoring", "outputs", workspace_output], (module_symbol, given)
        logs = resolve(properties["logs"], tree)
        metrics = resolve(properties["metrics"], tree)
        assert logs and all(entry.get("enabled") is True for entry in logs), symbol
        assert metrics and all(entry.get("enabled") is True for entry in metrics), symbol
        expected = DIAGNOSTICS[kind]
        categories = {entry.get("category") for entry in logs}
        groups = {entry.get("categoryGroup") for entry in logs}
        if "categories" in expected:
            assert expected["categories"] <= categories, f"{symbol}: missing {expected['categories'] - categories}"
        else:
            assert groups & expected["groups"], f"{symbol}: send the {sorted(expected['groups'])} category group"


def test_adx_cluster_trusts_no_external_tenant() -> None:
    clusters = [(p, r) for p in PLAIN_FILES for r in declared_resources(p, "Microsoft.Kusto/clusters").values()]
    assert clusters
    for path, cluster in clusters:
        properties = body(cluster)["properties"]
        # Left out, the default is [{value: '*'}]: every tenant. Empty: the cluster's own only.
        assert "trustedExternalTenants" in properties, rel(path)
        tenants = properties["trustedExternalTenants"]
        assert tenants == [], f"{rel(path)}: trust no external tenant, not {tenants}"
        assert "*" not in json.dumps(tenants)


def test_dead_letters_are_versioned_and_immutable_for_the_retention_parameter() -> None:
    tree = parsed(STORAGE)
    (blob_service,) = declared_resources(STORAGE, "Microsoft.Storage/storageAccounts/blobServices").values()
    assert body(blob_service)["properties"].get("isVersioningEnabled") is True
    containers = declared_resources(STORAGE, "Microsoft.Storage/storageAccounts/blobServices/containers")
    deadletter = [s for s, r in containers.items() if body(r)["name"] == "deadletterContainerName"]
    assert len(deadletter) == 1, "one container named by the deadletterContainerName parameter"
    container = body(containers[deadletter[0]])
    assert container["properties"]["immutableStorageWithVersioning"] == {"enabled": True}

    policies = [body(r) for r in declared_resources(
        STORAGE, "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies").values()]
    policies = [p for p in policies if p.get("parent") == deadletter[0]]
    assert len(policies) == 1, "the dead-letter container needs its default immutability policy"
    policy = policies[0]["properties"]
    retention = policy["immutabilityPeriodSinceCreationInDays"]
    assert retention in tree["parameters"], "the retention is a parameter"
    assert decorator(tree["parameters"][retention], "min_value") == 1
    # The app writes whole block blobs; appends to protected blobs stay refused.
    assert policy.get("allowProtectedAppendWrites") is False
    assert policy.get("allowProtectedAppendWritesAll") in (None, False)

    # main.bicep exposes the retention (default a year) and passes it on.
    _, module = _module_of(STORAGE)
    outer = module["params"][retention]
    main_parameter = parsed(MAIN)["parameters"][outer]
    assert main_parameter["default"] == 365 and decorator(main_parameter, "min_value") == 1

    # Versioning is account-wide: a lifecycle rule may expire other containers' versions, but
    # every rule must be limited by prefix, and no prefix may reach the dead letters.
    for resource in declared_resources(STORAGE, "Microsoft.Storage/storageAccounts/managementPolicies").values():
        for rule in resolve(body(resource)["properties"]["policy"]["rules"], tree):
            prefixes = resolve(rule["definition"].get("filters", {}).get("prefixMatch"), tree)
            assert prefixes, f"lifecycle rule {rule['name']} applies to the whole account, dead letters included"
            for prefix in prefixes:
                assert prefix and "deadletter" not in str(prefix).lower(), (rule["name"], prefix)


def test_the_identity_cannot_destroy_dead_letters() -> None:
    tree = parsed(STORAGE)
    containers = declared_resources(STORAGE, "Microsoft.Storage/storageAccounts/blobServices/containers")
    (deadletter,) = [s for s, r in containers.items() if body(r)["name"] == "deadletterContainerName"]
    owners = []
    for path in PLAIN_FILES:
        for symbol, resource in declared_resources(path, "Microsoft.Authorization/roleAssignments").items():
            config = body(resource)
            role = json.dumps(config["properties"]["roleDefinitionId"])
            assert config.get("scope") != deadletter or BLOB_DATA_OWNER not in role, \
                f"{rel(path)} {symbol}: no Storage Blob Data Owner on the dead-letter container"
            if BLOB_DATA_OWNER in role:
                owners.append((path, symbol, config))
    # The host's Storage Blob Data Owner on the account stays (Microsoft documents it for an
    # identity-based AzureWebJobsStorage), with a condition that takes the destructive data
    # actions away in the dead-letter container.
    assert [(p, c["scope"]) for p, _, c in owners] == [(STORAGE, "account")], owners
    properties = owners[0][2]["properties"]
    assert properties.get("conditionVersion") == "2.0"
    condition = str(resolve(properties.get("condition"), tree))
    clauses = re.findall(r"\$\{join\((\w+), ' AND '\)\}", condition)
    assert len(clauses) == 1, f"the condition joins one list of denied actions: {condition}"
    items = resolve(clauses[0], tree)
    assert all(str(item).startswith("!(ActionMatches{") for item in items), items
    denied = {m for item in items for m in re.findall(r"ActionMatches\{\\?'([^'\\]+)\\?'\}", str(item))}
    assert denied >= DEADLETTER_DENIED, sorted(DEADLETTER_DENIED - denied)
    assert re.search(r"\) OR \(@Resource\[Microsoft\.Storage/storageAccounts/blobServices/containers:name\] "
                     r"StringNotEquals \\?'\$\{deadletterContainerName\}\\?'\)\)$", condition), condition


# -- Purview audit search: the Graph permission and the timer's settings ---------------------

APP_REGISTRATION = INFRA / "modules" / "app-registration.bicep"
FUNCTION_APP_BICEP = INFRA / "modules" / "functionapp.bicep"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
# AuditLogsQuery.Read.All, category Application, "Identifier" in Microsoft's Graph permissions reference
# (https://learn.microsoft.com/graph/permissions-reference#auditlogsqueryreadall; its source is
# microsoftgraph/microsoft-graph-docs-contrib concepts/permissions-reference.md). The delegated permission
# of the same name has another id (1d9e7ac3-...): an application permission is what a daemon needs.
AUDIT_LOGS_QUERY_READ_ALL_ROLE_ID = "5e1e9171-754d-478c-812c-f1755a9a4c2d"


def _evaluate(value: Any, tree: dict[str, Any], params: dict[str, Any]) -> Any:
    """Just enough of Bicep to evaluate a template's expressions: parameters (given, else their default),
    variables, literals, ``cond ? a : b``, ``concat`` and ``contains``. Anything else fails the test."""
    if isinstance(value, str):
        if value in params:
            return params[value]
        if value in (tree.get("parameters") or {}):
            return _evaluate(tree["parameters"][value]["default"], tree, params)
        if value in (tree.get("variables") or {}):
            return _evaluate(tree["variables"][value]["value"], tree, params)
        return value
    if isinstance(value, list):
        return [_evaluate(v, tree, params) for v in value]
    if isinstance(value, dict) and "operator" in value:
        operator = value["operator"]
        assert operator["type"] == "conditional", f"cannot evaluate {operator['type']}"
        operands = operator["operands"]
        branch = "true_value" if _evaluate(operands["condition"], tree, params) else "false_value"
        return _evaluate(operands[branch], tree, params)
    if isinstance(value, dict) and "function" in value:
        function = value["function"]
        args = {k: _evaluate(v, tree, params) for k, v in function["parameters"].items()}
        if function["type"] == "concat":
            return [item for arg in args.values() for item in arg]
        if function["type"] == "contains":
            return args["item_to_find"] in args["container"]
        raise AssertionError(f"cannot evaluate {function['type']}()")
    if isinstance(value, dict):
        return {k: _evaluate(v, tree, params) for k, v in value.items()}
    return value


def _required_resource_access(request_audit_search: bool, request_dlp: bool,
                              request_entra: bool = False) -> list[dict[str, Any]]:
    tree = parsed(APP_REGISTRATION)
    (app,) = declared_resources(APP_REGISTRATION, "Microsoft.Graph/applications").values()
    params = {"requestAuditSearchPermission": request_audit_search, "requestDlpPermission": request_dlp,
              "requestEntraLogPermission": request_entra}
    access: list[dict[str, Any]] = _evaluate(body(app)["requiredResourceAccess"], tree, params)
    return access


@pytest.mark.parametrize("request_dlp", [True, False])
@pytest.mark.parametrize("request_audit_search", [True, False])
def test_the_app_declares_audit_logs_query_read_all_exactly_when_asked(request_audit_search: bool,
                                                                       request_dlp: bool) -> None:
    access = _required_resource_access(request_audit_search, request_dlp)
    graph = [entry for entry in access if entry["resourceAppId"] == GRAPH_APP_ID]
    if request_audit_search:
        # One Graph entry holding the application permission (type Role, never a delegated Scope) and nothing else.
        assert graph == [{"resourceAppId": GRAPH_APP_ID,
                          "resourceAccess": [{"id": AUDIT_LOGS_QUERY_READ_ALL_ROLE_ID, "type": "Role"}]}]
    else:
        assert graph == [], "no Graph entry at all: an empty one would still show in the consent prompt"
    # The feed's permissions do not depend on the search.
    (management,) = [entry for entry in access if entry["resourceAppId"] != GRAPH_APP_ID]
    assert {"id": "594c1fb6-4f81-4475-ae41-0c394909246c", "type": "Role"} in management["resourceAccess"]
    assert len(management["resourceAccess"]) == (2 if request_dlp else 1)


@pytest.mark.parametrize("request_audit_search", [True, False])
def test_the_app_declares_the_entra_log_permissions_exactly_when_asked(request_audit_search: bool) -> None:
    # AuditLog.Read.All and Directory.Read.All (application), as Microsoft's Graph permissions reference
    # gives their ids; the sign-in and directory audit list endpoints require both.
    entra = [{"id": "b0afded3-3588-46d8-8b3d-9842eff778da", "type": "Role"},
             {"id": "7ab1d382-f21e-4acd-a863-ba3e13f7da61", "type": "Role"}]
    search = [{"id": AUDIT_LOGS_QUERY_READ_ALL_ROLE_ID, "type": "Role"}] if request_audit_search else []
    for request_entra in (True, False):
        access = _required_resource_access(request_audit_search, False, request_entra)
        graph = [entry for entry in access if entry["resourceAppId"] == GRAPH_APP_ID]
        wanted = search + (entra if request_entra else [])
        assert graph == ([{"resourceAppId": GRAPH_APP_ID, "resourceAccess": wanted}] if wanted else [])
    wired = body(parsed(MAIN)["modules"]["appRegistration"])["params"]
    assert wired["requestEntraLogPermission"] == {
        "operator": {"type": "not_equals", "operands": {"operand_1": "entraStreams", "operand_2": ""}}}
    grants = {body(r).get("appRoleId"): r["config"].get("condition")
              for r in declared_resources(ONBOARDING, "Microsoft.Graph/appRoleAssignedTo").values()}
    assert grants["auditLogReadAllRoleId"] == grants["directoryReadAllRoleId"] == "grantEntraLogPermission"


def test_the_audit_search_permission_defaults_on_exactly_in_the_clouds_with_the_api() -> None:
    from function_app.purview.client import PERMISSION, SEARCH_CLOUDS

    assert PERMISSION == "AuditLogsQuery.Read.All"
    main, onboarding = parsed(MAIN), parsed(ONBOARDING)
    for tree, name in ((main, "requestAuditSearchPermission"), (onboarding, "grantAuditSearchPermission")):
        for cloud in Cloud:
            on = _evaluate(tree["parameters"][name]["default"], tree, {"cloud": cloud.value})
            assert on is (cloud in SEARCH_CLOUDS), f"{name} defaults to {on} in {cloud.value}"
    wired = body(parsed(MAIN)["modules"]["appRegistration"])["params"]
    assert wired["requestAuditSearchPermission"] == "requestAuditSearchPermission"


def test_onboarding_grants_audit_logs_query_read_all_exactly_when_asked() -> None:
    tree = parsed(ONBOARDING)
    found = resources(ONBOARDING)
    assert tree["parameters"]["auditLogsQueryReadAllRoleId"]["default"] == AUDIT_LOGS_QUERY_READ_ALL_ROLE_ID
    assert tree["parameters"]["graphAppId"]["default"] == GRAPH_APP_ID
    assert parsed(APP_REGISTRATION)["parameters"]["auditLogsQueryReadAllRoleId"]["default"] \
        == AUDIT_LOGS_QUERY_READ_ALL_ROLE_ID
    assert parsed(APP_REGISTRATION)["parameters"]["graphAppId"]["default"] == GRAPH_APP_ID
    graph = [s for s, r in found.items()
             if r["type"] == "Microsoft.Graph/servicePrincipals" and body(r).get("appId") == "graphAppId"]
    assert len(graph) == 1 and found[graph[0]]["existing"]
    grants = [r for r in declared_resources(ONBOARDING, "Microsoft.Graph/appRoleAssignedTo").values()
              if body(r).get("appRoleId") == "auditLogsQueryReadAllRoleId"]
    assert len(grants) == 1
    (grant,) = grants
    assert grant["config"].get("condition") == "grantAuditSearchPermission"
    assert json.dumps(body(grant)["resourceId"]).count(f'"{graph[0]}"') == 1


def test_the_search_timer_and_its_history_are_deployed_from_parameters() -> None:
    from function_app.config import DEFAULT_SEARCH_SCHEDULE, SETTINGS

    main = parsed(MAIN)["parameters"]
    assert main["searchSchedule"]["default"] == DEFAULT_SEARCH_SCHEDULE == "0 30 3 * * *"
    history = next(d for d in SETTINGS if d.name == "AUDITLAKE_SEARCH_HISTORY_DAYS")
    assert str(main["searchHistoryDays"]["default"]) == history.default == "180"
    wired = body(parsed(MAIN)["modules"]["functionApp"])["params"]
    assert wired["searchSchedule"] == "searchSchedule"
    assert wired["searchHistoryDays"] == "searchHistoryDays"
    for mode, settings in app_settings_by_mode(FUNCTION_APP_BICEP).items():
        assert settings["SEARCH_SCHEDULE"] == "searchSchedule", mode
        assert json.dumps(settings["AUDITLAKE_SEARCH_HISTORY_DAYS"]).count('"searchHistoryDays"') == 1, mode
