"""The environment variables ``function_app/`` reads, found in its source rather than listed by hand.

A name counts as read when the code passes it to an environment mapping (``env.get(NAME)``,
``env[NAME]``, ``os.environ.get(NAME)``, ``os.getenv(NAME)``) or to a helper that does so with
that argument (``_text(env, NAME)``, ``_number(env, NAME, ...)``, the ``get(NAME)`` closure of
``token_provider_from_env``...). Helpers are recognised by what their bodies do, so a new helper
needs no change here. Names are resolved through string constants, module constants, parameter
defaults, local variables, f-strings and loops over literal tuples; an argument that cannot be
resolved is reported, never skipped, so a setting cannot hide from the contract test.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ENV_NAMES = frozenset({"env", "environ", "environment"})


def _is_env(node: ast.AST) -> bool:
    """``env``/``environ`` (a mapping of settings) or ``<anything>.environ``."""
    if isinstance(node, ast.Name):
        return node.id in ENV_NAMES
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


@dataclass
class _Function:
    node: ast.FunctionDef | ast.AsyncFunctionDef
    params: list[str]
    defaults: dict[str, ast.expr]
    is_method: bool


@dataclass
class _Module:
    path: Path
    tree: ast.Module
    constants: dict[str, ast.expr] = field(default_factory=dict)
    functions: list[_Function] = field(default_factory=list)
    parents: dict[ast.AST, ast.AST] = field(default_factory=dict)


def _load(path: Path) -> _Module:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _Module(path, tree)
    for statement in tree.body:
        if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            module.constants[statement.targets[0].id] = statement.value
        elif (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
              and statement.value is not None):
            module.constants[statement.target.id] = statement.value
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            module.parents[child] = parent
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = [a.arg for a in [*args.posonlyargs, *args.args]]
            defaults = dict(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            for kw, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
                if default is not None:
                    defaults[kw.arg] = default
            params = positional + [a.arg for a in args.kwonlyargs]
            is_method = bool(positional) and positional[0] in ("self", "cls")
            module.functions.append(_Function(node, params, defaults, is_method))
    return module


@dataclass
class ScanResult:
    names: set[str]
    unresolved: list[str]


class _Scanner:
    def __init__(self, modules: list[_Module]) -> None:
        self.modules = modules
        # Helpers that read the setting named by one of their parameters: id(def) -> parameter names.
        self.getters: dict[int, set[str]] = {}
        self.names: set[str] = set()
        self.unresolved: list[str] = []

    # -- which functions are getters ------------------------------------------------------

    def find_getters(self) -> None:
        changed = True
        while changed:
            changed = False
            for module in self.modules:
                for function in module.functions:
                    for call in self._calls(function.node):
                        for arg in self._setting_args(module, call):
                            if isinstance(arg, ast.Name) and arg.id in function.params:
                                owned = self.getters.setdefault(id(function.node), set())
                                if arg.id not in owned:
                                    owned.add(arg.id)
                                    changed = True

    @staticmethod
    def _calls(node: ast.AST) -> Iterator[ast.Call]:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                yield sub

    def _setting_args(self, module: _Module, call: ast.Call) -> Iterator[ast.expr]:
        """The arguments of *call* (in *module*) that name a setting."""
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and _is_env(func.value) and call.args:
            yield call.args[0]
            return
        if (isinstance(func, ast.Attribute) and func.attr == "getenv" and isinstance(func.value, ast.Name)
                and func.value.id == "os" and call.args):
            yield call.args[0]
            return
        if not isinstance(func, ast.Name):
            return  # helpers are plain functions (module level or closures), called by name
        for function in self._definitions(module, func.id):
            owned = self.getters.get(id(function.node), set())
            for index, arg in enumerate(call.args):
                if index < len(function.params) and function.params[index] in owned:
                    yield arg
            for keyword in call.keywords:
                if keyword.arg in owned:
                    yield keyword.value

    def _definitions(self, module: _Module, name: str) -> Iterator[_Function]:
        """Functions called *name* in *module*, or imported into it by that name from the package."""
        local = [f for f in module.functions if f.node.name == name]
        if local:
            yield from local
            return
        imported = any(isinstance(node, ast.ImportFrom) and any(a.name == name and a.asname is None for a in node.names)
                       for node in ast.walk(module.tree))
        if imported:
            for other in self.modules:
                for function in other.functions:
                    if function.node.name == name and other.parents.get(function.node) is other.tree:
                        yield function

    # -- what they are called with ---------------------------------------------------------

    def collect(self) -> None:
        for module in self.modules:
            for node in ast.walk(module.tree):
                args: Iterable[ast.expr] = ()
                if isinstance(node, ast.Call):
                    args = self._setting_args(module, node)
                elif isinstance(node, ast.Subscript) and _is_env(node.value) and isinstance(node.ctx, ast.Load):
                    args = (node.slice,)
                for arg in args:
                    self._record(module, arg)

    def _record(self, module: _Module, arg: ast.expr) -> None:
        function = self._enclosing(module, arg)
        if (isinstance(arg, ast.Name) and function is not None and arg.id in function.params
                and arg.id in self.getters.get(id(function.node), set()) and arg.id not in function.defaults):
            return  # a helper passing its own parameter on: its callers are scanned instead
        values = self._resolve(module, arg, function)
        if values is None:
            where = f"{module.path.name}:{arg.lineno}"
            self.unresolved.append(f"{where}: {ast.unparse(arg)}")
            return
        self.names.update(values)

    def _enclosing(self, module: _Module, node: ast.AST) -> _Function | None:
        current: ast.AST | None = node
        while current is not None:
            current = module.parents.get(current)
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
                for function in module.functions:
                    if function.node is current:
                        return function
        return None

    def _resolve(self, module: _Module, node: ast.expr, function: _Function | None) -> set[str] | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.JoinedStr):
            parts: list[set[str]] = []
            for value in node.values:
                if isinstance(value, ast.Constant):
                    parts.append({str(value.value)})
                elif isinstance(value, ast.FormattedValue):
                    resolved = self._resolve(module, value.value, function)
                    if resolved is None:
                        return None
                    parts.append(resolved)
                else:
                    return None
            return {"".join(p) for p in itertools.product(*parts)}
        if isinstance(node, ast.Name):
            return self._resolve_name(module, node, function)
        return None

    def _resolve_name(self, module: _Module, node: ast.Name, function: _Function | None) -> set[str] | None:
        scope = function
        while scope is not None:
            local = self._local(module, scope, node)
            if local is not None:
                return local
            if node.id in scope.defaults:
                return self._resolve(module, scope.defaults[node.id], None)
            scope = self._enclosing(module, scope.node)
        if node.id in module.constants:
            return self._resolve(module, module.constants[node.id], None)
        # A constant imported from another module of the package.
        found = [m for m in self.modules if node.id in m.constants]
        if len(found) == 1:
            return self._resolve(found[0], found[0].constants[node.id], None)
        return None

    def _local(self, module: _Module, function: _Function, node: ast.Name) -> set[str] | None:
        for sub in ast.walk(function.node):
            if isinstance(sub, ast.Assign) and any(isinstance(t, ast.Name) and t.id == node.id for t in sub.targets):
                return self._resolve(module, sub.value, function)
            if (isinstance(sub, ast.For) and isinstance(sub.target, ast.Name) and sub.target.id == node.id
                    and isinstance(sub.iter, ast.Tuple | ast.List)):
                values: set[str] = set()
                for element in sub.iter.elts:
                    resolved = self._resolve(module, element, function)
                    if resolved is None:
                        return None
                    values |= resolved
                return values
        return None


def settings_read_by(paths: Iterable[Path]) -> ScanResult:
    """Every environment variable the Python files *paths* read, and the reads it could not name."""
    scanner = _Scanner([_load(p) for p in paths])
    scanner.find_getters()
    scanner.collect()
    return ScanResult(scanner.names, scanner.unresolved)
