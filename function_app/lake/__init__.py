"""The table schema (single source) and the ADX sink (the DuckDB lake is ``auditlake.lake``)."""
