"""The one lifecycle of a metered unit of work: every /v1 operation runs through `metered_run`.

The order is the guarantee (README, "The request lifecycle"):

1. authenticate — the DRF authentication class, before the view (checksum, then cached key);
2. resolve — the operation names its model (a cached registry row), and sheds the request at
   once when that model's queue in this process is full;
3. **pre-admit**, before anything costly: the balance (the cached key's, read fresh when it
   looks short) must hold the operation's lower bound of tokens (refused here with 403, so a
   refusal for balance takes no rate limit), then one limiter call takes a slot and the
   request count, if the window has room for that bound of TPM (not taken: the exact count
   is, at the debit). A request whose count is cheaper than that call (a few short texts,
   nothing to fetch) is counted first, and the one call takes its exact tokens too;
4. count — exactly, with bounded work (tokenize; fetch images under a per-request budget);
5. debit — the exact tokens: the limiter takes them (if the minute has room and they were not
   taken at pre-admission), then the balance's conditional update, its ledger entry and a
   pending usage row in one transaction (shared with concurrent requests': group commit);
6. run — under the request's deadline (counted from its arrival), for its tenant;
7. settle — served, or refunded on any error, an error while settling included; what finishes
   after its deadline is refunded and answered 504.

A unit whose result is committed together with its charge (a batch chunk) uses
`charge_served`, which debits and settles in the caller's transaction. Both run the
after-debit hooks (auto-recharge) and nothing else: metering knows nothing of payments.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone

from billing.models import ApiKey, UsageRecord
from embeddings_site.deadlines import Deadline, deadline_scope
from embeddings_site.errors import ApiError, ErrorCode, database_unavailable
from embeddings_site.log_context import log_context_update
from embeddings_site.metrics import request_observe
from embeddings_site.tracing import NO_SPAN, span, span_set, tracing_enabled
from metering.authentication import api_key_model_check
from metering.hooks import after_debit_run
from metering.ledger import (
    InsufficientBalance,
    release_pooled_connection,
    usage_admit,
    usage_refund,
    usage_succeed,
)
from metering.limiter import Decision, LimiterUnavailable, Limits, format_duration, get_limiter
from metering.usage import usage_record_refused, usage_writer

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RATE_CODES = {
    "requests": ErrorCode.RATE_REQUEST_LIMIT_EXCEEDED,
    "tokens": ErrorCode.RATE_TOKEN_LIMIT_EXCEEDED,
    "concurrency": ErrorCode.RATE_CONCURRENCY_LIMIT_EXCEEDED,
}

# How a refund is retried when the database drops the connection under it (about 6 s in all);
# a refund that still fails is left pending for the sweeper (within about one deadline).
_REFUND_ATTEMPTS = 7
_REFUND_BACKOFF_SECONDS = 0.1


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


@dataclass(frozen=True)
class Cost:
    """The exact tokens a unit of work is charged."""

    text_tokens: int
    image_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.image_tokens


class MeteredOperation(Protocol[T]):  # type: ignore[misc]
    """What an operation gives the lifecycle, step by step (see the module docstring)."""

    def model_name(self) -> str:
        """Resolve the model (cheap, cached); its name for the usage row."""

    def shed(self) -> None:
        """Refuse at once (raise) when the backend already holds all the work it may queue."""

    def min_tokens(self) -> int:
        """A lower bound of the cost from what is already parsed (no tokenizing, no fetching)."""

    def count_is_cheap(self) -> bool:
        """Whether count() is cheaper than a limiter call (a few short texts, nothing to fetch):
        then it runs before pre-admission, which takes the exact tokens at once."""

    def count(self) -> Cost:
        """The exact cost, with bounded work; runs after pre-admission unless it is cheap."""

    def run(self) -> T:
        """The work itself, under the deadline; runs only after the debit."""


def _timed_out() -> ApiError:
    return ApiError(
        ErrorCode.SERVICE_TIMEOUT,
        "The request passed its deadline and was cancelled; it was not charged.",
    )


class MeteredWork(Generic[T]):
    """Admission, debit and settlement of one unit of work by one key."""

    def __init__(
        self,
        *,
        api_key: ApiKey,
        request_id: str,
        endpoint: str = "embeddings",
        deadline: Deadline | None = None,
    ) -> None:
        self.api_key = api_key
        self.request_id = request_id
        self.endpoint = endpoint
        self.deadline = deadline or Deadline.after()
        self.limits = limits_for(api_key)
        self.model = ""
        self.estimate = 0
        self.cost = Cost(0)
        self.decision: Decision | None = None
        self.usage: UsageRecord | None = None
        self._slot = uuid.uuid4().hex
        self._taken = 0  # tokens this request holds in the limiter's window
        self._settled = False
        self._free = False  # debited a cost of 0: served without touching the balance

    @property
    def latency_ms(self) -> float:
        """From the request's arrival: time spent queueing counts."""
        return self.deadline.elapsed_ms

    @property
    def tenant(self) -> str:
        return str(self.api_key.pk)

    # --- 3. pre-admission ------------------------------------------------------------------

    def preadmit(self, *, model: str, min_tokens: int, cost: Cost | None = None) -> None:
        """Refuse what cannot be served before any costly work; take a slot and the bound.

        With the exact `cost` already counted (cheaply), its tokens are taken at once, and the
        debit needs no second limiter call."""
        exact = cost is not None
        self.model = model
        self.estimate = cost.tokens if cost is not None else max(min_tokens, 0)
        self._check_deadline()
        if self.estimate > self.limits.tpm:
            raise self._over_tpm(self.estimate, at_least=not exact)
        # The cached key's balance answers most requests without a query; only one that looks
        # unaffordable reads it fresh (a top-up may be newer than the cache). The debit's
        # conditional update is what decides in the end.
        if self.api_key.balance < self.estimate and self._fresh_balance() < self.estimate:
            raise self._insufficient(self.estimate, at_least=not exact)
        try:
            # A bound must fit the window but is not taken: the exact count is, at the debit.
            # (Taking the bound would hold capacity that refused requests give back only later,
            # and a full minute would then serve fewer requests than its TPM allows.)
            decision = get_limiter().admit(
                key=self.tenant,
                limits=self.limits,
                tokens=self.estimate if exact else 0,
                slot=self._slot,
                need=0 if exact else self.estimate,
            )
        except LimiterUnavailable as exc:
            raise ApiError(
                ErrorCode.SERVICE_UNAVAILABLE,
                "Rate limiting is unavailable; please retry with exponential backoff.",
            ) from exc
        self.decision = decision
        if not decision.allowed:
            raise self._rate_limited(decision, self.estimate)
        if exact:
            self._taken = self.estimate

    def _fresh_balance(self) -> int:
        return int(ApiKey.objects.values_list("balance", flat=True).get(pk=self.api_key.pk))

    # --- 5. debit --------------------------------------------------------------------------

    def debit(self, cost: Cost) -> None:
        """Charge the exact cost: TPM from the bound to the count, then the balance."""
        self.cost = cost
        self._check_deadline()
        if cost.tokens > self.limits.tpm:
            raise self._over_tpm(cost.tokens, at_least=False)
        decision = self.decision
        if decision is not None and decision.allowed and cost.tokens != self._taken:
            adjusted = get_limiter().adjust(
                key=self.tenant,
                limits=self.limits,
                slot=self._slot,
                tokens=self._taken,
                to=cost.tokens,
                backend=decision.backend,
            )
            if not adjusted.allowed:
                raise self._rate_limited(adjusted, cost.tokens)
            self._taken = cost.tokens
            self.decision = replace(adjusted, backend=decision.backend)
        if cost.tokens == 0:
            # Nothing to charge (/v1/tokenize): no balance update, no ledger entry, no
            # after-debit hooks; the usage row is written when the request settles.
            self._free = True
            return
        try:
            self.usage = usage_admit(
                api_key=self.api_key,
                model=self.model,
                text_tokens=cost.text_tokens,
                image_tokens=cost.image_tokens,
                request_id=self.request_id,
                endpoint=self.endpoint,
            )
        except InsufficientBalance as exc:
            self._forget_tokens()
            raise self._insufficient(cost.tokens, at_least=False) from exc
        after_debit_run(self.api_key)

    def _forget_tokens(self) -> None:
        """A request refused after pre-admission takes no TPM (its request count stays)."""
        decision = self.decision
        if decision is None or not decision.allowed or not self._taken:
            return
        try:
            get_limiter().adjust(
                key=self.tenant,
                limits=self.limits,
                slot=self._slot,
                tokens=self._taken,
                to=0,
                backend=decision.backend,
            )
            self._taken = 0
        except Exception:
            logger.warning("Giving back a refused request's tokens failed", exc_info=True)

    # --- 7. settlement ---------------------------------------------------------------------

    def succeed(self) -> None:
        """The response is ready: mark it served — unless its deadline passed (then 504)."""
        if self.usage is not None:
            if self.deadline.expired:
                raise _timed_out()
            try:
                served = usage_succeed(usage=self.usage, latency_ms=self.latency_ms)
            except DatabaseError as exc:
                logger.warning("Marking request %s served failed: %s", self.request_id, exc)
                raise database_unavailable() from exc
            if not served:  # the sweeper refunded it already
                raise _timed_out()
        elif self._free:
            if self.deadline.expired:
                raise _timed_out()
            _record_free(self)
        self._settled = True
        self._observe(None)

    def fail(self, error: ApiError) -> None:
        """The request ends with an error: refund the debit, or record the refusal."""
        if self._settled:
            return
        self._settled = True
        log_context_update(code=error.code.value)
        with lifecycle_step(self, "settle") as current:
            span_set(
                current, code=error.code.value, outcome="refunded" if self.usage else "refused"
            )
            self._settle_failure(error)

    def _settle_failure(self, error: ApiError) -> None:
        self._observe(error)
        if self.usage is not None:
            self._refund(error)
            return
        try:
            usage_record_refused(
                api_key_id=self.api_key.pk,
                request_id=self.request_id,
                model=self.model,
                endpoint=self.endpoint,
                http_status=error.status,
                error_code=error.code.value,
                text_tokens=self.cost.text_tokens,
                image_tokens=self.cost.image_tokens,
                latency_ms=self.latency_ms,
            )
        except DatabaseError:
            logger.warning("Recording refused request %s failed", self.request_id, exc_info=True)

    def _refund(self, error: ApiError) -> None:
        if self.usage is None:
            return
        for attempt in range(_REFUND_ATTEMPTS):
            try:
                usage_refund(
                    usage=self.usage,
                    http_status=error.status,
                    error_code=error.code.value,
                    latency_ms=self.latency_ms,
                    even_if_served=True,
                )
                return
            except DatabaseError:
                logger.warning(
                    "Refunding request %s failed (attempt %s)",
                    self.request_id,
                    attempt + 1,
                    exc_info=True,
                )
                _drop_broken_connection()
                time.sleep(min(_REFUND_BACKOFF_SECONDS * 2**attempt, 2.0))
        logger.error("Request %s left pending: the sweeper refunds it", self.request_id)

    def close(self) -> None:
        """Give the concurrency slot back (always, whatever happened)."""
        if self.decision is not None and self.decision.allowed:
            try:
                get_limiter().release(
                    key=self.tenant, slot=self._slot, backend=self.decision.backend
                )
            except Exception:  # the slot's lease (about one deadline) expires it
                logger.warning("Releasing a concurrency slot failed", exc_info=True)

    def headers(self) -> dict[str, str]:
        """Rate-limit headers for the response; a read-only look when nothing was admitted."""
        decision = self.decision
        if decision is None:
            try:
                decision = get_limiter().peek(key=self.tenant, limits=self.limits)
            except Exception:
                return {}
        return rate_limit_headers(decision)

    # --- errors ----------------------------------------------------------------------------

    def _check_deadline(self) -> None:
        if self.deadline.expired:
            raise _timed_out()

    def _over_tpm(self, tokens: int, *, at_least: bool) -> ApiError:
        # It could never pass: a 429 would only make the client retry forever.
        amount = f"at least {tokens:,}" if at_least else f"{tokens:,}"
        return ApiError(
            ErrorCode.INPUT_TOKEN_LIMIT_EXCEEDED,
            f"This request has {amount} tokens, more than this key's whole limit of "
            f"{self.limits.tpm:,} tokens per minute. Split it into smaller requests.",
            param="input",
        )

    @staticmethod
    def _insufficient(tokens: int, *, at_least: bool) -> ApiError:
        amount = f"at least {tokens:,}" if at_least else f"{tokens:,}"
        return ApiError(
            ErrorCode.AUTHZ_INSUFFICIENT_BALANCE,
            f"Insufficient balance: this request needs {amount} tokens. "
            "Top up this key in your dashboard.",
        )

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

    def _observe(self, error: ApiError | None) -> None:
        request_observe(
            endpoint=self.endpoint,
            model=self.model,
            status=error.status if error else 200,
            code=error.code.value if error else "",
            text_tokens=self.cost.text_tokens,
            image_tokens=self.cost.image_tokens,
            seconds=self.latency_ms / 1000,
        )


def _record_free(work: MeteredWork[Any]) -> None:
    """The usage row of a request served at no cost (batched, like refused requests' rows)."""
    now = timezone.now()
    usage_writer.add(
        UsageRecord(
            api_key_id=work.api_key.pk,
            request_id=work.request_id[:64],
            endpoint=work.endpoint[:64],
            model=work.model[:100],
            status=UsageRecord.Status.SUCCEEDED,
            http_status=200,
            charged_tokens=0,
            latency_ms=work.latency_ms,
            created_at=now,
            finished_at=now,
        )
    )


def _drop_broken_connection() -> None:
    """After a database error outside a transaction, let the next query reconnect."""
    if connection.in_atomic_block:
        return
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - already broken; closing is best effort
        logger.debug("Closing a broken connection failed", exc_info=True)
    close_old_connections()


def lifecycle_step(work: MeteredWork[Any], name: str) -> AbstractContextManager[Any]:
    """A span for one step of the lifecycle, with the request's id, key prefix and model
    (nothing at all while tracing is off)."""
    if not tracing_enabled():
        return NO_SPAN
    attributes = {
        "embeddings.request_id": work.request_id,
        "embeddings.key_prefix": work.api_key.prefix,
        "embeddings.endpoint": work.endpoint,
        "embeddings.model": work.model,
    }
    return span(name, attributes=attributes)


def _count(work: MeteredWork[Any], operation: MeteredOperation[Any]) -> Cost:
    with lifecycle_step(work, "count") as current:
        cost = operation.count()
        span_set(current, tokens=cost.tokens)
    log_context_update(tokens=cost.tokens)
    return cost


def metered_run(*, work: MeteredWork[T], operation: MeteredOperation[T]) -> T:
    """Run one operation through the whole lifecycle; the caller settles failures with
    `work.fail()` (the API view's exception handler does) and always calls `work.close()`."""
    work.model = operation.model_name()
    log_context_update(model=work.model)
    api_key_model_check(api_key=work.api_key, model=work.model)
    operation.shed()
    with deadline_scope(deadline=work.deadline, tenant=work.tenant):
        cost = _count(work, operation) if operation.count_is_cheap() else None
        with lifecycle_step(work, "preadmit") as current:
            work.preadmit(model=work.model, min_tokens=operation.min_tokens(), cost=cost)
            span_set(current, tokens=work.estimate)
        logger.debug("Admitted with %s tokens bound", work.estimate)
        if cost is None:
            cost = _count(work, operation)
        with lifecycle_step(work, "debit") as current:
            span_set(current, tokens=cost.tokens)
            work.debit(cost)
            release_pooled_connection()  # and a settle after a fault finds a fresh one
        logger.debug("Debited %s tokens for %s", cost.tokens, work.model)
        with lifecycle_step(work, "infer"):
            result = operation.run()
    with lifecycle_step(work, "settle") as current:
        span_set(current, outcome="served")
        work.succeed()
    return result


def charge_served(
    *,
    api_key: ApiKey,
    model: str,
    cost: Cost,
    request_id: str,
    endpoint: str,
    latency_ms: float,
) -> UsageRecord:
    """Debit and settle at once a unit whose result the caller commits in the same
    transaction (a batch chunk). Raises InsufficientBalance, writing nothing, when the key
    cannot pay; the after-debit hooks run once the transaction commits."""
    with transaction.atomic():
        usage = usage_admit(
            api_key=api_key,
            model=model,
            text_tokens=cost.text_tokens,
            image_tokens=cost.image_tokens,
            request_id=request_id,
            endpoint=endpoint,
        )
        usage_succeed(usage=usage, latency_ms=latency_ms)
        transaction.on_commit(_after_debit(api_key))
    return usage


def _after_debit(api_key: ApiKey) -> Callable[[], None]:
    return lambda: after_debit_run(api_key)
