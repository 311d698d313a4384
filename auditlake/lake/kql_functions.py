"""The KQL function library (``auditlake/kql/functions``), made callable on the local lake.

The library ships as package data of ``auditlake`` and is read with ``importlib.resources``, so an
installed ``auditlake`` finds it without a checkout. Each ``.kql`` file there is one ADX command,
``.create-or-alter function with (folder=..., docstring=..., ...) Name(params) { body }``, deployed
as is by Bicep. Here it becomes ``function Name(params) { body }`` and is registered with
duckdb-kql, so ``auditlake query`` answers ``MessagesRead("185.220.100.7")`` with the same body ADX
runs.

The bodies read the de-duplicated data under the ADX names: the materialized views
``AuditRecordDedup``, ``MailItemAccessDedup``, ``DirectoryChangeDedup``, ``SignInDedup`` (the raw
ADX tables keep the service's re-deliveries) and ``SchemaObservationSummary`` (re-ingested
tallies folded). The local tables are already what those views compute: rows are written with
``INSERT OR IGNORE`` on the same key and SchemaObservation is upserted with the same merge
rules. So locally each view name is a parameterless function over its table. A function and
not a DuckDB view: ``auditlake query`` opens the lake read-only, where no view can be created,
and duckdb-kql's joins only see the schema of the lake's own catalog, not of TEMP views.

Parsing a definition costs duckdb-kql a good fraction of a second, so a query registers only
the functions it names (and those their bodies name), each parsed once per process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

from function_app.lake.schema import TABLES

if TYPE_CHECKING:
    from duckdb_kql.stored_functions import ResolvedFunctions, StoredFunction

LIBRARY: Traversable = files("auditlake") / "kql" / "functions"
"""The library, package data of ``auditlake`` (Bicep deploys the same files to ADX)."""

VIEW_TABLES: dict[str, str] = {t.view_name: t.name for t in TABLES if t.view_name}
"""ADX materialized view -> the local table that already holds what the view computes."""

REQUIRED_PROPERTIES = ("folder", "docstring")


class KqlFunctionsError(Exception):
    """The function library is missing or a file in it is not one well-formed function command."""


@dataclass(frozen=True, slots=True)
class KqlFunction:
    """One function of the library, as its file declares it."""

    name: str
    parameters: str
    """The parameter list with its parentheses, e.g. ``(ip:string="", start:datetime=datetime(null))``."""
    body: str
    """The body with its braces."""
    properties: dict[str, str]
    source: str

    @property
    def definition(self) -> str:
        """The form duckdb-kql registers: ``function Name(params) { body }``."""
        return f"function {self.name}{self.parameters} {self.body}"


_HEAD = re.compile(r"\.create-or-alter\s+function\b", re.IGNORECASE)
_WITH = re.compile(r"\s*with\s*\(", re.IGNORECASE)
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_PROPERTY = re.compile(r'\s*([A-Za-z_]+)\s*=\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')\s*(?:,|$)')
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _skip_comments(text: str, i: int) -> int:
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end + 1
            continue
        return i


def _closing(text: str, i: int, source: str) -> int:
    """Index just past the bracket that closes the one at *i*, skipping strings and comments."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = [pairs[text[i]]]
    i += 1
    while i < len(text):
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end + 1
            continue
        if c in "\"'":
            verbatim = i > 0 and text[i - 1] == "@"
            i += 1
            while i < len(text) and text[i] != c:
                i += 1 if verbatim or text[i] != "\\" else 2
        elif c in pairs:
            stack.append(pairs[c])
        elif c in ")}]":
            if c != stack.pop():
                break
            if not stack:
                return i + 1
        i += 1
    raise KqlFunctionsError(f"{source}: unbalanced brackets or an unterminated string")


def parse_command(text: str, source: str = "<text>") -> KqlFunction:
    """The function a ``.create-or-alter function with (...) Name(params) { body }`` command defines.

    Raises KqlFunctionsError unless *text* is exactly one such command (comments aside) whose
    ``with (...)`` gives at least ``folder`` and ``docstring``.
    """
    i = _skip_comments(text, 0)
    head = _HEAD.match(text, i)
    if head is None:
        raise KqlFunctionsError(f"{source}: expected `.create-or-alter function with (...) Name(params) {{ body }}`")
    opening = _WITH.match(text, head.end())
    if opening is None:
        raise KqlFunctionsError(f"{source}: the command needs `with (folder=..., docstring=...)`")
    end = _closing(text, opening.end() - 1, source)
    properties = _properties(text[opening.end() : end - 1], source)
    missing = [p for p in REQUIRED_PROPERTIES if not properties.get(p)]
    if missing:
        raise KqlFunctionsError(f"{source}: `with (...)` must set {' and '.join(missing)}")
    named = _NAME.match(text, _skip_comments(text, end))
    if named is None:
        raise KqlFunctionsError(f"{source}: expected the function's name and parameters after `with (...)`")
    params_end = _closing(text, named.end() - 1, source)
    body_start = _skip_comments(text, params_end)
    if not text.startswith("{", body_start):
        raise KqlFunctionsError(f"{source}: expected `{{` opening the body of {named.group(1)}")
    body_end = _closing(text, body_start, source)
    if _skip_comments(text, body_end) != len(text):
        raise KqlFunctionsError(f"{source}: one command per file; text follows the body of {named.group(1)}")
    return KqlFunction(
        name=named.group(1),
        parameters=text[named.end() - 1 : params_end],
        body=text[body_start:body_end],
        properties=properties,
        source=source,
    )


def _properties(text: str, source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    position = 0
    while text[position:].strip():
        found = _PROPERTY.match(text, position)
        if found is None:
            raise KqlFunctionsError(f"{source}: cannot read the properties `with ({text})`")
        out[found.group(1).lower()] = re.sub(r"\\(.)", r"\1", found.group(2)[1:-1])
        position = found.end()
    return out


def library_files(directory: Traversable = LIBRARY) -> list[Traversable]:
    """The ``.kql`` files of the library in *directory* (default ``LIBRARY``), by file name."""
    if not directory.is_dir():
        raise KqlFunctionsError(
            f"the KQL function library is not at {directory}: it ships as package data of auditlake "
            "(auditlake/kql/functions), so reinstall the package (pip install .)"
        )
    return sorted((p for p in directory.iterdir() if p.name.endswith(".kql") and p.is_file()), key=lambda p: p.name)


def _sources(directory: Traversable) -> tuple[tuple[str, str], ...]:
    """(file name, text) of every file of the library: what the caches below are keyed by."""
    return tuple((p.name, p.read_text(encoding="utf-8")) for p in library_files(directory))


def load_functions(directory: Traversable = LIBRARY) -> tuple[KqlFunction, ...]:
    """Every function of the library in *directory* (default ``LIBRARY``), by file name."""
    return _load(_sources(directory), str(directory))


@cache
def _load(sources: tuple[tuple[str, str], ...], where: str) -> tuple[KqlFunction, ...]:
    functions = tuple(parse_command(text, name) for name, text in sources)
    if not functions:
        raise KqlFunctionsError(f"no .kql file in {where}")
    names = [f.name for f in functions]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise KqlFunctionsError(f"{where}: functions defined twice: {', '.join(duplicated)}")
    return functions


def local_definitions(directory: Traversable = LIBRARY) -> dict[str, str]:
    """Name -> ``function Name(params) { body }`` for the library plus the local view stand-ins."""
    return dict(_definitions(_sources(directory), str(directory)))


@cache
def _definitions(sources: tuple[tuple[str, str], ...], where: str) -> dict[str, str]:
    out = {view: f"function {view}() {{ {table} }}" for view, table in VIEW_TABLES.items()}
    for function in _load(sources, where):
        if function.name in out:
            raise KqlFunctionsError(f"{function.source}: {function.name} is the name of a materialized view")
        out[function.name] = function.definition
    return out


@cache
def _parsed(name: str, definition: str) -> StoredFunction:
    from duckdb_kql.stored_functions import parse_functions

    try:
        parsed = parse_functions([definition])
    except ValueError as exc:
        raise KqlFunctionsError(f"{name}: duckdb-kql cannot load it: {exc}") from exc
    assert parsed is not None
    return parsed[None][name]


def library_functions(
    directory: Traversable = LIBRARY,
) -> tuple[dict[str, StoredFunction], dict[str, KqlFunctionsError]]:
    """Every function of the library and view stand-in, parsed by duckdb-kql (name -> function),
    and those it cannot load (name -> why): what a Kusto client listing the functions is shown
    (the lake's Kusto endpoint). One that fails is set apart rather than failing the rest.
    Raises KqlFunctionsError when the library itself cannot be read."""
    loaded: dict[str, StoredFunction] = {}
    broken: dict[str, KqlFunctionsError] = {}
    for name, definition in local_definitions(directory).items():
        try:
            loaded[name] = _parsed(name, definition)
        except KqlFunctionsError as exc:
            broken[name] = exc
    return loaded, broken


def needed(query: str, directory: Traversable = LIBRARY) -> list[str]:
    """The library functions and view stand-ins *query* may call, directly or through another's body."""
    definitions = local_definitions(directory)
    found: list[str] = []
    pending = [query]
    while pending:
        for word in dict.fromkeys(_WORD.findall(pending.pop())):
            if word in definitions and word not in found:
                found.append(word)
                pending.append(definitions[word])
    return sorted(found)


def resolve_functions(query: str, directory: Traversable = LIBRARY) -> ResolvedFunctions:
    """Every function *query* names, parsed, as duckdb-kql's ``functions=`` takes them."""
    definitions = local_definitions(directory)
    return {None: {name: _parsed(name, definitions[name]) for name in needed(query, directory)}}


def register_functions(query: str, directory: Traversable = LIBRARY) -> None:
    """Make every function *query* names callable by duckdb-kql (process-wide: ``set_functions``)."""
    import duckdb_kql

    duckdb_kql.set_functions(resolve_functions(query, directory))
