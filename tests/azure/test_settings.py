"""Azure settings: defaults, identity-based connections, and errors that name the setting."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from function_app.config import (
    AppSettings,
    AzureSettings,
    Settings,
    SettingsError,
    StorageConnection,
    app_settings,
    reset_app_settings,
)

TENANT = "3c9d2f1e-7a6b-4c5d-9e8f-1a2b3c4d5e6f"
CONN = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://q"
BASE = {"AzureWebJobsStorage": CONN, "ADX_INGEST_URI": "https://ingest-c.westeurope.kusto.windows.net",
        "ADX_DATABASE": "auditlake"}


def test_defaults() -> None:
    s = AzureSettings.from_env(BASE)
    assert (s.content_queue, s.poison_queue, s.collect_schedule) == ("content", "content-poison", "0 */2 * * * *")
    assert (s.checkpoints_table, s.ledger_table, s.runs_table) == (
        "AuditLakeCheckpoints", "AuditLakeLedger", "AuditLakeRuns")
    assert s.deadletter_container == "deadletter" and not s.adx_streaming
    assert s.requeue_after == timedelta(hours=1) and s.claim_lease == timedelta(minutes=11)
    assert s.storage.connection_string == CONN and "AccountKey" not in repr(s.storage)


def test_identity_based_connection() -> None:
    env = {k: v for k, v in BASE.items() if k != "AzureWebJobsStorage"}
    env.update({
        "AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.windows.net",
        "AzureWebJobsStorage__blobServiceUri": "https://acct.blob.core.windows.net",
        "AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.windows.net",
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": TENANT,
    })
    storage = AzureSettings.from_env(env).storage
    assert storage == StorageConnection(None, "https://acct.queue.core.windows.net", "https://acct.blob.core.windows.net",
                                        "https://acct.table.core.windows.net", TENANT, True)
    by_account = StorageConnection.from_env({"AzureWebJobsStorage__accountName": "acct"})
    assert by_account.table_service_uri == "https://acct.table.core.windows.net" and not by_account.managed_identity


@pytest.mark.parametrize(("changes", "named"), [
    ({"AzureWebJobsStorage": ""}, "AzureWebJobsStorage__queueServiceUri"),
    ({"AzureWebJobsStorage": "not a connection string"}, "AzureWebJobsStorage"),
    ({"AzureWebJobsStorage": "", "AzureWebJobsStorage__accountName": "a",
      "AzureWebJobsStorage__credential": "secret"}, "AzureWebJobsStorage__credential"),
    ({"AzureWebJobsStorage": "", "AzureWebJobsStorage__accountName": "a",
      "AzureWebJobsStorage__clientId": "me"}, "AzureWebJobsStorage__clientId"),
    ({"AzureWebJobsStorage": "", "AzureWebJobsStorage__accountName": "a",
      "AzureWebJobsStorage__queueServiceUri": "acct.queue"}, "AzureWebJobsStorage__queueServiceUri"),
    ({"CONTENT_QUEUE": "Content"}, "CONTENT_QUEUE"),
    ({"CONTENT_QUEUE": "a--b"}, "CONTENT_QUEUE"),
    ({"CONTENT_QUEUE": "q" * 60}, "CONTENT_QUEUE"),
    ({"COLLECT_SCHEDULE": "*/2 * * * *"}, "COLLECT_SCHEDULE"),
    ({"COLLECT_SCHEDULE": "0 */2 * * * ; rm"}, "COLLECT_SCHEDULE"),
    ({"ADX_INGEST_URI": ""}, "ADX_INGEST_URI"),
    ({"ADX_INGEST_URI": "ingest-c.kusto.windows.net"}, "ADX_INGEST_URI"),
    ({"ADX_INGEST_URI": "http://127.0.0.1:9"}, "ADX_INGEST_URI"),
    ({"ADX_ENGINE_URI": "http://127.0.0.1:9"}, "ADX_ENGINE_URI"),
    ({"ADX_INGEST_URI": "http://127.0.0.1:9", "ADX_ALLOW_INSECURE_HTTP": "false"}, "ADX_INGEST_URI"),
    ({"ADX_INGEST_URI": "http://127.0.0.1:9", "ADX_ALLOW_INSECURE_HTTP": "perhaps"}, "ADX_ALLOW_INSECURE_HTTP"),
    ({"ADX_DATABASE": ""}, "ADX_DATABASE"),
    ({"ADX_DATABASE": "db;drop"}, "ADX_DATABASE"),
    ({"ADX_STREAMING": "perhaps"}, "ADX_STREAMING"),
    ({"ADX_CLIENT_ID": "x"}, "ADX_CLIENT_ID"),
    ({"STATE_TABLE_PREFIX": "1abc"}, "STATE_TABLE_PREFIX"),
    ({"DEADLETTER_CONTAINER": "dead_letter"}, "DEADLETTER_CONTAINER"),
    ({"AUDITLAKE_REQUEUE_AFTER_MINUTES": "0"}, "AUDITLAKE_REQUEUE_AFTER_MINUTES"),
    ({"AUDITLAKE_CLAIM_LEASE_MINUTES": "soon"}, "AUDITLAKE_CLAIM_LEASE_MINUTES"),
])
def test_a_bad_setting_is_named(changes: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        AzureSettings.from_env({**BASE, **changes})
    assert str(caught.value).startswith(named + ":"), caught.value


def test_the_app_needs_a_tenant_and_takes_the_collector_settings_too() -> None:
    with pytest.raises(SettingsError, match=r"^AUDITLAKE_TENANTS: no tenant"):
        AppSettings.from_env(BASE)
    with pytest.raises(SettingsError, match=r"^AUDITLAKE_CLOUD"):
        AppSettings.from_env({**BASE, "AUDITLAKE_TENANTS": TENANT, "AUDITLAKE_CLOUD": "Mars"})
    app = AppSettings.from_env({**BASE, "AUDITLAKE_TENANTS": TENANT, "ADX_STREAMING": "true"})
    assert app.core.tenants[0].tenant_id == TENANT and app.azure.adx_streaming


def test_the_dataclass_defaults_are_the_parsed_defaults() -> None:
    assert Settings() == Settings.from_env({})
    parsed = AzureSettings.from_env(BASE)
    assert AzureSettings(parsed.storage, parsed.adx_ingest_uri, parsed.adx_database) == parsed


# -- a plain http:// ADX (no authentication) only when asked for, and said loudly ---------------

INSECURE = "http://127.0.0.1:8099"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "function_app.config" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("setting", ["ADX_INGEST_URI", "ADX_ENGINE_URI"])
def test_an_http_adx_uri_is_refused_naming_it_and_the_opt_in(setting: str) -> None:
    with pytest.raises(SettingsError) as caught:
        AzureSettings.from_env({**BASE, setting: INSECURE})
    message = str(caught.value)
    assert message.startswith(f"{setting}: "), message
    assert "ADX_ALLOW_INSECURE_HTTP=true" in message and "https://" in message


def test_an_http_adx_uri_with_the_opt_in_is_accepted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="function_app.config")
    s = AzureSettings.from_env({**BASE, "ADX_INGEST_URI": INSECURE, "ADX_ALLOW_INSECURE_HTTP": "true"})
    assert s.adx_ingest_uri == INSECURE and s.adx_allow_insecure_http
    assert _warnings(caplog) == [
        "ADX_INGEST_URI is http://: no authentication, test use only (ADX_ALLOW_INSECURE_HTTP=true)"]
    caplog.clear()
    both = {**BASE, "ADX_INGEST_URI": INSECURE, "ADX_ENGINE_URI": INSECURE, "ADX_ALLOW_INSECURE_HTTP": "1"}
    assert AzureSettings.from_env(both).adx_engine_uri == INSECURE
    assert _warnings(caplog) == [
        "ADX_INGEST_URI and ADX_ENGINE_URI are http://: no authentication, test use only "
        "(ADX_ALLOW_INSECURE_HTTP=true)"]


def test_the_opt_in_changes_nothing_for_https(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="function_app.config")
    s = AzureSettings.from_env({**BASE, "ADX_ALLOW_INSECURE_HTTP": "true"})
    assert s.adx_ingest_uri == BASE["ADX_INGEST_URI"] and not _warnings(caplog)
    assert not AzureSettings.from_env(BASE).adx_allow_insecure_http


def test_the_functions_app_warns_once_per_start(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="function_app.config")
    for name, value in {**BASE, "AUDITLAKE_TENANTS": TENANT, "ADX_INGEST_URI": INSECURE,
                        "ADX_ALLOW_INSECURE_HTTP": "true"}.items():
        monkeypatch.setenv(name, value)
    reset_app_settings()
    try:
        assert app_settings() is app_settings()
    finally:
        reset_app_settings()
    assert len(_warnings(caplog)) == 1
