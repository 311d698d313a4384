"""Sentinel content on the local lake: what duckdb-kql 1.1.2 lacks, supplied before it translates.

Sentinel's analytics rules and hunting queries use constructs duckdb-kql does not translate. Each
is supplied by the cheapest mechanism that keeps Kusto's answer, chosen per construct:

* **Rows added to duckdb-kql's function tables** (``translate.functions``: ``SCALAR_FUNCTIONS``,
  ``AGGREGATE_FUNCTIONS``), at import and never in site-packages. We pin duckdb-kql==1.1.2, and
  tests/unit/lake/test_kql_reach.py pins each row's behaviour, so a release that reshapes the
  tables fails a test instead of a query. A row keeps Kusto's column naming (``makeset(x)`` is
  ``set_x``) with no text edit. Rows: ``makeset``/``makelist`` (legacy names of make_set/make_list,
  with the size limit applied, also to make_set/make_list's own two-argument form, which 1.1.2
  ignored), ``make_set_if``/``make_list_if``, ``make_bag``/``make_bag_if``, ``hash``/
  ``hash_xxhash64``, ``extract_json`` (two arguments; ``extractjson`` is renamed to it).
* **DuckDB TEMP macros** on the connection, for what one SQL template cannot say: XXH64 for
  ``hash`` and the property-bag merge of ``make_bag``. Not Python UDFs: DuckDB's
  ``create_function`` needs numpy, which the lake does not install. ``CREATE TEMP MACRO`` works on
  the read-only connection ``auditlake query`` opens (verified), and costs nothing per row.
* **A KQL->KQL rewrite of the query text**, driven by duckdb-kql's own ANTLR parse tree (token
  spans), for operators and call shapes the translator refuses before any registry is consulted.
  One edit per pass, then a fresh parse, until nothing applies: a query that needs none comes back
  as the identical string, so nothing that ran before can change.

  - deprecated scalar names (``parsejson``, ``extractjson``, ``arraylength``, ``make_dictionary``)
    renamed: duckdb-kql recognises ``parse_json`` as dynamic by name, so a copied row would not do;
  - ``extract_json(p, t, typeof(T))`` -> ``toT(extract_json(p, t))``, Kusto's conversion;
  - ``iff``/``iif``/``case`` with a visibly dynamic branch beside branches of another type: the
    dynamic branches are converted to that type (``tostring`` ...), as Kusto's language service
    types the call (checked: ``iff(c, dynamic(1), "s")`` is string). A column branch's type comes
    from compiling the operator's input; when no type is known the call is left alone;
  - ``extract_all(re, dynamic(["name", ...]), s)``: group names -> their RE2 numbers;
  - ``mv-expand <expr>`` reading one column C -> ``mv-expand C = <expr>`` (Kusto: the expansion
    replaces that column); with no or several columns it is left to duckdb-kql's refusal;
  - a parenthesised query as a pipe's source -> a fresh ``let`` before its statement;
  - tabular let functions (a ``T:(...)`` parameter), called or ``invoke``-d -> inlined as fresh
    lets (arguments, the body's own lets, then the body) before the calling statement;
  - ``project-reorder`` -> ``project`` with the named columns first; the input's columns come
    from compiling the query up to the operator with duckdb-kql. Wildcards match in input order;
    ``asc``/``desc`` sort the matches by name, ``granny-asc``/``granny-desc`` naturally;
  - ``mv-apply`` whose subquery has only row-level operators (where, extend, parse, project-away,
    project-rename, mv-expand) -> ``mv-expand`` followed by those operators, which is what the
    subquery sees per row; with one ``summarize`` (no ``by``) -> expand, then the aggregates (as
    their ``*_if`` forms) ``by`` every input column, one row per input row even for an empty
    array (identical input rows merge: there is no row id);
  - ``evaluate bag_unpack(B, prefix, columnsConflict=...)`` -> ``extend`` of each key the data
    holds (asked of the lake first), then ``project-away B``; ``column_ifexists(n, d)`` -> the
    column or the default, from the compiled input's columns; tabular let functions whose
    parameters are all scalars are inlined like those with a tabular one.

* **One line, "runs on ADX"** (:class:`KqlReachError`) for what cannot run faithfully here:
  ``mv-apply`` with top, take, ``summarize ... by`` or several arrays in its subquery (joining
  per-row results back needs a stable row identity, and duckdb-kql re-evaluates a ``let`` at each
  use and has no ``serialize``/``row_number()``), ``make-series`` and the ``series_*`` functions (decomposition,
  line fitting: no local implementation agrees with ADX's numerics).

``hash(x)`` is XXH64 with seed 0 over the UTF-8 bytes of a string, which is ADX's value for a
string (``hash("World")`` is 1846988464401551951, as the docs show); ``hash(x, m)`` is that value
modulo m. ADX hashes other types by their binary form, which is not reproduced: a non-string
argument is hashed by its string form here and will not match ADX.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

KqlColumns = Callable[[str], list[tuple[str, str]]]
"""Compiles a KQL query and returns its columns as (name, DuckDB type), without running it."""

KqlRows = Callable[[str], list[tuple[Any, ...]]]
"""Runs a KQL query and returns its rows (for bag_unpack, whose columns come from the data)."""


class KqlReachError(Exception):
    """A construct of the query does not run on the local lake; the message is one line."""


def on_adx(construct: str) -> KqlReachError:
    return KqlReachError(f"KQL: {construct} does not run on the local lake; run this query in ADX")


# -- registry rows ---------------------------------------------------------------------------

_MASK = "18446744073709551616::UHUGEINT"
_P1, _P2, _P3, _P4, _P5 = (11400714785074694791, 14029467366897019727, 1609587929392839161,
                           9650029242287828579, 2870177450012600261)

# XXH64 (seed 0) as DuckDB macros over the hex text of the input's UTF-8 bytes, so a byte at
# offset o is two hex digits and a little-endian lane is its digits in reverse pair order. A macro
# is expanded in place, so an argument used twice would be copied twice and nesting would grow the
# SQL exponentially: each such argument is bound once, through a one-element list_transform.
def _let(value: str, name: str, body: str) -> str:
    return f"list_transform([{value}], lambda {name}: {body})[1]"


MACROS: tuple[str, ...] = (
    f"CREATE OR REPLACE TEMP MACRO kql_reach_mul(a, b) AS "
    f"CAST((CAST(a AS UHUGEINT) * CAST(b AS UHUGEINT)) % {_MASK} AS UBIGINT)",
    f"CREATE OR REPLACE TEMP MACRO kql_reach_add(a, b) AS "
    f"CAST((CAST(a AS UHUGEINT) + CAST(b AS UHUGEINT)) % {_MASK} AS UBIGINT)",
    "CREATE OR REPLACE TEMP MACRO kql_reach_rotl(x, r) AS " + _let(
        "CAST(x AS HUGEINT)", "v", "CAST(((v << r) % 18446744073709551616) | (v >> (64 - r)) AS UBIGINT)"),
    "CREATE OR REPLACE TEMP MACRO kql_reach_mix(x, r) AS " + _let(
        "CAST(x AS HUGEINT)", "v", "CAST(xor(v, v >> r) AS UBIGINT)"),
    "CREATE OR REPLACE TEMP MACRO kql_reach_lane(hx, o, n) AS "
    "CAST('0x' || list_aggregate(list_transform(list_reverse(range(n)), "
    "lambda k: substr(hx, 2 * (o + k) + 1, 2)), 'string_agg', '') AS UBIGINT)",
    f"CREATE OR REPLACE TEMP MACRO kql_reach_round(acc, lane) AS "
    f"kql_reach_mul(kql_reach_rotl(kql_reach_add(acc, kql_reach_mul(lane, {_P2})), 31), {_P1})",
    f"CREATE OR REPLACE TEMP MACRO kql_reach_merge(h, v) AS "
    f"kql_reach_add(kql_reach_mul(xor(h, kql_reach_round(0, v)), {_P1}), {_P4})",
    # The four accumulators over every whole 32-byte stripe, then merged into one.
    f"CREATE OR REPLACE TEMP MACRO kql_reach_stripes(hx, n) AS "
    f"list_reduce(range(n // 32), lambda acc, i: {{"
    f"'a': kql_reach_round(acc.a, kql_reach_lane(hx, i * 32, 8)), "
    f"'b': kql_reach_round(acc.b, kql_reach_lane(hx, i * 32 + 8, 8)), "
    f"'c': kql_reach_round(acc.c, kql_reach_lane(hx, i * 32 + 16, 8)), "
    f"'d': kql_reach_round(acc.d, kql_reach_lane(hx, i * 32 + 24, 8))}}, "
    f"{{'a': kql_reach_add({_P1}, {_P2}), 'b': CAST({_P2} AS UBIGINT), 'c': CAST(0 AS UBIGINT), "
    f"'d': CAST(18446744073709551616 - {_P1} AS UBIGINT)}})",
    "CREATE OR REPLACE TEMP MACRO kql_reach_large(x) AS " + _let(
        "x", "s",
        "kql_reach_merge(kql_reach_merge(kql_reach_merge(kql_reach_merge(kql_reach_add(kql_reach_add("
        "kql_reach_add(kql_reach_rotl(s.a, 1), kql_reach_rotl(s.b, 7)), kql_reach_rotl(s.c, 12)), "
        "kql_reach_rotl(s.d, 18)), s.a), s.b), s.c), s.d)"),
    f"CREATE OR REPLACE TEMP MACRO kql_reach_head(hx, n) AS kql_reach_add(CASE WHEN n >= 32 "
    f"THEN kql_reach_large(kql_reach_stripes(hx, n)) ELSE CAST({_P5} AS UBIGINT) END, n)",
    f"CREATE OR REPLACE TEMP MACRO kql_reach_tail8(hx, n, h) AS "
    f"list_reduce(range((n % 32) // 8), lambda acc, j: kql_reach_add(kql_reach_mul(kql_reach_rotl("
    f"xor(acc, kql_reach_round(0, kql_reach_lane(hx, (n // 32) * 32 + j * 8, 8))), 27), {_P1}), {_P4}), h)",
    "CREATE OR REPLACE TEMP MACRO kql_reach_tail4(hx, n, x) AS " + _let(
        "x", "h",
        f"CASE WHEN n % 8 >= 4 THEN kql_reach_add(kql_reach_mul(kql_reach_rotl(xor(h, kql_reach_mul("
        f"kql_reach_lane(hx, (n // 8) * 8, 4), {_P1})), 23), {_P2}), {_P3}) ELSE h END"),
    f"CREATE OR REPLACE TEMP MACRO kql_reach_tail1(hx, n, h) AS "
    f"list_reduce(range(n % 4), lambda acc, j: kql_reach_mul(kql_reach_rotl(xor(acc, kql_reach_mul("
    f"kql_reach_lane(hx, n - n % 4 + j, 1), {_P5})), 11), {_P1}), h)",
    f"CREATE OR REPLACE TEMP MACRO kql_reach_avalanche(h) AS "
    f"kql_reach_mix(kql_reach_mul(kql_reach_mix(kql_reach_mul(kql_reach_mix(h, 33), {_P2}), 29), {_P3}), 32)",
    "CREATE OR REPLACE TEMP MACRO kql_reach_xxh64(s) AS " + _let(
        "encode(s)", "b",
        "kql_reach_avalanche(kql_reach_tail1(hex(b), octet_length(b), kql_reach_tail4(hex(b), octet_length(b), "
        "kql_reach_tail8(hex(b), octet_length(b), kql_reach_head(hex(b), octet_length(b))))))"),
    # Kusto's hash is a signed long.
    "CREATE OR REPLACE TEMP MACRO kql_reach_hash(s) AS " + _let(
        "kql_reach_xxh64(CAST(s AS VARCHAR))", "u",
        "CAST(CAST(u AS HUGEINT) - CASE WHEN u >= 9223372036854775808 THEN 18446744073709551616 ELSE 0 END "
        "AS BIGINT)"),
    "CREATE OR REPLACE TEMP MACRO kql_reach_hash_mod(s, m) AS "
    "CAST(kql_reach_xxh64(CAST(s AS VARCHAR)) % CAST(m AS UBIGINT) AS BIGINT)",
    # make_bag: the property bags of a group merged key by key; the first value seen for a key is
    # kept (Kusto keeps an arbitrary one), anything that is not a bag is skipped.
    "CREATE OR REPLACE TEMP MACRO kql_reach_bag_entries(bags) AS flatten(list_transform("
    "list_filter(bags, lambda o: json_type(o) = 'OBJECT'), "
    "lambda o: map_entries(CAST(o AS MAP(VARCHAR, JSON)))))",
    "CREATE OR REPLACE TEMP MACRO kql_reach_first_keys(x) AS " + _let(
        "x", "e", "list_transform(list_distinct(list_transform(e, lambda y: y.key)), "
        "lambda k: {'key': k, 'value': list_filter(e, lambda y: y.key = k)[1].value})"),
    "CREATE OR REPLACE TEMP MACRO kql_reach_bag(bags, size) AS CAST(CASE WHEN "
    "len(kql_reach_bag_entries(bags)) = 0 THEN '{}' ELSE to_json(map_from_entries(list_slice("
    "kql_reach_first_keys(kql_reach_bag_entries(bags)), 1, size))) END AS JSON)",
)

_BAG_MAX = "1048576"
_BAG_ARG = "coalesce(list(TRY_CAST(to_json({0}) AS JSON)) FILTER (WHERE {0} IS NOT NULL), [])"


def _installed() -> bool:
    from duckdb_kql.translate.functions import AGGREGATE_FUNCTIONS

    return "makeset" in AGGREGATE_FUNCTIONS


def _render_by_arity(name: str, arities: object, by_arity: tuple[tuple[int, str], ...], args: list[str]) -> str:
    """The SQL template for *args*' count, filled in; ValueError naming the arities it takes."""
    template = dict(by_arity).get(len(args))
    if template is None:
        raise ValueError(f"{name}() takes {arities} argument(s), got {len(args)}")
    return template.format(*args)


def install() -> None:
    """Add our rows to duckdb-kql's function tables (once per process)."""
    if _installed():
        return
    from duckdb_kql.translate.functions import (
        AGGREGATE_FUNCTIONS,
        SCALAR_FUNCTIONS,
        AggregateSpec,
        FunctionSpec,
    )

    @dataclasses.dataclass(frozen=True)
    class ScalarByArity(FunctionSpec):
        """A scalar function whose SQL differs by argument count."""

        by_arity: tuple[tuple[int, str], ...] = ()

        def render(self, args: list[str]) -> str:
            return _render_by_arity(self.name, self.arities, self.by_arity, args)

    @dataclasses.dataclass(frozen=True)
    class AggregateByArity(AggregateSpec):
        """An aggregate whose SQL differs by argument count (an optional size limit)."""

        by_arity: tuple[tuple[int, str], ...] = ()

        def render(self, args: list[str]) -> str:
            return _render_by_arity(self.name, self.arities, self.by_arity, args)

    make_set = AGGREGATE_FUNCTIONS["make_set"].template
    make_list = AGGREGATE_FUNCTIONS["make_list"].template

    def only_if(template: str) -> str:
        return template.replace("{0}", "(CASE WHEN {1} THEN {0} END)")

    def limited_set(template: str, size: str) -> str:
        return f"to_json(list_slice(CAST({template} AS JSON[]), 1, {size}))"

    def limited_list(template: str, size: str) -> str:
        return f"list_slice({template}, 1, {size})"

    def aggregate(name: str, prefix: str, by_arity: dict[int, str]) -> AggregateSpec:
        return AggregateByArity(name, "", tuple(by_arity), name_prefix=prefix, rules=("R4",),
                                note="auditlake kql_reach", by_arity=tuple(by_arity.items()))

    rows = [
        aggregate(name, "set", {1: make_set, 2: limited_set(make_set, "{1}")}) for name in ("make_set", "makeset")
    ] + [
        aggregate(name, "list", {1: make_list, 2: limited_list(make_list, "{1}")})
        for name in ("make_list", "makelist")
    ] + [
        aggregate("make_set_if", "set", {2: only_if(make_set), 3: limited_set(only_if(make_set), "{2}")}),
        aggregate("make_list_if", "list", {2: only_if(make_list), 3: limited_list(only_if(make_list), "{2}")}),
        aggregate("make_bag", "bag", {1: f"kql_reach_bag({_BAG_ARG}, {_BAG_MAX})",
                                      2: f"kql_reach_bag({_BAG_ARG}, {{1}})"}),
        aggregate("make_bag_if", "bag", {2: f"kql_reach_bag({only_if(_BAG_ARG)}, {_BAG_MAX})",
                                         3: f"kql_reach_bag({only_if(_BAG_ARG)}, {{2}})"}),
    ]
    for row in rows:
        AGGREGATE_FUNCTIONS[row.name] = row
    for name in ("hash", "hash_xxhash64"):
        SCALAR_FUNCTIONS[name] = ScalarByArity(
            name, "template", "", (1, 2), note="auditlake kql_reach: XXH64",
            by_arity=((1, "kql_reach_hash({0})"), (2, "kql_reach_hash_mod({0}, {1})")))
    # Kusto's string has no null: a path that is not there, or text that is not JSON, is "".
    SCALAR_FUNCTIONS["extract_json"] = FunctionSpec(
        "extract_json", "template",
        "coalesce(json_extract_string(TRY_CAST(CAST({1} AS VARCHAR) AS JSON), {0}), '')", (2,),
        note="auditlake kql_reach")


    # Kusto: the root keys of a property bag; anything else (null, an array, a scalar) is null.
    SCALAR_FUNCTIONS["bag_keys"] = FunctionSpec(
        "bag_keys", "template",
        "CASE WHEN json_type(TRY_CAST(to_json({0}) AS JSON)) = 'OBJECT' "
        "THEN to_json(json_keys(TRY_CAST(to_json({0}) AS JSON))) END", (1,),
        note="auditlake kql_reach")


def register_macros(con: Any) -> None:
    """Define the SQL macros our rows call, on *con* (TEMP: allowed on a read-only lake)."""
    for statement in MACROS:
        con.execute(statement)


# -- the rewrite -------------------------------------------------------------------------------

SCALAR_ALIASES = {"parsejson": "parse_json", "extractjson": "extract_json", "arraylength": "array_length",
                  "make_dictionary": "make_bag"}

_TYPE_CONVERSIONS = {
    "string": "tostring", "int": "toint", "long": "tolong", "real": "todouble", "double": "todouble",
    "bool": "tobool", "boolean": "tobool", "datetime": "todatetime", "date": "todatetime",
    "timespan": "totimespan", "time": "totimespan", "guid": "toguid", "dynamic": "todynamic",
    "decimal": "todecimal",
}

_DYNAMIC_CALLS = ("dynamic", "todynamic", "parse_json", "parsejson", "pack_array", "pack", "bag_pack",
                  "split", "extract_all", "bag_keys", "array_concat", "array_slice", "set_union",
                  "set_intersect", "set_difference", "array_sort_asc", "array_sort_desc", "zip")

_ROW_LEVEL = frozenset({"whereOperator", "extendOperator", "parseOperator", "projectAwayOperator",
                        "projectRenameOperator", "mvexpandOperator", "filterOperator"})

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_0-9]*\Z")

MAX_PASSES = 200


def _rule(ctx: Any) -> str:
    from duckdb_kql._antlr.KqlParser import KqlParser

    index = getattr(ctx, "getRuleIndex", None)
    return str(KqlParser.ruleNames[index()]) if index is not None else ""


def _kids(ctx: Any) -> list[Any]:
    return list(ctx.getChildren()) if getattr(ctx, "children", None) else []


def _walk(ctx: Any) -> Iterator[Any]:
    stack = [ctx]
    while stack:
        node = stack.pop()
        if _rule(node):
            yield node
            stack.extend(reversed(_kids(node)))


def _span(ctx: Any) -> tuple[int, int]:
    start = ctx.start.start if _rule(ctx) else ctx.symbol.start
    stop = ctx.stop.stop if _rule(ctx) else ctx.symbol.stop
    return int(start), int(stop) + 1


def _text(text: str, ctx: Any) -> str:
    start, end = _span(ctx)
    return text[start:end]


def _first(ctx: Any, rule: str) -> Any:
    return next((n for n in _walk(ctx) if _rule(n) == rule), None)


def _child(ctx: Any, rule: str) -> Any:
    return next((k for k in _kids(ctx) if _rule(k) == rule), None)


def _ancestor(ctx: Any, rules: tuple[str, ...]) -> Any:
    node = ctx.parentCtx
    while node is not None and _rule(node) not in rules:
        node = node.parentCtx
    return node


def _call_name(call: Any, text: str) -> str:
    name = _child(call, "simpleNameReference")
    return _text(text, name) if name is not None else ""


def _call_args(call: Any) -> list[Any]:
    return [k for k in _kids(call) if _rule(k) == "argumentExpression"]


def _statement_start(ctx: Any) -> int:
    """Where a `let` may be inserted so that it is in scope for *ctx*: before its statement."""
    node = ctx
    while node is not None:
        parent = node.parentCtx
        if _rule(node) in ("statement", "letFunctionBodyStatement"):
            return _span(node)[0]
        if parent is not None and _rule(parent) == "letFunctionBody" and _rule(node) == "expression":
            return _span(node)[0]
        node = parent
    return 0


def _kql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote(name: str) -> str:
    return name if _IDENTIFIER.match(name) else "['" + name.replace("\\", "\\\\").replace("'", "\\'") + "']"


def _string_value(literal: str) -> str | None:
    """The value of a KQL string literal, or None for anything else (a column, a call, h"...")."""
    literal = literal.strip()
    verbatim = re.fullmatch(r"@(['\"])(.*)\1", literal, re.S)
    if verbatim is not None:
        quote = verbatim.group(1)
        return verbatim.group(2).replace(quote * 2, quote)
    plain = re.fullmatch(r"(['\"])((?:\\.|(?!\1).)*)\1", literal, re.S)
    if plain is None:
        return None
    escapes = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(1)), plain.group(2), flags=re.S)


def _regex_groups(pattern: str) -> list[str | None]:
    """The capture groups of *pattern* in RE2's numbering (opening parenthesis order), each by
    its name, None when unnamed."""
    groups: list[str | None] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            named = re.match(r"\?(?:P?<(?![=!])(\w+)>|'(\w+)')", pattern[i + 1:])
            if named is not None:
                groups.append(named.group(1) or named.group(2))
            elif not pattern.startswith("?", i + 1):
                groups.append(None)
        i += 1
    return groups


class _Rewriter:
    def __init__(self, text: str, columns: KqlColumns | None, run: KqlRows | None = None) -> None:
        self.text = text
        self.columns = columns
        self.run_rows = run
        self.counter = 0

    def _input_columns(self, piped: Any, construct: str) -> list[tuple[str, str]]:
        """The columns (name, DuckDB type) of the input of the operator in *piped*."""
        if self.columns is None or piped is None:
            raise on_adx(f"{construct} here")
        _, head = self._pipe_head(piped)
        try:
            return self.columns(self.text[:_statement_start(piped)] + head)
        except KqlReachError:
            raise
        except Exception as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise KqlReachError(f"KQL: {construct}: its input does not run on the local lake ({why})") from exc

    def fresh(self) -> str:
        while True:
            self.counter += 1
            name = f"kql_reach_{self.counter}"
            if name not in self.text:
                return name

    def run(self) -> str:
        from duckdb_kql import parse
        from duckdb_kql.errors import KqlSyntaxError

        # Steps that need the columns of an operator's input (compiled by duckdb-kql) come last,
        # so that every text-only rewrite has been made in that input first.
        steps = (self._refusals, self._aliases, self._typed_extract, self._extract_all_names,
                 self._mv_expand_name, self._paren_source, self._tabular_functions,
                 self._mv_apply, self._bag_unpack, self._column_ifexists, self._dynamic_branches,
                 self._project_reorder)
        for _ in range(MAX_PASSES):
            try:
                tree = parse(self.text).tree
            except KqlSyntaxError:
                return self.text  # duckdb-kql reports it, as before
            if tree is None:  # a control command
                return self.text
            for step in steps:
                edits = step(tree)
                if edits:
                    for start, end, new in sorted(edits, reverse=True):
                        self.text = self.text[:start] + new + self.text[end:]
                    break
            else:
                return self.text
        raise KqlReachError("KQL: the query needs too many rewrites to run on the local lake; run it in ADX")

    # Each step returns the edits (start, end, replacement) of its first match, or [].

    def _refusals(self, tree: Any) -> list[tuple[int, int, str]]:
        from duckdb_kql.translate.functions import lookup, lookup_aggregate

        for node in _walk(tree):
            if _rule(node) == "makeSeriesOperator":
                raise on_adx("make-series")
            if _rule(node) == "namedFunctionCallExpression":
                name = _call_name(node, self.text).lower()
                if name.startswith("series_") and lookup(name) is None and lookup_aggregate(name) is None:
                    raise on_adx(f"{name}()")
        return []

    def _aliases(self, tree: Any) -> list[tuple[int, int, str]]:
        for node in _walk(tree):
            if _rule(node) == "namedFunctionCallExpression":
                name = _child(node, "simpleNameReference")
                target = SCALAR_ALIASES.get(_text(self.text, name).lower())
                if target is not None:
                    return [(*_span(name), target)]
        return []

    def _typed_extract(self, tree: Any) -> list[tuple[int, int, str]]:
        for node in _walk(tree):
            if _rule(node) != "namedFunctionCallExpression" or _call_name(node, self.text) != "extract_json":
                continue
            args = _call_args(node)
            if len(args) != 3:
                continue
            typed = re.fullmatch(r"typeof\s*\(\s*(\w+)\s*\)", _text(self.text, args[2]).strip())
            if typed is None:
                continue
            conversion = _TYPE_CONVERSIONS.get(typed.group(1).lower())
            if conversion is None:
                raise KqlReachError(f"KQL: extract_json(): unknown type {typed.group(1)!r}")
            inner = f"extract_json({_text(self.text, args[0])}, {_text(self.text, args[1])})"
            return [(*_span(node), f"{conversion}({inner})")]
        return []

    def _is_dynamic(self, arg: Any) -> bool:
        source = _text(self.text, arg).strip()
        call = re.match(r"([A-Za-z_]\w*)\s*\(", source)
        return call is not None and call.group(1).lower() in _DYNAMIC_CALLS

    _STRING_CALLS = frozenset({"tostring", "strcat", "strcat_delim", "tolower", "toupper", "trim", "trim_start",
                               "trim_end", "extract", "substring", "replace", "replace_string", "replace_regex",
                               "strcat_array", "tohex", "format_datetime", "format_timespan", "url_decode",
                               "url_encode", "base64_decode_tostring", "base64_encode_tostring", "reverse",
                               "translate", "typeof", "gettype"})
    _DUCKDB_CONVERSIONS: ClassVar[dict[str, str]] = {
        "VARCHAR": "tostring", "BIGINT": "tolong", "INTEGER": "toint", "DOUBLE": "todouble",
                           "BOOLEAN": "tobool", "TIMESTAMP": "todatetime", "TIMESTAMP WITH TIME ZONE": "todatetime",
                           "INTERVAL": "totimespan", "UUID": "toguid", "JSON": ""}

    def _branch_type(self, branch: Any, input_types: Callable[[], dict[str, str]]) -> str | None:
        """The conversion function of a branch's type ("" for dynamic), or None when not known."""
        source = _text(self.text, branch).strip()
        while source.startswith("(") and source.endswith(")") and _first(branch, "parenthesizedExpression"):
            source = source[1:-1].strip()
        if self._is_dynamic(branch) or re.match(r"(?i)(dynamic|todynamic|parse_json|split|pack_array|bag_keys|"
                                                r"extract_all|array_slice|zip)\s*\(", source):
            return ""
        paths = [n for n in _walk(branch) if _rule(n) == "functionCallOrPathExpression"
                 and _text(self.text, n).strip() == source]
        if paths and _child(paths[0], "functionCallOrPathOperation") is not None:
            return ""  # `x.a`, `x[0]`: only a dynamic value has members
        if re.fullmatch(r"@?(\"[^\"]*\"|'[^']*')", source):
            return "tostring"
        if re.fullmatch(r"-?\d+", source):
            return "tolong"
        if re.fullmatch(r"-?\d+\.\d*(e-?\d+)?", source):
            return "todouble"
        if source in ("true", "false"):
            return "tobool"
        call = re.match(r"([A-Za-z_]\w*)\s*\(", source)
        if call is not None:
            name = call.group(1).lower()
            if name in self._STRING_CALLS:
                return "tostring"
            return name if name in set(_TYPE_CONVERSIONS.values()) else None
        bare = source.strip("[]'\" ") if re.fullmatch(r"\w+|\[['\"][^'\"]+['\"]\]", source) else None
        if bare is None:
            return None
        kind = input_types().get(bare)
        return self._DUCKDB_CONVERSIONS.get(kind) if kind is not None else None

    def _dynamic_branches(self, tree: Any) -> list[tuple[int, int, str]]:
        """Kusto types `iff`/`case` with a dynamic branch beside branches of another type as that
        other type (the language service infers `iff(c, dynamic(1), "s")` as string), so each
        dynamic branch is converted to it."""
        for node in _walk(tree):
            if _rule(node) != "namedFunctionCallExpression":
                continue
            name = _call_name(node, self.text).lower()
            args = _call_args(node)
            if name in ("iff", "iif") and len(args) == 3:
                branches = args[1:]
            elif name == "case" and len(args) >= 3 and len(args) % 2:
                branches = [*args[1::2], args[-1]]
            else:
                continue
            known: dict[str, str] | None = None
            piped = _ancestor(node, ("pipedOperator",))

            def input_types(piped: Any = piped) -> dict[str, str]:
                nonlocal known
                if known is None:
                    try:
                        known = dict(self._input_columns(piped, "iff"))
                    except KqlReachError:
                        known = {}  # a branch of unknown type: the call is left as it is
                return known

            if not any(self._branch_type(b, dict) == "" for b in branches):
                continue
            types = [self._branch_type(b, input_types) for b in branches]
            target = next((t for t in types if t), None)
            if target is None or target == "todynamic":
                continue
            return [(*_span(b), f"{target}({_text(self.text, b)})")
                    for b, t in zip(branches, types, strict=True) if t == ""]
        return []

    def _mv_expand_name(self, tree: Any) -> list[tuple[int, int, str]]:
        for node in _walk(tree):
            if _rule(node) != "mvexpandOperatorExpression":
                continue
            named = _child(node, "namedExpression")
            if named is None or _child(named, "namedExpressionNameClause") is not None:
                continue
            computed = _first(named, "namedFunctionCallExpression") or _first(named, "parenthesizedExpression")
            if computed is None:
                continue  # a column, or a path into one: duckdb-kql names those
            references = {_text(self.text, r) for r in _walk(named) if _rule(r) == "nameReferenceWithDataScope"}
            if len(references) == 1:
                start, _ = _span(named)
                return [(start, start, f"{_quote(references.pop())} = ")]
        return []

    def _paren_source(self, tree: Any) -> list[tuple[int, int, str]]:
        for node in _walk(tree):
            if _rule(node) != "beforePipeExpression":
                continue
            inner = _first(node, "parenthesizedExpression")
            if inner is None or _span(inner) != _span(node):
                continue
            body = _child(inner, "expression")
            if body is None:
                continue
            name = self.fresh()
            at = _statement_start(node)
            return [(at, at, f"let {name} = {_text(self.text, body)};\n"), (*_span(node), name)]
        return []

    def _tabular_functions(self, tree: Any) -> list[tuple[int, int, str]]:
        for declaration in _walk(tree):
            if _rule(declaration) != "letFunctionDeclaration":
                continue
            parameters = _child(declaration, "letFunctionParameterList")
            tabular = parameters is not None and _first(parameters, "tabularParameter") is not None
            if not tabular and not self._tabular_body(declaration):
                continue
            name = _text(self.text, _child(declaration, "identifierOrKeywordOrEscapedName"))
            _, declared = _span(declaration)
            for node in _walk(tree):
                if _rule(node) == "invokeOperator" and _span(node)[0] >= declared:
                    call = _first(node, "namedFunctionCallExpression")
                    if call is not None and _call_name(call, self.text) == name:
                        return self._inline_invoke(declaration, node, call)
                if (_rule(node) == "namedFunctionCallExpression" and _span(node)[0] >= declared
                        and _call_name(node, self.text) == name and _ancestor(node, ("invokeOperator",)) is None):
                    args = [_text(self.text, a) for a in _call_args(node)]
                    return self._inline(declaration, node, args, _statement_start(node))
            # No call left: the declaration goes, with the `;` after it.
            statement = _ancestor(declaration, ("statement", "letFunctionBodyStatement"))
            start, end = _span(statement if statement is not None else declaration)
            after = re.match(r"\s*;", self.text[end:])
            return [(start, end + (after.end() if after else 0), "")]
        return []

    def _tabular_body(self, declaration: Any) -> bool:
        """A function of scalars whose body is a pipeline (duckdb-kql inlines only scalar bodies)."""
        body = _child(declaration, "letFunctionBody")
        result = _child(body, "expression") if body is not None else None
        if result is None:
            return False
        if re.match(r"(?i)union\b", _text(self.text, result).strip()):
            return True
        expressions = [result] + [e for st in _kids(body) if _rule(st) == "letFunctionBodyStatement"
                                  for e in [_first(st, "expression")] if e is not None]
        return any(_child(_child(e, "pipeExpression") or e, "pipedOperator") is not None for e in expressions)

    def _inline_invoke(self, declaration: Any, invoke: Any, call: Any) -> list[tuple[int, int, str]]:
        piped = invoke.parentCtx.parentCtx  # invokeOperator < afterPipeOperator < pipedOperator
        pipe = piped.parentCtx
        source = self.fresh()
        start, _ = _span(pipe)
        at = _statement_start(pipe)
        head = self.text[start:_span(piped)[0]].rstrip()
        edits = [(at, at, f"let {source} = {head};\n")]
        edits += self._inline(declaration, call, [source] + [_text(self.text, a) for a in _call_args(call)], at)
        # The call replaces everything from the pipe's start to the end of `invoke f(...)`.
        call_edit = edits.pop()
        edits.append((start, _span(invoke)[1], call_edit[2]))
        return edits

    def _inline(self, declaration: Any, call: Any, args: list[str], at: int) -> list[tuple[int, int, str]]:
        name = _text(self.text, _child(declaration, "identifierOrKeywordOrEscapedName"))
        declared_list = _child(declaration, "letFunctionParameterList")
        parameters = [p for p in (_walk(declared_list) if declared_list is not None else ())
                      if _rule(p) in ("tabularParameter", "scalarParameter")]
        if len(args) > len(parameters):
            raise KqlReachError(f"KQL: {name}() takes {len(parameters)} argument(s), got {len(args)}")
        prefix = self.fresh()
        renamed: dict[str, str] = {}
        lets: list[str] = []
        for i, parameter in enumerate(parameters):
            pname = _text(self.text, _child(parameter, "parameterName"))
            default = _child(parameter, "scalarParameterDefault")
            if i < len(args):
                value = args[i]
            elif default is not None:
                value = _text(self.text, default).lstrip()[1:].strip()
            else:
                raise KqlReachError(f"KQL: {name}() needs a value for its parameter {pname}")
            if _rule(parameter) == "scalarParameter":
                # In place, not a `let`: duckdb-kql takes a literal where it refuses a name (`take n`).
                renamed[pname] = value if re.fullmatch(r"[\w.\-:]+|\"[^\"\\]*\"|'[^'\\]*'", value) else f"({value})"
            else:
                renamed[pname] = f"{prefix}_{pname}"
                lets.append(f"let {renamed[pname]} = {value};")
        body = _child(declaration, "letFunctionBody")
        statements = [s for s in _kids(body) if _rule(s) == "letFunctionBodyStatement"]
        for statement in statements:
            declared = _first(statement, "identifierOrKeywordOrEscapedName")
            if declared is not None:
                renamed[_text(self.text, declared)] = f"{prefix}_{_text(self.text, declared)}"
        result = _child(body, "expression")
        for part in [*statements, result]:
            lets.append(self._renamed(part, renamed, result is part, prefix))
        return [(at, at, "\n".join(lets) + "\n"), (*_span(call), prefix)]

    def _renamed(self, part: Any, renamed: dict[str, str], last: bool, prefix: str) -> str:
        start, end = _span(part)
        edits: list[tuple[int, int, str]] = []
        for node in _walk(part):
            rule = _rule(node)
            target: Any = None
            if rule in ("nameReferenceWithDataScope", "namedFunctionCallExpression"):
                target = _child(node, "simpleNameReference")
            elif rule in ("letVariableDeclaration", "letFunctionDeclaration"):
                target = _child(node, "identifierOrKeywordOrEscapedName")
            if target is not None and _text(self.text, target) in renamed:
                edits.append((*_span(target), renamed[_text(self.text, target)]))
        out = self.text[start:end]
        for s, e, new in sorted(edits, reverse=True):
            out = out[: s - start] + new + out[e - start:]
        return f"let {prefix} = {out};" if last else f"{out};"

    def _extract_all_names(self, tree: Any) -> list[tuple[int, int, str]]:
        for node in _walk(tree):
            if _rule(node) != "namedFunctionCallExpression" or _call_name(node, self.text).lower() != "extract_all":
                continue
            args = _call_args(node)
            if len(args) != 3:
                continue
            selection = re.fullmatch(r"dynamic\s*\(\s*\[(.*)\]\s*\)", _text(self.text, args[1]).strip(), re.S)
            if selection is None or not re.search(r"['\"]", selection.group(1)):
                continue
            pattern = _string_value(_text(self.text, args[0]))
            if pattern is None:
                continue  # duckdb-kql refuses a regex that is not a literal, as Kusto does
            groups = _regex_groups(pattern)
            wanted: list[str] = []
            for member in (m.strip() for m in selection.group(1).split(",") if m.strip()):
                name = _string_value(member)
                if name is None:
                    wanted.append(member)
                elif name in groups:
                    wanted.append(str(groups.index(name) + 1))
                else:
                    raise KqlReachError(f"KQL: extract_all(): the regex has no capture group named {name!r}")
            return [(*_span(args[1]), f"dynamic([{', '.join(wanted)}])")]
        return []

    _IF_AGGREGATES: ClassVar[dict[str, str]] = {
        "count": "countif", "make_bag": "make_bag_if", "make_set": "make_set_if",
                      "makeset": "make_set_if", "make_list": "make_list_if", "makelist": "make_list_if",
                      "sum": "sumif", "dcount": "dcountif", "min": "minif", "max": "maxif", "avg": "avgif",
                      "take_any": "take_anyif", "any": "take_anyif", "countif": "countif"}
    _DEFAULT_PREFIX: ClassVar[dict[str, str]] = {
        "make_bag": "bag", "make_set": "set", "makeset": "set", "make_list": "list",
                       "makelist": "list", "sum": "sum", "dcount": "dcount", "min": "min", "max": "max",
                       "avg": "avg", "take_any": "any", "any": "any"}

    def _mv_apply_aggregate(self, item: Any, hit: str) -> str:
        """`[name =] agg(args)` of the subquery's summarize, counting only the rows that came
        from the array (and passed its `where`s)."""
        named = _child(item, "namedExpressionNameClause")
        value = _child(item, "unnamedExpression")
        call = _first(value, "namedFunctionCallExpression")
        if re.fullmatch(r"count\s*\(\s*\)", _text(self.text, value).strip()):
            agg, args = "count", []  # `count` is a keyword: its call is not a named call
        elif call is None or _span(call) != _span(value):
            raise on_adx("mv-apply with a computed aggregate in its subquery")
        else:
            agg = _call_name(call, self.text).lower()
            args = [_text(self.text, a) for a in _call_args(call)]
        target = self._IF_AGGREGATES.get(agg)
        if target is None:
            raise on_adx(f"mv-apply with {agg}() in its subquery")
        if named is not None:
            name = _text(self.text, named).rstrip("=").strip()
        elif agg in ("count", "countif"):
            name = f"{agg}_"
        elif args and _IDENTIFIER.match(args[0].strip()):
            name = f"{self._DEFAULT_PREFIX[agg]}_{args[0].strip()}"
        else:
            raise on_adx(f"mv-apply with an unnamed {agg}() of an expression in its subquery")
        if agg == "countif":
            return f"{name} = countif(({args[0]}) and {hit})"
        if agg == "count":
            return f"{name} = countif({hit})"
        return f"{name} = {target}({', '.join([args[0], hit, *args[1:]])})"

    def _mv_apply_summarized(self, node: Any, operators: list[Any]) -> list[tuple[int, int, str]]:
        """`mv-apply X = E on (row-level ops | summarize aggs | row-level ops)` ->
        expand, then the aggregates grouped by every input column. Kusto gives each input row one
        row (a summarize of no rows is one row: count 0, an empty bag), so a row whose array is
        empty or null is kept through a one-null expansion its aggregates do not count, and the
        subquery's `where`s become that flag instead of dropping rows. Identical input rows are
        merged into one: without a row id they cannot be told apart."""
        kinds = [_rule(_kids(o)[0]) for o in operators]
        at = kinds.index("summarizeOperator")
        pre, post = operators[:at], operators[at + 1:]
        summarize = _kids(operators[at])[0]
        if _child(summarize, "summarizeOperatorByClause") is not None:
            raise on_adx("mv-apply with summarize ... by in its subquery")
        for op in [*pre, *post]:
            kind = _rule(_kids(op)[0])
            if kind not in ("whereOperator", "filterOperator", "extendOperator", "parseOperator") or (
                    op in post and kind == "parseOperator"):
                raise on_adx(f"mv-apply with {re.sub(r'Operator$', '', kind)} beside summarize in its subquery")
        items = [k for k in _kids(node) if _rule(k) == "mvapplyOperatorExpression"]
        if len(items) != 1 or any(not _rule(k) and k.getText().lower() in ("with_itemindex", "limit")
                                  for k in _kids(node)):
            raise on_adx("mv-apply of several arrays (or with_itemindex, limit) with summarize")
        item = items[0]
        named = _child(item, "namedExpression")
        clause = _child(named, "namedExpressionNameClause")
        array = _text(self.text, _child(named, "unnamedExpression"))
        name = _text(self.text, clause).rstrip("=").strip() if clause is not None else array.strip()
        if not _IDENTIFIER.match(name.strip("[]'\" ")):
            raise on_adx("mv-apply of an unnamed expression with summarize")
        to = _child(item, "mvapplyOperatorExpressionToClause")
        typed = f" {_text(self.text, to)}" if to is not None else ""
        piped = _ancestor(node, ("pipedOperator",))
        bare = name.strip("[]'\" ")
        columns = [c for c, _ in self._input_columns(piped, "mv-apply with summarize") if c != bare]
        hit = self.fresh()
        ops = [f"extend {hit} = coalesce(array_length({array}), 0) > 0",
               f"mv-expand {name} = iff({hit}, {array}, dynamic([null])){typed}"]
        for op in pre:
            kind = _rule(_kids(op)[0])
            if kind in ("whereOperator", "filterOperator"):
                predicate = _text(self.text, _child(_kids(op)[0], "expression") or _kids(_kids(op)[0])[-1])
                ops.append(f"extend {hit} = {hit} and ({predicate})")
            else:
                ops.append(_text(self.text, op))
        aggregates = [self._mv_apply_aggregate(k, hit) for k in _kids(summarize) if _rule(k) == "namedExpression"]
        ops.append(f"summarize {', '.join(aggregates)} by {', '.join(_quote(c) for c in columns)}")
        ops += [_text(self.text, op) for op in post]
        return [(*_span(node), " | ".join(ops))]

    def _bag_unpack(self, tree: Any) -> list[tuple[int, int, str]]:
        for node in _walk(tree):
            if _rule(node) != "evaluateOperator":
                continue
            call = _first(node, "namedFunctionCallExpression")
            if call is None or _call_name(call, self.text).lower() != "bag_unpack":
                continue
            positional: list[str] = []
            options: dict[str, str] = {}
            for arg in _call_args(call):
                named = _first(arg, "namedExpressionNameClause")
                value = _text(self.text, _first(arg, "unnamedExpression"))
                if named is not None:
                    options[_text(self.text, named).rstrip("=").strip().lower()] = value
                else:
                    positional.append(value)
            if not positional or len(positional) > 3 or ("outputcolumnprefix" in options and len(positional) > 1):
                raise KqlReachError("KQL: bag_unpack() takes a column, then an optional prefix")
            column = positional[0].strip()
            prefix = _string_value(options.get("outputcolumnprefix", positional[1] if len(positional) > 1 else "''"))
            conflict = _string_value(options.get("columnsconflict", positional[2] if len(positional) > 2
                                                 else "'error'"))
            ignored_text = options.get("ignoredproperties", "dynamic([])")
            ignored = re.fullmatch(r"dynamic\s*\(\s*\[(.*)\]\s*\)", ignored_text.strip(), re.S)
            if prefix is None or conflict not in ("error", "replace_source", "keep_source") or ignored is None:
                raise KqlReachError("KQL: bag_unpack(): the prefix, columnsConflict ('error', 'replace_source', "
                                    "'keep_source') and ignoredProperties must be literals")
            skip = {_string_value(m) for m in ignored.group(1).split(",") if m.strip()}
            if _child(node, "evaluateOperatorSchemaClause") is not None:
                raise on_adx("evaluate bag_unpack() with an output schema")
            piped = _ancestor(node, ("pipedOperator",))
            inputs = [c for c, _ in self._input_columns(piped, "evaluate bag_unpack()")]
            if self.run_rows is None:
                raise on_adx("evaluate bag_unpack() here")
            _, head = self._pipe_head(piped)
            key = self.fresh()
            keys = sorted({str(r[0]) for r in self.run_rows(
                f"{self.text[:_statement_start(piped)]}{head} | project {key} = bag_keys({column}) "
                f"| mv-expand {key} | distinct {key} = tostring({key}) | where isnotempty({key})")})
            extends: list[str] = []
            for k in keys:
                if k in skip:
                    continue
                out = f"{prefix}{k}"
                if out in inputs and out != column.strip("[]'\" "):
                    if conflict == "error":
                        raise KqlReachError(f"KQL: bag_unpack(): the key {out!r} is already a column "
                                            "(columnsConflict='error')")
                    if conflict == "keep_source":
                        continue
                extends.append(f"{_quote(out)} = {column}[{_kql_string(k)}]")
            away = f"project-away {column}"
            # `extend` keeps its columns after the input's, as Kusto places the bag's.
            replacement = (f"extend {', '.join(extends)} | " if extends else "") + away
            if any(e.startswith(column.strip() + " ") for e in extends):
                replacement = f"extend {', '.join(extends)}"  # a key named as the bag replaced it
            return [(*_span(node), replacement)]
        return []

    def _column_ifexists(self, tree: Any) -> list[tuple[int, int, str]]:
        for node in _walk(tree):
            if _rule(node) != "namedFunctionCallExpression" or _call_name(node, self.text).lower() != \
                    "column_ifexists":
                continue
            args = _call_args(node)
            name = _string_value(_text(self.text, args[0])) if len(args) == 2 else None
            if name is None:
                raise KqlReachError("KQL: column_ifexists() takes a column name (a string literal) and a default")
            piped = _ancestor(node, ("pipedOperator",))
            columns = {c for c, _ in self._input_columns(piped, "column_ifexists()")}
            return [(*_span(node), _quote(name) if name in columns else f"({_text(self.text, args[1])})")]
        return []

    def _pipe_head(self, piped: Any) -> tuple[Any, str]:
        pipe = piped.parentCtx
        return pipe, self.text[_span(pipe)[0]:_span(piped)[0]].rstrip()

    def _mv_apply(self, tree: Any) -> list[tuple[int, int, str]]:
        for node in _walk(tree):
            if _rule(node) != "mvapplyOperator":
                continue
            sub = _child(node, "contextualSubExpression")
            operators = [n for n in _walk(sub) if _rule(n) == "afterPipeOperator"]
            kinds = [_rule(_kids(o)[0]) for o in operators]
            if kinds.count("summarizeOperator") == 1:
                return self._mv_apply_summarized(node, operators)
            blocked = next((k for k in kinds if k not in _ROW_LEVEL), None)
            if blocked is not None:
                word = re.sub(r"Operator$", "", blocked)
                raise on_adx(f"mv-apply with {word} in its subquery")
            expand_start = _span(_kids(node)[0])[1]
            on = next(k for k in _kids(node) if not _rule(k) and k.getText() == "on")
            expand = self.text[expand_start:_span(on)[0]].strip()
            ops = " | ".join(_text(self.text, o) for o in operators)
            return [(*_span(node), f"mv-expand {expand}" + (f" | {ops}" if ops else ""))]
        return []

    def _project_reorder(self, tree: Any) -> list[tuple[int, int, str]]:
        for node in _walk(tree):
            if _rule(node) != "projectReorderOperator":
                continue
            piped = _ancestor(node, ("pipedOperator",))
            columns = [c for c, _ in self._input_columns(piped, "project-reorder")]
            return [(*_span(node), "project " + ", ".join(_quote(c) for c in self._reordered(node, columns)))]
        return []

    def _reordered(self, node: Any, columns: list[str]) -> list[str]:
        first: list[str] = []
        for item in (k for k in _kids(node) if _rule(k) == "projectReorderExpression"):
            pattern = _text(self.text, _first(item, "simpleOrWildcardedNameReference"))
            order = _text(self.text, item)[len(pattern):].strip().lower()
            if pattern.startswith("["):
                pattern = pattern.strip("[]").strip()[1:-1]
            regex = re.compile("".join(".*" if c == "*" else re.escape(c) for c in pattern) + r"\Z")
            matched = [c for c in columns if regex.match(c) and c not in first]
            if not matched and "*" not in pattern:
                raise KqlReachError(f"KQL: project-reorder: no column named {pattern} in its input")
            if order in ("asc", "desc"):
                matched.sort(reverse=order == "desc")
            elif order in ("granny-asc", "granny-desc"):
                matched.sort(key=lambda c: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", c)],
                             reverse=order == "granny-desc")
            first += matched
        return first + [c for c in columns if c not in first]


def rewrite(text: str, columns: KqlColumns | None = None, run: KqlRows | None = None) -> str:
    """*text* with what duckdb-kql cannot translate said in what it can; *text* itself when nothing
    needs it. *columns* compiles a query and returns its columns (project-reorder, mv-apply with
    summarize, column_ifexists and typing iff need them); *run* runs one (bag_unpack).
    Raises KqlReachError for what cannot run on the local lake."""
    return _Rewriter(text, columns, run).run()


def prepare(con: Any, text: str) -> str:
    """Ready *con* for *text* (our registry rows, the macros) and return the text duckdb-kql runs."""
    import duckdb_kql

    install()
    register_macros(con)
    def columns(query: str) -> list[tuple[str, str]]:
        relation = duckdb_kql.kql(con, query)
        return list(zip(relation.columns, (str(t) for t in relation.types), strict=True))

    def run(query: str) -> list[tuple[Any, ...]]:
        return list(duckdb_kql.kql(con, query).fetchall())

    return rewrite(text, columns, run)


def assertion_line(exc: AssertionError) -> str:
    """One line for an internal check of duckdb-kql that failed: where, and that ADX runs it."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "duckdb_kql" in f.filename]
    where = f" (in duckdb-kql's {frames[-1].name})" if frames else ""
    return f"KQL: a construct of this query does not run on the local lake{where}; run this query in ADX"
