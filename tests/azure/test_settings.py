"""Azure settings: defaults, identity-based connections, and errors that name the setting."""

from __future__ import annotations

from datetime import timedelta

import pytest

from function_app.config import AppSettings, AzureSettings, SettingsError, StorageConnection

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
