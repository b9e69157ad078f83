"""The receipt e-mailed when a payment is paid: a top-up or an auto-recharge, against a real
localstripe process; exactly one per payment however often Stripe delivers its webhook."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.core import mail
from django.test import Client

from billing.models import ApiKey, Payment, StripeEvent, User
from billing.receipt_email import receipt_email
from embeddings_site.background import local_tasks_wait
from tests.billing import test_payments
from tests.billing.test_payments import (
    CARD_DECLINED_ON_CHARGE,
    CARD_OK,
    embed,
    enable_auto_recharge,
    paid_at_stripe_only,
    post_event,
    save_card,
    wait_for,
)
from tests.infra import LocalStripe, stripe_event, stripe_signature

pytestmark = pytest.mark.django_db(transaction=True)

# The payment tests' localstripe settings and signed-in buyer with a key.
stripe_on = pytest.fixture(test_payments.stripe_on.__wrapped__)  # type: ignore[attr-defined]
buyer = pytest.fixture(test_payments.buyer.__wrapped__)  # type: ignore[attr-defined]


def receipts_for(user: User) -> list[Any]:
    local_tasks_wait()
    return [
        message
        for message in mail.outbox
        if message.to == [user.email] and message.subject.startswith("Receipt")
    ]


def test_a_paid_top_up_mails_one_receipt_with_what_was_bought(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey], settings: Any, live_server: Any
) -> None:
    client, user, api_key = buyer
    stripe_on.send_webhooks_to(f"{live_server.url}/billing/stripe/webhook")
    save_card(client, stripe_on, CARD_OK)
    body = client.post("/billing/topup", {"api_key": api_key.pk, "pack": "large"}).json()
    assert body["status"] == "succeeded", body
    payment = Payment.objects.get(pk=body["payment"])

    # localstripe's payment_intent.succeeded arrives later, and the buyer opens the return page:
    # neither sends a second receipt.
    wait_for(
        lambda: StripeEvent.objects.filter(
            type="payment_intent.succeeded",
            payload__data__object__id=payment.stripe_payment_intent_id,
            status=StripeEvent.Status.PROCESSED,
        ).exists(),
        what="localstripe's webhook",
    )
    client.get(f"/billing/topup/return?payment_intent={payment.stripe_payment_intent_id}")

    receipts = receipts_for(user)
    assert len(receipts) == 1, [m.subject for m in receipts]
    text = receipts[0].body
    payment.refresh_from_db()
    assert f"Receipt: 10,000,000 tokens for API key {api_key.prefix}" in receipts[0].subject
    assert "10M tokens" in text  # the pack's name, not its id
    assert "$40.00 (USD)" in text
    assert "10,000,000" in text and api_key.prefix in text
    assert f"{settings.SITE_URL}/billing/payments/{payment.pk}/" in text
    assert payment.updated_at.strftime("%Y-%m-%d") in text
    # localstripe's charges carry no receipt_url, so the mail has no Stripe link...
    assert payment.receipt_url == "" and "Stripe's receipt" not in text

    # ...and when Stripe's charge has one (read by billing.stripe_api), the receipt links it.
    mail.outbox.clear()
    Payment.objects.filter(pk=payment.pk).update(
        receipt_url="https://pay.stripe.com/receipts/payment/CAcaFwoV"
    )
    receipt_email(payment.pk)
    assert "Stripe's receipt:\nhttps://pay.stripe.com/receipts/payment/CAcaFwoV" in (
        mail.outbox[0].body
    )


def test_the_same_event_delivered_four_times_at_once_mails_one_receipt(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    client, user, api_key = buyer
    payment = paid_at_stripe_only(client, stripe_on, api_key)  # 3-D Secure, settled by no one yet
    assert receipts_for(user) == []
    body = stripe_event("payment_intent.succeeded", {"id": payment.stripe_payment_intent_id})
    other_delivery = stripe_event(
        "payment_intent.succeeded", {"id": payment.stripe_payment_intent_id}
    )
    barrier = threading.Barrier(4)

    def deliver(index: int) -> int:
        barrier.wait()
        payload = body if index % 2 else other_delivery  # a retry and a second event alike
        return post_event(Client(), payload, stripe_signature(payload)).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(deliver, range(4)))
    assert all(200 <= status < 300 for status in statuses), statuses

    receipts = receipts_for(user)
    assert len(receipts) == 1
    assert f"/billing/payments/{payment.pk}/" in receipts[0].body
    assert Payment.objects.get(pk=payment.pk).status == Payment.Status.SUCCEEDED


def test_an_auto_recharge_mails_a_receipt_and_a_declined_card_none(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey], default_model: Any
) -> None:
    client, user, api_key = buyer
    save_card(client, stripe_on, CARD_OK)
    client.post("/billing/topup", {"api_key": api_key.pk, "pack": "small"})
    assert len(receipts_for(user)) == 1
    enable_auto_recharge(client, api_key, threshold=ApiKey.objects.get(pk=api_key.pk).balance)

    assert embed(client, api_key).status_code == 200
    receipts = receipts_for(user)
    assert len(receipts) == 2
    recharge = Payment.objects.get(kind=Payment.Kind.AUTO_RECHARGE)
    assert f"/billing/payments/{recharge.pk}/" in receipts[1].body
    assert "Auto-recharge" in receipts[1].body

    save_card(client, stripe_on, CARD_DECLINED_ON_CHARGE)
    declined = client.post("/billing/topup", {"api_key": api_key.pk, "pack": "small"}).json()
    assert declined["status"] == "failed", declined
    assert len(receipts_for(user)) == 2
