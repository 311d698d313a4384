"""The one FunctionApp. Triggers live in triggers/ as blueprints and are registered here."""

from __future__ import annotations

import azure.functions as func

app = func.FunctionApp()
