"""Bearer-key authentication for the /v1 API (DRF authentication class)."""

from __future__ import annotations

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from billing.models import ApiKey, User
from embeddings_site.errors import ApiError, ErrorCode
from embeddings_site.log_context import log_context_update
from embeddings_site.tracing import span, span_set
from metering.selectors import api_key_get_active, api_key_refusal_message
from metering.services import api_key_touch


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer <key>` only; keys in the query string or body are never read."""

    def authenticate(self, request: Request) -> tuple[User, ApiKey]:
        with span("authenticate") as current:
            user, api_key = self._authenticate(request)
            # The key's display prefix only: the key itself is never logged or traced.
            log_context_update(key_prefix=api_key.prefix)
            span_set(current, key_prefix=api_key.prefix)
            return user, api_key

    def _authenticate(self, request: Request) -> tuple[User, ApiKey]:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.strip():
            raise ApiError(
                ErrorCode.AUTH_MISSING_API_KEY,
                "Authentication required. Provide your API key via the Authorization header: "
                "'Authorization: Bearer <api-key>'.",
            )
        scheme, _, key = header.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or " " in key:
            raise ApiError(
                ErrorCode.AUTH_INVALID_FORMAT,
                "Invalid authorization format. Use 'Authorization: Bearer <api-key>'.",
            )
        api_key = api_key_get_active(key=key)
        if api_key is None:
            raise ApiError(ErrorCode.AUTH_INVALID_API_KEY, api_key_refusal_message(key=key))
        # Read from the key, not the cache's lifetime: an expiry takes effect at its time.
        if api_key.expires_at is not None and api_key.expires_at <= timezone.now():
            raise ApiError(
                ErrorCode.AUTH_KEY_EXPIRED,
                f"This API key expired at {api_key.expires_at:%Y-%m-%d %H:%M} UTC. Change its "
                "expiry on the key's page in your dashboard, or create a new key.",
            )
        api_key_touch(api_key=api_key)
        return api_key.user, api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def api_key_model_check(*, api_key: ApiKey, model: str) -> None:
    """Refuse a model the key is not allowed to use (its owner's per-key list), before any work."""
    if api_key.allows_model(model):
        return
    allowed = ", ".join(sorted(api_key.allowed_models))
    raise ApiError(
        ErrorCode.AUTH_MODEL_NOT_ALLOWED,
        f"This API key may not use model '{model}'. It is allowed: {allowed}. Change the key's "
        "allowed models in your dashboard, or use another key.",
        param="model",
    )
