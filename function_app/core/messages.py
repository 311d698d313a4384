"""The queue message contract and the checks that keep a fetch on the tenant's own feed.

A message (or a content URI from a listing) is untrusted input: it names a URL the
collector will send a bearer token to, so it must point at the configured cloud's
Management API host and at that tenant's ``/activity/feed/audit/`` path, nothing else.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from function_app.core.errors import UntrustedMessageError


def audit_path_prefix(api_root: str, tenant_id: str) -> str:
    """The path every content URI of *tenant_id* starts with under *api_root*."""
    root_path = urlsplit(api_root).path.rstrip("/")
    return f"{root_path}/{tenant_id}/activity/feed/audit/"


def check_content_uri(content_uri: str, api_root: str, tenant_id: str) -> None:
    """Raise UntrustedMessageError unless *content_uri* is a blob of *tenant_id* on *api_root*'s host.

    Scheme and host (with port) must equal the API root's; the path must be the tenant's audit
    feed with a non-empty content id and no dot segments; user info is refused outright.
    """
    try:
        uri = urlsplit(content_uri)
        root = urlsplit(api_root)
    except ValueError as exc:
        raise UntrustedMessageError(f"contentUri is not a URL: {exc}") from exc
    if uri.username is not None or uri.password is not None:
        raise UntrustedMessageError("contentUri carries user info")
    if uri.scheme.lower() != root.scheme.lower() or uri.netloc.lower() != root.netloc.lower():
        raise UntrustedMessageError(
            f"contentUri host {uri.scheme}://{uri.netloc} is not the Management API host "
            f"{root.scheme}://{root.netloc}"
        )
    prefix = audit_path_prefix(api_root, tenant_id)
    # Version segments differ in the wild (v1 vs v1.0 in the docs' own NextPageUri example);
    # compare case-insensitively on the tenant GUID but exactly on structure.
    if not uri.path.lower().startswith(prefix.lower()):
        raise UntrustedMessageError(f"contentUri path is not under {prefix}")
    content_id = uri.path[len(prefix):]
    if not content_id or "/" in content_id or content_id in {".", ".."} or "%2f" in content_id.lower():
        raise UntrustedMessageError("contentUri does not end in a single content id")
