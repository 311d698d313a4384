"""Clients of the app's storage account, from a connection string or an identity.

Locally (Azurite) ``AzureWebJobsStorage`` is a connection string; in Azure the app uses
identity-based connections (``AzureWebJobsStorage__queueServiceUri`` and friends plus a
managed identity), the same settings the Functions host reads for its own triggers.
"""

from __future__ import annotations

from azure.core.credentials_async import AsyncTokenCredential
from azure.data.tables.aio import TableServiceClient
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from function_app.config import StorageConnection


def storage_credential(connection: StorageConnection) -> AsyncTokenCredential | None:
    """The identity for an identity-based *connection*; None for a connection string."""
    if not connection.identity_based:
        return None
    if connection.managed_identity:
        return ManagedIdentityCredential(client_id=connection.client_id)
    # Without __credential the host itself falls back to a default chain; so do we.
    return DefaultAzureCredential(managed_identity_client_id=connection.client_id)


def queue_client(connection: StorageConnection, name: str, credential: AsyncTokenCredential | None) -> QueueClient:
    """A client of queue *name* whose messages are base64 text, as the Functions queue trigger expects."""
    if connection.connection_string is not None:
        return QueueClient.from_connection_string(
            connection.connection_string, name,
            message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy())
    assert connection.queue_service_uri is not None
    return QueueClient(connection.queue_service_uri, name, credential=credential,
                       message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy())


def container_client(
    connection: StorageConnection, name: str, credential: AsyncTokenCredential | None
) -> ContainerClient:
    """A client of blob container *name*."""
    if connection.connection_string is not None:
        return ContainerClient.from_connection_string(connection.connection_string, name)
    assert connection.blob_service_uri is not None
    return ContainerClient(connection.blob_service_uri, name, credential=credential)


def table_service(connection: StorageConnection, credential: AsyncTokenCredential | None) -> TableServiceClient:
    """A client of the account's Table service."""
    if connection.connection_string is not None:
        return TableServiceClient.from_connection_string(connection.connection_string)
    assert connection.table_service_uri is not None and credential is not None
    return TableServiceClient(connection.table_service_uri, credential=credential)
