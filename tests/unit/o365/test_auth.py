"""Choosing how to authenticate, and the per-tenant credentials; no token is ever requested."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken
from azure.identity.aio import (
    CertificateCredential,
    ClientAssertionCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)

from function_app.o365.auth import (
    AuthKind,
    AzureIdentityTokenProvider,
    StaticTokenProvider,
    token_provider_from_env,
)
from function_app.o365.clouds import Cloud

TENANT_A = "11111111-1111-1111-1111-111111111111"
TENANT_B = "22222222-2222-2222-2222-222222222222"
APP = "33333333-3333-3333-3333-333333333333"
MI = "44444444-4444-4444-4444-444444444444"


def _azure(provider: object) -> AzureIdentityTokenProvider:
    assert isinstance(provider, AzureIdentityTokenProvider)
    return provider


def _close(provider: AzureIdentityTokenProvider) -> None:
    asyncio.run(provider.close())


def test_static_token_wins_over_everything() -> None:
    env = {
        "AUDITLAKE_API_TOKEN": "static-token",
        "AZURE_CLIENT_ID": APP,
        "AZURE_CLIENT_SECRET": "s",
        "AZURE_FEDERATED_TOKEN_FILE": "/x",
    }
    provider = token_provider_from_env(env, Cloud.ENTERPRISE)
    assert isinstance(provider, StaticTokenProvider)
    assert asyncio.run(provider.token(TENANT_A)) == "static-token"
    assert "static-token" not in repr(provider)


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        (
            {
                "AZURE_CLIENT_ID": APP,
                "AZURE_FEDERATED_TOKEN_FILE": "/var/run/token",
                "AZURE_CLIENT_SECRET": "s",
            },
            AuthKind.WORKLOAD_IDENTITY,
        ),
        (
            {"AZURE_CLIENT_ID": APP, "AUDITLAKE_FEDERATED_MI": "1", "AZURE_CLIENT_SECRET": "s"},
            AuthKind.FEDERATED_MANAGED_IDENTITY,
        ),
        (
            {"AZURE_CLIENT_ID": APP, "AUDITLAKE_FEDERATED_MI": "true", "MANAGED_IDENTITY_CLIENT_ID": MI},
            AuthKind.FEDERATED_MANAGED_IDENTITY,
        ),
        (
            {"AZURE_CLIENT_ID": APP, "AZURE_CLIENT_CERTIFICATE_PATH": "/c.pem", "AZURE_CLIENT_SECRET": "s"},
            AuthKind.CERTIFICATE,
        ),
        ({"AZURE_CLIENT_ID": APP, "AZURE_CLIENT_SECRET": "s"}, AuthKind.CLIENT_SECRET),
        ({}, AuthKind.MANAGED_IDENTITY),
        ({"AUDITLAKE_API_TOKEN": "  "}, AuthKind.MANAGED_IDENTITY),
        ({"AUDITLAKE_FEDERATED_MI": "0"}, AuthKind.MANAGED_IDENTITY),
        ({"MANAGED_IDENTITY_CLIENT_ID": MI}, AuthKind.MANAGED_IDENTITY),
    ],
)
def test_selection_order(env: dict[str, str], kind: AuthKind) -> None:
    provider = _azure(token_provider_from_env(env, Cloud.ENTERPRISE))
    assert provider.kind is kind
    assert provider.scope == "https://manage.office.com/.default"
    _close(provider)


@pytest.mark.parametrize(
    ("env", "missing", "because"),
    [
        ({"AZURE_FEDERATED_TOKEN_FILE": "/t"}, "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"),
        ({"AUDITLAKE_FEDERATED_MI": "1"}, "AZURE_CLIENT_ID", "AUDITLAKE_FEDERATED_MI"),
        ({"AZURE_CLIENT_CERTIFICATE_PATH": "/c.pem"}, "AZURE_CLIENT_ID", "AZURE_CLIENT_CERTIFICATE_PATH"),
        ({"AZURE_CLIENT_SECRET": "s"}, "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"),
    ],
)
def test_incomplete_configuration_names_the_missing_variable(
    env: dict[str, str], missing: str, because: str
) -> None:
    with pytest.raises(ValueError, match=f"{missing} is required when {because}"):
        token_provider_from_env(env, Cloud.ENTERPRISE)


def test_secret_never_appears_in_errors_or_repr() -> None:
    provider = _azure(
        token_provider_from_env({"AZURE_CLIENT_ID": APP, "AZURE_CLIENT_SECRET": "s3cr3t"}, Cloud.GCC)
    )
    assert "s3cr3t" not in repr(provider)
    _close(provider)


def test_one_credential_per_monitored_tenant() -> None:
    provider = AzureIdentityTokenProvider(Cloud.GCC_HIGH, APP, client_secret="s")
    a = provider.credential_for(TENANT_A)
    assert isinstance(a, ClientSecretCredential)
    assert provider.credential_for(TENANT_A) is a
    assert provider.credential_for(TENANT_B) is not a
    assert provider.scope == "https://manage.office365.us/.default"
    _close(provider)


def test_workload_identity_credential_per_tenant(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("federated")
    provider = AzureIdentityTokenProvider(Cloud.ENTERPRISE, APP, federated_token_file=str(token_file))
    assert isinstance(provider.credential_for(TENANT_A), WorkloadIdentityCredential)
    assert provider.credential_for(TENANT_A) is not provider.credential_for(TENANT_B)
    _close(provider)


def test_certificate_credential(tmp_path: Path) -> None:
    pem = tmp_path / "app.pem"
    pem.write_bytes(_self_signed_pem())
    provider = AzureIdentityTokenProvider(Cloud.DOD, APP, certificate_path=str(pem))
    assert isinstance(provider.credential_for(TENANT_A), CertificateCredential)
    _close(provider)


def test_plain_managed_identity_is_shared_across_tenants() -> None:
    provider = AzureIdentityTokenProvider(Cloud.ENTERPRISE, None, use_managed_identity=True)
    credential = provider.credential_for(TENANT_A)
    assert isinstance(credential, ManagedIdentityCredential)
    assert provider.credential_for(TENANT_B) is credential
    _close(provider)


def test_nothing_to_authenticate_with() -> None:
    with pytest.raises(ValueError, match="no way to authenticate"):
        AzureIdentityTokenProvider(Cloud.ENTERPRISE, APP)
    with pytest.raises(ValueError, match="client id"):
        AzureIdentityTokenProvider(Cloud.ENTERPRISE, None, client_secret="s")


class FakeManagedIdentity:
    """Stands in for the managed identity whose token becomes the client assertion."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    async def get_token(self, *scopes: str) -> AccessToken:
        self.scopes.extend(scopes)
        expires = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
        return AccessToken("mi-assertion", expires)

    async def close(self) -> None:
        return None


def test_federated_managed_identity_assertion() -> None:
    provider = AzureIdentityTokenProvider(
        Cloud.ENTERPRISE, APP, federated_with_managed_identity=True, managed_identity_client_id=MI
    )
    assert isinstance(provider.credential_for(TENANT_A), ClientAssertionCredential)
    fake = FakeManagedIdentity()
    provider._managed_identity = fake  # type: ignore[assignment]
    asyncio.run(provider._refresh_assertion())
    assert fake.scopes == ["api://AzureADTokenExchange/.default"]
    assert provider._current_assertion() == "mi-assertion"
    _close(provider)


def _self_signed_pem() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auditlake-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


class RefusingCredential:
    """A credential Entra ID turns down."""

    async def get_token(self, *scopes: str) -> AccessToken:
        from azure.core.exceptions import ClientAuthenticationError

        raise ClientAuthenticationError("AADSTS7000215: Invalid client secret provided.")

    async def close(self) -> None:
        return None


def test_refused_token_becomes_a_permanent_api_error() -> None:
    from function_app.core.errors import PermanentApiError

    provider = AzureIdentityTokenProvider(Cloud.ENTERPRISE, APP, client_secret="s3cr3t")
    provider._credentials[TENANT_A] = RefusingCredential()  # type: ignore[assignment]
    with pytest.raises(
        PermanentApiError, match=f"no token for tenant {TENANT_A} \\(client_secret\\)"
    ) as caught:
        asyncio.run(provider.token(TENANT_A))
    assert "s3cr3t" not in str(caught.value)
    _close(provider)
