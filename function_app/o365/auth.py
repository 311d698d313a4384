"""Bearer tokens for the Management Activity API, one per monitored tenant.

The app registration is multi-tenant: a token is requested from the authority of the tenant
being collected, because the API refuses a token whose ``tid`` differs from the URL's tenant
(AF20010). azure-identity caches tokens per credential and refreshes them before they expire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import (
    CertificateCredential,
    ClientAssertionCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)

from function_app.core.errors import PermanentApiError
from function_app.o365.clouds import Cloud

log = logging.getLogger(__name__)

# The audience Entra ID expects on a token presented as a federated client assertion.
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"


class TokenProvider(Protocol):
    """Something that hands out a bearer token for the Management API of one tenant."""

    async def token(self, tenant_id: str) -> str:
        """A currently valid access token whose ``tid`` is *tenant_id*."""
        ...


class StaticTokenProvider:
    """The same token for every tenant (``AUDITLAKE_API_TOKEN``: the emulator, or a token minted by hand)."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        if not token.strip():
            raise ValueError("the static API token is empty")
        self._token = token.strip()

    async def token(self, tenant_id: str) -> str:
        """The configured token, whatever the tenant."""
        return self._token

    def __repr__(self) -> str:
        return "StaticTokenProvider(token=<redacted>)"


class AuthKind(StrEnum):
    """Which azure-identity credential a provider uses."""

    CLIENT_SECRET = "client_secret"
    CERTIFICATE = "certificate"
    FEDERATED_MANAGED_IDENTITY = "federated_managed_identity"
    WORKLOAD_IDENTITY = "workload_identity"
    MANAGED_IDENTITY = "managed_identity"


class AzureIdentityTokenProvider:
    """Tokens from Entra ID through azure-identity's async credentials.

    Exactly one way of authenticating is chosen from the arguments, in this order: a federated
    token file (workload identity), a managed identity trusted by the app registration
    (``federated_with_managed_identity``), a certificate, a client secret, and a plain managed
    identity. All but the last are multi-tenant: one credential per monitored tenant, whose
    authority is that tenant. A plain managed identity only ever gets tokens for its own tenant.
    """

    def __init__(
        self,
        cloud: Cloud,
        client_id: str | None,
        *,
        client_secret: str | None = None,
        certificate_path: str | None = None,
        certificate_password: str | None = None,
        use_managed_identity: bool = False,
        federated_with_managed_identity: bool = False,
        managed_identity_client_id: str | None = None,
        federated_token_file: str | None = None,
        token_exchange_audience: str = TOKEN_EXCHANGE_AUDIENCE,
    ) -> None:
        self._cloud = cloud
        self._client_id = client_id or None
        self._client_secret = client_secret or None
        self._certificate_path = certificate_path or None
        self._certificate_password = certificate_password or None
        self._managed_identity_client_id = managed_identity_client_id or None
        self._federated_token_file = federated_token_file or None
        self._exchange_scope = f"{token_exchange_audience.rstrip('/')}/.default"
        self._kind = self._choose_kind(use_managed_identity, federated_with_managed_identity)
        self._credentials: dict[str, AsyncTokenCredential] = {}
        self._managed_identity: ManagedIdentityCredential | None = None
        self._assertion: str | None = None
        self._lock = asyncio.Lock()

    def _choose_kind(self, use_managed_identity: bool, federated: bool) -> AuthKind:
        if self._federated_token_file:
            kind = AuthKind.WORKLOAD_IDENTITY
        elif federated:
            kind = AuthKind.FEDERATED_MANAGED_IDENTITY
        elif self._certificate_path:
            kind = AuthKind.CERTIFICATE
        elif self._client_secret:
            kind = AuthKind.CLIENT_SECRET
        elif use_managed_identity:
            return AuthKind.MANAGED_IDENTITY
        else:
            raise ValueError(
                "no way to authenticate: give a client secret, a certificate, a federated token file, "
                "or use a managed identity"
            )
        if not self._client_id:
            raise ValueError(f"{kind.value} authentication needs the app registration's client id")
        return kind

    @property
    def kind(self) -> AuthKind:
        """The way this provider authenticates."""
        return self._kind

    @property
    def scope(self) -> str:
        """The scope requested: the cloud's Management API audience ``/.default``."""
        return self._cloud.scope

    def credential_for(self, tenant_id: str) -> AsyncTokenCredential:
        """The (cached) credential that issues tokens for *tenant_id*; builds it on first use."""
        key = "" if self._kind is AuthKind.MANAGED_IDENTITY else tenant_id
        credential = self._credentials.get(key)
        if credential is None:
            credential = self._build(tenant_id)
            self._credentials[key] = credential
        return credential

    def _build(self, tenant_id: str) -> AsyncTokenCredential:
        authority = self._cloud.authority_host
        client_id = self._client_id or ""
        if self._kind is AuthKind.WORKLOAD_IDENTITY:
            return WorkloadIdentityCredential(
                tenant_id=tenant_id,
                client_id=client_id,
                token_file_path=self._federated_token_file,
                authority=authority,
            )
        if self._kind is AuthKind.FEDERATED_MANAGED_IDENTITY:
            return ClientAssertionCredential(
                tenant_id, client_id, self._current_assertion, authority=authority
            )
        if self._kind is AuthKind.CERTIFICATE:
            return CertificateCredential(
                tenant_id,
                client_id,
                self._certificate_path,
                password=self._certificate_password,
                authority=authority,
            )
        if self._kind is AuthKind.CLIENT_SECRET:
            return ClientSecretCredential(
                tenant_id, client_id, self._client_secret or "", authority=authority
            )
        return ManagedIdentityCredential(client_id=self._managed_identity_client_id)

    async def token(self, tenant_id: str) -> str:
        """A token for *tenant_id*'s Management API; PermanentApiError if Entra ID refuses.

        The error names the tenant and the credential kind, never a secret.
        """
        credential = self.credential_for(tenant_id)
        try:
            if self._kind is AuthKind.FEDERATED_MANAGED_IDENTITY:
                await self._refresh_assertion()
            access = await credential.get_token(self.scope)
        except ClientAuthenticationError as exc:
            log.error("token request failed tenant_id=%s auth=%s", tenant_id, self._kind.value)
            raise PermanentApiError(
                f"no token for tenant {tenant_id} ({self._kind.value}): {exc.message}"
            ) from exc
        return access.token

    async def _refresh_assertion(self) -> None:
        # ClientAssertionCredential asks for its assertion synchronously; fetch the managed
        # identity token (cached and refreshed by azure-identity) asynchronously beforehand so
        # the callback never blocks the event loop.
        async with self._lock:
            if self._managed_identity is None:
                self._managed_identity = ManagedIdentityCredential(client_id=self._managed_identity_client_id)
            access = await self._managed_identity.get_token(self._exchange_scope)
            self._assertion = access.token

    def _current_assertion(self) -> str:
        if self._assertion is None:
            raise ClientAuthenticationError("managed identity assertion not fetched yet")
        return self._assertion

    async def close(self) -> None:
        """Close every credential's transport; the provider must not be used afterwards."""
        credentials = list(self._credentials.values())
        self._credentials.clear()
        if self._managed_identity is not None:
            credentials.append(self._managed_identity)
            self._managed_identity = None
        for credential in credentials:
            await credential.close()

    def __repr__(self) -> str:
        return f"AzureIdentityTokenProvider(cloud={self._cloud.value}, kind={self._kind.value})"


def token_provider_from_env(env: Mapping[str, str], cloud: Cloud) -> TokenProvider:
    """Choose how to authenticate from *env*, first match wins.

    1. ``AUDITLAKE_API_TOKEN``: a static bearer token.
    2. ``AZURE_FEDERATED_TOKEN_FILE`` (+ ``AZURE_CLIENT_ID``): workload identity.
    3. ``AUDITLAKE_FEDERATED_MI=1`` (+ ``AZURE_CLIENT_ID``, optional ``MANAGED_IDENTITY_CLIENT_ID``):
       the app registration trusts a managed identity as a federated credential (multi-tenant).
    4. ``AZURE_CLIENT_CERTIFICATE_PATH`` (+ ``AZURE_CLIENT_ID``, optional
       ``AZURE_CLIENT_CERTIFICATE_PASSWORD``).
    5. ``AZURE_CLIENT_SECRET`` (+ ``AZURE_CLIENT_ID``).
    6. Otherwise a managed identity (user-assigned if ``MANAGED_IDENTITY_CLIENT_ID`` or
       ``AZURE_CLIENT_ID`` is set), which only reaches its own tenant.

    Raises ValueError naming the missing variable when a chosen way is incomplete.
    """

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    static = get("AUDITLAKE_API_TOKEN")
    if static:
        return StaticTokenProvider(static)

    client_id = get("AZURE_CLIENT_ID")
    exchange_audience = get("AUDITLAKE_TOKEN_EXCHANGE_AUDIENCE") or TOKEN_EXCHANGE_AUDIENCE

    def need_client_id(why: str) -> str:
        if client_id is None:
            raise ValueError(f"AZURE_CLIENT_ID is required when {why} is set")
        return client_id

    token_file = get("AZURE_FEDERATED_TOKEN_FILE")
    if token_file:
        return AzureIdentityTokenProvider(
            cloud, need_client_id("AZURE_FEDERATED_TOKEN_FILE"), federated_token_file=token_file
        )
    federated_mi = get("AUDITLAKE_FEDERATED_MI")
    if federated_mi is not None and federated_mi.lower() in {"1", "true", "yes"}:
        return AzureIdentityTokenProvider(
            cloud,
            need_client_id("AUDITLAKE_FEDERATED_MI"),
            federated_with_managed_identity=True,
            managed_identity_client_id=get("MANAGED_IDENTITY_CLIENT_ID"),
            token_exchange_audience=exchange_audience,
        )
    certificate = get("AZURE_CLIENT_CERTIFICATE_PATH")
    if certificate:
        return AzureIdentityTokenProvider(
            cloud,
            need_client_id("AZURE_CLIENT_CERTIFICATE_PATH"),
            certificate_path=certificate,
            certificate_password=get("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
        )
    secret = get("AZURE_CLIENT_SECRET")
    if secret:
        return AzureIdentityTokenProvider(cloud, need_client_id("AZURE_CLIENT_SECRET"), client_secret=secret)
    return AzureIdentityTokenProvider(
        cloud,
        None,
        use_managed_identity=True,
        managed_identity_client_id=get("MANAGED_IDENTITY_CLIENT_ID") or client_id,
    )
