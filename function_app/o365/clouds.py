"""The Microsoft 365 clouds the Management Activity API is offered in, and their endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class CloudEndpoints:
    """Where one cloud's Management Activity API lives and who issues tokens for it."""

    api_root: str
    audience: str
    authority_host: str


class Cloud(StrEnum):
    """A Microsoft 365 cloud (the API's "plan"): each has its own API host and token audience."""

    ENTERPRISE = "Enterprise"
    GCC = "GCC"
    GCC_HIGH = "GCCHigh"
    DOD = "DoD"

    @classmethod
    def parse(cls, name: str) -> Cloud:
        """Return the cloud called *name*, ignoring case, spaces, hyphens and underscores.

        Raises ValueError listing the valid names when *name* is none of them.
        """
        wanted = _squash(name)
        for cloud in cls:
            if _squash(cloud.value) == wanted:
                return cloud
        valid = ", ".join(c.value for c in cls)
        raise ValueError(f"unknown cloud {name!r}; valid clouds: {valid}")

    @property
    def endpoints(self) -> CloudEndpoints:
        """The API root, token audience and Entra authority host of this cloud."""
        return _ENDPOINTS[self]

    @property
    def api_root(self) -> str:
        """The API root without a trailing slash; ``/{tenant_id}/activity/feed/...`` is appended."""
        return _ENDPOINTS[self].api_root

    @property
    def audience(self) -> str:
        """The token resource (v1) / audience the API expects in ``aud``."""
        return _ENDPOINTS[self].audience

    @property
    def scope(self) -> str:
        """The v2 client-credentials scope: the audience's ``.default``."""
        return f"{_ENDPOINTS[self].audience}/.default"

    @property
    def authority_host(self) -> str:
        """The Entra ID host that issues tokens for this cloud (no scheme)."""
        return _ENDPOINTS[self].authority_host


def _squash(name: str) -> str:
    return "".join(ch for ch in name.strip().lower() if ch not in " -_")


_PUBLIC_AUTHORITY = "login.microsoftonline.com"
# GCC tenants live in the public Entra ID cloud; only GCC High and DoD use the sovereign one.
_GOVERNMENT_AUTHORITY = "login.microsoftonline.us"

_ENDPOINTS: dict[Cloud, CloudEndpoints] = {
    Cloud.ENTERPRISE: CloudEndpoints(
        "https://manage.office.com/api/v1.0", "https://manage.office.com", _PUBLIC_AUTHORITY
    ),
    Cloud.GCC: CloudEndpoints(
        "https://manage-gcc.office.com/api/v1.0", "https://manage-gcc.office.com", _PUBLIC_AUTHORITY
    ),
    Cloud.GCC_HIGH: CloudEndpoints(
        "https://manage.office365.us/api/v1.0", "https://manage.office365.us", _GOVERNMENT_AUTHORITY
    ),
    Cloud.DOD: CloudEndpoints(
        "https://manage.protection.apps.mil/api/v1.0",
        "https://manage.protection.apps.mil",
        _GOVERNMENT_AUTHORITY,
    ),
}
