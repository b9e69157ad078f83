"""Every call to Stripe goes through this module (the boundary to the outside system).

It returns plain dataclasses, so the rest of the code never handles SDK objects, and it papers
over the differences between Stripe and the localstripe stand-in the tests run against:
off-session on a card that needs authentication, Stripe raises a CardError with code
`authentication_required`, localstripe answers a PaymentIntent in `requires_action`; both come
back here as an `Intent` with status `requires_action`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import stripe
from django.conf import settings


class StripeNotConfigured(Exception):
    """STRIPE_SECRET_KEY is not set."""


class StripeUnavailable(Exception):
    """Stripe could not be reached or refused the call for a reason the user cannot fix."""


class CardRefused(Exception):
    """The card was declined (or could not be used) before a PaymentIntent existed."""

    def __init__(self, message: str, *, code: str = "", payment_intent_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.payment_intent_id = payment_intent_id


@dataclass(frozen=True)
class Intent:
    """What the code needs of a PaymentIntent."""

    id: str
    status: str
    amount: int
    currency: str
    customer: str
    client_secret: str
    metadata: dict[str, str] = field(default_factory=dict)
    charge_id: str = ""
    amount_refunded: int = 0
    receipt_url: str = ""
    failure_message: str = ""


@dataclass(frozen=True)
class SavedCard:
    """A payment method that a SetupIntent saved for off-session use."""

    payment_method_id: str
    customer: str
    label: str


def is_configured() -> bool:
    """Whether payments are switched on (a secret key is set)."""
    return bool(settings.STRIPE_SECRET_KEY)


@functools.cache
def _client(secret_key: str, api_base: str) -> stripe.StripeClient:
    if api_base:
        return stripe.StripeClient(
            secret_key, base_addresses={"api": api_base}, max_network_retries=2
        )
    return stripe.StripeClient(secret_key, max_network_retries=2)


def client() -> stripe.StripeClient:
    """The configured Stripe client."""
    if not is_configured():
        raise StripeNotConfigured("Set STRIPE_SECRET_KEY to take payments.")
    return _client(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except stripe.CardError:
        raise
    except stripe.StripeError as exc:
        raise StripeUnavailable(exc.user_message or str(exc)) from exc


def _plain(obj: Any) -> dict[str, Any]:
    """An SDK object as a plain dict (SDK objects are not dicts)."""
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _intent(pi: Any) -> Intent:
    data = _plain(pi)
    charge = data.get("latest_charge")
    charge_id, refunded, receipt = "", 0, ""
    if isinstance(charge, str):
        charge_id = charge
    elif isinstance(charge, dict):
        charge_id = charge.get("id") or ""
        refunded = int(charge.get("amount_refunded") or 0)
        receipt = charge.get("receipt_url") or ""
    error = data.get("last_payment_error") or {}
    return Intent(
        id=data["id"],
        status=data["status"],
        amount=int(data["amount"]),
        currency=data["currency"],
        customer=data.get("customer") or "",
        client_secret=data.get("client_secret") or "",
        metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        charge_id=charge_id,
        amount_refunded=refunded,
        receipt_url=receipt,
        failure_message=error.get("message") or "",
    )


def customer_create(*, email: str, user_id: int) -> str:
    """A Stripe customer for a user; returns its id."""
    customer = _call(
        client().v1.customers.create,
        params={"email": email, "metadata": {"user_id": str(user_id)}},
        options={"idempotency_key": f"customer:{user_id}"},
    )
    return str(customer.id)


def setup_intent_create(*, customer: str) -> tuple[str, str]:
    """A SetupIntent that saves a card for off-session use; returns (id, client_secret)."""
    intent = _call(
        client().v1.setup_intents.create,
        params={"customer": customer, "usage": "off_session", "payment_method_types": ["card"]},
    )
    return str(intent.id), str(intent.client_secret)


def setup_intent_saved_card(*, setup_intent_id: str) -> SavedCard | None:
    """The card a succeeded SetupIntent saved, attached to its customer; None if not succeeded."""
    stripe_client = client()
    intent = _plain(_call(stripe_client.v1.setup_intents.retrieve, setup_intent_id))
    if (
        intent["status"] != "succeeded"
        or not intent.get("payment_method")
        or not intent.get("customer")
    ):
        return None
    method = _plain(_call(stripe_client.v1.payment_methods.retrieve, intent["payment_method"]))
    if not method.get("customer"):
        # Stripe attaches it on confirmation; the stand-in leaves that to us.
        method = _plain(
            _call(
                stripe_client.v1.payment_methods.attach,
                method["id"],
                params={"customer": intent["customer"]},
            )
        )
    card = method.get("card") or {}
    label = f"{card['brand'].title()} •••• {card['last4']}" if card else method["type"]
    return SavedCard(payment_method_id=method["id"], customer=str(intent["customer"]), label=label)


def payment_intent_charge(
    *,
    customer: str,
    payment_method: str,
    amount: int,
    currency: str,
    idempotency_key: str,
    metadata: dict[str, str],
    off_session: bool,
    description: str = "",
) -> Intent:
    """Charge a saved card now. A card needing authentication comes back `requires_action`;
    a declined card raises CardRefused."""
    params: dict[str, Any] = {
        "amount": amount,
        "currency": currency,
        "customer": customer,
        "payment_method": payment_method,
        "confirm": True,
        "metadata": metadata,
    }
    if off_session:
        params["off_session"] = True
    try:
        pi = _call(
            client().v1.payment_intents.create,
            params=params,
            options={"idempotency_key": idempotency_key},
        )
    except stripe.CardError as exc:
        error = _plain(exc.error) if exc.error is not None else {}
        intent_obj = error.get("payment_intent")
        intent_id = ""
        if intent_obj:
            intent_id = intent_obj if isinstance(intent_obj, str) else str(intent_obj.get("id"))
        if exc.code == "authentication_required" and intent_id:
            return payment_intent_get(payment_intent_id=intent_id)
        raise CardRefused(
            exc.user_message or "Your card was declined.",
            code=exc.code or "",
            payment_intent_id=intent_id,
        ) from exc
    return _intent(pi)


def payment_intent_get(*, payment_intent_id: str) -> Intent:
    """The PaymentIntent as Stripe has it now (its charge expanded): never trust a payload."""
    pi = _call(
        client().v1.payment_intents.retrieve,
        payment_intent_id,
        params={"expand": ["latest_charge"]},
    )
    return _intent(pi)


def charge_payment_intent_id(*, charge_id: str) -> str:
    """The PaymentIntent a charge belongs to ("" when none)."""
    charge = _plain(_call(client().v1.charges.retrieve, charge_id))
    return str(charge.get("payment_intent") or "")


def webhook_event_construct(*, payload: bytes, signature: str) -> stripe.Event:
    """Verify a webhook's signature and parse it; raises ValueError or SignatureVerificationError."""
    return stripe.Webhook.construct_event(
        payload,
        signature,
        settings.STRIPE_WEBHOOK_SECRET,
        tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
    )


def payment_method_customer(*, payment_method_id: str) -> str | None:
    """The customer a PaymentMethod is attached to: "" when none (a card entered just now),
    None when Stripe has no such PaymentMethod."""
    try:
        method = _plain(client().v1.payment_methods.retrieve(payment_method_id))
    except stripe.InvalidRequestError:
        return None
    except stripe.StripeError as exc:
        raise StripeUnavailable(exc.user_message or str(exc)) from exc
    customer = method.get("customer") or ""
    return customer if isinstance(customer, str) else str(customer.get("id") or "")
