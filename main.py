"""Azure Functions entry point (PYTHON_SCRIPT_FILE_NAME=main.py).

The worker imports a root .py file; a package named function_app/ would shadow a root
function_app.py, hence this name.
"""

from function_app.app import app

__all__ = ["app"]
