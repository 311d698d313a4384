"""Checkpoint and ledger stores kept in the local lake."""
