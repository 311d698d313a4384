"""The two ADX management commands that make a table fill itself from another: the stored function
that computes its rows, and the transactional update policy that runs it on every ingestion into
the source table. The Entra raw table and the staging table both fan out this way."""

from __future__ import annotations

FOLDER = "AuditLake"
"""Where the functions appear in the database's function list."""


def create_function(name: str, body: str, doc: str) -> str:
    """``.create-or-alter function`` of *name*() with *body*; *doc* must not contain a double quote."""
    return f'.create-or-alter function with (folder="{FOLDER}", docstring="{doc}") {name}() {{\n{body}\n}}'


def transactional_update_policy(table: str, source: str, function: str) -> str:
    """*table*'s update policy: *function*() over each ingestion into *source*. Transactional, so a
    row the function fails on fails that ingestion as a whole (reported, retried), never half of it."""
    policy = (f'[{{"IsEnabled": true, "Source": "{source}", "Query": "{function}()", '
              f'"IsTransactional": true, "PropagateIngestionProperties": false}}]')
    return f".alter table {table} policy update @'{policy}'"
