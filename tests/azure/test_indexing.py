"""The entry point indexes the way the Functions worker indexes it: ``main.py`` holds exactly
one FunctionApp with the expected triggers, every ``%SETTING%`` a binding uses is a setting
the app knows, and a bad setting stops the start-up with a message naming it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.decorators.function_app import FunctionRegister

from function_app.config import (
    AZURE_SETTING_NAMES,
    DEFAULT_COLLECT_SCHEDULE,
    AzureSettings,
    check_ncrontab,
)
from function_app.core.budget import AZURE_MEMORY_WAIT_SECONDS
from tests.azure.conftest import indexed_functions

REPO = Path(__file__).resolve().parents[2]
TENANT = "3c9d2f1e-7a6b-4c5d-9e8f-1a2b3c4d5e6f"
EXPECTED = {
    "collect": {"type": "timerTrigger", "name": "timer", "schedule": "%COLLECT_SCHEDULE%"},
    "process_content": {"type": "queueTrigger", "name": "msg", "queueName": "%CONTENT_QUEUE%",
                        "connection": "AzureWebJobsStorage"},
    "record_dead_letter": {"type": "queueTrigger", "name": "msg", "queueName": "%CONTENT_QUEUE%-poison",
                           "connection": "AzureWebJobsStorage"},
    # ADX ingestion failures reported after acceptance, read on the collect schedule.
    "watch_ingestion_failures": {"type": "timerTrigger", "name": "timer", "schedule": "%COLLECT_SCHEDULE%"},
    # The Purview audit search backfill, daily.
    "search_backfill": {"type": "timerTrigger", "name": "timer", "schedule": "%SEARCH_SCHEDULE%"},
    # The Entra ID logs from Graph, for tenants that cannot stream them (AUDITLAKE_ENTRA_STREAMS).
    "entra_poll": {"type": "timerTrigger", "name": "timer", "schedule": "%ENTRA_SCHEDULE%"},
}


def _bindings() -> dict[str, list[dict[str, Any]]]:
    return {str(f.get_function_name()): [json.loads(b) for b in f.get_raw_bindings()] for f in indexed_functions()}


def test_main_holds_exactly_one_function_app() -> None:
    import main

    apps = [v for v in vars(main).values() if isinstance(v, FunctionRegister)]
    assert len(apps) == 1 and isinstance(apps[0], func.FunctionApp)


def test_the_functions_and_their_bindings() -> None:
    bindings = _bindings()
    assert set(bindings) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        (binding,) = bindings[name]
        assert binding["direction"] == "IN"
        assert {k: binding[k] for k in expected} == expected, name


def test_every_setting_a_binding_names_is_known_to_config() -> None:
    raw = json.dumps(_bindings())
    named = set(re.findall(r"%([^%]+)%", raw))
    connections = {b["connection"] for bs in _bindings().values() for b in bs if "connection" in b}
    assert named == {"COLLECT_SCHEDULE", "CONTENT_QUEUE", "SEARCH_SCHEDULE", "ENTRA_SCHEDULE"}
    assert named | connections <= AZURE_SETTING_NAMES


def test_the_user_functions_are_coroutines_taking_the_binding() -> None:
    import inspect

    for f in indexed_functions():
        fn = f.get_user_function()
        assert inspect.iscoroutinefunction(fn)
        assert list(inspect.signature(fn).parameters) == [EXPECTED[f.get_function_name()]["name"]]


def test_host_json_matches_what_the_code_assumes() -> None:
    host = json.loads((REPO / "host.json").read_text())
    queues = host["extensions"]["queues"]
    assert queues["messageEncoding"] == "base64"  # what StorageContentQueue sends
    assert 1 <= queues["maxDequeueCount"] <= 10
    hours, minutes, seconds = (int(p) for p in host["functionTimeout"].split(":"))
    timeout = hours * 3600 + minutes * 60 + seconds
    # A live invocation must never lose its claim: the lease outlasts the function timeout.
    env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "ADX_INGEST_URI": "https://ingest-x.kusto.windows.net",
           "ADX_DATABASE": "db"}
    assert AzureSettings.from_env(env).claim_lease.total_seconds() > timeout
    # A blob queued behind larger ones hands its message back well before the invocation runs out
    # of time, leaving time for the blob itself once its memory is free.
    assert timeout / 2 >= AZURE_MEMORY_WAIT_SECONDS
    assert check_ncrontab(DEFAULT_COLLECT_SCHEDULE) == "0 */2 * * * *"


def _worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDITLAKE_", "ADX_", "AzureWebJobs"))}
    env.update({
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "PYTHON_SCRIPT_FILE_NAME": "main.py",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "AUDITLAKE_TENANTS": TENANT,
        "ADX_INGEST_URI": "https://ingest-example.westeurope.kusto.windows.net",
        "ADX_DATABASE": "auditlake",
        "CONTENT_QUEUE": "content",
        "COLLECT_SCHEDULE": DEFAULT_COLLECT_SCHEDULE,
    })
    env.update(extra)
    return env


# What the worker does with PYTHON_SCRIPT_FILE_NAME: import that file from the app root and
# find the one FunctionApp in it (``apps[0]``); scripts append what they report about it.
LOAD_APP = """
import importlib.util, json, os, sys
from azure.functions.decorators.function_app import FunctionRegister
path = os.path.join(os.getcwd(), os.environ["PYTHON_SCRIPT_FILE_NAME"])
spec = importlib.util.spec_from_file_location("main", path)
module = importlib.util.module_from_spec(spec)
sys.modules["main"] = module
spec.loader.exec_module(module)
apps = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
assert len(apps) == 1, apps
"""
_LOADER = LOAD_APP + """print(json.dumps(sorted(f.get_function_name() for f in apps[0].get_functions())))
"""


def test_the_worker_loads_main_py_by_file_name() -> None:
    proc = subprocess.run([sys.executable, "-c", _LOADER], cwd=REPO, env=_worker_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == sorted(EXPECTED)


@pytest.mark.parametrize(("setting", "value"), [
    ("CONTENT_QUEUE", "Content_Queue"),
    ("COLLECT_SCHEDULE", "*/2 * * * *"),
    ("ADX_INGEST_URI", ""),
    ("AUDITLAKE_TENANTS", "not-a-guid"),
    ("ADX_STREAMING", "maybe"),
    ("AUDITLAKE_ENTRA_STREAMS", "signins,provisioning"),
])
def test_a_bad_setting_stops_the_start_up_naming_it(setting: str, value: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _LOADER], cwd=REPO, env=_worker_env(**{setting: value}),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("function_app.config.SettingsError: " + setting), last


def test_the_app_imports_without_the_local_extras() -> None:
    # requirements.txt (what is deployed) has no duckdb, pyarrow or rich.
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('duckdb', 'duckdb_kql', 'pyarrow', 'rich'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    proc = subprocess.run([sys.executable, "-c", blocker + _LOADER], cwd=REPO, env=_worker_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
