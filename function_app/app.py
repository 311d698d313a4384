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
from function_app.triggers import collect, content

if os.environ.get("FUNCTIONS_WORKER_RUNTIME"):
    app_settings()
    # The worker forwards every Python logger to Application Insights; the Azure SDKs log
    # each HTTP request at INFO, which would bury the collector's own records.
    logging.getLogger("azure").setLevel(logging.WARNING)

app = func.FunctionApp()
app.register_functions(collect.bp)
app.register_functions(content.bp)
