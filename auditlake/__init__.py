"""The AuditLake local tool: the ``auditlake`` CLI, the Management Activity API emulator, the
DuckDB lake and the state kept in it.

It depends on ``function_app`` (what Azure runs: triggers, core, sources, records, the ADX sink,
Table state); ``function_app`` never imports it, and it is not deployed (``.funcignore``).
"""
