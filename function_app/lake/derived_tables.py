"""The derived tables ADX builds itself from AuditRecord rows, each from one KQL body.

MailItemAccess and SignIn are functions of an audit record's AuditRecord row alone (its
normalised columns, ``Properties`` and the raw record in ``AuditData``), so the collector does not
build them for ADX: a transactional update policy over each staging ingestion into ``AuditIngest``
runs the table's body (``function_app.lake.staging``), and ADX, not the collector's per-record
Python, does the work. Each body reads ``AuditIngest`` with AuditRecord's columns and yields
exactly its table's columns, in order.

The local lake keeps building these rows with the Python builders (``function_app.records.derived``),
because DuckDB runs this KQL far slower than Python builds the rows: duckdb-kql reads a dynamic value
as JSON text again at every access and its SQL takes ~70 ms to bind per statement. Measured on this
machine: simplified bodies run after each commit took the lake thread 39 s of an 89 s 7-day backfill
(~110 µs per record; the end-to-end rate fell from ~6,200 to ~4,000 records/s); the exact bodies, over
10,000 sample-like records, SignIn 84-105 ms against 7-11 ms for its builder, MailItemAccess 0.45 s.
So there are two definitions, and the tests hold them in lock-step on the same records: every
sample record, the builders' own test records and hostile shapes (``tests/unit/records/
test_derive_<table>.py``), and the fake ADX running the rendered policies against the builders'
rows (``tests/adapters/test_adx_staging.py``).

DirectoryChange stays the collector's on both paths: its rules (license and plan items, objects
compared as sorted-key JSON, a name repeated in one record) have no exact KQL form that duckdb-kql
also runs; a port differed on 3 of the 12 rows the samples give.
"""

from __future__ import annotations

from function_app.lake import derived_mail_item_access, derived_sign_in

BODIES: dict[str, str] = {module.TABLE: module.BODY for module in (derived_mail_item_access, derived_sign_in)}
"""Derived table ADX builds -> the KQL body that builds its rows from ``AuditIngest``."""

ENGINE_DERIVED: tuple[str, ...] = tuple(BODIES)
"""The tables ADX derives, in the order their policies are rendered."""
