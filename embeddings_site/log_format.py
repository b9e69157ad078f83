"""The one log format of every process (Django, gunicorn's error and access logs, Celery
workers): JSON lines (python-json-logger) with LOG_FORMAT=json, plain text otherwise.

A JSON line holds `timestamp`, `level`, `logger`, `message`, the unit of work's fields
(embeddings_site.log_context: request_id, key_prefix, endpoint, model, status, code,
latency_ms, batch_id, …), `trace_id`/`span_id` under an active span, anything passed with
`extra=`, and `exc_info` with the traceback. A text line ends with the same fields as
`name=value` pairs, so a request can be followed in development too.
"""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from embeddings_site.log_context import FIELDS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_TEXT_FIELDS = (*FIELDS, "trace_id")


class JsonLineFormatter(JsonFormatter):
    """One JSON object per record, with stable names for the standard fields."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
            **kwargs,
        )


class ContextTextFormatter(logging.Formatter):
    """The plain development format, with the unit of work's fields appended."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = [
            f"{name}={getattr(record, name)}"
            for name in _TEXT_FIELDS
            if getattr(record, name, None) not in (None, "")
        ]
        if not pairs:
            return text
        head, sep, tail = text.partition("\n")  # after the message, before a traceback
        return f"{head} [{' '.join(pairs)}]{sep}{tail}"


def formatter(log_format: str | None = None) -> logging.Formatter:
    """The formatter LOG_FORMAT names (the LOGGING setting's factory; gunicorn's and Celery's
    handlers use it too)."""
    if log_format is None:
        from django.conf import settings

        log_format = settings.LOG_FORMAT
    if log_format != "json":
        return ContextTextFormatter()
    # Python's warnings go through logging too (py.warnings), so stderr holds JSON lines only.
    logging.captureWarnings(True)
    return JsonLineFormatter()
