"""Secrets never reach a log: SAS signatures, bearer tokens and storage account keys are
blanked in every record of every logger, at every level.

The Azure SDKs log what they send: urllib3 logs each request line with its query string at
DEBUG (``GET /container/blob?sv=...&sig=...``), azure-core's network trace logs whole URLs and
headers, and SDK errors quote the URLs they used. A ``logging.Filter`` on a logger does not see
records of that logger's children, and the Functions worker owns (and may replace) the root
handlers, so redaction happens where every record is born: the log record factory.
``install_log_redaction`` wraps the current factory once (idempotent, and it keeps whatever
factory was installed before, such as OpenTelemetry's); the records it returns carry an
already-redacted message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

# Only the signature of a SAS is secret (sv, se, sp, skoid... are not). Also matched when
# the URL is itself percent-encoded inside another one (...%26sig%3D...).
_SAS_SIGNATURE = re.compile(r"(?i)(?<![a-z_])sig(=|%3D)[^&\s'\"]+")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
_ACCOUNT_KEY = re.compile(r"(?i)\b(accountkey)=[^;\s'\"]+")

_MARK = "_auditlake_redacting"

RecordFactory = Callable[..., logging.LogRecord]


def redact(text: str) -> str:
    """*text* with SAS signatures, bearer tokens and account keys blanked (``sig=REDACTED``,
    ``Bearer REDACTED``, ``AccountKey=REDACTED``); everything else unchanged."""
    text = _SAS_SIGNATURE.sub(lambda m: f"sig{m.group(1)}REDACTED", text)
    text = _BEARER.sub(r"\1 REDACTED", text)
    return _ACCOUNT_KEY.sub(r"\1=REDACTED", text)


def _redacted_arg(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def redact_record(record: logging.LogRecord) -> None:
    """Blank secrets in *record*'s message, arguments, exception text and stack, in place.

    A message that needed redaction is stored formatted (``msg`` the redacted text, ``args``
    empty), so no handler or formatter can rebuild the original from the arguments.
    """
    try:
        message = record.getMessage()
    except Exception:
        # A bad format string: the handler reports it with msg and args, so blank those.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redacted_arg(v) for k, v in record.args.items()}
    else:
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[0] is not None:
        text = record.exc_text or logging.Formatter().formatException(record.exc_info)
        clean = redact(text)
        record.exc_text = clean  # formatters print exc_text as it is, when set
        if clean != text:
            # Handlers that format the exception themselves would print the original.
            record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _redacting(base: RecordFactory) -> RecordFactory:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        redact_record(record)
        return record

    setattr(factory, _MARK, True)
    return factory


def install_log_redaction() -> None:
    """Make every log record of this process redacted at birth (see the module docstring).

    Idempotent. Call it once at start-up, before the first record that could carry a secret:
    the Functions app calls it when ``function_app.app`` is imported.
    """
    current = logging.getLogRecordFactory()
    if not getattr(current, _MARK, False):
        logging.setLogRecordFactory(_redacting(current))
