"""Audit records: reading content blobs, flattening and normalising them into ``AuditRecord`` rows,
the derived tables and the schema observations (``flatten_tables`` builds them all in one pass)."""

from function_app.records.flatten import BlobContext, flatten_blob, flatten_record, record_key
from function_app.records.reader import read_records
from function_app.records.tables import flatten_tables

__all__ = ["BlobContext", "flatten_blob", "flatten_record", "flatten_tables", "read_records", "record_key"]
