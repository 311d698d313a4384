"""AuditLake: Microsoft 365 unified audit logs, collected once and kept for years."""
