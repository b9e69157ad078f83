"""Metering of one /v1 request: admission (limits, then the debit), settlement, headers.

The order is deliberate. Tokens are counted first (exact, before anything is charged); the
limiter then takes RPM, TPM and a concurrency slot in one call; the balance is debited in its
own transaction with a pending usage row; the request is served; the row is marked served,
or the debit is refunded — so a failed request is free and the charge equals `usage`.
"""

from __future__ import annotations

import logging
import math
import time
import uuid

from django.conf import settings

from billing.ledger import InsufficientBalance, usage_admit, usage_refund, usage_succeed
from billing.limiter import Decision, LimiterUnavailable, Limits, format_duration, get_limiter
from billing.models import ApiKey, UsageRecord
from billing.payments import auto_recharge_wanted
from billing.tasks import auto_recharge, task_enqueue
from billing.usage import usage_record_refused
from embeddings_site.errors import ApiError, ErrorCode
from embeddings_site.metrics import request_observe

logger = logging.getLogger(__name__)

_RATE_CODES = {
    "requests": ErrorCode.RATE_REQUEST_LIMIT_EXCEEDED,
    "tokens": ErrorCode.RATE_TOKEN_LIMIT_EXCEEDED,
    "concurrency": ErrorCode.RATE_CONCURRENCY_LIMIT_EXCEEDED,
}


def limits_for(api_key: ApiKey) -> Limits:
    """A key's limits: its tier's, with its own overrides."""
    tiers = settings.RATE_LIMIT_TIERS
    tier = tiers.get(api_key.tier) or tiers["standard"]
    return Limits(
        rpm=api_key.rpm_limit or tier["rpm"],
        tpm=api_key.tpm_limit or tier["tpm"],
        concurrency=api_key.concurrency_limit or tier["concurrency"],
    )


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """Jina's and OpenAI's rate-limit headers for a decision."""
    limits = decision.limits
    reset = format_duration(decision.reset_after)
    return {
        "X-RateLimit-Limit-Requests": str(limits.rpm),
        "X-RateLimit-Limit-Tokens": str(limits.tpm),
        "X-RateLimit-Remaining-Requests": str(decision.remaining_requests),
        "X-RateLimit-Remaining-Tokens": str(decision.remaining_tokens),
        "x-ratelimit-reset-requests": reset,
        "x-ratelimit-reset-tokens": reset,
    }


class Meter:
    """Admission and settlement of one request by one key."""

    def __init__(self, *, api_key: ApiKey, request_id: str, endpoint: str = "embeddings") -> None:
        self.api_key = api_key
        self.request_id = request_id
        self.endpoint = endpoint
        self.limits = limits_for(api_key)
        self.started = time.perf_counter()
        self.model = ""
        self.text_tokens = 0
        self.image_tokens = 0
        self.decision: Decision | None = None
        self.usage: UsageRecord | None = None
        self._slot = uuid.uuid4().hex
        self._settled = False

    @property
    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def admit(self, *, model: str, text_tokens: int, image_tokens: int = 0) -> None:
        """Take the limits and debit the tokens, or raise the 400/429/403/503 that says why not."""
        self.model, self.text_tokens, self.image_tokens = model, text_tokens, image_tokens
        tokens = text_tokens + image_tokens
        if tokens > self.limits.tpm:
            # It could never pass: a 429 would only make the client retry forever.
            raise ApiError(
                ErrorCode.INPUT_TOKEN_LIMIT_EXCEEDED,
                f"This request has {tokens:,} tokens, more than this key's whole limit of "
                f"{self.limits.tpm:,} tokens per minute. Split it into smaller requests.",
                param="input",
            )
        try:
            decision = get_limiter().admit(
                key=str(self.api_key.pk), limits=self.limits, tokens=tokens, slot=self._slot
            )
        except LimiterUnavailable as exc:
            raise ApiError(
                ErrorCode.SERVICE_UNAVAILABLE,
                "Rate limiting is unavailable; please retry with exponential backoff.",
            ) from exc
        self.decision = decision
        if not decision.allowed:
            raise self._rate_limited(decision, tokens)
        try:
            self.usage = usage_admit(
                api_key=self.api_key,
                model=model,
                text_tokens=text_tokens,
                image_tokens=image_tokens,
                request_id=self.request_id,
                endpoint=self.endpoint,
            )
        except InsufficientBalance as exc:
            raise ApiError(
                ErrorCode.AUTHZ_INSUFFICIENT_BALANCE,
                f"Insufficient balance: this request needs {tokens:,} tokens. "
                "Top up this key in your dashboard.",
            ) from exc
        if auto_recharge_wanted(api_key=self.api_key):
            task_enqueue(auto_recharge, self.api_key.pk)

    def _rate_limited(self, decision: Decision, tokens: int) -> ApiError:
        limits = decision.limits
        messages = {
            "requests": f"Request rate limit exceeded: {decision.requests_in_window}/{limits.rpm} "
            "requests per minute. Reduce request frequency or upgrade your plan.",
            "tokens": f"Token rate limit exceeded: {decision.tokens_in_window + tokens:,}/"
            f"{limits.tpm:,} tokens per minute. Reduce batch sizes or upgrade your plan.",
            "concurrency": f"Concurrency limit exceeded: {decision.in_flight}/{limits.concurrency} "
            "concurrent requests. Wait for pending requests to complete.",
        }
        retry = max(math.ceil(decision.retry_after), 1)
        return ApiError(
            _RATE_CODES[decision.reason],
            messages[decision.reason],
            headers={
                "Retry-After": str(retry),
                "retry-after-ms": str(max(int(decision.retry_after * 1000), 1)),
            },
        )

    def succeed(self) -> None:
        """The response is ready: mark it served (refuse to serve what was already refunded)."""
        self._settled = True
        if self.usage is not None and not usage_succeed(
            usage=self.usage, latency_ms=self.latency_ms
        ):
            error = ApiError(
                ErrorCode.SERVICE_TIMEOUT,
                "The request took too long and was cancelled; it was not charged.",
            )
            self._observe(error)
            raise error
        self._observe(None)

    def _observe(self, error: ApiError | None) -> None:
        request_observe(
            endpoint=self.endpoint,
            model=self.model,
            status=error.status if error else 200,
            code=error.code.value if error else "",
            text_tokens=self.text_tokens,
            image_tokens=self.image_tokens,
            seconds=self.latency_ms / 1000,
        )

    def fail(self, error: ApiError) -> None:
        """The request ends with an error: refund the debit, or record the refusal."""
        if self._settled:
            return
        self._settled = True
        self._observe(error)
        if self.usage is not None:
            usage_refund(
                usage=self.usage,
                http_status=error.status,
                error_code=error.code.value,
                latency_ms=self.latency_ms,
            )
            return
        usage_record_refused(
            api_key_id=self.api_key.pk,
            request_id=self.request_id,
            model=self.model,
            http_status=error.status,
            error_code=error.code.value,
            text_tokens=self.text_tokens,
            image_tokens=self.image_tokens,
            latency_ms=self.latency_ms,
        )

    def close(self) -> None:
        """Give the concurrency slot back (always, whatever happened)."""
        if self.decision is not None and self.decision.allowed:
            try:
                get_limiter().release(
                    key=str(self.api_key.pk), slot=self._slot, backend=self.decision.backend
                )
            except Exception:  # the slot's lease expires it
                logger.warning("Releasing a concurrency slot failed", exc_info=True)

    def headers(self) -> dict[str, str]:
        """Rate-limit headers for the response; a read-only look when nothing was admitted."""
        decision = self.decision
        if decision is None:
            try:
                decision = get_limiter().peek(key=str(self.api_key.pk), limits=self.limits)
            except Exception:
                return {}
        return rate_limit_headers(decision)
