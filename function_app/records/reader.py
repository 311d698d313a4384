"""Read the records of a content blob (a JSON array) or of JSON lines (one record per line).

Attackers choose much of what a record holds, so one bad token must never cost its neighbours.
``parse_content`` reads a body with the fast strict parser (orjson) and, only when that fails,
falls back to reading the array element by element with a lenient parser:

* a record the strict parser refuses but the lenient one reads (a lone UTF-16 surrogate
  escape, ``NaN``/``Infinity``, ``1e400``, bytes that are not UTF-8) is kept as a
  ``RecoveredRecord`` holding the value with those parts made safe (surrogates and bad bytes
  as U+FFFD, non-finite numbers as their text), and the reason;
* an element that no parser reads is kept as a ``RecoveredRecord`` with its raw text (bounded)
  and no value; the scan resumes at the next element;
* a body whose array never closes (cut off) says so (``complete`` is False) and still returns
  every element before the cut.

The flattener turns a ``RecoveredRecord`` into a row flagged in ``Quality`` (see
``records.flatten``), so the hostile record is present and its neighbours are untouched.

The records of a body the strict parser reads whole come as ``DeliveredRecords``, which split the
body into each record's delivered text when asked (``texts``): the local lake keeps that text as
the record's ``AuditData``, the record exactly as the service wrote it, and does not serialise the
parsed record again (the largest JSON column to write: ~2.4 µs a record of the ~6 for all of
``AuditRecord``'s Arrow, measured on the emulator's records; the split costs ~1.4).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from function_app.lake.cells import clean_text

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"
_TEXT_WHITESPACE = " \t\r\n"
MAX_RAW_CHARS = 1024 * 1024
"""An unreadable element keeps at most this much of its raw text in the lake."""


@dataclass(frozen=True, slots=True)
class RecoveredRecord:
    """A record the strict parser refused.

    ``value`` is what the lenient parser read, made safe to store (None when nothing could be
    read); ``raw`` is the element's text as delivered, cut to ``MAX_RAW_CHARS`` (``raw_chars``
    is its full length); ``reason`` is a short stable name, ``detail`` the parser's words.
    """

    value: Any
    raw: str
    reason: str
    detail: str
    raw_chars: int

    @property
    def readable(self) -> bool:
        return self.value is not None


TEXT_NESTING_LIMIT = 250
"""A record's delivered text stands for it only when it opens fewer objects and arrays than this:
orjson writes 254 levels, and a record nested deeper than that (an attacker's folder name can be
``[[[[...]]]]``) must reach the sinks as a value, which they store as bounded text, flagged
(``lake.cells``), as before. Counting the brackets is a bound on the depth, read at C speed."""
_split_elements = msgspec.json.Decoder(list[msgspec.Raw]).decode
_Fragment = orjson.Fragment


class DeliveredRecords(list[Any]):
    """The parsed records of a body read whole, which can also give each one's delivered JSON text
    (``texts``). A list, so everything that reads records reads these unchanged; the body is
    split only when a reader asks for the texts (the ADX path does not)."""

    __slots__ = ("_body",)

    def __init__(self, records: list[Any], body: bytes | bytearray) -> None:
        super().__init__(records)
        self._body: bytes | bytearray | None = body

    def texts(self) -> list[orjson.Fragment | None] | None:
        """Each record's delivered text as an ``orjson.Fragment``, in order (None for a record
        nested too deep to stand as text, see ``TEXT_NESTING_LIMIT``); None when the body does not
        split into as many elements (it always should). The body is let go once split."""
        body, self._body = self._body, None
        if body is None:
            return None
        try:
            elements = _split_elements(body)
        except (msgspec.DecodeError, RecursionError):
            return None
        if len(elements) != len(self):
            return None
        texts: list[orjson.Fragment | None] = []
        add = texts.append
        for element in elements:
            text = bytes(element)
            add(_Fragment(text) if text.count(b"[") + text.count(b"{") < TEXT_NESTING_LIMIT else None)
        return texts


@dataclass(frozen=True, slots=True)
class ParsedContent:
    """The records of one body, in order; ``complete`` is False when the array was cut off.

    ``recovered`` counts the records kept as ``RecoveredRecord``; ``problem`` describes the
    first thing the strict parser refused (None when it read the body as it is).
    """

    records: list[Any]
    complete: bool = True
    recovered: int = 0
    problem: str | None = None
    not_an_array: str | None = field(default=None)


def parse_content(body: bytes | bytearray) -> ParsedContent:
    """The records of a content blob body, as well as they can be read; never raises.

    ``not_an_array`` is set (and ``records`` empty) when the body is a JSON value other than an
    array, or nothing JSON can read at all; ``complete`` is False when the array never closes
    (an empty body included).
    """
    if len(body) > SLICED_PARSE_BYTES:
        sliced = _strict_in_slices(body)
        if sliced is not None:
            return ParsedContent(sliced)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _lenient(body, f"{exc}")
    if type(parsed) is list:
        return ParsedContent(DeliveredRecords(parsed, body))
    return ParsedContent([], not_an_array=f"a JSON {type(parsed).__name__}, not an array")


SLICED_PARSE_BYTES = 16 * 1024 * 1024
"""Bodies larger than this are parsed in slices of about ``_SLICE_BYTES``: orjson builds a
document of about twice its input before it makes Python objects, so a 200 MB body parsed whole
held ~370 MB more at its peak than the records it produced (``make bench`` measures the blob)."""
_SLICE_BYTES = 8 * 1024 * 1024
_BOUNDARY = b"},{"


def _strict_in_slices(body: bytes | bytearray) -> list[Any] | None:
    """The elements of a compact JSON array of objects, parsed by orjson a slice at a time; None
    when the body is not of that form or a slice does not parse (the caller parses it whole).

    Slices end at a ``},{`` between elements. One inside a string cannot end a slice: the slice
    would end inside that string and not parse, so the next ``},{`` is tried instead.
    """
    start = 0
    while start < len(body) and body[start] in _WHITESPACE:
        start += 1
    end = len(body)
    while end > start and body[end - 1] in _WHITESPACE:
        end -= 1
    if body[start : start + 2] != b"[{" or body[end - 2 : end] != b"}]":
        return None
    records: list[Any] = []
    pos = start + 1
    last = end - 1  # the closing bracket
    while pos < last:
        cut = body.find(_BOUNDARY, pos + _SLICE_BYTES, last)
        while True:
            stop = last if cut == -1 else cut + 1
            piece = bytearray(b"[")
            piece += body[pos:stop]
            piece += b"]"
            try:
                parsed = orjson.loads(piece)
                break
            except orjson.JSONDecodeError:
                if cut == -1:
                    return None
                cut = body.find(_BOUNDARY, cut + 1, last)
        records.extend(parsed)
        pos = stop + 1  # past the comma
    return records


def _lenient(body: bytes | bytearray, problem: str) -> ParsedContent:
    # surrogateescape keeps bytes that are not UTF-8 as lone surrogates, so each element can
    # still be told apart from one that was valid (and they are made U+FFFD when kept).
    text = body.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    pos = _skip_ws(text, 0)
    if pos >= len(text):
        return ParsedContent([], complete=False, problem=f"empty body ({problem})")
    if text[pos] != "[":
        # Not an array (a JSON array starts with "["): say what it is, or that it is not JSON at all.
        value, ok = _lenient_value(text.strip())
        if ok:
            return ParsedContent([], problem=problem, not_an_array=f"a JSON {type(value).__name__}, not an array")
        return ParsedContent([], complete=False, problem=problem, not_an_array="not JSON")
    records: list[Any] = []
    recovered = 0
    pos += 1
    decoder = _DECODER
    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            return ParsedContent(records, complete=False, recovered=recovered, problem=problem)
        if text[pos] == "]":
            break
        start = pos
        try:
            value, end = decoder.raw_decode(text, start)
            after = _skip_ws(text, end)
            if after < len(text) and text[after] not in ",]":
                raise ValueError(f"unexpected {text[after]!r} after a value at char {after}")
        except (ValueError, RecursionError) as exc:
            end, closed = _element_end(text, start)
            records.append(_unreadable(text[start:end], "unreadable" if closed else "cut-off", exc))
            recovered += 1
            if not closed:
                return ParsedContent(records, complete=False, recovered=recovered, problem=problem)
            after = end
        else:
            record = _strict_or_recovered(text[start:end], value)
            if type(record) is RecoveredRecord:
                recovered += 1
            records.append(record)
        pos = after
        if pos < len(text) and text[pos] == ",":
            pos += 1
    tail = text[pos + 1 :].strip(_TEXT_WHITESPACE)
    if tail:
        records.append(_unreadable(tail, "after-array", ValueError("content after the closing bracket")))
        recovered += 1
    return ParsedContent(records, recovered=recovered, problem=problem)


def _strict_or_recovered(raw: str, lenient_value: Any) -> Any:
    """The element as the strict parser reads it when it can (the common case inside a body
    that failed for another element's sake), else the lenient value made safe."""
    try:
        return orjson.loads(raw.encode("utf-8"))
    except (orjson.JSONDecodeError, UnicodeEncodeError) as exc:
        return RecoveredRecord(_safe(lenient_value), "", _reason(exc), str(exc), len(raw))


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, UnicodeEncodeError) or "surrogate" in text or "UTF-8" in text:
        return "invalid-text"
    # orjson's words for NaN, Infinity, -Infinity and 1e400; the lenient parser read them, so
    # a bare token where a value belongs is one of those.
    if any(marker in text for marker in ("infinity", "expected a JSON value", "no digit after sign")):
        return "non-finite-number"
    return "lenient-json"


def _unreadable(raw: str, reason: str, exc: BaseException) -> RecoveredRecord:
    safe = _safe_text(raw)
    return RecoveredRecord(None, safe[:MAX_RAW_CHARS], reason, f"{type(exc).__name__}: {exc}"[:500], len(raw))


def _keep_constant(name: str) -> str:
    return name


def _keep_float(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


# NaN / Infinity and numbers past a double's range stay as the text that was delivered.
_DECODER = json.JSONDecoder(parse_constant=_keep_constant, parse_float=_keep_float)


def _lenient_value(text: str) -> tuple[Any, bool]:
    try:
        return _DECODER.decode(text), True
    except (ValueError, RecursionError):
        return None, False


def _skip_ws(text: str, pos: int) -> int:
    end = len(text)
    while pos < end and text[pos] in _TEXT_WHITESPACE:
        pos += 1
    return pos


def _element_end(text: str, start: int) -> tuple[int, bool]:
    """Where the array element starting at *start* ends: the position of the ``,`` or ``]`` that
    closes it at the array's own depth, and True; or the end of the text and False.

    Brackets inside strings do not count; an unbalanced closer ends the element where it stands.
    """
    depth = 0
    in_string = False
    i, end = start, len(text)
    while i < end:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            if depth == 0:
                return i, True
            depth -= 1
        elif ch == "," and depth == 0:
            return i, True
        i += 1
    return end, False


def _safe_text(value: str) -> str:
    return clean_text(value)


def _safe(value: Any) -> Any:
    """*value* with every string (keys too) made valid UTF-8; iterative, so depth costs no stack."""
    if type(value) is str:
        return _safe_text(value)
    if type(value) not in (dict, list):
        return value
    root: list[Any] = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if type(item) is str:
            container[key] = _safe_text(item)
        elif type(item) is list:
            stack.extend((item, i) for i in range(len(item)))
        elif type(item) is dict:
            if any(type(k) is str and _safe_text(k) != k for k in item):
                item = {(_safe_text(k) if type(k) is str else k): v for k, v in item.items()}
                container[key] = item
            stack.extend((item, k) for k in item)
    return root[0]


def read_records(data: bytes) -> list[Any]:
    """Return the records in ``data``, in order (what ``auditlake flatten`` reads).

    Accepts a JSON array (what the Management Activity API returns for a content blob), a single
    JSON object, or JSON lines (blank lines ignored); a UTF-8 byte-order mark is skipped. Empty
    input yields ``[]``. A record with a bad token (a lone surrogate, ``NaN``, bytes that are not
    UTF-8) is kept as a ``RecoveredRecord``. Raises ``ValueError`` naming the line and column
    (and, for JSON lines, the line number of the record) when the input's structure is broken:
    a person handed this file and should hear where, rather than get a partial table.
    """
    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    body = body.lstrip(_WHITESPACE)
    if not body:
        return []
    if body[:1] == b"[":
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            content = parse_content(body)
            if content.complete and not content.not_an_array and all(_readable(r) for r in content.records):
                return content.records
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


def _readable(record: Any) -> bool:
    return type(record) is not RecoveredRecord or record.readable


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
            content = parse_content(b"[" + line + b"]")
            if content.complete and len(content.records) == 1 and _readable(content.records[0]):
                records.append(content.records[0])
                continue
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
