"""The table schema (single source) and the sinks that write it."""
