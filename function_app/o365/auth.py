"""Bearer tokens for the Management Activity API, one per monitored tenant.

The app registration is multi-tenant: a token is requested from the authority of the tenant
being collected, because the API refuses a token whose ``tid`` differs from the URL's tenant
(AF20010). azure-identity caches tokens per credential and refreshes them before they expire.

A token is asked for inside each attempt of an API call, so a token endpoint that cannot be
reached (or answers 429/5xx) is retried by the client's one retry policy, like the API itself:
``TokenUnavailableError`` is a RetryableError. A refusal (bad secret, missing consent) is a
PermanentApiError at once, since no amount of waiting changes Entra ID's mind.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Mapping
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.identity.aio import (
    CertificateCredential,
    ClientAssertionCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)

from function_app.core.errors import PermanentApiError, RetryableError
from function_app.logredact import redact
from function_app.o365.clouds import Cloud
from function_app.o365.errors import attach_retry_after

T = TypeVar("T")

# The audience Entra ID expects on a token presented as a federated client assertion.
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"

# An Entra ID token request normally takes well under a second; azure-core's default of 300 s
# per connect and per read would hold an attempt against a silent endpoint for ten minutes.
TOKEN_TIMEOUT_SECONDS = 30.0

# What the Entra ID credentials are built with. azure-core's own retry (up to 3 connection
# retries with seconds of backoff, per token request) is switched off: the API client's retry
# policy already repeats the whole attempt, token included, and two nested backoffs would
# multiply the attempts and the wait. The managed identity credentials keep azure-identity's
# defaults: their endpoint is local to the host, and IMDS has retry rules of its own (410 while
# it upgrades) that azure-identity knows and we should not second-guess.
_ENTRA_CREDENTIAL_OPTIONS: dict[str, Any] = {
    "retry_total": 0,
    "connection_timeout": TOKEN_TIMEOUT_SECONDS,
    "read_timeout": TOKEN_TIMEOUT_SECONDS,
}

# Statuses of a token endpoint that say "later", not "no".
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_BAD_CERTIFICATE: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorCertificateError,
    ssl.SSLCertVerificationError,
)
# A value this short is no real secret (tests use one letter); blanking it would garble the text.
_MIN_SCRUBBED_SECRET = 8


class TokenUnavailableError(RetryableError):
    """The token endpoint could not be reached, timed out, or answered 429/5xx: retried with the
    API call it was for, then reported as that call's (retryable) failure."""


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
        scope: str | None = None,
    ) -> None:
        self._cloud = cloud
        # Another API of the same cloud (Microsoft Graph for the Purview audit search) takes the
        # same credential with its own audience; by default the Management API's.
        self._scope = scope or cloud.scope
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
        """The scope requested: the one given, else the cloud's Management API audience ``/.default``."""
        return self._scope

    def credential_for(self, tenant_id: str) -> AsyncTokenCredential:
        """The (cached) credential that issues tokens for *tenant_id*; builds it on first use."""
        key = "" if self._kind is AuthKind.MANAGED_IDENTITY else tenant_id
        credential = self._credentials.get(key)
        if credential is None:
            credential = self._build(tenant_id)
            self._credentials[key] = credential
        return credential

    def token_endpoint(self, tenant_id: str) -> str:
        """Where tokens for *tenant_id* are requested, as error messages name it."""
        if self._kind is AuthKind.MANAGED_IDENTITY:
            return "the managed identity endpoint"
        return f"https://{self._cloud.authority_host}/{tenant_id}/oauth2/v2.0/token"

    def _build(self, tenant_id: str) -> AsyncTokenCredential:
        authority = self._cloud.authority_host
        client_id = self._client_id or ""
        options = _ENTRA_CREDENTIAL_OPTIONS
        if self._kind is AuthKind.WORKLOAD_IDENTITY:
            return WorkloadIdentityCredential(
                tenant_id=tenant_id,
                client_id=client_id,
                token_file_path=self._federated_token_file,
                authority=authority,
                **options,
            )
        if self._kind is AuthKind.FEDERATED_MANAGED_IDENTITY:
            return ClientAssertionCredential(
                tenant_id, client_id, self._current_assertion, authority=authority, **options
            )
        if self._kind is AuthKind.CERTIFICATE:
            return CertificateCredential(
                tenant_id,
                client_id,
                self._certificate_path,
                password=self._certificate_password,
                authority=authority,
                **options,
            )
        if self._kind is AuthKind.CLIENT_SECRET:
            return ClientSecretCredential(
                tenant_id, client_id, self._client_secret or "", authority=authority, **options
            )
        return ManagedIdentityCredential(client_id=self._managed_identity_client_id)

    async def token(self, tenant_id: str) -> str:
        """A token for *tenant_id*'s Management API.

        Raises TokenUnavailableError (retryable) when the token endpoint cannot be reached, times
        out or answers 429/5xx, and PermanentApiError when Entra ID refuses. Either error is one
        line naming the tenant, the credential kind and the endpoint, never a secret or a token.
        """
        credential = self.credential_for(tenant_id)
        if self._kind is AuthKind.FEDERATED_MANAGED_IDENTITY:
            await self._guarded(self._refresh_assertion(), tenant_id, "the managed identity endpoint")
        access = await self._guarded(credential.get_token(self.scope), tenant_id, self.token_endpoint(tenant_id))
        return access.token

    async def _guarded(self, request: Awaitable[T], tenant_id: str, endpoint: str) -> T:
        """*request* awaited, with azure-core's errors turned into the ones the client understands."""
        what = f"no token for tenant {tenant_id} ({self._kind.value})"
        try:
            return await request
        except ClientAuthenticationError as exc:
            status = _status_of(exc)
            text = self._one_line(exc.message)
            if status in _RETRYABLE_STATUSES:
                error = TokenUnavailableError(f"{what}: {endpoint} answered {text}", status=status)
                retry_after = _retry_after_of(exc)
                if retry_after is not None:
                    attach_retry_after(error, retry_after)
                raise error from exc
            # Waiting does not change Entra ID's mind (AADSTS7000215 bad secret, 65001 no consent).
            raise PermanentApiError(f"{what}, not retried: {text}", status=status) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            cause = f"{type(exc).__name__}: {self._one_line(str(exc))}"
            if isinstance(exc.inner_exception, _BAD_CERTIFICATE):
                # Like the API client's policy: a certificate that fails today fails tomorrow.
                raise PermanentApiError(f"{what}: {endpoint} has a certificate that does not verify: {cause}") \
                    from exc
            raise TokenUnavailableError(f"{what}: {endpoint} unreachable: {cause}") from exc

    def _one_line(self, text: str) -> str:
        # Entra ID's descriptions end in "\r\nTrace ID: ...\r\nCorrelation ID: ..." lines.
        line = " ".join(str(text).split())
        for secret in (self._client_secret, self._certificate_password, self._assertion):
            if secret and len(secret) >= _MIN_SCRUBBED_SECRET:
                line = line.replace(secret, "<redacted>")
        return redact(line)

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


def _status_of(exc: ClientAuthenticationError) -> int | None:
    response = exc.response
    status = getattr(response, "status_code", None) if response is not None else None
    return status if isinstance(status, int) else None


def _retry_after_of(exc: ClientAuthenticationError) -> str | None:
    response = exc.response
    headers = getattr(response, "headers", None) if response is not None else None
    value = headers.get("Retry-After") if headers is not None else None
    return value if isinstance(value, str) else None


def token_provider_from_env(env: Mapping[str, str], cloud: Cloud, *, scope: str | None = None) -> TokenProvider:
    """Choose how to authenticate from *env*, first match wins; tokens are for *scope* (default:
    the cloud's Management API, ``cloud.scope``; Graph's for the Purview audit search).

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
            cloud, need_client_id("AZURE_FEDERATED_TOKEN_FILE"), federated_token_file=token_file, scope=scope
        )
    federated_mi = get("AUDITLAKE_FEDERATED_MI")
    if federated_mi is not None and federated_mi.lower() in {"1", "true", "yes"}:
        return AzureIdentityTokenProvider(
            cloud,
            need_client_id("AUDITLAKE_FEDERATED_MI"),
            federated_with_managed_identity=True,
            managed_identity_client_id=get("MANAGED_IDENTITY_CLIENT_ID"),
            token_exchange_audience=exchange_audience,
            scope=scope,
        )
    certificate = get("AZURE_CLIENT_CERTIFICATE_PATH")
    if certificate:
        return AzureIdentityTokenProvider(
            cloud,
            need_client_id("AZURE_CLIENT_CERTIFICATE_PATH"),
            certificate_path=certificate,
            certificate_password=get("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
            scope=scope,
        )
    secret = get("AZURE_CLIENT_SECRET")
    if secret:
        return AzureIdentityTokenProvider(cloud, need_client_id("AZURE_CLIENT_SECRET"), client_secret=secret,
                                          scope=scope)
    return AzureIdentityTokenProvider(
        cloud,
        None,
        use_managed_identity=True,
        managed_identity_client_id=get("MANAGED_IDENTITY_CLIENT_ID") or client_id,
        scope=scope,
    )
