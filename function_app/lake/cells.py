"""Cells that can always be written: the per-record isolation both sinks share.

A record is chosen by whoever wrote the audited thing (an inbox-rule name, a file name), so
a value may be one the fast serialiser refuses: nested deeper than orjson writes (254
levels), a string holding a lone UTF-16 surrogate, an integer past 64 bits. Serialising a
table's rows must never fail because of one such value, or the whole blob's rows are lost
with it. So each sink serialises on the fast path and, only when that raises, rebuilds the
offending row cell by cell: a cell that still cannot be written is replaced by its bounded
text (stdlib ``json``, ASCII-escaped, which writes anything Python holds) and the row's
``Quality`` says which column and why. The row and its neighbours are kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from function_app.lake.schema import Kind, Table

QUALITY_COLUMN = "Quality"
MAX_FALLBACK_CHARS = 8 * 1024 * 1024
"""A cell replaced by its text keeps at most this many characters (flagged when cut)."""

Dumps = Callable[[Any], bytes]


def unserialisable_reason(exc: BaseException) -> str:
    """A short stable name for why orjson refused a value."""
    text = str(exc)
    if "Recursion limit" in text or isinstance(exc, RecursionError):
        return "too-deep"
    if "surrogates" in text or "UTF-8" in text:
        return "invalid-text"
    if "64-bit" in text:
        return "integer-out-of-range"
    if "not JSON serializable" in text:
        return "unsupported-type"
    return "unserialisable"


def fallback_text(value: Any) -> tuple[str, bool]:
    """*value* as JSON text any writer accepts (ASCII, lone surrogates escaped), cut to
    ``MAX_FALLBACK_CHARS``; returns the text and whether it was cut. Never raises."""
    try:
        text = json.dumps(value, ensure_ascii=True, default=repr, allow_nan=True)
    except (RecursionError, TypeError, ValueError):
        try:
            text = ascii(value)
        except Exception:  # a hostile __repr__ must not cost us the row
            text = f"<unrepresentable {type(value).__name__}>"
    if len(text) > MAX_FALLBACK_CHARS:
        return text[:MAX_FALLBACK_CHARS], True
    return text, False


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """*value* with anything UTF-8 cannot carry (lone surrogates, which is also how bytes that
    were not UTF-8 arrive when decoded with ``surrogateescape``) replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", value)


def repaired_row(table: Table, row: Mapping[str, Any], dumps: Dumps) -> dict[str, Any]:
    """A copy of *row* in which every cell *dumps* accepts: dynamic cells it refuses become their
    bounded text, string cells lose what UTF-8 cannot carry, and each replacement is flagged in
    the row's ``Quality`` (when the table has one) as ``<Column>:unserialisable:<reason>``."""
    out = dict(row)
    flags: list[str] = []
    for column in table.columns:
        value = out.get(column.name)
        if value is None or column.name == QUALITY_COLUMN:
            continue
        try:
            # One level down, as the cell sits inside its row: a value orjson writes alone at its
            # depth limit fails once it is nested in the row's object.
            dumps([value])
            continue
        except (TypeError, ValueError, RecursionError) as exc:
            reason = unserialisable_reason(exc)
        if column.kind is Kind.STRING and isinstance(value, str):
            out[column.name] = clean_text(value)
        else:
            text, cut = fallback_text(value)
            out[column.name] = text
            if cut:
                reason += f";cut-to-{MAX_FALLBACK_CHARS}-chars"
        flags.append(f"{column.name}:unserialisable:{reason}")
    if flags and QUALITY_COLUMN in table.column_names:
        quality = out.get(QUALITY_COLUMN)
        out[QUALITY_COLUMN] = [*(quality if isinstance(quality, list) else []), *flags]
        try:
            dumps([out[QUALITY_COLUMN]])
        except (TypeError, ValueError, RecursionError):
            out[QUALITY_COLUMN] = [fallback_text(quality)[0], *flags]
    return out
