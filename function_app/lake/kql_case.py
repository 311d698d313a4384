"""KQL for reading a record's fields case-insensitively, as ``records.derived``'s getter does.

A record flagged ``keys:case-mismatch`` (converted data) may spell a field in another case, and the
Python builders then look it up case-insensitively, taking the last spelling. KQL property access is
case-sensitive and duckdb-kql cannot index a dynamic by a computed key, so the derived bodies rename,
in the record's JSON text, the last spelling of each field in any case to ``~<Field>`` and parse the
text once: ``folded["~Field"]`` is then the field. The greedy ``^(.*)`` makes it the last occurrence;
the character classes are ASCII, exactly what ``str.lower`` folds onto these names.
"""

from __future__ import annotations

from collections.abc import Sequence


def any_case(name: str) -> str:
    """A regex matching *name* in any ASCII case."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in name)


def case_folded(record: str, fields: Sequence[str]) -> str:
    """KQL parsing the text of dynamic *record* with the last spelling of each of *fields* renamed ``~<field>``."""
    text = f"tostring({record})"
    for name in fields:
        text = f"replace_regex({text}, @'(?s)^(.*)\"{any_case(name)}\"\\s*:', @'\\1\"~{name}\":')"
    return f"parse_json({text})"
