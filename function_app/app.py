"""The one FunctionApp. Triggers live in triggers/ as blueprints and are registered here.

Inside the Functions host (``FUNCTIONS_WORKER_RUNTIME`` is set) the settings are validated
while the worker indexes this module, so a bad setting fails the start-up with a message
naming it instead of failing every invocation later.
"""

from __future__ import annotations

import logging
import os

import azure.functions as func

from function_app.config import app_settings
from function_app.logredact import install_log_redaction
from function_app.triggers import collect, content, entra, ingest_failures, search

# Before any client exists: every log record of the process, whatever its logger and level,
# has SAS signatures and tokens blanked (urllib3 and azure-core log full URLs at DEBUG).
install_log_redaction()


def quiet_sdk_logging() -> None:
    """The Azure SDKs log at WARNING and above only. The worker forwards every Python logger to
    Application Insights, and the SDKs log each HTTP request at INFO, which would bury the
    collector's own records (and cost the worker a log line per request; ``make bench`` runs
    the app with this too)."""
    logging.getLogger("azure").setLevel(logging.WARNING)


if os.environ.get("FUNCTIONS_WORKER_RUNTIME"):
    app_settings()
    quiet_sdk_logging()

app = func.FunctionApp()
app.register_functions(collect.bp)
app.register_functions(content.bp)
app.register_functions(ingest_failures.bp)
app.register_functions(search.bp)
app.register_functions(entra.bp)
