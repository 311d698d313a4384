"""The local lake: a DuckDB file holding every table, the KQL function library made callable on it,
and the run summaries read from it."""
