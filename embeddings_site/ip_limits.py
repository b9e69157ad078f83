"""Per-client-IP limits on the forms people post (django-ratelimit, on the Django cache)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django_ratelimit.decorators import ratelimit


def posts_limited_per_ip(rate_setting: str) -> Callable[[Any], Any]:
    """A view decorator: at most settings.<rate_setting> POSTs per IP (e.g. "20/m"), then 429."""
    return ratelimit(
        key="ip",
        rate=lambda group, request: getattr(settings, rate_setting),
        method="POST",
        block=True,
    )
