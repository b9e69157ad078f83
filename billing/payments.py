"""Buying tokens: token packs, top-ups with a saved card, auto-recharge, and the one function that
settles a payment from Stripe's state of its PaymentIntent.

Every path that learns something about a payment (the top-up request, the return page, each
webhook, the auto-recharge task) ends in `payment_apply_intent`, which re-reads the intent from
Stripe and moves the payment to match it under a row lock. Credits and refunds are recorded on
the payment, so applying the same state twice, or states out of order, ends in the same balance.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F, Sum
from django.urls import reverse
from django.utils import timezone

from billing import stripe_api
from billing.alerts import low_balance_alert_rearm
from billing.models import ApiKey, AutoRecharge, LedgerEntry, Payment, User
from billing.receipt_email import receipt_email_queue
from metering.ledger import balance_credit, balance_take_back

logger = logging.getLogger(__name__)

# A charge still marked in flight after this long is presumed lost (its process died); the next
# trigger retries it with the same idempotency key, which Stripe answers with the same intent.
IN_FLIGHT_TIMEOUT = timedelta(minutes=10)


class PaymentError(Exception):
    """A purchase that cannot go ahead, with a message for the buyer."""


@dataclass(frozen=True)
class TokenPack:
    """A pack of tokens for sale (settings.TOKEN_PACKS)."""

    id: str
    name: str
    tokens: int
    amount: int
    currency: str

    @property
    def price(self) -> str:
        """The price for people: "$50.00"."""
        return money(amount=self.amount, currency=self.currency)


def money(*, amount: int, currency: str) -> str:
    """An amount in the currency's minor unit for people: "$50.00", "50.00 CHF"."""
    symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(currency.lower())
    value = f"{amount / 100:,.2f}"
    return f"{symbol}{value}" if symbol else f"{value} {currency.upper()}"


def token_packs() -> list[TokenPack]:
    """The packs on sale, in the configured order."""
    return [
        TokenPack(
            id=str(pack["id"]),
            name=str(pack["name"]),
            tokens=int(str(pack["tokens"])),
            amount=int(str(pack["amount"])),
            currency=str(pack["currency"]).lower(),
        )
        for pack in settings.TOKEN_PACKS
    ]


def token_pack_get(*, pack_id: str) -> TokenPack | None:
    """A pack by id, or None."""
    return next((pack for pack in token_packs() if pack.id == pack_id), None)


# --- Cards -----------------------------------------------------------------------------------


def stripe_customer_ensure(*, user: User) -> str:
    """The user's Stripe customer id, created on first use."""
    if user.stripe_customer_id:
        return user.stripe_customer_id
    customer_id = stripe_api.customer_create(email=user.email, user_id=user.pk)
    User.objects.filter(pk=user.pk, stripe_customer_id="").update(stripe_customer_id=customer_id)
    user.refresh_from_db(fields=["stripe_customer_id"])
    return user.stripe_customer_id


def card_setup_start(*, user: User) -> str:
    """A SetupIntent for the card form; returns its client secret for Stripe.js."""
    _, client_secret = stripe_api.setup_intent_create(customer=stripe_customer_ensure(user=user))
    return client_secret


def card_save(*, user: User, setup_intent_id: str) -> None:
    """Keep the card a confirmed SetupIntent saved as the user's card (theirs only)."""
    card = stripe_api.setup_intent_saved_card(setup_intent_id=setup_intent_id)
    if card is None:
        raise PaymentError("The card was not saved; please enter it again.")
    if not user.stripe_customer_id or card.customer != user.stripe_customer_id:
        raise PaymentError("That card setup belongs to another account.")
    User.objects.filter(pk=user.pk).update(
        stripe_payment_method_id=card.payment_method_id, card_label=card.label
    )
    user.stripe_payment_method_id, user.card_label = card.payment_method_id, card.label


# --- Top-ups ---------------------------------------------------------------------------------


def topup_pay(*, user: User, api_key: ApiKey, pack_id: str) -> tuple[Payment, str]:
    """Charge the user's saved card for a pack for one of their keys.

    Returns the payment and, when the bank asks the buyer to authenticate, the intent's client
    secret for Stripe.js (else "").
    """
    pack = token_pack_get(pack_id=pack_id)
    if pack is None:
        raise PaymentError("Unknown token pack.")
    if api_key.user_id != user.pk or api_key.revoked_at is not None:
        raise PaymentError("Choose one of your active keys.")
    if not user.stripe_payment_method_id:
        raise PaymentError("Add a card first.")
    payment = Payment.objects.create(
        user=user,
        api_key=api_key,
        kind=Payment.Kind.TOPUP,
        pack_id=pack.id,
        tokens=pack.tokens,
        amount=pack.amount,
        currency=pack.currency,
        idempotency_key=f"topup:{uuid.uuid4()}",
    )
    intent = _charge(payment=payment, user=user, off_session=False)
    if intent is None:
        payment.refresh_from_db()
        return payment, ""
    settled = payment_apply_intent(intent=intent) or payment
    return settled, intent.client_secret if intent.status == "requires_action" else ""


def key_box_pay(*, api_key_id: int, pack_id: str, payment_method_id: str) -> tuple[Payment, str]:
    """Buy a pack for a key whose holder has no account here (the key box): the card was entered
    just now in Stripe.js and is charged once, on-session, for the key's owner's customer; it is
    not saved for later. The payment settles like any top-up (payment_apply_intent).

    Returns the payment and, when the bank asks the buyer to authenticate, the intent's client
    secret for Stripe.js (else "").
    """
    pack = token_pack_get(pack_id=pack_id)
    if pack is None:
        raise PaymentError("Unknown token pack.")
    api_key = (
        ApiKey.objects.select_related("user")
        .filter(pk=api_key_id, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if api_key is None:
        raise PaymentError("This key can no longer be topped up. Look it up again.")
    if not payment_method_id.startswith("pm_"):
        raise PaymentError("Enter a card.")
    owner = api_key.user
    # Only a card entered now: never one saved to a customer (the owner's card is the owner's
    # to spend, not a key holder's).
    if payment_method_id == owner.stripe_payment_method_id or (
        stripe_api.payment_method_customer(payment_method_id=payment_method_id) != ""
    ):
        raise PaymentError("Enter the card again.")
    payment = Payment.objects.create(
        user=owner,
        api_key=api_key,
        kind=Payment.Kind.TOPUP,
        pack_id=pack.id,
        tokens=pack.tokens,
        amount=pack.amount,
        currency=pack.currency,
        idempotency_key=f"keybox:{uuid.uuid4()}",
    )
    intent = _charge(payment=payment, user=owner, off_session=False, card=payment_method_id)
    if intent is None:
        payment.refresh_from_db()
        return payment, ""
    settled = payment_apply_intent(intent=intent) or payment
    return settled, intent.client_secret if intent.status == "requires_action" else ""


def key_box_payment_settle(*, api_key_id: int, payment_intent_id: str) -> Payment | None:
    """The key box after Stripe.js finished authentication: settle that key's payment from
    Stripe's state (None: not a payment for that key)."""
    if not Payment.objects.filter(
        api_key_id=api_key_id, stripe_payment_intent_id=payment_intent_id
    ).exists():
        return None
    return payment_reconcile(payment_intent_id=payment_intent_id)


def _charge(
    *, payment: Payment, user: User, off_session: bool, card: str = ""
) -> stripe_api.Intent | None:
    """Create and confirm the payment's intent with `card` (by default the user's saved card);
    a refused card fails the payment (None)."""
    try:
        intent = stripe_api.payment_intent_charge(
            customer=stripe_customer_ensure(user=user),
            payment_method=card or user.stripe_payment_method_id,
            amount=payment.amount,
            currency=payment.currency,
            idempotency_key=payment.idempotency_key,
            metadata={"payment_id": str(payment.pk), "api_key_id": str(payment.api_key_id)},
            off_session=off_session,
            description=f"{payment.pack_id} for key {payment.api_key.prefix}",
        )
    except stripe_api.CardRefused as refused:
        payment_fail(payment=payment, message=refused.message, intent_id=refused.payment_intent_id)
        return None
    Payment.objects.filter(pk=payment.pk, stripe_payment_intent_id__isnull=True).update(
        stripe_payment_intent_id=intent.id
    )
    return intent


def payment_reconcile(*, payment_intent_id: str) -> Payment | None:
    """Re-read an intent from Stripe and settle our payment to match (None: not one of ours)."""
    return payment_apply_intent(
        intent=stripe_api.payment_intent_get(payment_intent_id=payment_intent_id)
    )


def payment_return(*, user: User, payment_intent_id: str) -> Payment | None:
    """The return page: settle the buyer's own payment; foreign or unknown ids get None."""
    payment = Payment.objects.filter(user=user, stripe_payment_intent_id=payment_intent_id).first()
    if payment is None:
        return None
    return payment_reconcile(payment_intent_id=payment_intent_id)


@transaction.atomic
def payment_apply_intent(*, intent: stripe_api.Intent) -> Payment | None:
    """Move a payment to the state of its intent: credit once on success, take refunds back."""
    candidates = Payment.objects.filter(stripe_payment_intent_id=intent.id)
    if not candidates.exists() and intent.metadata.get("payment_id", "").isdigit():
        candidates = Payment.objects.filter(
            pk=int(intent.metadata["payment_id"]), stripe_payment_intent_id__isnull=True
        )
    payment = _lock(candidates)
    if payment is not None and payment.stripe_payment_intent_id is None:
        payment.stripe_payment_intent_id = intent.id
    if payment is None:
        return None
    if (intent.amount, intent.currency) != (payment.amount, payment.currency):
        logger.error(
            "Payment %s: intent %s is for another amount; not applied", payment.pk, intent.id
        )
        return payment
    was = payment.status
    if intent.charge_id:
        payment.stripe_charge_id = intent.charge_id
    if intent.receipt_url:
        payment.receipt_url = intent.receipt_url
    if intent.status == "succeeded":
        if payment.credited_tokens == 0:
            balance_credit(
                api_key=payment.api_key,
                tokens=payment.tokens,
                kind=LedgerEntry.Kind.TOPUP,
                reference=f"payment {payment.pk} ({intent.id})",
            )
            payment.credited_tokens = payment.tokens
            payment.failure_message = ""
            low_balance_alert_rearm(api_key_id=payment.api_key_id)
            receipt_email_queue(payment=payment)
        payment.status = Payment.Status.SUCCEEDED
        _apply_refund(payment=payment, amount_refunded=intent.amount_refunded)
    elif payment.credited_tokens == 0:
        if intent.status == "requires_action":
            payment.status = Payment.Status.REQUIRES_ACTION
        elif intent.status in ("requires_payment_method", "canceled"):
            payment.status = Payment.Status.FAILED
            payment.failure_message = (intent.failure_message or "The payment did not go through.")[
                :255
            ]
        else:
            payment.status = Payment.Status.PENDING
    payment.save()
    if payment.kind == Payment.Kind.AUTO_RECHARGE and payment.status != was:
        _auto_recharge_settled(payment=payment)
    return payment


def _lock(payments: Any) -> Payment | None:
    """Lock a payment row, after its key's auto-recharge row: every path takes the locks in
    the order auto-recharge → payment → key, so concurrent settlements cannot deadlock."""
    found = payments.values("pk", "api_key_id", "kind").first()
    if found is None:
        return None
    if found["kind"] == Payment.Kind.AUTO_RECHARGE:
        list(AutoRecharge.objects.select_for_update().filter(api_key_id=found["api_key_id"]))
    return (
        Payment.objects.select_for_update().select_related("api_key").filter(pk=found["pk"]).first()
    )


def _apply_refund(*, payment: Payment, amount_refunded: int) -> None:
    """Take back the tokens of what Stripe refunded so far, beyond what was already handled."""
    refunded_tokens = payment.tokens * min(amount_refunded, payment.amount) // payment.amount
    handled = payment.refunded_tokens + payment.refund_shortfall_tokens
    if refunded_tokens > handled:
        due = refunded_tokens - handled
        taken = balance_take_back(
            api_key=payment.api_key,
            tokens=due,
            reference=f"refund of payment {payment.pk} ({payment.stripe_payment_intent_id})",
        )
        payment.refunded_tokens += taken
        payment.refund_shortfall_tokens += due - taken
        if due > taken:
            logger.warning(
                "Payment %s refunded: %s tokens were already spent and could not be taken back",
                payment.pk,
                due - taken,
            )
    if amount_refunded >= payment.amount:
        payment.status = Payment.Status.REFUNDED
    elif amount_refunded > 0:
        payment.status = Payment.Status.PARTIALLY_REFUNDED


def payment_fail(*, payment: Payment, message: str, intent_id: str = "") -> Payment:
    """The card was refused before an intent could settle: record it, nothing credited."""
    with transaction.atomic():
        locked = _lock(Payment.objects.filter(pk=payment.pk))
        if locked is None or locked.credited_tokens:
            return locked or payment
        was = locked.status
        locked.status = Payment.Status.FAILED
        locked.failure_message = message[:255]
        if intent_id and not locked.stripe_payment_intent_id:
            locked.stripe_payment_intent_id = intent_id
        locked.save()
        if locked.kind == Payment.Kind.AUTO_RECHARGE and was != locked.status:
            _auto_recharge_settled(payment=locked)
    return locked or payment


# --- Auto-recharge ---------------------------------------------------------------------------


def auto_recharge_get(*, api_key: ApiKey) -> AutoRecharge:
    """A key's auto-recharge settings (off until the user turns it on)."""
    recharge, _ = AutoRecharge.objects.get_or_create(api_key=api_key)
    return recharge


@transaction.atomic
def auto_recharge_configure(
    *, api_key: ApiKey, enabled: bool, threshold_tokens: int, pack_id: str, monthly_cap_amount: int
) -> AutoRecharge:
    """Save a key's auto-recharge settings; turning it on also lifts a pause."""
    if pack_id and token_pack_get(pack_id=pack_id) is None:
        raise PaymentError("Unknown token pack.")
    if threshold_tokens < 0 or monthly_cap_amount < 0:
        raise PaymentError("The threshold and the monthly cap cannot be negative.")
    if enabled and not api_key.user.stripe_payment_method_id:
        raise PaymentError("Add a card with a top-up before turning auto-recharge on.")
    recharge = AutoRecharge.objects.select_for_update().get_or_create(api_key=api_key)[0]
    recharge.enabled = enabled
    recharge.threshold_tokens = threshold_tokens
    recharge.pack_id = pack_id
    recharge.monthly_cap_amount = monthly_cap_amount
    if enabled:
        recharge.paused_at, recharge.paused_reason = None, ""
    recharge.save()
    return recharge


def auto_recharge_cap_currency() -> str:
    """The currency the monthly cap is typed in: the packs' (a cap counts what they cost)."""
    currencies = sorted({pack.currency for pack in token_packs()})
    return ", ".join(currency.upper() for currency in currencies) or "USD"


def auto_recharge_wanted(*, api_key: ApiKey) -> bool:
    """After a debit: does this key's balance sit under an active auto-recharge threshold?"""
    try:
        recharge = api_key.auto_recharge
    except AutoRecharge.DoesNotExist:
        return False
    if not recharge.enabled or recharge.paused_at is not None:
        return False
    balance = ApiKey.objects.values_list("balance", flat=True).get(pk=api_key.pk)
    return balance < recharge.threshold_tokens


def _auto_recharge_pack(*, recharge: AutoRecharge) -> TokenPack | None:
    """The chosen pack, else the pack of the key's last paid top-up, else the first on sale."""
    if recharge.pack_id:
        return token_pack_get(pack_id=recharge.pack_id)
    last = (
        Payment.objects.filter(
            api_key=recharge.api_key, kind=Payment.Kind.TOPUP, credited_tokens__gt=0
        )
        .order_by("-created_at")
        .first()
    )
    pack = token_pack_get(pack_id=last.pack_id) if last else None
    packs = token_packs()
    return pack or (packs[0] if packs else None)


def auto_recharge_run(*, api_key_id: int) -> Payment | None:
    """Charge the saved card off-session if the key is still under its threshold.

    Concurrent triggers collapse: the first marks the recharge in flight under a row lock and
    the rest return; the charge's idempotency key is fixed by the recharge's generation, so a
    retry after a crash cannot charge twice either.
    """
    with transaction.atomic():
        recharge = (
            AutoRecharge.objects.select_for_update()
            .select_related("api_key__user")
            .filter(api_key_id=api_key_id)
            .first()
        )
        if recharge is None or not recharge.enabled or recharge.paused_at is not None:
            return None
        now = timezone.now()
        if recharge.in_flight_since and now - recharge.in_flight_since < IN_FLIGHT_TIMEOUT:
            return None
        api_key, user = recharge.api_key, recharge.api_key.user
        balance = ApiKey.objects.values_list("balance", flat=True).get(pk=api_key_id)
        if api_key.revoked_at is not None or balance >= recharge.threshold_tokens:
            return None
        pack = _auto_recharge_pack(recharge=recharge)
        if pack is None or not user.stripe_payment_method_id:
            _auto_recharge_pause(
                recharge=recharge,
                reason="There is no saved card to charge.",
                cause=AutoRecharge.PauseCause.CARD,
            )
            return None
        month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        spent = (
            Payment.objects.filter(
                api_key=api_key, kind=Payment.Kind.AUTO_RECHARGE, created_at__gte=month_start
            )
            .exclude(status=Payment.Status.FAILED)
            .aggregate(total=Sum("amount"))["total"]
            or 0
        )
        if spent + pack.amount > recharge.monthly_cap_amount:
            _auto_recharge_pause(
                recharge=recharge,
                reason=f"This month's auto-recharge cap ({recharge.monthly_cap_amount / 100:,.2f} "
                f"{pack.currency.upper()}) is reached.",
                cause=AutoRecharge.PauseCause.CAP,
            )
            return None
        idempotency_key = f"ar:{api_key_id}:{recharge.generation}"
        payment, created = Payment.objects.get_or_create(
            idempotency_key=idempotency_key,
            defaults={
                "user": user,
                "api_key": api_key,
                "kind": Payment.Kind.AUTO_RECHARGE,
                "pack_id": pack.id,
                "tokens": pack.tokens,
                "amount": pack.amount,
                "currency": pack.currency,
            },
        )
        recharge.in_flight_since = now
        recharge.save(update_fields=["in_flight_since"])
    if not created and payment.stripe_payment_intent_id:
        # A lost run got as far as Stripe: settle what it started instead of charging again.
        return payment_reconcile(payment_intent_id=payment.stripe_payment_intent_id)
    try:
        intent = _charge(payment=payment, user=user, off_session=True)
    except stripe_api.StripeUnavailable:
        logger.exception("Auto-recharge of key %s: Stripe unavailable; will retry", api_key_id)
        AutoRecharge.objects.filter(pk=recharge.pk).update(in_flight_since=None)
        return payment
    if intent is None:
        payment.refresh_from_db()
        return payment
    return payment_apply_intent(intent=intent)


def _auto_recharge_settled(*, payment: Payment) -> None:
    """An auto-recharge charge reached a state: next generation; pause and tell on failure."""
    recharge = AutoRecharge.objects.select_for_update().filter(api_key=payment.api_key).first()
    if recharge is None:
        return
    if payment.idempotency_key == f"ar:{payment.api_key_id}:{recharge.generation}" and (
        payment.status != Payment.Status.PENDING
    ):
        AutoRecharge.objects.filter(pk=recharge.pk).update(
            generation=F("generation") + 1, in_flight_since=None
        )
    if payment.status in (Payment.Status.REQUIRES_ACTION, Payment.Status.FAILED):
        reason = (
            "Your bank asks you to confirm the auto-recharge payment."
            if payment.status == Payment.Status.REQUIRES_ACTION
            else f"The auto-recharge payment failed: {payment.failure_message}"
        )
        recharge.pending_payment = payment
        cause = (
            AutoRecharge.PauseCause.CONFIRM
            if payment.status == Payment.Status.REQUIRES_ACTION
            else AutoRecharge.PauseCause.CARD
        )
        _auto_recharge_pause(recharge=recharge, reason=reason, payment=payment, cause=cause)
    elif payment.status == Payment.Status.SUCCEEDED and recharge.pending_payment_id == payment.pk:
        # The buyer finished the payment the pause asked for: auto-recharge goes on.
        AutoRecharge.objects.filter(pk=recharge.pk).update(
            paused_at=None, paused_reason="", pending_payment=None
        )


# What the banner and the e-mail ask of the user, by why auto-recharge paused.
_PAUSE_ACTIONS: dict[str, str] = {
    AutoRecharge.PauseCause.CONFIRM: "Confirm the payment with your bank",
    AutoRecharge.PauseCause.CARD: "Update your card",
    AutoRecharge.PauseCause.CAP: "Raise the monthly cap, or top up by hand until next month",
}


def _auto_recharge_pause(
    *, recharge: AutoRecharge, reason: str, cause: str, payment: Payment | None = None
) -> None:
    """Stop auto-recharge until the user acts, and tell them by e-mail (sent after commit)."""
    AutoRecharge.objects.filter(pk=recharge.pk).update(
        paused_at=timezone.now(),
        paused_reason=reason[:255],
        paused_cause=cause,
        in_flight_since=None,
        pending_payment=payment if payment is not None else recharge.pending_payment,
    )
    user = recharge.api_key.user
    key_prefix = recharge.api_key.prefix
    link = settings.SITE_URL + (
        reverse("payment-detail", args=[payment.pk])
        if payment is not None
        else reverse("billing") + f"#auto-recharge-{recharge.api_key_id}"
    )
    action = _PAUSE_ACTIONS.get(cause, "Open your billing page")

    def notify() -> None:
        send_mail(
            subject=f"Auto-recharge paused for key {key_prefix}",
            message=(
                f"{reason}\n\nAuto-recharge for your API key {key_prefix} is paused; no tokens "
                f"were added. {action} here:\n\n{link}\n"
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[user.email],
            fail_silently=True,
        )

    transaction.on_commit(notify)


def auto_recharge_notices(*, user: User) -> list[dict[str, Any]]:
    """The user's paused auto-recharges, for the banner on every page."""
    notices = []
    for recharge in AutoRecharge.objects.filter(
        api_key__user=user, enabled=True, paused_at__isnull=False
    ).select_related("api_key", "pending_payment"):
        confirm = (
            recharge.pending_payment_id
            and recharge.pending_payment is not None
            and recharge.pending_payment.status == Payment.Status.REQUIRES_ACTION
        )
        cause = recharge.paused_cause or (
            AutoRecharge.PauseCause.CONFIRM if confirm else AutoRecharge.PauseCause.CARD
        )
        link = (
            reverse("payment-detail", args=[recharge.pending_payment_id])
            if confirm and cause == AutoRecharge.PauseCause.CONFIRM
            else reverse("billing") + f"#auto-recharge-{recharge.api_key_id}"
        )
        notices.append(
            {
                "key": recharge.api_key,
                "reason": recharge.paused_reason,
                "link": link,
                "action": _PAUSE_ACTIONS.get(cause, "Open your billing page"),
            }
        )
    return notices


def payment_list(*, user: User) -> list[Payment]:
    """The user's payments, newest first."""
    return list(Payment.objects.filter(user=user).select_related("api_key")[:200])
