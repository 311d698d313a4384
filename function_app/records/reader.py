"""Read the records of a content blob (a JSON array) or of JSON lines (one record per line)."""

from __future__ import annotations

from typing import Any

import orjson

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"


def read_records(data: bytes) -> list[Any]:
    """Return the records in ``data``, in order.

    Accepts a JSON array (what the Management Activity API returns for a content blob), a single
    JSON object, or JSON lines (blank lines ignored); a UTF-8 byte-order mark is skipped. Empty
    input yields ``[]``. Raises ``ValueError`` naming the line and column (and, for JSON lines,
    the line number of the record) when the input is none of these.
    """
    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    body = body.lstrip(_WHITESPACE)
    if not body:
        return []
    if body[:1] == b"[":
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"content blob is not a valid JSON array: {_where(data, body, exc)}") from None
        if type(parsed) is not list:  # pragma: no cover - a document starting with "[" is a list
            raise ValueError("content blob is not a JSON array")
        return parsed
    if body[:1] == b"{":
        # A single pretty-printed record spans lines; a JSON lines file fails this at line 1's end.
        try:
            return [orjson.loads(body)]
        except orjson.JSONDecodeError:
            pass
    return _read_json_lines(data)


def _read_json_lines(data: bytes) -> list[Any]:
    records: list[Any] = []
    loads = orjson.loads
    for number, line in enumerate(data.split(b"\n"), start=1):
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        if not line.strip(_WHITESPACE):
            continue
        try:
            records.append(loads(line))
        except orjson.JSONDecodeError as exc:
            raise ValueError(
                f"line {number} is not valid JSON: {exc.msg} at column {exc.colno}"
                f" (input is neither a JSON array nor JSON lines)"
            ) from None
    return records


def _where(data: bytes, body: bytes, exc: orjson.JSONDecodeError) -> str:
    """Position of a parse error in the caller's input: line, column and byte offset."""
    offset = len(data) - len(body) + exc.pos
    line = data.count(b"\n", 0, offset) + 1
    column = offset - data.rfind(b"\n", 0, offset)
    return f"{exc.msg} at line {line} column {column} (offset {offset})"
