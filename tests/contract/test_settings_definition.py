"""``function_app.config.SETTINGS`` defines every setting once, and everything else is held to it:
the names function_app/ reads, the defaults it applies, what the Functions app refuses to start
without, the function app's Bicep app settings, the trigger bindings, the settings tables of
docs/settings.md and local.settings.json.example.

``python -m tests.contract.test_settings_definition`` prints the docs table rows the definition expects.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from function_app.config import (
    DEFAULT_COLLECT_SCHEDULE,
    DEFAULT_CONTENT_QUEUE,
    SETTINGS,
    STORAGE_SETTING,
    AppSettings,
    Scope,
    SettingDef,
    SettingsError,
    StorageConnection,
)
from tests.contract.bicep_support import INFRA, REPO, app_settings_by_mode, is_reference, parsed
from tests.contract.code_settings import settings_read_by

DOC = REPO / "docs" / "settings.md"
EXAMPLE = REPO / "local.settings.json.example"
FUNCTION_APP_BICEP = INFRA / "modules" / "functionapp.bicep"
MAIN_BICEP = INFRA / "main.bicep"
TENANT = "3c9d2f1e-7a6b-4c5d-9e8f-1a2b3c4d5e6f"

BY_NAME = {d.name: d for d in SETTINGS}
REQUIRED = [d for d in SETTINGS if d.required_in_azure]

# Read by the code but never configured by anyone, so not defined (and not documented).
READ_NOT_DEFINED = {
    "FUNCTIONS_WORKER_RUNTIME": "set by the Functions host (Core Tools: from local.settings.json); app.py validates "
                                "the settings at start-up only inside the host",
    "WEBSITE_INSTANCE_ID": "set by the platform on every instance; names the instance that holds a claim",
}

# App settings the Functions host or the Python worker reads, not function_app/ (Bicep sets them).
PLATFORM_SETTINGS = {
    "PYTHON_SCRIPT_FILE_NAME", "APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}

# What local.settings.json holds besides the required settings: the worker, the file it imports, and the
# storage the host itself needs (Azurite; the Python storage SDKs refuse UseDevelopmentStorage=true).
LOCAL_HOST_VALUES = {"FUNCTIONS_WORKER_RUNTIME": "python", "PYTHON_SCRIPT_FILE_NAME": "main.py"}

# Values for the required settings that have no default (the binding settings use their defaults).
SAMPLES = {
    "AUDITLAKE_TENANTS": TENANT,
    "ADX_INGEST_URI": "https://ingest-example.westeurope.kusto.windows.net",
    "ADX_DATABASE": "auditlake",
}


def _minimal() -> dict[str, str]:
    """The least the Functions app starts with: the required settings and a storage connection."""
    values = {d.name: SAMPLES.get(d.name, d.default) for d in REQUIRED}
    missing = sorted(name for name, value in values.items() if value is None)
    assert not missing, f"give these required settings a value in SAMPLES: {missing}"
    return {STORAGE_SETTING: "UseDevelopmentStorage=true", **{k: v for k, v in values.items() if v is not None}}


# -- the definition itself -------------------------------------------------------------------------


def test_each_setting_is_defined_once_with_a_one_line_doc() -> None:
    names = [d.name for d in SETTINGS]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    for d in SETTINGS:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", d.name), d.name
        assert d.doc.strip() and "\n" not in d.doc and "|" not in d.doc, d.name
        assert "|" not in d.shown_default and "\n" not in d.shown_default, d.name
        assert d.default is None or d.unset == "(none)", f"{d.name}: a default and an unset text"


def test_every_binding_setting_is_required_in_azure() -> None:
    for d in SETTINGS:
        if d.scope is Scope.BINDING:
            # The host resolves %NAME% itself and has no default: without it the function is not indexed.
            assert d.required_in_azure, d.name


# -- (a) the code reads exactly what is defined, with the defined defaults -------------------------------


def test_the_code_reads_exactly_the_defined_settings() -> None:
    # The Functions app (function_app/, main.py) and the CLI package beside it (auditlake/).
    paths = [p for package in ("function_app", "auditlake") for p in sorted((REPO / package).rglob("*.py"))]
    scan = settings_read_by([*paths, REPO / "main.py"])
    assert not scan.unresolved, f"settings the scanner cannot name (make them constants): {scan.unresolved}"
    undefined = scan.names - set(BY_NAME) - set(READ_NOT_DEFINED)
    assert not undefined, f"read by the code but not in config.SETTINGS: {sorted(undefined)}"
    unread = set(BY_NAME) - scan.names
    assert not unread, f"in config.SETTINGS but read nowhere: {sorted(unread)}"
    # The exceptions stay true: still read, still not defined.
    assert set(READ_NOT_DEFINED) <= scan.names, sorted(set(READ_NOT_DEFINED) - scan.names)
    assert not set(READ_NOT_DEFINED) & set(BY_NAME)


@pytest.mark.parametrize("definition", [d for d in SETTINGS if d.default is not None], ids=lambda d: d.name)
def test_the_defined_default_is_what_an_unset_setting_gets(definition: SettingDef) -> None:
    assert definition.default is not None
    minimal = _minimal()
    assert AppSettings.from_env({**minimal, definition.name: definition.default}) == AppSettings.from_env(
        {k: v for k, v in minimal.items() if k != definition.name})


def test_the_token_exchange_audience_default_is_auth_s() -> None:
    # Read by o365/auth.py, which keeps its own constant: the two must agree.
    from function_app.o365.auth import TOKEN_EXCHANGE_AUDIENCE

    assert BY_NAME["AUDITLAKE_TOKEN_EXCHANGE_AUDIENCE"].default == TOKEN_EXCHANGE_AUDIENCE


def test_the_commit_records_doc_names_the_lake_s_row_group_size() -> None:
    # The doc spells the size out (config must not import the lake and DuckDB): the two must agree.
    from auditlake.lake.duckdb_lake import ROW_GROUP_ROWS

    assert f"full row group of {ROW_GROUP_ROWS:,} rows" in BY_NAME["AUDITLAKE_COMMIT_RECORDS"].doc


def test_the_app_starts_with_the_required_settings_and_refuses_to_without_one() -> None:
    minimal = _minimal()
    AppSettings.from_env(minimal)  # nothing else is required
    for d in REQUIRED:
        if d.scope is Scope.BINDING:
            continue  # the Python side falls back to the default; the host itself refuses (see above)
        with pytest.raises(SettingsError) as caught:
            AppSettings.from_env({k: v for k, v in minimal.items() if k != d.name})
        assert str(caught.value).startswith(d.name + ":"), caught.value


# -- (b) Bicep sets what Azure needs, and only defined settings -----------------------------------------


@pytest.fixture(scope="module")
def settings_by_mode() -> dict[str, dict[str, Any]]:
    return app_settings_by_mode(FUNCTION_APP_BICEP)


def test_bicep_sets_every_required_setting_in_every_auth_mode(settings_by_mode: dict[str, dict[str, Any]]) -> None:
    tree = parsed(FUNCTION_APP_BICEP)
    for mode, settings in settings_by_mode.items():
        for d in REQUIRED:
            assert d.name in settings, f"authMode {mode}: {d.name} is required in Azure and not set"
            value = settings[d.name]
            assert is_reference(value, tree) or str(value).strip(), f"authMode {mode}: {d.name} is empty"


def test_bicep_sets_nothing_undefined(settings_by_mode: dict[str, dict[str, Any]]) -> None:
    for mode, settings in settings_by_mode.items():
        undefined = set(settings) - set(BY_NAME) - PLATFORM_SETTINGS
        assert not undefined, f"authMode {mode}: app settings config.SETTINGS does not define: {sorted(undefined)}"


def test_bicep_literals_equal_the_defined_defaults(settings_by_mode: dict[str, dict[str, Any]]) -> None:
    tree = parsed(FUNCTION_APP_BICEP)
    for mode, settings in settings_by_mode.items():
        for name, value in settings.items():
            d = BY_NAME.get(name)
            if d is None or d.default is None or is_reference(value, tree):
                continue
            assert str(value) == d.default, f"authMode {mode}: {name} is {value!r} in Bicep, {d.default!r} in code"


def test_bicep_never_allows_an_insecure_adx(settings_by_mode: dict[str, dict[str, Any]]) -> None:
    for mode, settings in settings_by_mode.items():
        assert "ADX_ALLOW_INSECURE_HTTP" not in settings, mode


def test_bicep_sets_the_binding_settings_to_the_shown_values() -> None:
    # The docs say "Bicep sets `<default>`": main.bicep's values feed the module's app settings.
    main = parsed(MAIN_BICEP)
    assert main["variables"]["contentQueueName"]["value"] == DEFAULT_CONTENT_QUEUE
    assert main["parameters"]["collectSchedule"]["default"] == DEFAULT_COLLECT_SCHEDULE


# -- (d) the bindings name exactly the binding settings ----------------------------------------------------


def test_the_bindings_name_exactly_the_binding_settings() -> None:
    from tests.azure.conftest import indexed_functions

    bindings = [json.loads(b) for f in indexed_functions() for b in f.get_raw_bindings()]
    named = {n for b in bindings for n in re.findall(r"%([^%]+)%", json.dumps(b))}
    assert named == {d.name for d in SETTINGS if d.scope is Scope.BINDING}
    for connection in {b["connection"] for b in bindings if b.get("connection")}:
        assert BY_NAME[connection].scope is Scope.AZURE, connection


# -- (c) docs/settings.md -------------------------------------------------------------------------------


def doc_row(d: SettingDef) -> str:
    return f"| `{d.name}` | {d.shown_default} | {d.doc} |"


def _cells(line: str) -> list[str]:
    """The cells of a GFM table row (a pipe inside a cell is written ``\\|``)."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def settings_tables(text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every body row of the tables whose header starts ``| name | default |``."""
    rows: list[tuple[int, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        header = lines[i].strip()
        if (header.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|?[\s:|-]+\|?", lines[i + 1].strip())
                and [c.lower() for c in _cells(header)[:2]] == ["name", "default"]):
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append((i + 1, _cells(lines[i])))
                i += 1
        else:
            i += 1
    return rows


def test_the_docs_settings_tables_hold_exactly_the_definitions() -> None:
    expected = "\n".join(doc_row(d) for d in SETTINGS)
    assert DOC.exists(), f"{DOC.relative_to(REPO)} is missing; its settings tables should hold:\n{expected}"
    rows = settings_tables(DOC.read_text(encoding="utf-8"))
    assert rows, f"no `| name | default | meaning |` table in {DOC.relative_to(REPO)}"
    documented: dict[str, str] = {}
    problems: list[str] = []
    for line, cells in rows:
        match = re.fullmatch(r"`([A-Za-z][A-Za-z0-9_]*)`", cells[0])
        if match is None:
            problems.append(f"line {line}: the first cell must be one setting name in backticks, got {cells[0]!r}")
            continue
        name = match.group(1)
        if name in documented:
            problems.append(f"line {line}: {name} is documented twice")
        documented[name] = cells[1] if len(cells) > 1 else ""
    for name in sorted(set(documented) - set(BY_NAME)):
        problems.append(f"{name}: documented but not defined in config.SETTINGS")
    for d in SETTINGS:
        if d.name not in documented:
            problems.append(f"missing row: {doc_row(d)}")
        elif documented[d.name] != d.shown_default:
            problems.append(f"{d.name}: default shown as {documented[d.name]!r}, defined as {d.shown_default!r}")
    assert not problems, "\n".join(problems)


# -- local.settings.json.example ----------------------------------------------------------------------------


def _example() -> dict[str, Any]:
    loaded = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_the_local_settings_example_holds_exactly_the_required_settings() -> None:
    example = _example()
    assert set(example) == {"IsEncrypted", "Values"} and example["IsEncrypted"] is False
    values = example["Values"]
    assert all(isinstance(v, str) for v in values.values()), "Core Tools takes string values only"
    assert set(values) == {d.name for d in REQUIRED} | set(LOCAL_HOST_VALUES) | {STORAGE_SETTING}
    assert {k: values[k] for k in LOCAL_HOST_VALUES} == LOCAL_HOST_VALUES
    for d in REQUIRED:
        if d.default is not None:
            assert values[d.name] == d.default, d.name  # what Bicep sets too


def test_the_local_settings_example_starts_the_app_once_the_placeholders_are_filled() -> None:
    values = dict(_example()["Values"])
    placeholders = sorted(k for k, v in values.items() if "<" in v)
    assert "AUDITLAKE_TENANTS" in placeholders, "the tenant must be an obvious placeholder"
    with pytest.raises(SettingsError, match=r"^AUDITLAKE_TENANTS:"):
        AppSettings.from_env(values)  # unedited, the app says what to fill in
    values.update({k: SAMPLES[k] for k in placeholders})
    AppSettings.from_env(values)


def test_the_local_settings_example_storage_is_azurite_for_the_python_sdks_too() -> None:
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient

    connection = _example()["Values"][STORAGE_SETTING]
    assert StorageConnection.from_env({STORAGE_SETTING: connection}).connection_string == connection
    # No request is made: each client only parses the connection string.
    assert QueueClient.from_connection_string(connection, "content").url.startswith("http://127.0.0.1:10001/")
    assert ContainerClient.from_connection_string(connection, "deadletter").url.startswith("http://127.0.0.1:10000/")
    assert TableServiceClient.from_connection_string(connection).url.startswith("http://127.0.0.1:10002/")


def test_the_local_settings_example_is_not_deployed() -> None:
    patterns = [line.strip() for line in (REPO / ".funcignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert EXAMPLE.name in patterns


if __name__ == "__main__":
    print("| name | default | meaning |\n|---|---|---|")
    for definition in SETTINGS:
        print(doc_row(definition))
