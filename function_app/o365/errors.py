"""The one table of Management Activity API error codes: response in, decision out.

Every AF code the API documents (plus AF20024, seen in the wild) maps to a decision and to
the exception class from ``core.errors`` the core acts on. ``classify`` is pure: it reads a
status, a body and headers and says what to do; it never sends anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from function_app.core.errors import (
    ApiError,
    ContentExpiredError,
    ContentNotFoundError,
    MalformedContentError,
    PermanentApiError,
    RetryableError,
    SubscriptionMissingError,
    ThrottledError,
)


class Decision(StrEnum):
    """What the caller does with an error answer."""

    RETRY_THROTTLED = "retry_throttled"
    RETRY = "retry"
    START_SUBSCRIPTION = "start_subscription"
    ALREADY_ENABLED = "already_enabled"
    EXPIRED = "expired"
    NOT_FOUND = "not_found"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Rule:
    """How one AF code is handled."""

    decision: Decision
    error: type[ApiError]


_FAIL = Rule(Decision.FAIL, PermanentApiError)

# The API's own messages are quoted verbatim ({n} are its placeholders).
AF_CODES: Mapping[str, Rule] = {
    # The permission set ({0}) sent in the request did not include the expected permission ActivityFeed.Read.
    "AF10001": _FAIL,
    # Missing parameter: {0}.
    "AF20001": _FAIL,
    # Invalid parameter type: {0}. Expected type: {1}
    "AF20002": _FAIL,
    # Expiration {0} provided is set to past date and time.
    "AF20003": _FAIL,
    # The tenant ID passed in the URL ({0}) does not match the tenant ID passed in the access token ({1}).
    "AF20010": _FAIL,
    # Specified tenant ID ({0}) does not exist in the system or has been deleted.
    "AF20011": _FAIL,
    # Specified tenant ID ({0}) is incorrectly configured in the system.
    "AF20012": _FAIL,
    # The tenant ID passed in the URL ({0}) is not a valid GUID.
    "AF20013": _FAIL,
    # The specified content type is not valid.
    "AF20020": _FAIL,
    # The webhook endpoint {{0}) could not be validated. {1}
    "AF20021": _FAIL,
    # No subscription found for the specified content type.
    "AF20022": Rule(Decision.START_SUBSCRIPTION, SubscriptionMissingError),
    # The subscription was disabled by {0}.  (real answers: "The subscription was disabled.", HTTP 400)
    "AF20023": Rule(Decision.START_SUBSCRIPTION, SubscriptionMissingError),
    # The subscription is already enabled. No property change.  (undocumented; HTTP 400 on a repeated start)
    "AF20024": Rule(Decision.ALREADY_ENABLED, PermanentApiError),
    # Start time and end time must both be specified (or both omitted) and must be less than or equal to
    # 24 hours apart, with the start time no more than 7 days in the past.
    "AF20030": _FAIL,
    # Invalid nextPage Input: {0}.
    "AF20031": _FAIL,
    # The specified content ({0}) does not exist.
    "AF20050": Rule(Decision.NOT_FOUND, ContentNotFoundError),
    # Content requested with the key {0} has already expired. Content older than 7 days cannot be retrieved.
    "AF20051": Rule(Decision.EXPIRED, ContentExpiredError),
    # Content ID {0} in the URL is invalid.
    "AF20052": Rule(Decision.NOT_FOUND, ContentNotFoundError),
    # Only one language may be present in the Accept-Language header.
    "AF20053": _FAIL,
    # Invalid syntax in Accept-Language header.
    "AF20054": _FAIL,
    # Start time and end time must both be specified (or both omitted) and must be less than or equal to
    # 24 hours apart, with the start time prior to end time and start time no more than 7 days in the past.
    "AF20055": _FAIL,
    # Too many requests. Method={0}, PublisherId={1}  (arrives as HTTP 403, not 429)
    "AF429": Rule(Decision.RETRY_THROTTLED, ThrottledError),
    # An internal error occurred. Retry the request.
    "AF50000": Rule(Decision.RETRY, RetryableError),
}

_THROTTLED = Rule(Decision.RETRY_THROTTLED, ThrottledError)
_RETRY = Rule(Decision.RETRY, RetryableError)
# 408 is the one 4xx that says "try again"; everything else in 4xx without a known code is permanent.
_RETRYABLE_STATUSES = frozenset({408})
_MAX_MESSAGE = 300


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one error answer and the exception that carries it."""

    decision: Decision
    error: ApiError


class IncompleteContentError(MalformedContentError):
    """A blob body that arrived cut off: possibly a transport fault, so re-fetched.

    It is still a MalformedContentError, so once the retry policy stops re-fetching the core
    treats it like any other malformed blob.
    """


class BodyCutOffError(IncompleteContentError):
    """A body that arrived whole by HTTP's account but whose array never closes (or is not JSON).

    Re-fetched a few times within one delivery like any incomplete body; when every fetch
    gives the same, the client reports it as a permanent MalformedContentError with the
    records before the cut salvaged, so it is settled once instead of redelivered.
    """


def classify(status: int, body: bytes, headers: Mapping[str, str]) -> Verdict:
    """Decide what an error answer (status >= 400) means.

    HTTP 429, and any answer with AF429, is throttling; 5xx without a known code is retried;
    a known AF code follows the table; an unknown code or a body that is not JSON is permanent
    on 4xx. A ``Retry-After`` header is kept on the exception (see ``retry_after_of``).
    """
    code, message = _error_of(body)
    rule = AF_CODES.get(code) if code else None
    if status == 429 or code == "AF429":
        rule = _THROTTLED
    elif rule is None:
        rule = _RETRY if status >= 500 or status in _RETRYABLE_STATUSES else _FAIL
    if not message:
        message = _snippet(body) or f"HTTP {status} with an empty body"
    error = rule.error(message, code=code, status=status)
    raw_retry_after = _header(headers, "Retry-After")
    if raw_retry_after is not None:
        attach_retry_after(error, raw_retry_after)
    return Verdict(rule.decision, error)


def attach_retry_after(error: BaseException, raw: str) -> None:
    """Remember the raw ``Retry-After`` value an answer carried on *error*."""
    # core.errors has no field for it; an attribute keeps the core free of HTTP details.
    setattr(error, "_auditlake_retry_after", raw)  # noqa: B010


def retry_after_of(error: BaseException | None) -> str | None:
    """The raw ``Retry-After`` value attached to *error*, if any."""
    value = getattr(error, "_auditlake_retry_after", None)
    return value if isinstance(value, str) else None


def _error_of(body: bytes) -> tuple[str | None, str]:
    """Pull ``error.code`` / ``error.message`` out of a body; tolerate anything else."""
    if not body.strip():
        return None, ""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        # Some gateways answer {"code": ..., "message": ...} without the envelope.
        error = parsed if isinstance(parsed, dict) else {}
    code = error.get("code")
    message = error.get("message")
    code_text = code.strip() if isinstance(code, str) and code.strip() else None
    message_text = message.strip()[:_MAX_MESSAGE] if isinstance(message, str) else ""
    return code_text, message_text


def _snippet(body: bytes) -> str:
    return body[:_MAX_MESSAGE].decode("utf-8", errors="replace").strip()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # A plain dict is case-sensitive; aiohttp's CIMultiDictProxy already was not.
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None
