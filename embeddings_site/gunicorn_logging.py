"""gunicorn's access log without secrets: a key sent in the query string is refused by the API
(keys go in the Authorization header), but gunicorn would still write the URL in full. This
logger class blanks the values of credential-like query parameters before the line is written.

Used with `gunicorn --logger-class embeddings_site.gunicorn_logging.RedactingLogger`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

from gunicorn.glogging import Logger

# Query parameter names whose values are credentials; matched case-insensitively.
SECRET_PARAMETERS = ("api_key", "key", "token", "access_token")
REDACTED = "REDACTED"

# name=value pairs in a query string (or in a URL's query part); the name may be
# percent-encoded by a careless client, so `api%5Fkey` is caught as well.
_PAIR = re.compile(r"(?P<lead>^|[?&;])(?P<name>[^=&;#?]+)=(?P<value>[^&;#]*)")


def _is_secret(name: str) -> bool:
    return unquote_plus(name).strip().lower() in SECRET_PARAMETERS


def redact_query(text: str) -> str:
    """`text` (a query string, or a URI with one) with secret parameters' values replaced."""

    def replace(match: re.Match[str]) -> str:
        if not _is_secret(match["name"]):
            return match[0]
        return f"{match['lead']}{match['name']}={REDACTED}"

    if "?" in text:
        path, _, query = text.partition("?")
        return f"{path}?{_PAIR.sub(replace, query)}"
    return _PAIR.sub(replace, text)


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's Logger whose access-log atoms carry no query-string credentials."""

    def atoms(
        self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any
    ) -> dict[str, Any]:
        """The stock atoms, with the request line, query, referer and environ values redacted."""
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        method = environ.get("REQUEST_METHOD", "-")
        protocol = environ.get("SERVER_PROTOCOL", "-")
        atoms["r"] = f"{method} {redact_query(environ.get('RAW_URI', ''))} {protocol}"
        atoms["q"] = redact_query(environ.get("QUERY_STRING") or "")
        for name in ("f", "{referer}i", "{raw_uri}e", "{query_string}e", "{request_uri}e"):
            if isinstance(atoms.get(name), str):
                atoms[name] = redact_query(atoms[name])
        return atoms
