"""The health checks of the collection, as `auditlake health` reads them.

The checks themselves are KQL, the stored function ``HealthChecks`` (auditlake/kql/functions/
HealthChecks.kql): the Azure Monitor alert rules call it in ADX, and this module calls the same
function on whatever answers KQL, the local lake or a Kusto endpoint. So it builds the query and
reads the rows; it never opens a connection. What each check means: docs/health.md.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CHECKS: tuple[str, ...] = (
    "LogFlowGap", "BlobExpired", "BlobFailed", "BlobNearExpiry", "AuditTampering", "CollectorRunFailing",
)
"""Every Check HealthChecks reports, in the order docs/health.md explains them."""

COLUMNS: tuple[str, ...] = ("Check", "Severity", "TenantId", "ContentType", "Subject", "Detail", "Since")
"""HealthChecks' output columns: a contract with the alert rules."""


@dataclass(frozen=True)
class HealthThresholds:
    """The arguments of HealthChecks, with its defaults (the alert rules' defaults too)."""

    gap_hours: float = 6
    near_expiry_hours: float = 24
    failed_runs: int = 3
    lookback_hours: float = 24

    def __post_init__(self) -> None:
        for name in ("gap_hours", "near_expiry_hours", "lookback_hours"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of hours, not {value!r}")
        if not isinstance(self.failed_runs, int) or self.failed_runs < 1:
            raise ValueError(f"failed_runs must be a whole number of at least 1, not {self.failed_runs!r}")


def _real(value: float) -> str:
    # A KQL real literal: a decimal point always (`6` would be a long), never an exponent.
    text = f"{float(value):.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _timespan(hours: float) -> str:
    if float(hours).is_integer():
        return f"{int(hours)}h"
    return f"{max(1, round(hours * 3600))}s"


def health_query(t: HealthThresholds) -> str:
    """The KQL that runs HealthChecks with *t*. Arguments go by position: duckdb-kql takes no
    ``name = value`` arguments, and ADX reads positions the same way."""
    return (f"HealthChecks({_real(t.gap_hours)}, {_real(t.near_expiry_hours)}, {int(t.failed_runs)}, "
            f"{_timespan(t.lookback_hours)})")


@dataclass(frozen=True)
class Finding:
    """One row of HealthChecks: one thing wrong."""

    check: str
    severity: str
    tenant_id: str
    content_type: str
    subject: str
    detail: str
    since: datetime | None
    """When it started, in UTC (the query engines give naive UTC; it is made aware here)."""

    @property
    def is_error(self) -> bool:
        # A severity this code does not know is counted as an error: health must fail safe.
        return self.severity != "warning"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _since(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise ValueError(f"Since must be a datetime, not {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def findings(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[Finding]:
    """The findings in a HealthChecks result (columns found by name, in any order).

    Raises ValueError when a column of the contract is missing: an older HealthChecks, or a
    query that is not HealthChecks at all, must not read as "healthy".
    """
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"not a HealthChecks result: no column {', '.join(missing)} (columns: {', '.join(columns)})")
    at = {name: list(columns).index(name) for name in COLUMNS}
    return [
        Finding(check=_text(row[at["Check"]]), severity=_text(row[at["Severity"]]),
                tenant_id=_text(row[at["TenantId"]]), content_type=_text(row[at["ContentType"]]),
                subject=_text(row[at["Subject"]]), detail=_text(row[at["Detail"]]), since=_since(row[at["Since"]]))
        for row in rows
    ]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def verdict_line(found: Sequence[Finding]) -> str:
    """One line: ``healthy: 6 checks passed``, or ``unhealthy: 2 errors, 1 warning (BlobExpired 1, ...)``."""
    if not found:
        return f"healthy: {len(CHECKS)} checks passed"
    errors = sum(1 for f in found if f.is_error)
    warnings = len(found) - errors
    counts = [_plural(errors, "error")] if errors else []
    if warnings:
        counts.append(_plural(warnings, "warning"))
    per_check = Counter(f.check for f in found)
    return f"unhealthy: {', '.join(counts)} ({', '.join(f'{c} {n}' for c, n in sorted(per_check.items()))})"
