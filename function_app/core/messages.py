"""The queue message contract and the checks that keep a fetch on the tenant's own feed.

A message (or a content URI from a listing) is untrusted input: it names a URL the
collector will send a bearer token to, so it must point at the configured cloud's
Management API host and at that tenant's ``/activity/feed/audit/`` path, nothing else.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from function_app.core.errors import UntrustedMessageError
from function_app.core.model import CONTENT_TYPES, ContentBlob, iso_z, utc

MESSAGE_VERSION = 1
# The contract message is well under 1 KiB; anything much larger is not ours. (A Storage
# queue message holds 64 KiB, 48 KiB of text once base64-encoded.)
MAX_MESSAGE_CHARS = 8 * 1024
MAX_URI_CHARS = 2048
MAX_CONTENT_ID_CHARS = 256

_FIELDS = ("v", "tenantId", "contentType", "contentId", "contentUri", "contentCreated", "contentExpiration")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Content ids are like 20180111120000000$20180111120000000$audit_sharepoint$Audit_SharePoint$emea0011;
# they end up in blob names, table keys and logs, so anything outside this set is refused.
_CONTENT_ID = re.compile(r"^[A-Za-z0-9$_.\-]+$")
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?(Z|[+-]\d{2}:\d{2})$")
_BY_LOWER = {c.lower(): c for c in CONTENT_TYPES}


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
    # The API's content URIs carry no query or fragment; the client adds PublisherIdentifier
    # itself. A query would let a message pick parameters the token is sent with.
    if uri.query or uri.fragment or "?" in content_uri or "#" in content_uri:
        raise UntrustedMessageError("contentUri carries a query string or fragment")
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
    # Decoded before the checks: %2E%2E is a dot segment once a server normalises the path.
    decoded = unquote(content_id)
    if not content_id or "/" in decoded or not decoded.strip(".") or "\\" in decoded:
        raise UntrustedMessageError("contentUri does not end in a single content id")


def encode_message(blob: ContentBlob) -> str:
    """The queue message (contract version 1) that hands *blob* to the content queue, as JSON text."""
    return orjson.dumps({
        "v": MESSAGE_VERSION,
        "tenantId": blob.tenant_id,
        "contentType": blob.content_type,
        "contentId": blob.content_id,
        "contentUri": blob.content_uri,
        "contentCreated": iso_z(blob.content_created),
        "contentExpiration": iso_z(blob.content_expiration),
    }).decode()


def _reject(field: str | None, reason: str) -> UntrustedMessageError:
    return UntrustedMessageError(f"{field}: {reason}" if field else reason, field=field)


def _text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if name not in data:
        raise _reject(name, "missing")
    if not isinstance(value, str):
        raise _reject(name, f"expected a string, got {type(value).__name__}")
    if not value:
        raise _reject(name, "empty")
    return value


def _tenant(data: dict[str, Any]) -> str:
    value = _text_field(data, "tenantId")
    if not _GUID.match(value):
        raise _reject("tenantId", "not a GUID")
    return value.lower()


def _content_type(data: dict[str, Any]) -> str:
    value = _text_field(data, "contentType")
    canonical = _BY_LOWER.get(value.lower())
    if canonical is None:
        raise _reject("contentType", f"unknown content type; expected one of {', '.join(CONTENT_TYPES)}")
    return canonical


def _content_id(data: dict[str, Any]) -> str:
    value = _text_field(data, "contentId")
    if len(value) > MAX_CONTENT_ID_CHARS:
        raise _reject("contentId", f"longer than {MAX_CONTENT_ID_CHARS} characters")
    if not _CONTENT_ID.match(value) or ".." in value or not value.strip("."):
        raise _reject("contentId", "contains characters a content id never has")
    return value


def _time(data: dict[str, Any], name: str) -> datetime:
    value = _text_field(data, name)
    if not _ISO_TIME.match(value):
        raise _reject(name, "not an ISO 8601 time with a zone (YYYY-MM-DDTHH:MM:SS[.fff]Z)")
    try:
        # fromisoformat takes at most 6 fraction digits; the API sends up to 7.
        head, _, rest = value.partition(".")
        if rest:
            digits = re.match(r"\d+", rest)
            assert digits is not None
            value = f"{head}.{digits.group(0)[:6].ljust(6, '0')}{rest[digits.end():]}"
        return utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError as exc:
        raise _reject(name, f"not a valid time: {exc}") from None


def _parse(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise _reject(None, "message is not UTF-8 text") from None
    if len(text) > MAX_MESSAGE_CHARS:
        raise _reject(None, f"message of {len(text)} characters exceeds {MAX_MESSAGE_CHARS}")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _reject(None, f"message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _reject(None, f"message is a JSON {type(data).__name__}, not an object")
    return data


def decode_message(text: str | bytes) -> ContentBlob:
    """The blob a content-queue message names, after checking every field; UntrustedMessageError otherwise.

    Checks: UTF-8 JSON object of at most ``MAX_MESSAGE_CHARS``; ``v`` is 1; no unknown fields;
    ``tenantId`` a GUID (returned lower-case); ``contentType`` a known content type (returned in
    its canonical spelling); ``contentId`` a plausible content id; ``contentUri`` an http(s) URL
    of at most ``MAX_URI_CHARS`` whose last path segment is ``contentId``; both times ISO 8601
    with a zone, expiration after creation. Whether the URI is on the configured API host and
    the tenant's feed is ``check_content_uri``'s job, since that needs the configuration.
    """
    data = _parse(text)
    if "v" not in data:
        raise _reject("v", "missing")
    version = data["v"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _reject("v", f"expected an integer, got {type(version).__name__}")
    if version != MESSAGE_VERSION:
        raise _reject("v", f"unsupported version {version}; this app reads version {MESSAGE_VERSION}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise _reject(unknown[0], "unexpected field")
    tenant = _tenant(data)
    content_type = _content_type(data)
    content_id = _content_id(data)
    uri = _text_field(data, "contentUri")
    if len(uri) > MAX_URI_CHARS:
        raise _reject("contentUri", f"longer than {MAX_URI_CHARS} characters")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise _reject("contentUri", f"not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise _reject("contentUri", "not an absolute http(s) URL")
    if unquote(parts.path.rsplit("/", 1)[-1]) != content_id:
        raise _reject("contentUri", "does not end in the message's contentId")
    created = _time(data, "contentCreated")
    expiration = _time(data, "contentExpiration")
    if expiration <= created:
        raise _reject("contentExpiration", "not after contentCreated")
    return ContentBlob(tenant, content_type, content_id, uri, created, expiration)


def message_identity(text: str | bytes) -> tuple[str, str, str] | None:
    """``(tenant_id, content_type, content_id)`` of a message that failed ``decode_message``,
    when those three fields are valid on their own, so its rejection can be recorded against
    the blob it names; None when it names no blob."""
    try:
        data = _parse(text)
        return _tenant(data), _content_type(data), _content_id(data)
    except UntrustedMessageError:
        return None
