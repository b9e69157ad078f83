"""gunicorn's logs in the project's format, and its access log without secrets.

Used with `gunicorn --logger-class embeddings_site.gunicorn_logging.RedactingLogger`.

With LOG_FORMAT=json the error log and the access log are JSON lines like every other record
(embeddings_site.log_format); an access line holds the method, path, redacted query, status,
bytes, duration, client address and the response's X-Request-ID, so it joins the request's
own records.

Secrets never reach the access log, whatever --access-logformat asks for: a key sent in the
query string is refused by the API (keys go in the Authorization header), but gunicorn would
still write the URL in full, so the values of credential-like query parameters are blanked,
and so is anything shaped like an API key or a Stripe secret anywhere in the request line,
path or referer; credential headers (Authorization, Cookie, Stripe-Signature, …) are blanked
among the header atoms.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any
from urllib.parse import unquote_plus

from gunicorn.glogging import Logger

from embeddings_site.log_context import LogContextFilter

# Query parameter names whose values are credentials; matched case-insensitively.
SECRET_PARAMETERS = (
    "api_key",
    "api-key",
    "apikey",
    "key",
    "token",
    "access_token",
    "refresh_token",
    "authorization",
    "password",
    "passwd",
    "secret",
    "client_secret",
)
# Request headers whose values are credentials (gunicorn's `{name}i` atoms).
SECRET_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "stripe-signature",
    "x-worker-token",
)
REDACTED = "REDACTED"

# name=value pairs in a query string (or in a URL's query part); the name may be
# percent-encoded by a careless client, so `api%5Fkey` is caught as well.
_PAIR = re.compile(r"(?P<lead>^|[?&;])(?P<name>[^=&;#?]+)=(?P<value>[^&;#]*)")
# Values shaped like a secret wherever they appear: this API's keys (prefix, 43 + 6 base62
# characters; any prefix of letters, digits and underscores ending in `_`), Stripe's secret
# and restricted keys and webhook signing secrets.
_SECRET_SHAPES = re.compile(
    r"\b(?:[A-Za-z][A-Za-z0-9]*_)+[0-9A-Za-z]{49}\b"
    r"|\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]+"
    r"|\bwhsec_[0-9A-Za-z+/=_-]+"
)


def _is_secret(name: str) -> bool:
    return unquote_plus(name).strip().lower() in SECRET_PARAMETERS


def redact_secrets(text: str) -> str:
    """`text` with anything shaped like an API key or a Stripe secret replaced."""
    return _SECRET_SHAPES.sub(REDACTED, text)


def redact_query(text: str) -> str:
    """`text` (a query string, or a URI with one) with secret parameters' values replaced."""

    def replace(match: re.Match[str]) -> str:
        if not _is_secret(match["name"]):
            return match[0]
        return f"{match['lead']}{match['name']}={REDACTED}"

    if "?" in text:
        path, _, query = text.partition("?")
        return redact_secrets(f"{path}?{_PAIR.sub(replace, query)}")
    return redact_secrets(_PAIR.sub(replace, text))


def _json_logs() -> bool:
    # The master process reads the settings too (the logger is set up before any worker).
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embeddings_site.settings")
    from django.conf import settings

    return settings.LOG_FORMAT == "json"


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's Logger: the project's log format, and access-log atoms without credentials."""

    def setup(self, cfg: Any) -> None:
        """gunicorn's handlers, with the JSON formatter when LOG_FORMAT=json."""
        super().setup(cfg)
        self._json = _json_logs()
        if not self._json:
            return
        from embeddings_site.log_format import JsonLineFormatter

        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(JsonLineFormatter())
                    handler.addFilter(LogContextFilter())

    def atoms(
        self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any
    ) -> dict[str, Any]:
        """The stock atoms, with the request line, path, query, referer, environ values and
        credential headers redacted."""
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        method = environ.get("REQUEST_METHOD", "-")
        protocol = environ.get("SERVER_PROTOCOL", "-")
        atoms["r"] = f"{method} {redact_query(environ.get('RAW_URI', ''))} {protocol}"
        atoms["q"] = redact_query(environ.get("QUERY_STRING") or "")
        atoms["U"] = redact_secrets(str(environ.get("PATH_INFO") or ""))
        for name in ("f", "{referer}i", "{raw_uri}e", "{query_string}e", "{request_uri}e"):
            if isinstance(atoms.get(name), str):
                atoms[name] = redact_query(atoms[name])
        for header in SECRET_HEADERS:
            if f"{{{header}}}i" in atoms:
                atoms[f"{{{header}}}i"] = REDACTED
        return atoms

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """The access line: gunicorn's format as text, or one JSON record with its fields."""
        if not getattr(self, "_json", False):
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        try:
            atoms = self.atoms(resp, req, environ, request_time)
            fields = {
                "request_id": atoms.get("{x-request-id}o") or None,
                "remote_addr": atoms.get("h"),
                "method": atoms.get("m"),
                "path": atoms.get("U"),
                "query": atoms.get("q") or None,
                "status": int(str(atoms.get("s")).split()[0]),
                "bytes": atoms.get("B"),
                "duration_ms": round(int(atoms.get("D") or 0) / 1000, 3),
                "referer": atoms.get("f") if atoms.get("f") != "-" else None,
                "user_agent": atoms.get("a"),
            }
            self.access_log.info(
                atoms["r"], extra={k: v for k, v in fields.items() if v is not None}
            )
        except Exception:
            logging.getLogger("gunicorn.error").exception("Writing an access record failed")
