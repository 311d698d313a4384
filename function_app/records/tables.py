"""Every table built from the records of one blob: ``AuditRecord``, the derived tables, ``SchemaObservation``.

One pass over the records: each is flattened once, and the derived builders and the schema
observer read that row. A record that cannot be flattened still yields its ``AuditRecord`` row
(``flatten_record`` guarantees it); the derived tables simply get no row from it. A bug in a
derived builder costs that record its derived rows, logged, never the blob.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from itertools import repeat
from typing import Any

import orjson

from function_app.lake.schema import RECORD_TABLES
from function_app.records.derived import (
    DIRECTORY_RECORD_TYPE,
    MAIL_ITEMS_ACCESSED,
    SIGN_IN_OPERATIONS,
    SIGN_IN_RECORD_TYPES,
    build_directory_change,
    build_mail_item_access,
    build_sign_in,
)
from function_app.records.flatten import BlobContext, flatten_record
from function_app.records.reader import DeliveredRecords, RecoveredRecord
from function_app.records.schema_observation import SchemaObserver

log = logging.getLogger(__name__)


def flatten_tables(
    records: Iterable[Any], ctx: BlobContext, tables: Collection[str] = RECORD_TABLES, *,
    observer: SchemaObserver | None = None, delivered_text: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """The rows of each table in *tables* (default: all of ``RECORD_TABLES``) for *records*.

    ``AuditRecord`` has one row per record, in order; its ``AuditData`` is the record's delivered
    text when *records* carry it (``reader.DeliveredRecords``) and *delivered_text* is true, else
    the record itself. Every returned table is present, possibly empty. Never raises on record
    content. Raises ValueError for a name not in ``RECORD_TABLES``.

    With *observer*, the records are observed into it and ``SchemaObservation`` is left to its
    owner (not in the result): ``compose.build_rows`` hands the observer on, so a writer can fold
    the observers of many blobs before making rows.
    """
    unknown = set(tables) - set(RECORD_TABLES)
    if unknown:
        raise ValueError(f"not built from records: {', '.join(sorted(unknown))}")
    audit: list[dict[str, Any]] = []
    mail: list[dict[str, Any]] = []
    directory: list[dict[str, Any]] = []
    sign_in: list[dict[str, Any]] = []
    want_mail = "MailItemAccess" in tables
    want_directory = "DirectoryChange" in tables
    want_sign_in = "SignIn" in tables
    owned = observer is None
    if observer is None and "SchemaObservation" in tables:
        observer = SchemaObserver(ctx.ingested_at)
    # A body read whole comes with each record's delivered text (``reader.DeliveredRecords``):
    # that text is the record's AuditData, so the sinks write it as it came instead of
    # serialising the parsed record again.
    delivered = records.texts() if delivered_text and type(records) is DeliveredRecords else None
    texts: Iterable[orjson.Fragment | None] = repeat(None) if delivered is None else delivered
    for record, text in zip(records, texts, strict=False):  # repeat() has no end
        row = flatten_record(record, ctx)
        if text is not None:
            row["AuditData"] = text
        audit.append(row)
        if type(record) is RecoveredRecord:
            # The derived tables and the observer read what the lenient parser made of it.
            record = record.value
            if record is None:
                continue
        # The checks repeat the builders' own so the common record costs no call at all.
        record_type, operation = row["RecordType"], row["Operation"]
        if record_type == DIRECTORY_RECORD_TYPE:
            if want_directory:
                _derive(build_directory_change, record, row, directory)
        elif record_type in SIGN_IN_RECORD_TYPES or operation in SIGN_IN_OPERATIONS:
            if want_sign_in:
                _derive(build_sign_in, record, row, sign_in)
        elif operation == MAIL_ITEMS_ACCESSED and want_mail:
            _derive(build_mail_item_access, record, row, mail)
        if observer is not None:
            try:
                observer.add(record, row)
            except Exception:  # a bug here must not cost the blob its rows
                log.exception("schema observation failed record_id=%s", row["Id"])
    out: dict[str, list[dict[str, Any]]] = {
        "AuditRecord": audit,
        "MailItemAccess": mail,
        "DirectoryChange": directory,
        "SignIn": sign_in,
        "SchemaObservation": observer.rows() if observer is not None and owned else [],
    }
    return {name: out[name] for name in RECORD_TABLES if name in tables and (owned or name != "SchemaObservation")}


Builder = Callable[[Any, dict[str, Any]], list[dict[str, Any]]]


def _derive(builder: Builder, record: Any, row: dict[str, Any], into: list[dict[str, Any]]) -> None:
    try:
        into.extend(builder(record, row))
    except Exception:
        log.exception("derived rows failed builder=%s record_id=%s", builder.__name__, row["Id"])
