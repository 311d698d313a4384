"""An ``auditLogRecord`` of the Purview audit search as the unified audit record the feed serves (pure).

The search wraps each record: ``id``, ``createdDateTime``, ``auditLogRecordType``, ``operation``,
``service``, ``userPrincipalName``, ``clientIp`` and ``auditData``, the record itself. The rows are
built from ``auditData``, so a record has the same ``AuditRecord`` key (``Id``, ``RecordType``,
``Operation``) whichever source delivered it, and the sink's key de-duplicates the two.

Whether the search's ``id`` is the unified audit log ``Id`` is not documented, so it is never
relied on: ``auditData.Id`` is the key, and ``id`` is only compared with it (``IdCheck``). Only a
record without a usable ``auditData`` is rebuilt from the envelope, with ``id`` as its ``Id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from function_app.records.enums import RECORD_TYPE_NAMES

_RECORD_TYPE_BY_NAME = {name.lower().replace(" ", ""): value for value, name in RECORD_TYPE_NAMES.items()}

# Envelope fields → the unified record's, for a record whose auditData is missing.
_ENVELOPE = (
    ("createdDateTime", "CreationTime"),
    ("operation", "Operation"),
    ("userPrincipalName", "UserId"),
    ("clientIp", "ClientIP"),
    ("service", "Workload"),
)


@dataclass(slots=True)
class IdCheck:
    """How the search's ``id`` compared with ``auditData.Id`` over the records seen."""

    same: int = 0
    different: int = 0
    envelope_only: int = 0
    example: tuple[str, str] | None = None

    def add(self, other: IdCheck) -> None:
        self.same += other.same
        self.different += other.different
        self.envelope_only += other.envelope_only
        self.example = self.example or other.example

    def describe(self) -> str:
        text = f"id equals auditData.Id for {self.same}, differs for {self.different}"
        if self.example is not None:
            text += f" (e.g. id {self.example[0]!r} vs Id {self.example[1]!r})"
        if self.envelope_only:
            text += f"; {self.envelope_only} without auditData (keyed on id)"
        return text


def record_type_number(value: Any) -> Any:
    """``auditLogRecordType`` as the feed's number: a name of the published enum (any case), a
    number, or the value as it came when it is neither (the flattener flags it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        return _RECORD_TYPE_BY_NAME.get(text.lower().replace(" ", ""), value)
    return value


def unified_record(item: Mapping[str, Any], check: IdCheck | None = None) -> Any:
    """The unified audit record an ``auditLogRecord`` carries (see the module docstring)."""
    data = item.get("auditData")
    search_id = item.get("id")
    if isinstance(data, Mapping) and any(not str(k).startswith("@odata.") for k in data):
        # Graph types the object ("@odata.type": "#microsoft.graph.security.defaultAuditData");
        # that annotation is Graph's, not the record's, and would make the two copies differ.
        record = {k: v for k, v in data.items() if not str(k).startswith("@odata.")}
        if check is not None:
            own = record.get("Id")
            if own is not None and search_id is not None:
                if str(own) == str(search_id):
                    check.same += 1
                else:
                    check.different += 1
                    check.example = check.example or (str(search_id), str(own))
        return record
    if check is not None:
        check.envelope_only += 1
    record = {"Id": search_id, "RecordType": record_type_number(item.get("auditLogRecordType"))}
    for source, target in _ENVELOPE:
        if item.get(source) is not None:
            record[target] = item[source]
    return record
