"""``decode_message``: every field of the queue message contract is checked, and a rejection
names the field at fault."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from function_app.core.errors import UntrustedMessageError
from function_app.core.messages import (
    MAX_MESSAGE_CHARS,
    check_content_uri,
    decode_message,
    encode_message,
    message_identity,
)
from function_app.core.model import ContentBlob

TENANT = "0b7f3c2e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
CID = "20260301120000000$20260301120000000$audit_exchange$Audit_Exchange$emea0011"
URI = f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/{CID}"


def good(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1, "tenantId": TENANT, "contentType": "Audit.Exchange", "contentId": CID, "contentUri": URI,
        "contentCreated": "2026-03-01T12:00:00.000Z", "contentExpiration": "2026-03-08T12:00:00.000Z",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()


def test_a_good_message_decodes() -> None:
    blob = decode_message(orjson.dumps(good()))
    assert blob == ContentBlob(TENANT, "Audit.Exchange", CID, URI, datetime(2026, 3, 1, 12, tzinfo=UTC),
                               datetime(2026, 3, 8, 12, tzinfo=UTC))


def test_normalisation_tenant_lower_case_content_type_canonical_seven_digit_fractions_offsets() -> None:
    blob = decode_message(orjson.dumps(good(
        tenantId=TENANT.upper(), contentType="audit.exchange",
        contentUri=URI.replace(TENANT, TENANT.upper()),
        contentCreated="2026-03-01T12:00:00.1234567Z", contentExpiration="2026-03-08T14:00:00+02:00")))
    assert blob.tenant_id == TENANT and blob.content_type == "Audit.Exchange"
    assert blob.content_created == datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert blob.content_expiration == datetime(2026, 3, 8, 12, tzinfo=UTC)


def test_round_trip() -> None:
    created = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
    blob = ContentBlob(TENANT, "DLP.All", CID, URI, created, created + timedelta(days=7))
    assert decode_message(encode_message(blob)) == blob


@pytest.mark.parametrize(("body", "field", "reason"), [
    (good(v=DROP), "v", "missing"),
    (good(v="1"), "v", "expected an integer"),
    (good(v=True), "v", "expected an integer"),
    (good(v=2), "v", "unsupported version 2"),
    (good(extra="x"), "extra", "unexpected field"),
    (good(tenantId=DROP), "tenantId", "missing"),
    (good(tenantId=42), "tenantId", "expected a string"),
    (good(tenantId=""), "tenantId", "empty"),
    (good(tenantId="contoso.onmicrosoft.com"), "tenantId", "not a GUID"),
    (good(contentType=None), "contentType", "expected a string"),
    (good(contentType="Audit.Teams"), "contentType", "unknown content type"),
    (good(contentId=DROP), "contentId", "missing"),
    (good(contentId="../../subscriptions/start"), "contentId", "characters a content id never has"),
    (good(contentId="a" * 300), "contentId", "longer than 256"),
    (good(contentId=".", contentUri=URI.replace(CID, ".")), "contentId", "characters a content id never has"),
    (good(contentId="...", contentUri=URI.replace(CID, "...")), "contentId", "characters a content id never has"),
    (good(contentId="..", contentUri=URI.replace(CID, "%2E%2E")), "contentId", "characters a content id never has"),
    (good(contentUri=DROP), "contentUri", "missing"),
    (good(contentUri=["x"]), "contentUri", "expected a string"),
    (good(contentUri="ftp://manage.office.com/x/" + CID), "contentUri", "absolute http(s) URL"),
    (good(contentUri="/api/v1.0/audit/" + CID), "contentUri", "absolute http(s) URL"),
    (good(contentUri=URI.replace(CID, "other")), "contentUri", "does not end in the message's contentId"),
    (good(contentUri="https://x/" + "a" * 3000 + "/" + CID), "contentUri", "longer than 2048"),
    (good(contentCreated=DROP), "contentCreated", "missing"),
    (good(contentCreated=1700000000), "contentCreated", "expected a string"),
    (good(contentCreated="2026-03-01 12:00:00"), "contentCreated", "not an ISO 8601 time"),
    (good(contentCreated="2026-03-01T12:00:00"), "contentCreated", "not an ISO 8601 time"),
    (good(contentCreated="2026-13-01T12:00:00Z"), "contentCreated", "not a valid time"),
    (good(contentExpiration="soon"), "contentExpiration", "not an ISO 8601 time"),
    (good(contentExpiration="2026-03-01T11:00:00Z"), "contentExpiration", "not after contentCreated"),
])
def test_each_bad_field_is_named(body: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(UntrustedMessageError) as caught:
        decode_message(orjson.dumps(body))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and reason in str(caught.value)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "a JSON list, not an object"),
    (b"\xff\xfe", "not UTF-8"),
    ("x" * (MAX_MESSAGE_CHARS + 1), "exceeds"),
    (b"", "not JSON"),
])
def test_a_message_that_is_not_a_json_object_names_no_field(raw: str | bytes, reason: str) -> None:
    with pytest.raises(UntrustedMessageError, match=reason) as caught:
        decode_message(raw)
    assert caught.value.field is None


def test_message_identity_names_the_blob_of_a_rejected_message_only_when_it_can() -> None:
    assert message_identity(orjson.dumps(good(contentExpiration="soon"))) == (TENANT, "Audit.Exchange", CID)
    assert message_identity(orjson.dumps(good(contentId="../x"))) is None
    assert message_identity(b"{not json") is None


ROOT = "https://manage.office.com/api/v1.0"


def test_check_content_uri_accepts_the_tenants_own_content_uri() -> None:
    check_content_uri(URI, ROOT, TENANT)
    check_content_uri(URI.replace("/api/v1.0/", "/API/V1.0/"), ROOT, TENANT)  # compared case-insensitively


@pytest.mark.parametrize("uri", [
    f"{URI}?PublisherIdentifier=attacker",
    f"{URI}?contentType=Audit.General",
    f"{URI}?",
    f"{URI}#fragment",
    f"{URI}#",
    f"{URI}?a=1#b",
])
def test_check_content_uri_refuses_a_query_string_or_a_fragment(uri: str) -> None:
    # The API's content URIs carry neither; the client adds PublisherIdentifier itself, and a
    # message must not choose parameters the token is sent with.
    with pytest.raises(UntrustedMessageError, match="query string or fragment"):
        check_content_uri(uri, ROOT, TENANT)


@pytest.mark.parametrize("segment", [".", "..", "...", ""])
def test_check_content_uri_refuses_a_content_id_made_only_of_dots(segment: str) -> None:
    with pytest.raises(UntrustedMessageError, match="does not end in a single content id"):
        check_content_uri(URI.replace(CID, segment), ROOT, TENANT)


@pytest.mark.parametrize("segment", ["%2E%2E", "%2e", ".%2E"])
def test_check_content_uri_refuses_a_content_id_of_percent_encoded_dots(segment: str) -> None:
    with pytest.raises(UntrustedMessageError):
        check_content_uri(URI.replace(CID, segment), ROOT, TENANT)


def test_a_message_naming_a_dot_only_content_id_names_no_blob() -> None:
    assert message_identity(orjson.dumps(good(contentId="...", contentUri=URI.replace(CID, "...")))) is None
