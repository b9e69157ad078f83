"""A strict Content-Security-Policy on every HTML page.

The playground keeps an API key in localStorage and the billing pages run Stripe.js, on one
origin: an injected script could read the one or skim the other. So scripts run only from this
origin, from Stripe.js's origin, or inline with the response's nonce (`request.csp_nonce`,
fresh per response). Stripe's origin comes from settings.STRIPE_JS_URL, so the tests' localstripe
is allowed the way https://js.stripe.com is in production. See
https://docs.stripe.com/security/guide#content-security-policy.

The API reference (Redoc) injects its own <style> elements and draws icons from data: URLs, so
that page alone is allowed inline styles, data: images and a blob: search worker; the
playground alone is allowed data: images (its upload preview).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"
# The style="" attribute values the templates use, allowed by hash and by nothing else: an
# injected attribute with any other value is refused. (Moving them to site.css would let this
# list go.) tests/web/test_csp.py checks that the templates use no other.
STYLE_ATTRIBUTES: tuple[str, ...] = ("max-width:20rem", "max-width:24rem")
# Pages that need more than the strict policy, by URL name, and what they add to it.
PAGE_ALLOWANCES: dict[str, dict[str, tuple[str, ...]]] = {
    # The playground previews an uploaded image from the data: URL it sends to the API.
    "playground": {"img-src": ("data:",)},
    "api-docs": {
        "style-src": ("'unsafe-inline'",),
        "img-src": ("data:",),
        "font-src": ("data:",),
        "worker-src": ("blob:",),
    },
}
# Stripe.js's production origin reaches these hosts too (Stripe's CSP guide above).
STRIPE_PRODUCTION: dict[str, dict[str, tuple[str, ...]]] = {
    "https://js.stripe.com": {
        "script-src": ("https://*.js.stripe.com",),
        "connect-src": ("https://api.stripe.com",),
        "frame-src": ("https://*.js.stripe.com", "https://hooks.stripe.com"),
    },
}


def stripe_origin() -> str | None:
    """The scheme://host[:port] of settings.STRIPE_JS_URL, or None when it is unset."""
    url = urlsplit(getattr(settings, "STRIPE_JS_URL", "") or "")
    return f"{url.scheme}://{url.netloc}" if url.scheme and url.netloc else None


def style_attribute_hash(value: str) -> str:
    """The CSP source expression that allows exactly the style attribute `value`."""
    digest = base64.b64encode(hashlib.sha256(value.encode()).digest()).decode()
    return f"'sha256-{digest}'"


def csp_policy(*, nonce: str, url_name: str | None) -> str:
    """The header value for one response with `nonce`, on the page named `url_name`."""
    directives: dict[str, list[str]] = {
        "default-src": ["'self'"],
        "script-src": ["'self'", f"'nonce-{nonce}'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-hashes'", *map(style_attribute_hash, STYLE_ATTRIBUTES)],
        "img-src": ["'self'"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "frame-src": ["'self'"],
        "worker-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
    stripe = stripe_origin()
    if stripe:
        for name in ("script-src", "frame-src", "connect-src"):
            directives[name].append(stripe)
        for name, sources in STRIPE_PRODUCTION.get(stripe, {}).items():
            directives[name].extend(sources)
    for name, sources in PAGE_ALLOWANCES.get(url_name or "", {}).items():
        directives[name].extend(sources)
    if "'unsafe-inline'" in directives["style-src"]:
        # Hashes would switch 'unsafe-inline' off; attributes then follow style-src.
        del directives["style-src-attr"]
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


class ContentSecurityPolicyMiddleware:
    """Gives each request a fresh nonce and each HTML response the policy that names it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        nonce = secrets.token_urlsafe(18)
        request.csp_nonce = nonce  # type: ignore[attr-defined]
        response = self.get_response(request)
        content_type = response.get("Content-Type", "")
        if HEADER not in response and content_type.startswith("text/html"):
            match = getattr(request, "resolver_match", None)
            response[HEADER] = csp_policy(nonce=nonce, url_name=match.url_name if match else None)
        return response
