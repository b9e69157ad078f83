"""Stripe webhooks at one URL: verify the signature first, store each event once with a status,
then dispatch through a {event type: handler} dict.

Handlers never trust the payload: they take the object's id from it and re-read the object
from Stripe (billing.payments settles from that state), so a duplicated, replayed or
out-of-order delivery ends in the same balance. https://docs.stripe.com/webhooks
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings
from django.utils import timezone

from billing import payments, stripe_api
from billing.models import StripeEvent, User

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebhookResult:
    """What to answer Stripe: a status and a short reason."""

    status: int
    detail: str


def _on_payment_intent(obj: dict[str, Any]) -> None:
    payments.payment_reconcile(payment_intent_id=str(obj["id"]))


def _on_charge_refunded(obj: dict[str, Any]) -> None:
    intent_id = stripe_api.charge_payment_intent_id(charge_id=str(obj["id"]))
    if intent_id:
        payments.payment_reconcile(payment_intent_id=intent_id)


def _on_setup_intent_succeeded(obj: dict[str, Any]) -> None:
    user = User.objects.filter(stripe_customer_id=str(obj.get("customer") or "")).first()
    if user is not None and not user.stripe_payment_method_id:
        payments.card_save(user=user, setup_intent_id=str(obj["id"]))


HANDLERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "payment_intent.succeeded": _on_payment_intent,
    "payment_intent.payment_failed": _on_payment_intent,
    "payment_intent.requires_action": _on_payment_intent,
    "payment_intent.canceled": _on_payment_intent,
    "charge.refunded": _on_charge_refunded,
    "setup_intent.succeeded": _on_setup_intent_succeeded,
}


def _signed_at(signature: str) -> int | None:
    for part in signature.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            return int(value)
    return None


def stripe_webhook_receive(*, payload: bytes, signature: str) -> WebhookResult:
    """Verify, record and handle one delivery."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        return WebhookResult(400, "Webhooks are not configured (STRIPE_WEBHOOK_SECRET).")
    signed_at = _signed_at(signature)
    if signed_at is None:
        return WebhookResult(400, "Missing or malformed Stripe-Signature header.")
    # The SDK refuses old signatures; one from the future is refused here too (a replay window
    # must not be stretched by a clock that runs ahead).
    if signed_at > time.time() + settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS:
        return WebhookResult(400, "Signature timestamp is in the future.")
    try:
        event = stripe_api.webhook_event_construct(payload=payload, signature=signature)
    except (ValueError, stripe.SignatureVerificationError):
        return WebhookResult(400, "Invalid signature.")

    record, created = StripeEvent.objects.get_or_create(
        id=event.id, defaults={"type": event.type, "payload": json.loads(payload)}
    )
    if not created and record.status in (StripeEvent.Status.PROCESSED, StripeEvent.Status.IGNORED):
        return WebhookResult(200, "Already processed.")
    handler = HANDLERS.get(event.type)
    if handler is None:
        StripeEvent.objects.filter(pk=record.pk).update(status=StripeEvent.Status.IGNORED)
        return WebhookResult(200, "No handler for this event type.")
    return stripe_event_process(event=record)


def stripe_event_process(*, event: StripeEvent) -> WebhookResult:
    """Run a stored event's handler (again): on failure the event stays FAILED for a retry."""
    handler = HANDLERS.get(event.type)
    if handler is None:
        return WebhookResult(200, "No handler for this event type.")
    try:
        handler(event.payload["data"]["object"])
    except Exception as exc:
        logger.exception("Stripe event %s (%s) failed", event.pk, event.type)
        StripeEvent.objects.filter(pk=event.pk).update(
            status=StripeEvent.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000]
        )
        # A 5xx makes Stripe deliver it again later; the handler is safe to repeat.
        return WebhookResult(503, "Handler failed; retry later.")
    StripeEvent.objects.filter(pk=event.pk).update(
        status=StripeEvent.Status.PROCESSED, error="", processed_at=timezone.now()
    )
    return WebhookResult(200, "Processed.")
