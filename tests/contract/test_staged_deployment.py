"""The app as `func azure functionapp publish` ships it: only what Azure runs, and it runs.

The test stages the deployment the way it is made: the files of a clean clone (``git ls-files``
plus untracked files git does not ignore), minus what ``.funcignore`` excludes, matched the way
Core Tools matches it (below); then a virtualenv holding ``requirements.txt`` and nothing else, as
the remote build installs it. In that virtualenv, from the staged folder, the worker's import of
``main.py`` must index exactly the functions the development environment indexes, while the local
tool (``auditlake/``: CLI, emulator, DuckDB lake, local state), tests, infra and docs are absent
and ``duckdb``/``pyarrow`` cannot be imported.

The virtualenv is built once per requirements.txt and interpreter (PyPI is needed the first
time; a few tens of seconds to a few minutes) and kept in pytest's cache (``.pytest_cache``), or
in ``~/.cache/auditlake`` when the cache plugin is off.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.azure.conftest import indexed_functions
from tests.azure.test_indexing import EXPECTED, LOAD_APP, _worker_env

REPO = Path(__file__).resolve().parents[2]

# What Core Tools leaves out whatever .funcignore says (FileSystemHelpers.GetLocalFiles): these
# folders and these file names, at any depth, case-insensitively.
ALWAYS_IGNORED_DIRS = {".git", ".vscode"}
ALWAYS_IGNORED_FILES = {".funcignore", ".gitignore", "local.settings.json", "project.lock.json"}

# Only the local tool and development use these; requirements.txt must not bring them.
LOCAL_ONLY_MODULES = ("auditlake", "duckdb", "duckdb_kql", "pyarrow", "rich")
NOT_DEPLOYED = ("auditlake", "tests", "infra", "docs", "bench")


class FuncIgnore:
    """``.funcignore`` as Core Tools reads it (``Azure.Functions.Cli.Common.GitIgnoreParser``, a port
    of the npm ``gitignore-parser``): gitignore-style lines (``#`` comments, ``!`` negation, a
    leading ``/`` dropped, ``*`` within a path segment, ``**`` across segments), each matched as a
    prefix of the path from the app root that ends at a word boundary. Unlike git, a pattern
    without a slash is not matched at every depth: ``tests`` leaves out ``tests/...`` only, and
    ``tests.md`` too (the boundary), but never ``function_app/tests``; ``?`` is a literal."""

    _SPECIAL = re.compile(r"[\-\[\]/{}()+?.\\^$|]")

    def __init__(self, text: str) -> None:
        positive: list[str] = []
        negative: list[str] = []
        for raw in text.split("\n"):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            if negated:
                line = line[1:]
            line = line.removeprefix("/")
            (negative if negated else positive).append(line)
        self._positive = self._compile(positive)
        self._negative = self._compile(negative)

    @classmethod
    def _compile(cls, patterns: list[str]) -> re.Pattern[str]:
        if not patterns:
            return re.compile(r"(?!)")
        regexes = [cls._SPECIAL.sub(lambda m: "\\" + m.group(0), p).replace("**", "(.+)").replace("*", "([^/]+)")
                   for p in sorted(patterns)]
        return re.compile("^((" + ")|(".join(regexes) + r"))\b", re.ASCII)

    def accepts(self, path: str) -> bool:
        """Whether *path* (relative to the app root, ``/``-separated) is published."""
        parts = path.split("/")
        if any(d.lower() in ALWAYS_IGNORED_DIRS for d in parts[:-1]) or parts[-1].lower() in ALWAYS_IGNORED_FILES:
            return False
        return bool(self._negative.match(path)) or not self._positive.match(path)


def clean_clone_files(repo: Path = REPO) -> list[str]:
    """The files a clean clone of *repo* has: tracked, plus untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True, timeout=60).stdout
    names = dict.fromkeys(n for n in out.decode("utf-8").split("\0") if n)
    # A tracked file deleted in the work tree is not in the next commit either.
    return sorted(n for n in names if (repo / n).is_file())


def stage(dest: Path, repo: Path = REPO) -> list[str]:
    """Copy what ``func azure functionapp publish`` would upload into *dest*; the relative paths."""
    ignore = FuncIgnore((repo / ".funcignore").read_text(encoding="utf-8"))
    staged = [n for n in clean_clone_files(repo) if ignore.accepts(n)]
    for name in staged:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)
    return staged


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _cache_root(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("staged-deployment-venv"))
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "auditlake" / "staged-deployment-venv"


def deployment_venv(requirements: Path, config: pytest.Config) -> tuple[Path, float | None]:
    """A virtualenv with *requirements* installed and nothing else, and the seconds building it took
    (None when it came from the cache). Keyed by the file's content and the interpreter; built
    beside its final place and renamed into it, so an interrupted build is never reused."""
    key = hashlib.sha256(b"\0".join([
        requirements.read_bytes(), sys.version.encode(), platform.machine().encode(), sys.platform.encode(),
    ])).hexdigest()[:16]
    root = _cache_root(config)
    venv = root / f"venv-{key}"
    if venv.is_dir():
        probe = subprocess.run([str(_venv_python(venv)), "-c", "import azure.functions"], capture_output=True,
                               timeout=120)
        if probe.returncode == 0:
            return venv, None
        shutil.rmtree(venv, ignore_errors=True)  # its interpreter is gone or it is broken: build it again
    root.mkdir(parents=True, exist_ok=True)
    building = root / f"building-{key}-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, capture_output=True, timeout=300)
        install = subprocess.run(
            [str(_venv_python(building)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-input", "-r", str(requirements)],
            capture_output=True, text=True, timeout=840)
        assert install.returncode == 0, f"pip install -r requirements.txt failed:\n{install.stdout}\n{install.stderr}"
        try:
            building.rename(venv)
        except OSError:
            if not venv.is_dir():  # another run finished the same venv first: use that one
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return venv, time.monotonic() - started


# What the worker does with PYTHON_SCRIPT_FILE_NAME (as tests/azure/test_indexing.py's loader):
# import that file from the app root and index the one FunctionApp in it; then report each
# function's bindings, where the modules came from, and which local-only modules can be imported.
PROBE = LOAD_APP + """functions = {f.get_function_name(): [json.loads(b) for b in f.get_raw_bindings()]
             for f in apps[0].get_functions()}
loaded = sorted(n for n in sys.modules if n.split(".")[0] in LOCAL_ONLY)
importable = []
for name in LOCAL_ONLY:
    try:
        __import__(name)
    except ImportError:
        continue
    importable.append(name)
print(json.dumps({
    "functions": functions,
    "files": {m: getattr(sys.modules[m], "__file__", None) for m in ("main", "function_app", "azure.functions")},
    "loaded": loaded,
    "importable": importable,
}))
"""


def probe(python: Path, app_root: Path) -> dict[str, Any]:
    """What the worker finds in *app_root*, run by *python* in the worker's environment."""
    env = {k: v for k, v in _worker_env().items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env["PYTHON_SCRIPT_FILE_NAME"] = "main.py"
    script = f"LOCAL_ONLY = {LOCAL_ONLY_MODULES!r}\n" + PROBE
    # -E -s: no PYTHONPATH and no user site, so nothing outside the app root and the venv is seen.
    proc = subprocess.run([str(python), "-E", "-s", "-c", script], cwd=app_root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"importing main.py failed in {app_root}:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def local_only_imports(files: Iterable[Path]) -> list[str]:
    """``file:line module`` for every import of a local-only module in *files*, at any depth (a
    lazy import inside a function included)."""
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path}:{node.lineno} {n}" for n in names if n.split(".")[0] in LOCAL_ONLY_MODULES]
    return found


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("wwwroot")
    return root, stage(root)


@pytest.fixture(scope="module")
def venv_python(staged: tuple[Path, list[str]], request: pytest.FixtureRequest) -> Path:
    root, _ = staged
    venv, seconds = deployment_venv(root / "requirements.txt", request.config)
    if seconds is not None:
        print(f"\nbuilt the deployment venv from requirements.txt in {seconds:.0f} s: {venv}")
    return _venv_python(venv)


def test_funcignore_matching_follows_core_tools() -> None:
    ignore = FuncIgnore("# comment\n/infra\ntests\n*.pyc\n__pycache__\ndocs/**/*.png\n!docs/keep.md\n")
    assert not ignore.accepts("infra/main.bicep")
    assert not ignore.accepts("tests/unit/test_x.py")
    assert not ignore.accepts("tests.md")  # a prefix ending at a word boundary
    assert ignore.accepts("testsuite/x.py")
    assert ignore.accepts("function_app/tests/x.py")  # anchored at the app root, unlike git
    assert ignore.accepts("function_app/__pycache__/x.pyc")
    assert not ignore.accepts("x.pyc")
    assert not ignore.accepts("docs/a/b/c.png")
    assert ignore.accepts("docs/keep.md")
    assert not ignore.accepts("function_app/.gitignore")  # always left out, as local.settings.json
    assert not ignore.accepts("local.settings.json")
    assert not ignore.accepts("sub/.vscode/settings.json")
    assert ignore.accepts("main.py") and FuncIgnore("").accepts("anything/at/all")


def test_the_staged_tree_is_what_azure_runs_and_nothing_else(staged: tuple[Path, list[str]]) -> None:
    root, files = staged
    tops = {f.split("/")[0] for f in files}
    assert {"main.py", "host.json", "requirements.txt", "function_app"} <= tops
    assert not tops & set(NOT_DEPLOYED), f"deployed but only used locally: {sorted(tops & set(NOT_DEPLOYED))}"
    assert not (root / "auditlake").exists()
    # The local tool's parts, by name, wherever they might have been left.
    leftovers = [f for f in files if re.search(r"duckdb|emulator|(^|/)cli\.py$|localrun|state/local\.py|\.kql$", f)]
    assert not leftovers, f"local-tool files in the deployment: {leftovers}"
    # ...and all of the app: .funcignore drops nothing of it.
    app = [f for f in clean_clone_files() if f.split("/")[0] in ("main.py", "host.json", "requirements.txt",
                                                                 "function_app")]
    assert sorted(set(app) - set(files)) == []


def test_nothing_deployed_imports_the_local_tool(staged: tuple[Path, list[str]]) -> None:
    root, files = staged
    python_files = [root / f for f in files if f.endswith(".py")]
    assert root / "main.py" in python_files
    found = local_only_imports(python_files)
    assert not found, f"the deployed code imports the local tool or its libraries: {found}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_staged_app_indexes_what_the_dev_venv_indexes(staged: tuple[Path, list[str]], venv_python: Path) -> None:
    root, _ = staged
    found = probe(venv_python, root)
    # The app came from the staged folder and its dependencies from the venv, nothing else.
    for name, where in found["files"].items():
        assert where is not None and (Path(where).is_relative_to(root) or Path(where).is_relative_to(
            venv_python.parent.parent)), f"{name} imported from {where}"
    assert Path(found["files"]["main"]).parent == root
    # requirements.txt alone: the local tool's libraries are not installed, and the app did not need them.
    assert found["importable"] == [] and found["loaded"] == []
    dev = {str(f.get_function_name()): [json.loads(b) for b in f.get_raw_bindings()] for f in indexed_functions()}
    assert found["functions"] == dev
    assert set(found["functions"]) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        (binding,) = found["functions"][name]
        assert {k: binding[k] for k in expected} == expected, name


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_check_fails_when_the_app_imports_the_local_lake(tmp_path: Path, venv_python: Path) -> None:
    # The same staging with one module-level `import duckdb` added to the deployed code.
    stage(tmp_path)
    core = tmp_path / "function_app" / "core" / "__init__.py"
    core.write_text(core.read_text(encoding="utf-8") + "\nimport duckdb  # noqa\n", encoding="utf-8")
    assert local_only_imports([core])
    with pytest.raises(AssertionError, match="No module named 'duckdb'"):
        probe(venv_python, tmp_path)
