"""Reading infra/ without the Bicep CLI: pycep-parser's JSON, tree-sitter-bicep, checkov.

The parsers come from the project's dev extras; checkov lives in its own virtualenv
(``.venv-tools``, made by ``make tools``) because its pinned dependencies clash with the
project's. A missing tool skips the tests that need it on a developer's machine and fails
them in CI (``CI`` set), so CI can never pass without having run them.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KQL_DIR = INFRA / "kql"
# The KQL function library: package data of the local tool, deployed to ADX by adx-database.bicep.
KQL_FUNCTIONS_DIR = REPO / "auditlake" / "kql" / "functions"
TOOLS_VENV = REPO / ".venv-tools"
CHECKOV = TOOLS_VENV / "bin" / "checkov"

# A Bicep extension declaration (`extension microsoftGraphV1`): checkov's parser cannot read it.
_EXTENSION = re.compile(r"^\s*extension\s+(\w+)", re.MULTILINE)


def missing_tool(what: str, how: str) -> None:
    """Skip outside CI, fail in CI: a required checker is not installed."""
    message = f"{what} is not installed ({how})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the Bicep checks")
    pytest.skip(message)


def require(module: str) -> ModuleType:
    """Import *module* (a dev dependency), or skip/fail as ``missing_tool`` does."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing_tool(module, "it is in the dev extras: make setup")
        raise  # unreachable: skip and fail raise


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def extensions_declared(path: Path) -> list[str]:
    """The aliases of the Bicep extensions *path* declares (empty for plain ARM files)."""
    return _EXTENSION.findall(path.read_text(encoding="utf-8"))


@functools.cache
def parsed(path: Path) -> dict[str, Any]:
    """pycep-parser's JSON of one Bicep file."""
    pycep = require("pycep")
    result: dict[str, Any] = pycep.BicepParser().parse(text=path.read_text(encoding="utf-8"))
    return result


def tree_sitter_errors(path: Path) -> list[str]:
    """Syntax errors tree-sitter-bicep finds in *path* (an ``extension`` line is blanked first:
    tree-sitter-bicep predates that keyword)."""
    tsb = require("tree_sitter_bicep")
    ts = require("tree_sitter")
    parser = ts.Parser(ts.Language(tsb.language()))
    source = _EXTENSION.sub(lambda m: " " * len(m.group(0)), path.read_text(encoding="utf-8"))
    tree = parser.parse(source.encode("utf-8"))
    errors: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            line, column = node.start_point
            errors.append(f"{rel(path)}:{line + 1}:{column + 1}: {node.type}")
        stack.extend(node.children)
    return errors


# -- walking pycep's JSON ------------------------------------------------------------------


def walk(node: Any) -> Iterator[Any]:
    """Every dict, list and scalar in a pycep tree, depth first."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def function_calls(node: Any, kind: str) -> Iterator[dict[str, Any]]:
    """The ``parameters`` of every call of the Bicep function *kind* (pycep's snake_case name)."""
    for sub in walk(node):
        if isinstance(sub, dict) and isinstance(sub.get("function"), dict) and sub["function"].get("type") == kind:
            yield sub["function"]["parameters"]


def load_text_targets(path: Path) -> list[Path]:
    """Files *path* reads with ``loadTextContent``, in the order they appear, resolved."""
    return [(path.parent / call["file_path"]).resolve() for call in function_calls(parsed(path), "load_text_content")]


def body(declaration: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module, looking through ``if (...)`` and ``[for ...]``."""
    config: dict[str, Any] = declaration["config"]
    while isinstance(config.get("config"), dict) and ("condition" in config or "loop_type" in config):
        config = config["config"]
    return config


def resources(path: Path) -> dict[str, dict[str, Any]]:
    return dict(parsed(path).get("resources") or {})


def decorator(declaration: dict[str, Any], kind: str) -> Any:
    for item in declaration.get("decorators") or []:
        if item.get("type") == kind:
            return item.get("argument")
    return None


def resolve(value: Any, tree: dict[str, Any]) -> Any:
    """*value*, or the value of the variable it names (followed through variables)."""
    variables = tree.get("variables") or {}
    seen: set[str] = set()
    while isinstance(value, str) and value in variables and value not in seen:
        seen.add(value)
        value = variables[value]["value"]
    return value


def declared_resources(path: Path, kind: str) -> dict[str, dict[str, Any]]:
    """The resources of type *kind* that *path* declares (not ``existing`` ones), by symbol."""
    return {s: r for s, r in resources(path).items() if r["type"] == kind and not r.get("existing")}


def diagnostic_settings(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The bodies of the Microsoft.Insights/diagnosticSettings of *path*, by the symbol of the
    resource each one is scoped to."""
    found: dict[str, list[dict[str, Any]]] = {}
    for resource in declared_resources(path, "Microsoft.Insights/diagnosticSettings").values():
        config = body(resource)
        found.setdefault(str(config.get("scope")), []).append(config)
    return found


def is_reference(value: Any, tree: dict[str, Any]) -> bool:
    """pycep writes identifiers and string literals alike; a declared name is a reference."""
    if not isinstance(value, str):
        return True  # a function call, operator or other expression
    names = set(tree.get("parameters") or {}) | set(tree.get("variables") or {})
    return value in names


# -- the function app's app settings --------------------------------------------------------


def app_settings_by_mode(path: Path) -> dict[str, dict[str, Any]]:
    """``{mode: {setting: value}}`` of the Microsoft.Web/sites resource of *path*.

    The settings are ``siteConfig.appSettings: [for s in items(<object>): {name: s.key, value:
    s.value}]``; the object is a variable built from object literals, variables, ``union()`` and
    ``<variable>[<param>]`` where the parameter has ``@allowed`` values: one mode per value.
    """
    tree = parsed(path)
    sites = [r for r in resources(path).values() if r["type"] == "Microsoft.Web/sites" and not r.get("existing")]
    assert len(sites) == 1, f"{rel(path)}: expected one function app"
    settings = body(sites[0])["properties"]["siteConfig"]["appSettings"]
    loop = settings["loop_type"]["detail"]
    source = loop["array_name"]
    assert source["function"]["type"] == "items", "appSettings must be built with items(<object>)"
    item = loop["item_name"]
    assert _accessor(settings["config"]["name"]) == (item, "key") and _accessor(settings["config"]["value"]) == (
        item, "value"), "appSettings items must be {name: s.key, value: s.value}"
    root = source["function"]["parameters"]["arg_1"]
    selectors = sorted(set(_selectors(root, tree)))
    choices = [decorator(tree["parameters"][p], "allowed") for p in selectors]
    assert all(choices), f"{selectors}: every parameter that selects settings needs @allowed values"
    modes: dict[str, dict[str, Any]] = {}
    for combination in itertools.product(*choices):
        chosen = dict(zip(selectors, combination, strict=True))
        modes["/".join(combination) or "default"] = _evaluate(root, tree, chosen)
    return modes


def _accessor(node: Any) -> tuple[Any, Any] | None:
    operator = node.get("operator") if isinstance(node, dict) else None
    if not operator or operator.get("type") != "property_accessor":
        return None
    return operator["operands"]["operand_1"], operator["operands"]["operand_2"]


def _selectors(node: Any, tree: dict[str, Any]) -> Iterator[str]:
    if isinstance(node, str) and node in (tree.get("variables") or {}):
        yield from _selectors(tree["variables"][node]["value"], tree)
    elif isinstance(node, dict) and "function" in node:
        for arg in node["function"]["parameters"].values():
            yield from _selectors(arg, tree)
    elif isinstance(node, dict) and "operator" in node and node["operator"]["type"] == "index_accessor":
        operands = node["operator"]["operands"]
        yield from _selectors(operands["operand_1"], tree)
        if operands["operand_2"] in (tree.get("parameters") or {}):
            yield operands["operand_2"]


def _evaluate(node: Any, tree: dict[str, Any], chosen: dict[str, str]) -> dict[str, Any]:
    if isinstance(node, str) and node in (tree.get("variables") or {}):
        return _evaluate(tree["variables"][node]["value"], tree, chosen)
    if isinstance(node, dict) and "function" in node:
        call = node["function"]
        assert call["type"] == "union", f"unsupported function in app settings: {call['type']}"
        merged: dict[str, Any] = {}
        for arg in call["parameters"].values():
            merged.update(_evaluate(arg, tree, chosen))
        return merged
    if isinstance(node, dict) and "operator" in node:
        operator = node["operator"]
        assert operator["type"] == "index_accessor", f"unsupported operator in app settings: {operator['type']}"
        container = _evaluate(operator["operands"]["operand_1"], tree, chosen)
        key = operator["operands"]["operand_2"]
        key = chosen.get(key, key)
        assert key in container, f"no settings for {key!r}"
        return dict(container[key])
    assert isinstance(node, dict), f"unsupported app settings expression: {node!r}"
    return dict(node)


# -- checkov ---------------------------------------------------------------------------------


def run_checkov(skip: list[Path]) -> dict[str, Any]:
    """checkov's JSON report of infra/ (framework bicep, offline), *skip* left out."""
    if not CHECKOV.exists():
        missing_tool("checkov", f"its virtualenv {rel(TOOLS_VENV)} is made by `make tools`")
    command = [str(CHECKOV), "--directory", str(INFRA), "--framework", "bicep", "--skip-download",
               "--output", "json", "--compact"]
    for path in skip:
        command += ["--skip-path", re.escape(path.relative_to(INFRA).as_posix()) + "$"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.stdout.strip(), f"checkov printed nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    # One framework gives one report; checkov prints a list when there are several.
    reports = report if isinstance(report, list) else [report]
    assert [r.get("check_type") for r in reports] == ["bicep"], f"unexpected checkov reports: {done.stdout[:500]}"
    result: dict[str, Any] = reports[0]
    return result


# -- Bicep strings ---------------------------------------------------------------------------

# An escape (\n, \', \\, \$, \u{...}) or an interpolation (${...}) in pycep's raw string text.
_STRING_PART = re.compile(r"\\(u\{[0-9a-fA-F]+\}|.)|\$\{([^}]*)\}", re.DOTALL)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", "$": "$"}


def render_string(text: str, values: dict[str, Any]) -> str:
    """The value of a Bicep string literal as pycep gives it (escapes and ``${...}`` kept as
    written), each interpolation replaced from *values* by its expression text (``gapHours``,
    ``rule.check``). An interpolation *values* does not name fails: the caller must know them all."""

    def part(match: re.Match[str]) -> str:
        escape, expression = match.group(1), match.group(2)
        if escape is not None:
            if escape.startswith("u{"):
                return chr(int(escape[2:-1], 16))
            assert escape in _ESCAPES, f"unknown Bicep escape \\{escape}"
            return _ESCAPES[escape]
        assert expression in values, f"no value for ${{{expression}}} in {text!r}"
        return str(values[expression])

    return _STRING_PART.sub(part, text)


def interpolations(text: str) -> list[str]:
    """The expressions of the ``${...}`` of a Bicep string as pycep gives it."""
    return [m.group(2) for m in _STRING_PART.finditer(text) if m.group(2) is not None]


def accessor_path(node: Any) -> list[Any]:
    """``a.b.c`` as ``["a", "b", "c"]`` (pycep nests property accessors to the right); anything else
    as ``[node]``."""
    path: list[Any] = []
    while isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
        operands = node["operator"]["operands"]
        path.append(operands["operand_1"])
        node = operands["operand_2"]
    return [*path, node]
