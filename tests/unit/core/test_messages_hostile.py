"""The content-URI allow-list: only a content id on the tenant's own feed, with nothing added."""

from __future__ import annotations

import orjson
import pytest

from function_app.core.errors import UntrustedMessageError
from function_app.core.messages import check_content_uri, decode_message

ROOT = "https://manage.office.com/api/v1.0"
T = "41463f53-8812-40f4-890f-865bf6e35190"
FEED = f"{ROOT}/{T}/activity/feed/audit"
CID = "20151001180051748005825$20151001180051748005825$audit_sharepoint$Audit_SharePoint"


def test_a_plain_content_uri_of_the_tenant_passes() -> None:
    check_content_uri(f"{FEED}/{CID}", ROOT, T)


@pytest.mark.parametrize("uri", [
    f"{FEED}/{CID}?PublisherIdentifier={T}",
    f"{FEED}/{CID}?",
    f"{FEED}/{CID}#x",
    f"{FEED}/{CID}?a=1#x",
])
def test_a_query_string_or_fragment_is_refused(uri: str) -> None:
    with pytest.raises(UntrustedMessageError, match="query string or fragment"):
        check_content_uri(uri, ROOT, T)


@pytest.mark.parametrize("content_id", [".", "..", "...", "...."])
def test_a_content_id_of_dots_only_is_refused(content_id: str) -> None:
    with pytest.raises(UntrustedMessageError, match="single content id"):
        check_content_uri(f"{FEED}/{content_id}", ROOT, T)


@pytest.mark.parametrize("content_id", [".", "...", "a..b"])
def test_a_message_naming_a_dot_only_content_id_is_refused(content_id: str) -> None:
    message = orjson.dumps({"v": 1, "tenantId": T, "contentType": "Audit.Exchange", "contentId": content_id,
                            "contentUri": f"{FEED}/{content_id}", "contentCreated": "2026-12-01T00:00:00Z",
                            "contentExpiration": "2026-12-08T00:00:00Z"})
    with pytest.raises(UntrustedMessageError, match="contentId"):
        decode_message(message)
