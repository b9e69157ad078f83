"""The WSGI application: API routes through their own short middleware chain, pages through
the whole one.

A /v1 request is authenticated by its bearer key and never reads a cookie, so sessions, CSRF,
the signed-in user, messages, frame options, CSP and static files are work it would pay for
nothing. `API_PATH_PREFIXES` routes go through `API_MIDDLEWARE` only (request id and arrival,
security headers, the body cap, database faults as 503); everything else through `MIDDLEWARE`.
Both are ordinary Django handlers, with their own middleware hooks and the same URLconf.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler


class _ApiHandler(WSGIHandler):
    """A WSGIHandler whose middleware is API_MIDDLEWARE."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler.load_middleware reads settings.MIDDLEWARE; it runs once, at start-up,
        # before any request thread exists.
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full


class SplitHandler(WSGIHandler):
    """Pages through MIDDLEWARE; API routes through `_ApiHandler`."""

    def __init__(self) -> None:
        super().__init__()
        self.api = _ApiHandler()
        self.api_prefixes = tuple(settings.API_PATH_PREFIXES)

    def __call__(  # type: ignore[override]  # django-stubs types a WSGI app's answer loosely
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(self.api_prefixes):
            return self.api(environ, start_response)
        return super().__call__(environ, start_response)
