"""Measure how much of Microsoft Sentinel's OfficeActivity content runs on AuditLake.

    python bench/sentinel_survey.py --corpus DIR --lake LAKE [--json OUT] [--timeout 60] [--no-adx]

DIR holds ``corpus/<id>.yaml`` (an analytics rule or hunting query exactly as Azure-Sentinel stores
it) and, optionally, ``manifest.json`` (a list of {id, name, kind, path, commit}); without a manifest
every ``corpus/*.yaml`` is taken, its kind ``unknown``. The corpus lives outside the repository:
this tool holds no query text.

For each query:

* its ``query:`` field is read from the YAML (block scalar, or one quoted line). Hunting templates
  carry placeholders that the Sentinel portal fills from the time range picked in the Hunting blade;
  ``{{StartTimeISO}}``/``{{EndTimeISO}}`` (and ``{{StartTime}}``/``{{EndTime}}``) become the start and
  end of the last ``--window-hours`` hours (default 24), ending now in UTC to the second, written
  ``2026-01-02T03:04:05Z``: recent enough for a demo lake, whose records are dated from now. Any
  other ``{{Name}}`` is reported, not guessed; the query is then not run.
* it runs on the lake through ``auditlake.cli.run_kql`` on a read-only connection, in a worker
  process that is killed after ``--timeout`` seconds, and is classified ``runs`` (it returned, even
  no rows), ``unsupported`` (duckdb-kql's KqlUnsupportedError, or AuditLake's "does not run on the
  local lake"; the construct is kept), ``column`` (an unknown column, or DuckDB rejecting a column's
  type; the column is named) or ``error`` (anything else, one line).
* it is type-checked for ADX by tests/contract/kql_check.cjs (Kusto.Language under Node) against
  the database the contract tests describe, with the KQL function library (OfficeActivity among
  them) declared, through the helpers of tests/contract/test_kql_parse.py.
* duckdb-kql's ANTLR parse tree is tallied: operators, functions, OfficeActivity columns named, and
  the string literals compared with a column (``==``, ``=~``, ``in``, ``has``, ... including values
  held in a ``let`` of literals), which is what OfficeActivity's values must match.

Prints a summary; ``--json`` writes every figure per query.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
OUTCOMES = ("runs", "unsupported", "column", "error")
TIME_PLACEHOLDERS = ("StartTimeISO", "EndTimeISO", "StartTime", "EndTime")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Wrappers that leave "which column is compared" unchanged: `tolower(UserType) == "admin"`.
TRANSPARENT = {"tolower", "toupper", "tostring", "trim", "strcat"}
# Names Kusto makes up for unnamed aggregates and join clashes: not columns the query expects.
GENERATED = re.compile(r"^(count_|dcount_|countif_|set_|list_|bag_|sum_|avg_|min_|max_|any_|arg_)|\d$")
UNKNOWN_COLUMN = re.compile(r'Referenced column "([^"]+)" not found')


class SurveyInputError(Exception):
    """The corpus itself is wrong (unreadable file, no query field): one line."""


# -- corpus ----------------------------------------------------------------------------------


@dataclass
class Entry:
    id: str
    name: str
    kind: str
    path: str
    commit: str
    file: Path


def load_corpus(corpus: Path) -> list[Entry]:
    files = corpus / "corpus"
    if not files.is_dir():
        raise SurveyInputError(f"{files}: no such directory (the corpus is DIR/corpus/<id>.yaml)")
    manifest = corpus / "manifest.json"
    if not manifest.is_file():
        found = sorted(files.glob("*.yaml"))
        if not found:
            raise SurveyInputError(f"{files}: no .yaml file")
        return [Entry(f.stem, f.stem, "unknown", f.name, "", f) for f in found]
    try:
        rows = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SurveyInputError(f"{manifest}: not readable JSON ({exc})") from exc
    if not isinstance(rows, list):
        raise SurveyInputError(f"{manifest}: expected a list of entries")
    entries = []
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise SurveyInputError(f"{manifest}: entry {n} has no string id")
        file = files / f"{row['id']}.yaml"
        if not file.is_file():
            raise SurveyInputError(f"{manifest}: entry {row['id']} has no file {file}")
        entries.append(Entry(row["id"], str(row.get("name", row["id"])), str(row.get("kind", "unknown")),
                             str(row.get("path", "")), str(row.get("commit", "")), file))
    return entries


def yaml_field(text: str, key: str) -> str | None:
    """A top-level scalar of a Sentinel content YAML: a block scalar (``|``, ``|-``, ``>``), a quoted
    or a plain one-line value. The lake venv has no YAML library, and this is all the content uses."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith(f"{key}:"):
            continue
        value = line[len(key) + 1:].strip()
        if value[:1] in ("|", ">"):
            return _block(lines, i, key)
        if value.startswith('"'):
            try:
                decoded = json.loads(value)
            except ValueError as exc:
                raise SurveyInputError(f"{key}: a double-quoted value that does not decode ({exc})") from exc
            return str(decoded)
        if value.startswith("'") and value.endswith("'") and len(value) > 1:
            return value[1:-1].replace("''", "'")
        return value
    return None


def _block(lines: list[str], start: int, key: str) -> str:
    body: list[str] = []
    for j in range(start + 1, len(lines)):
        line = lines[j]
        if line.strip() and not line[0].isspace():
            # A block scalar ends at the next key; anything else at column 0 is broken YAML.
            if not re.match(r"^[A-Za-z_][\w-]*:", line):
                raise SurveyInputError(f"{key}: line {j + 1} is outdented inside the block: {line.strip()[:60]}")
            break
        body.append(line)
    indents = [len(b) - len(b.lstrip(" ")) for b in body if b.strip()]
    if not indents:
        raise SurveyInputError(f"{key}: the block is empty")
    cut = indents[0]
    return "\n".join(b[cut:] if b.strip() else "" for b in body).strip("\n") + "\n"


def read_query(entry: Entry) -> str:
    try:
        text = entry.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SurveyInputError(f"{entry.file}: unreadable ({exc})") from exc
    query = yaml_field(text, "query")
    if not query or not query.strip():
        raise SurveyInputError(f"{entry.file}: no query field")
    return query


def fill_placeholders(query: str, start: datetime, end: datetime) -> tuple[str, list[str]]:
    """The query with the time placeholders filled, and the names of any other placeholder."""
    values = {"StartTimeISO": start, "EndTimeISO": end, "StartTime": start, "EndTime": end}
    unknown: list[str] = []

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in values:
            return values[name].strftime("%Y-%m-%dT%H:%M:%SZ")
        unknown.append(name)
        return m.group(0)

    return PLACEHOLDER.sub(fill, query), unknown


# -- the parse tree ----------------------------------------------------------------------------


@dataclass
class Tally:
    operators: Counter[str] = field(default_factory=Counter)
    functions: Counter[str] = field(default_factory=Counter)
    names: set[str] = field(default_factory=set)
    defined: set[str] = field(default_factory=set)
    comparisons: list[tuple[str, str, str]] = field(default_factory=list)
    parse_error: str | None = None


def _rule(node: Any) -> str:
    if node.getChildCount() == 0 or not hasattr(node, "getRuleIndex"):
        return ""
    return str(node.parser.ruleNames[node.getRuleIndex()])


def _children(node: Any) -> list[Any]:
    return [node.getChild(i) for i in range(node.getChildCount())]


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for child in _children(node):
        yield from _walk(child)


def _collapse(node: Any) -> Any:
    while hasattr(node, "getRuleIndex") and node.getChildCount() == 1:
        node = node.getChild(0)
    return node


def _first_token(node: Any) -> str:
    for n in _walk(node):
        if n.getChildCount() == 0:
            return str(n.getText())
    return ""


def _name(node: Any) -> str:
    text = str(node.getText())
    m = re.match(r"^\[\s*['\"](.*)['\"]\s*\]$", text)
    return m.group(1) if m else text


def kql_string(token: str) -> str:
    """The value of a KQL string literal token: "..", '..', @"..", h"..", with escapes."""
    t = token
    if t[:1] in ("h", "H") and len(t) > 1 and t[1] in "\"'@":
        t = t[1:]
    if t.startswith("@"):
        quote = t[1]
        return t[2:-1].replace(quote * 2, quote)
    escapes = {"n": "\n", "t": "\t", "r": "\r"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(1)), t[1:-1])


def _literals(node: Any, lets: dict[str, list[str]]) -> list[str] | None:
    """The string values *node* stands for, when it is only literals (or a let of literals)."""
    n = _collapse(node)
    rule = _rule(n)
    if n.getChildCount() == 0:
        text = str(n.getText())
        if text[:1] in "\"'@hH" and len(text) > 1 and text[-1] in "\"'":
            return [kql_string(text)]
        return lets.get(text)
    if rule in ("stringLiteralExpression", "jsonString"):
        return [kql_string(_first_token(n))]
    if rule in ("nameReferenceWithDataScope", "simpleNameReference", "identifierOrKeywordOrEscapedName"):
        return lets.get(_name(n))
    if rule == "dynamicLiteralExpression":
        return [kql_string(str(s.getText())) for s in _walk(n) if _rule(s) == "jsonString"]
    if rule == "namedFunctionCallExpression" and _first_token(n) in ("pack_array", "dynamic"):
        values: list[str] = []
        for arg in _children(n)[2:-1:2]:
            got = _literals(arg, lets)
            if got is None:
                return None
            values += got
        return values
    if rule == "parenthesizedExpression":
        return _literals(_children(n)[1], lets)
    return None


def _compared_column(node: Any) -> str | None:
    n = _collapse(node)
    rule = _rule(n)
    if n.getChildCount() == 0 or rule in ("nameReferenceWithDataScope", "simpleNameReference"):
        name = _name(n)
        return name if IDENTIFIER.match(name) else None
    if rule == "namedFunctionCallExpression" and _first_token(n) in TRANSPARENT:
        args = _children(n)[2:-1:2]
        return _compared_column(args[0]) if len(args) == 1 else None
    return None


def tally(query: str) -> Tally:
    """Operators, functions, names and literal comparisons of *query*, from duckdb-kql's parse."""
    import duckdb_kql

    out = Tally()
    try:
        tree = duckdb_kql.parse(query).tree
    except duckdb_kql.KqlError as exc:
        out.parse_error = _one_line(str(exc))
        return out
    lets: dict[str, list[str]] = {}
    for node in _walk(tree):
        rule = _rule(node)
        kids = _children(node)
        if rule in ("letVariableDeclaration", "letFunctionDeclaration"):
            name = _name(kids[1])
            out.defined.add(name)
            out.operators["let" if rule == "letVariableDeclaration" else "let function"] += 1
            if rule == "letVariableDeclaration":
                values = _literals(kids[-1], lets)
                if values is not None:
                    lets[name] = values
        elif rule == "parameterName":
            out.defined.add(_name(node))
        elif rule.endswith("Operator") and _rule(node.parentCtx) in ("afterPipeOperator", "beforePipeExpression"):
            verb = _first_token(node).lower()
            if verb == "join":
                kind = next((_first_token(p.getChild(2)) for p in kids if _rule(p) == "relaxedQueryOperatorParameter"
                             and _first_token(p) == "kind"), "innerunique (default)")
                verb = f"join kind={kind}"
            elif verb == "evaluate":
                verb = f"evaluate {_first_token(kids[-1])}"
            out.operators[verb] += 1
        elif rule == "functionCallExpression":
            out.functions[_first_token(node)] += 1
        elif rule == "namedExpressionNameClause":
            out.defined.update(_name(n) for n in _walk(node) if _rule(n) == "identifierName" or
                               (n.getChildCount() == 0 and IDENTIFIER.match(str(n.getText()))))
        elif rule == "parseOperatorPattern":
            out.defined.update(str(n.getText()) for n in _walk(node)
                               if n.getChildCount() == 0 and IDENTIFIER.match(str(n.getText())))
        elif rule == "nameReferenceWithDataScope":
            name = _name(node)
            if name in ("$left", "$right"):
                continue
            out.names.add(name)
        elif rule == "functionCallOrPathExpression" and _first_token(node) in ("$left", "$right") and len(kids) > 1:
            out.names.add(_name(kids[1].getChild(0).getChild(1)))
        if rule == "stringBinaryOperatorExpression" and len(kids) >= 2:
            _compare(out, kids[0], [(k, 1) for k in kids[1:] if _rule(k) == "stringBinaryOperation"], lets)
        elif rule == "equalityExpression" and len(kids) >= 2:
            tails = [(k, 1) for k in kids[1:] if _rule(k) == "equalityExpressionTail"]
            _compare(out, kids[0], tails, lets)
    return out


def _compare(out: Tally, lhs: Any, tails: list[tuple[Any, int]], lets: dict[str, list[str]]) -> None:
    column = _compared_column(lhs)
    if column is None:
        return
    for tail, skip in tails:
        parts = _children(tail)
        op = str(parts[0].getText())
        operands = [p for p in parts[skip:] if p.getChildCount() > 0 or str(p.getText()) not in "(),"]
        for operand in operands:
            values = _literals(operand, lets)
            for value in values or []:
                out.comparisons.append((column, op, value))


# -- running on the lake -----------------------------------------------------------------------


def _one_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept = []
    for line in lines:
        if line.startswith(("Candidate functions", "LINE ")) or set(line) == {"^"}:
            break
        kept.append(line)
    joined = "; ".join(kept) or "(no message)"
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


def classify(exc: BaseException, lake_columns: set[str]) -> dict[str, Any]:
    """The outcome of a query that raised *exc* on the lake."""
    import duckdb
    import duckdb_kql

    from auditlake.cli import CliError
    from auditlake.lake.kql_reach import KqlReachError

    cause = exc.__cause__ if isinstance(exc, CliError) else exc
    if isinstance(cause, duckdb_kql.KqlUnsupportedError):
        return {"outcome": "unsupported", "construct": cause.construct, "detail": _one_line(str(cause))}
    if isinstance(cause, KqlReachError):
        m = re.match(r"^(?:KQL: )?(.*?) does not run on the local lake", str(cause))
        return {"outcome": "unsupported", "construct": m.group(1) if m else _one_line(str(cause)),
                "detail": _one_line(str(cause))}
    if isinstance(cause, duckdb_kql.KqlSchemaError):
        return {"outcome": "column", "column": cause.name, "problem": "unknown", "detail": _one_line(str(cause))}
    if isinstance(cause, duckdb.Error):
        message = str(cause)
        unknown = UNKNOWN_COLUMN.search(message)
        if unknown:
            return {"outcome": "column", "column": unknown.group(1), "problem": "unknown",
                    "detail": _one_line(message)}
        named = [c for c in re.findall(r'"([^"]+)"', message.split("\n")[0]) if c in lake_columns]
        if named and re.search(r"Conversion Error|Could not convert|No function matches|Cannot compare|"
                               r"type|Mismatch", message):
            return {"outcome": "column", "column": named[0], "problem": "type", "detail": _one_line(message)}
    return {"outcome": "error", "detail": _one_line(f"{type(cause).__name__}: {cause}")}


def worker(lake: str) -> int:
    """Runs queries read one per line (JSON) from stdin; answers one JSON line each on stdout."""
    answers = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # whatever the libraries print goes to stderr, never into the answers
    sys.stdout = sys.stderr
    from auditlake.cli import run_kql
    from auditlake.lake.duckdb_lake import LocalLake

    opened = LocalLake(lake, read_only=True)
    con = opened.connection
    columns: set[str] = set()
    for line in sys.stdin:
        request = json.loads(line)
        started = time.monotonic()
        answer: dict[str, Any]
        try:
            names, _, rows = run_kql(con, request["text"])
            answer = {"outcome": "runs", "rows": len(rows), "columns": names}
            if request.get("schema"):
                columns = set(names)
        except Exception as exc:  # every failure is an outcome, never a traceback
            try:
                answer = classify(exc, columns)
            except Exception as inner:
                answer = {"outcome": "error", "detail": _one_line(f"{type(exc).__name__}: {exc} ({inner})")}
        answer["seconds"] = round(time.monotonic() - started, 2)
        answers.write(json.dumps(answer, default=str) + "\n")
    opened.close()
    return 0


class Runner:
    """One worker process, reused across queries, replaced when a query overruns its time."""

    WARM_UP = "OfficeActivity | take 0"

    def __init__(self, lake: Path, timeout: float, *, setup_timeout: float = 600.0) -> None:
        self.lake = lake
        self.timeout = timeout
        self.setup_timeout = max(timeout, setup_timeout)
        self.proc: subprocess.Popen[bytes] | None = None
        # The worker's stderr, for the last line when it dies; closed by close().
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        self.pending = b""

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        args = [sys.executable, str(Path(__file__).resolve()), "--worker", str(self.lake)]
        return subprocess.Popen(args, cwd=REPO, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)

    def run(self, text: str, *, schema: bool = False, timeout: float | None = None) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc, self.pending = self._start(), b""
            if text != self.WARM_UP:
                # A fresh worker's first query pays for imports and the lake's setup, which is no
                # measure of the query: pay it on a query of no interest, under the setup limit.
                warm = self.run(self.WARM_UP, schema=True, timeout=self.setup_timeout)
                if warm["outcome"] != "runs":
                    return {**warm, "detail": "the worker did not start: " + str(warm.get("detail", ""))}
        proc = self.proc
        assert proc is not None
        assert proc.stdin is not None and proc.stdout is not None
        started = time.monotonic()
        try:
            proc.stdin.write((json.dumps({"text": text, "schema": schema}) + "\n").encode())
            proc.stdin.flush()
        except OSError:
            return self._died(started)
        limit = self.timeout if timeout is None else timeout
        deadline = started + limit
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self.pending:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.stop()
                    return {"outcome": "error", "detail": f"timed out after {limit:g} s",
                            "seconds": round(time.monotonic() - started, 2)}
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    return self._died(started)
                self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _died(self, started: float) -> dict[str, Any]:
        self.stop()
        self.log.seek(0)
        tail = [ln for ln in self.log.read().decode(errors="replace").splitlines() if ln.strip()]
        return {"outcome": "error", "detail": "the worker exited: " + _one_line(tail[-1] if tail else "no message"),
                "seconds": round(time.monotonic() - started, 2)}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.stop()
        self.proc = None
        self.log.close()


# -- the ADX check -----------------------------------------------------------------------------


def adx_check(queries: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Kusto.Language's verdict per query id: {"ok", "errors": [{code, message, line, column}]}."""
    from tests.contract.test_kql_parse import FUNCTIONS, run_check

    with tempfile.TemporaryDirectory(prefix="sentinel-adx-") as tmp:
        base = Path(tmp)
        files = {}
        for n, (qid, text) in enumerate(queries):
            path = base / f"q{n:04d}.kql"
            path.write_text(text, encoding="utf-8")
            files[str(path)] = qid
        try:
            report = run_check(base, sorted(FUNCTIONS.glob("*.kql")) + [Path(p) for p in files])
        except BaseException as exc:  # pytest.fail raises a BaseException; the survey still reports
            if isinstance(exc, KeyboardInterrupt):
                raise
            reason = _one_line(f"kql_check.cjs could not check: {exc}")
            return {qid: {"ok": False, "errors": [], "failure": reason} for qid in files.values()}
    out: dict[str, dict[str, Any]] = {}
    for f in report["files"]:
        owner = files.get(str(f["file"]))
        if owner is None:
            library = [e for c in f["commands"] for e in c["errors"]]
            if library:
                out.setdefault("(library)", {"ok": False, "errors": []})["errors"] += library
            continue
        errors = [{k: e[k] for k in ("code", "message", "line", "column")} for c in f["commands"] for e in c["errors"]]
        out[owner] = {"ok": not errors, "errors": errors}
    return out


# -- the survey --------------------------------------------------------------------------------


@dataclass
class Result:
    id: str
    name: str
    kind: str
    path: str
    commit: str
    outcome: str
    detail: str = ""
    construct: str | None = None
    column: str | None = None
    problem: str | None = None
    rows: int | None = None
    seconds: float | None = None
    placeholders: list[str] = field(default_factory=list)
    adx: dict[str, Any] = field(default_factory=dict)
    operators: dict[str, int] = field(default_factory=dict)
    functions: dict[str, int] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    comparisons: list[list[str]] = field(default_factory=list)


def survey(corpus: Path, lake: Path, *, timeout: float = 60.0, window: timedelta = timedelta(hours=24),
           adx: bool = True, now: datetime | None = None, progress: TextIO | None = None,
           setup_timeout: float = 600.0) -> dict[str, Any]:
    entries = load_corpus(corpus)
    if not lake.is_file():
        raise SurveyInputError(f"{lake}: no lake file")
    end = (now or datetime.now(UTC)).replace(microsecond=0)
    start = end - window
    runner = Runner(lake, timeout, setup_timeout=setup_timeout)
    results: list[Result] = []
    texts: list[tuple[str, str]] = []
    try:
        # The first query also pays for the worker's start: it has a limit of its own.
        schema = runner.run(Runner.WARM_UP, schema=True, timeout=runner.setup_timeout)
        if schema["outcome"] != "runs":
            raise SurveyInputError(f"{lake}: OfficeActivity does not run on this lake: {schema.get('detail')}")
        lake_columns = set(schema["columns"])
        for n, e in enumerate(entries, 1):
            result = Result(e.id, e.name, e.kind, e.path, e.commit, outcome="error")
            try:
                query, unknown = fill_placeholders(read_query(e), start, end)
            except SurveyInputError as exc:
                result.detail = str(exc)
                results.append(result)
                continue
            texts.append((e.id, query))
            result.placeholders = sorted(set(PLACEHOLDER.findall(read_query(e))))
            t = tally(query)
            result.operators = dict(t.operators.most_common())
            result.functions = dict(t.functions.most_common())
            result.columns = sorted(t.names & lake_columns)
            result.unresolved = sorted(x for x in t.names - lake_columns - t.defined
                                       if not GENERATED.search(x) and not x.startswith("$") and x != "OfficeActivity")
            result.comparisons = [[c, op, v] for c, op, v in t.comparisons
                                  if c in lake_columns or c in result.unresolved]
            if unknown:
                result.detail = "no value for the placeholder(s) " + ", ".join(f"{{{{{u}}}}}" for u in unknown)
            elif t.parse_error:
                result.detail = f"duckdb-kql does not parse it: {t.parse_error}"
            else:
                answer = runner.run(query)
                result.outcome = str(answer["outcome"])
                result.detail = str(answer.get("detail", ""))
                result.construct = answer.get("construct")
                result.column = answer.get("column")
                result.problem = answer.get("problem")
                result.rows = answer.get("rows")
                result.seconds = answer.get("seconds")
            if progress is not None:
                progress.write(f"[{n}/{len(entries)}] {result.outcome:<11} {e.name}\n")
                progress.flush()
            results.append(result)
    finally:
        runner.close()
    if adx and texts:
        verdicts = adx_check(texts)
        for r in results:
            r.adx = verdicts.get(r.id, {})
    return report(results, corpus, lake, start, end, adx)


def report(results: list[Result], corpus: Path, lake: Path, start: datetime, end: datetime,
           adx: bool) -> dict[str, Any]:
    outcomes = Counter(r.outcome for r in results)
    deps: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        for column, op, value in {(c, op, v) for c, op, v in r.comparisons}:
            seen = deps.setdefault(column, {}).setdefault(value, {"queries": set(), "ops": set()})
            seen["queries"].add(r.id)
            seen["ops"].add(op)
    return {
        "corpus": str(corpus), "lake": str(lake),
        "placeholders": {"StartTimeISO": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "EndTimeISO": end.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "totals": {
            "queries": len(results),
            "by_kind": dict(Counter(r.kind for r in results)),
            **{o: outcomes.get(o, 0) for o in OUTCOMES},
            "adx_checked": adx,
            "adx_clean": sum(1 for r in results if r.adx.get("ok")),
            "adx_with_errors": sum(1 for r in results if r.adx and not r.adx.get("ok")),
        },
        "unsupported_constructs": dict(Counter(r.construct or "?" for r in results
                                               if r.outcome == "unsupported").most_common()),
        "column_errors": [{"id": r.id, "name": r.name, "column": r.column, "problem": r.problem, "detail": r.detail}
                          for r in results if r.outcome == "column"],
        "errors": [{"id": r.id, "name": r.name, "detail": r.detail} for r in results if r.outcome == "error"],
        "dependencies": {c: {v: {"queries": len(d["queries"]), "ops": sorted(d["ops"])}
                             for v, d in sorted(vals.items(), key=lambda kv: (-len(kv[1]["queries"]), kv[0]))}
                         for c, vals in sorted(deps.items())},
        "operators": _spread(r.operators for r in results),
        "functions": _spread(r.functions for r in results),
        "columns": _spread({c: 1 for c in r.columns} for r in results),
        "unresolved_names": _spread({c: 1 for c in r.unresolved} for r in results),
        "queries": [asdict(r) for r in results],
    }


def _spread(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """In how many queries each key occurs."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(set(c))
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(data: dict[str, Any]) -> str:
    t = data["totals"]
    n = t["queries"] or 1
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(t["by_kind"].items()))
    out = [f"Sentinel OfficeActivity survey: {t['queries']} queries ({kinds})",
           f"  corpus {data['corpus']}; lake {data['lake']}",
           f"  hunting placeholders: {{{{StartTimeISO}}}}={data['placeholders']['StartTimeISO']} "
           f"{{{{EndTimeISO}}}}={data['placeholders']['EndTimeISO']}",
           "Local lake: " + ", ".join(f"{o} {t[o]} ({100 * t[o] / n:.0f}%)" for o in OUTCOMES)]
    if t["adx_checked"]:
        out.append(f"ADX type check (Kusto.Language): {t['adx_clean']} clean, {t['adx_with_errors']} with errors")
    out.append("Unsupported constructs (queries):")
    out += [f"  {v:3d}  {k}" for k, v in data["unsupported_constructs"].items()] or ["  none"]
    out.append("Column errors:")
    out += [f"  {c['column']} ({c['problem']}) in {c['name']} [{c['id']}]: {c['detail']}"
            for c in data["column_errors"]] or ["  none"]
    out.append("Other errors:")
    out += [f"  {e['name']} [{e['id']}]: {e['detail']}" for e in data["errors"]] or ["  none"]
    if t["adx_checked"]:
        out.append("ADX errors:")
        adx_lines = [f"  {q['name']} [{q['id']}]: {e['code']} {e['line']}:{e['column']} {e['message']}"
                     for q in data["queries"] for e in q["adx"].get("errors", [])]
        adx_lines += [f"  {q['name']} [{q['id']}]: {q['adx']['failure']}" for q in data["queries"]
                      if q["adx"].get("failure")]
        out += adx_lines or ["  none"]
    out.append("Column/value dependencies (column: literal xqueries (operators)):")
    for column, values in data["dependencies"].items():
        out.append(f"  {column}: " + ", ".join(f"{json.dumps(v)} x{d['queries']} ({' '.join(d['ops'])})"
                                               for v, d in values.items()))
    for title, key in (("Operators", "operators"), ("Functions", "functions"),
                       ("OfficeActivity columns named", "columns"),
                       ("Names neither a lake OfficeActivity column nor defined by the query", "unresolved_names")):
        out.append(f"{title} (queries): " + (", ".join(f"{k} {v}" for k, v in data[key].items()) or "none"))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--corpus", type=Path, help="directory with corpus/<id>.yaml and manifest.json")
    parser.add_argument("--lake", type=Path, help="the DuckDB lake to run on (opened read-only)")
    parser.add_argument("--json", type=Path, help="write the full result here")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per query (default 60)")
    parser.add_argument("--window-hours", type=float, default=24.0, help="hunting time range (default 24)")
    parser.add_argument("--no-adx", action="store_true", help="skip the Kusto.Language type check")
    parser.add_argument("--quiet", action="store_true", help="no per-query progress on stderr")
    parser.add_argument("--setup-timeout", type=float, default=600.0,
                        help="seconds for the worker's start and first query (default 600)")
    parser.add_argument("--worker", metavar="LAKE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.corpus is None or args.lake is None:
        parser.error("--corpus and --lake are required")
    try:
        data = survey(args.corpus, args.lake, timeout=args.timeout, window=timedelta(hours=args.window_hours),
                      adx=not args.no_adx, progress=None if args.quiet else sys.stderr,
                      setup_timeout=args.setup_timeout)
    except SurveyInputError as exc:
        print(f"sentinel_survey: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    sys.stdout.write(summary(data))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
