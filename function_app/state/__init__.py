"""Checkpoint and ledger stores: Azure Table Storage, and local (in the DuckDB lake)."""
