"""The AF code table and ``classify`` on every code and on odd bodies."""

from __future__ import annotations

import orjson
import pytest

from function_app.core.errors import (
    ApiError,
    ContentExpiredError,
    ContentNotFoundError,
    PermanentApiError,
    RetryableError,
    SubscriptionMissingError,
    ThrottledError,
)
from function_app.o365.errors import AF_CODES, Decision, classify, retry_after_of

# Written out independently of the table in code, so a changed row fails here.
EXPECTED: dict[str, tuple[Decision, type[ApiError]]] = {
    "AF10001": (Decision.FAIL, PermanentApiError),
    "AF20001": (Decision.FAIL, PermanentApiError),
    "AF20002": (Decision.FAIL, PermanentApiError),
    "AF20003": (Decision.FAIL, PermanentApiError),
    "AF20010": (Decision.FAIL, PermanentApiError),
    "AF20011": (Decision.FAIL, PermanentApiError),
    "AF20012": (Decision.FAIL, PermanentApiError),
    "AF20013": (Decision.FAIL, PermanentApiError),
    "AF20020": (Decision.FAIL, PermanentApiError),
    "AF20021": (Decision.FAIL, PermanentApiError),
    "AF20022": (Decision.START_SUBSCRIPTION, SubscriptionMissingError),
    "AF20023": (Decision.START_SUBSCRIPTION, SubscriptionMissingError),
    "AF20024": (Decision.ALREADY_ENABLED, PermanentApiError),
    "AF20030": (Decision.FAIL, PermanentApiError),
    "AF20031": (Decision.FAIL, PermanentApiError),
    "AF20050": (Decision.NOT_FOUND, ContentNotFoundError),
    "AF20051": (Decision.EXPIRED, ContentExpiredError),
    "AF20052": (Decision.NOT_FOUND, ContentNotFoundError),
    "AF20053": (Decision.FAIL, PermanentApiError),
    "AF20054": (Decision.FAIL, PermanentApiError),
    "AF20055": (Decision.FAIL, PermanentApiError),
    "AF429": (Decision.RETRY_THROTTLED, ThrottledError),
    "AF50000": (Decision.RETRY, RetryableError),
}


def _body(code: str, message: str = "the API's message") -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def test_table_covers_exactly_the_documented_codes() -> None:
    assert set(AF_CODES) == set(EXPECTED)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500])
@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_every_code(code: str, status: int) -> None:
    verdict = classify(status, _body(code, f"message for {code}"), {})
    decision, error_class = EXPECTED[code]
    assert verdict.decision is decision
    assert type(verdict.error) is error_class
    assert verdict.error.code == code
    assert verdict.error.status == status
    assert f"message for {code}" in str(verdict.error)


def test_docs_throttle_example_403_af429() -> None:
    body = b"{'error':{'code':'AF429','message':'Too many requests.'}}"  # the docs' single quotes: not JSON
    assert classify(403, body, {}).decision is Decision.FAIL
    verdict = classify(403, _body("AF429", "Too many requests. Method=GetBlob, PublisherId=0"), {})
    assert verdict.decision is Decision.RETRY_THROTTLED
    assert isinstance(verdict.error, ThrottledError)
    assert isinstance(verdict.error, RetryableError)


@pytest.mark.parametrize("body", [b"", b"Too Many Requests", b"{}", _body("AF20020")])
def test_http_429_is_throttling_whatever_the_body(body: bytes) -> None:
    verdict = classify(429, body, {})
    assert verdict.decision is Decision.RETRY_THROTTLED
    assert isinstance(verdict.error, ThrottledError)


@pytest.mark.parametrize(
    ("status", "body", "decision", "error_class"),
    [
        (500, b"", Decision.RETRY, RetryableError),
        (502, b"<html><body>Bad Gateway</body></html>", Decision.RETRY, RetryableError),
        (503, b"\xff\xfe not utf-8", Decision.RETRY, RetryableError),
        (500, _body("AF99999"), Decision.RETRY, RetryableError),
        (504, b"[1, 2]", Decision.RETRY, RetryableError),
        (400, _body("AF99999"), Decision.FAIL, PermanentApiError),
        (400, b"not json at all", Decision.FAIL, PermanentApiError),
        (401, b"", Decision.FAIL, PermanentApiError),
        (403, b"", Decision.FAIL, PermanentApiError),
        (404, b"null", Decision.FAIL, PermanentApiError),
        (400, b'{"error": "a string"}', Decision.FAIL, PermanentApiError),
        (400, b'{"error": {"code": 123, "message": ["x"]}}', Decision.FAIL, PermanentApiError),
        (408, b"", Decision.RETRY, RetryableError),
        # Seen in 2019 when both times were omitted: a .NET exception text in the code field.
        (
            400,
            b'{"error":{"code":"String reference not set to an instance of a String.\\r\\nParameter name",'
            b'"message":"s"}}',
            Decision.FAIL,
            PermanentApiError,
        ),
        # Without the "error" envelope.
        (
            403,
            b'{"code": "AF429", "message": "Too many requests."}',
            Decision.RETRY_THROTTLED,
            ThrottledError,
        ),
        (400, b'{"code": "AF20051", "message": "expired"}', Decision.EXPIRED, ContentExpiredError),
    ],
)
def test_odd_bodies(status: int, body: bytes, decision: Decision, error_class: type[ApiError]) -> None:
    verdict = classify(status, body, {})
    assert verdict.decision is decision
    assert type(verdict.error) is error_class
    assert verdict.error.status == status
    assert str(verdict.error)  # always some message


def test_message_falls_back_to_a_bounded_body_snippet() -> None:
    verdict = classify(502, b"x" * 10_000, {})
    assert len(str(verdict.error)) < 400
    assert "HTTP 502" in str(verdict.error)
    assert "empty body" in str(classify(500, b"", {}).error)


@pytest.mark.parametrize("name", ["Retry-After", "retry-after", "RETRY-AFTER"])
def test_retry_after_is_kept_on_the_error(name: str) -> None:
    verdict = classify(429, b"", {name: "7"})
    assert retry_after_of(verdict.error) == "7"
    assert retry_after_of(classify(429, b"", {}).error) is None
