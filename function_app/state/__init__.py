"""Checkpoint and ledger stores in Azure Table Storage (the local lake's store is ``auditlake.state``)."""
