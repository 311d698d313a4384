"""Audit records: reading content blobs, flattening and normalising them into ``AuditRecord`` rows."""

from function_app.records.flatten import BlobContext, flatten_blob, flatten_record, record_key
from function_app.records.reader import read_records

__all__ = ["BlobContext", "flatten_blob", "flatten_record", "read_records", "record_key"]
