"""Exceptions the API adapters raise and the core understands.

The core decides what to do with a blob from the exception's class alone, so it never
needs to know about HTTP or AF codes; ``o365/errors.py`` maps every code to one of these.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer of the Management Activity API, after the retry policy gave up."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    def __str__(self) -> str:
        parts = [p for p in (f"HTTP {self.status}" if self.status else None, self.code) if p]
        prefix = " ".join(parts)
        return f"{prefix}: {self.args[0]}" if prefix else str(self.args[0])


class RetryableError(ApiError):
    """Throttling (AF429, HTTP 429), 5xx, AF50000, timeouts: retried with backoff first."""


class ThrottledError(RetryableError):
    """HTTP 429, or HTTP 403 with AF429."""


class SubscriptionMissingError(ApiError):
    """AF20022 (no subscription) or AF20023 (disabled): start the subscription, then retry."""


class ContentExpiredError(ApiError):
    """AF20051: older than 7 days; the ledger row becomes ``expired`` and an alert is raised."""


class ContentNotFoundError(ApiError):
    """AF20050 / AF20052: the blob does not exist or its id is invalid."""


class PermanentApiError(ApiError):
    """Anything a retry cannot fix: permissions, bad tenant, invalid parameters."""


class MalformedContentError(Exception):
    """A blob body that is not a JSON array of objects (cut off, corrupt, wrong shape).

    ``body`` holds the raw bytes received, when there are any worth keeping, so the
    Azure side can store them in the dead-letter container for a later replay.
    ``salvaged`` holds the records read before the body broke off (a cut-off array), which
    are written although the blob as a whole is settled ``failed``.
    """

    def __init__(
        self, message: str, *, body: bytes | bytearray | None = None, salvaged: list[Any] | None = None
    ) -> None:
        super().__init__(message)
        self.body = body
        self.salvaged = salvaged or []


class MemoryWaitError(Exception):
    """A blob waited longer than its path allows for the memory its body needs (behind larger
    blobs): nothing was read, and the delivery is handed back to be tried again later."""


class UntrustedMessageError(Exception):
    """A queue message or content URI that fails validation; it is dead-lettered, never fetched.

    ``field`` names the message field at fault, when one is.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StoreUnavailableError(Exception):
    """The sink or the state store itself can take no more work (its disk is full, its file is
    broken): raised by the adapter for every operation from then on, it stops the pass."""


class CheckpointConflictError(Exception):
    """Another writer created or moved the checkpoint since it was read (another instance owns
    this pass; what this one enqueued is de-duplicated by the ledger)."""

    def __init__(self, tenant_id: str, content_type: str) -> None:
        super().__init__(f"checkpoint of tenant {tenant_id} content type {content_type} was moved by another writer")
        self.tenant_id = tenant_id
        self.content_type = content_type
