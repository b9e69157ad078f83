"""Top-ups, saved cards, auto-recharge and webhooks against a real localstripe process.

The browser's part (Stripe.js confirming the card) is done here with Stripe's API the way
Stripe.js does it; the pages' JavaScript is driven in Chromium by the web tests.
ADVERSARIAL rows 10–15 are here; row 9 (50 concurrent triggers) is in test_payments_e2e.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from django.core import mail
from django.test import Client

from billing import webhooks
from billing.models import ApiKey, AutoRecharge, LedgerEntry, Payment, StripeEvent, User
from billing.payments import auto_recharge_configure, token_packs
from embeddings_site.background import local_tasks_wait
from metering.ledger import ledger_mismatches
from tests.factories import ApiKeyFactory, UserFactory
from tests.infra import LocalStripe, stripe_env, stripe_event, stripe_signature

pytestmark = pytest.mark.django_db(transaction=True)

CARD_OK = "4242424242424242"
CARD_3DS = "4000002760003184"  # needs authentication, also off-session
CARD_DECLINED_ON_CHARGE = "4000000000000341"  # saves fine, every charge is declined
PACKS = [
    {"id": "small", "name": "1M tokens", "tokens": 1_000_000, "amount": 500, "currency": "usd"},
    {"id": "large", "name": "10M tokens", "tokens": 10_000_000, "amount": 4_000, "currency": "usd"},
]


@pytest.fixture
def stripe_on(settings: Any, localstripe: LocalStripe) -> LocalStripe:
    for name, value in stripe_env(localstripe).items():
        setattr(settings, name, value)
    settings.TOKEN_PACKS = PACKS
    localstripe.send_webhooks_to(None)
    return localstripe


@pytest.fixture
def buyer(db: None) -> tuple[Client, User, ApiKey]:
    user = UserFactory()
    user.set_password("correct horse")
    user.save()
    api_key = ApiKeyFactory(user=user)
    client = Client()
    client.force_login(user)
    return client, user, api_key


def wait_for(predicate: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def save_card(client: Client, server: LocalStripe, number: str) -> str:
    """What the top-up page does: SetupIntent → Stripe.js confirms the card → save it."""
    response = client.post("/billing/card/setup")
    assert response.status_code == 200, response.content
    client_secret = response.json()["client_secret"]
    setup_intent = client_secret.split("_secret_")[0]
    card = {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}
    stripe = server.client()
    confirmed = stripe.v1.setup_intents.confirm(  # type: ignore[attr-defined]
        setup_intent,
        params={
            "client_secret": client_secret,
            "payment_method_data": {"type": "card", "card": card},
        },
    )
    if confirmed.status == "requires_action":
        # Stripe.js shows the bank's page; the buyer completes it.
        stripe.v1.setup_intents.confirm(setup_intent, params={"client_secret": client_secret})  # type: ignore[attr-defined]
    response = client.post("/billing/card/save", {"setup_intent": setup_intent})
    assert response.status_code == 200, response.content
    return response.json()["card_label"]


def authenticate(
    server: LocalStripe, payment_intent_id: str, client_secret: str, success: bool = True
) -> None:
    """The buyer answers the bank's 3-D Secure page (what Stripe.js's confirmCardPayment does)."""
    response = requests.post(
        f"{server.url}/v1/payment_intents/{payment_intent_id}/_authenticate",
        params={"success": "true" if success else "false"},
        json={"key": "pk_test_localstripe", "client_secret": client_secret},
        timeout=10,
    )
    response.raise_for_status()


def balance(api_key: ApiKey) -> int:
    return ApiKey.objects.get(pk=api_key.pk).balance


def topup_credits(api_key: ApiKey) -> int:
    return LedgerEntry.objects.filter(api_key=api_key, kind=LedgerEntry.Kind.TOPUP).count()


def post_event(client: Client, body: bytes, signature: str | None) -> Any:
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
    return client.post(
        "/billing/stripe/webhook", data=body, content_type="application/json", **headers
    )


def pending_3ds_topup(
    client: Client, server: LocalStripe, api_key: ApiKey, pack: str = "small"
) -> tuple[Payment, str]:
    """A top-up on a 3-D Secure card, waiting for the buyer: nothing credited yet."""
    save_card(client, server, CARD_3DS)
    response = client.post("/billing/topup", {"api_key": api_key.pk, "pack": pack})
    body = response.json()
    assert body["status"] == "requires_action" and body["client_secret"], body
    payment = Payment.objects.get(pk=body["payment"])
    return payment, body["client_secret"]


def paid_at_stripe_only(client: Client, server: LocalStripe, api_key: ApiKey) -> Payment:
    """A 3-D Secure top-up the buyer finished at Stripe; nothing has settled it here yet."""
    payment, client_secret = pending_3ds_topup(client, server, api_key)
    authenticate(server, payment.stripe_payment_intent_id or "", client_secret)
    return payment


# --- Top-up ----------------------------------------------------------------------------------


def test_topup_end_to_end_the_webhook_reaches_the_server_and_the_key_is_credited_once(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey], live_server: Any
) -> None:
    client, user, api_key = buyer
    stripe_on.send_webhooks_to(f"{live_server.url}/billing/stripe/webhook")
    before = balance(api_key)

    assert save_card(client, stripe_on, CARD_OK) == "Visa •••• 4242"
    response = client.post("/billing/topup", {"api_key": api_key.pk, "pack": "large"})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "succeeded", body
    payment = Payment.objects.get(pk=body["payment"])
    assert payment.stripe_payment_intent_id and payment.kind == Payment.Kind.TOPUP

    # localstripe signs payment_intent.succeeded and posts it to the live server about 1 s later.
    event = wait_for(
        lambda: StripeEvent.objects.filter(
            type="payment_intent.succeeded",
            payload__data__object__id=payment.stripe_payment_intent_id,
        ).first(),
        what="localstripe's webhook",
    )
    wait_for(lambda: StripeEvent.objects.get(pk=event.pk).status == StripeEvent.Status.PROCESSED)
    # The return page after it: still once.
    page = client.get(f"/billing/topup/return?payment_intent={payment.stripe_payment_intent_id}")
    assert page.status_code == 302

    assert balance(api_key) == before + 10_000_000
    assert topup_credits(api_key) == 1
    payment.refresh_from_db()
    assert payment.status == Payment.Status.SUCCEEDED and payment.credited_tokens == 10_000_000

    # The saved card pays the next top-up without the card form.
    again = client.post("/billing/topup", {"api_key": api_key.pk, "pack": "small"}).json()
    assert again["status"] == "succeeded"
    assert balance(api_key) == before + 11_000_000


def test_the_return_page_racing_the_webhook_credits_once(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey], live_server: Any
) -> None:
    """ADVERSARIAL 15 (first half): the buyer comes back from 3-D Secure while the webhook lands."""
    client, user, api_key = buyer
    stripe_on.send_webhooks_to(f"{live_server.url}/billing/stripe/webhook")
    before = balance(api_key)
    payment, client_secret = pending_3ds_topup(client, stripe_on, api_key)
    assert balance(api_key) == before

    authenticate(stripe_on, payment.stripe_payment_intent_id or "", client_secret)
    url = f"/billing/topup/return?payment_intent={payment.stripe_payment_intent_id}"

    def return_page(_: int) -> int:
        own = Client()
        own.force_login(user)
        statuses = []
        for _ in range(8):  # around the moment localstripe's webhook arrives
            statuses.append(own.get(url).status_code)
            time.sleep(0.2)
        return max(statuses)

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert set(pool.map(return_page, range(4))) == {302}
    wait_for(
        lambda: StripeEvent.objects.filter(
            type="payment_intent.succeeded", status=StripeEvent.Status.PROCESSED
        ).exists(),
        what="the webhook",
    )
    assert balance(api_key) == before + 1_000_000
    assert topup_credits(api_key) == 1


def test_foreign_unknown_and_unpaid_intent_ids_credit_nothing(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    """ADVERSARIAL 15 (second half)."""
    client, user, api_key = buyer
    payment, client_secret = pending_3ds_topup(client, stripe_on, api_key)
    before = balance(api_key)

    # Unpaid: the return page settles nothing.
    page = client.get(f"/billing/topup/return?payment_intent={payment.stripe_payment_intent_id}")
    assert page.status_code == 302
    assert balance(api_key) == before
    assert Payment.objects.get(pk=payment.pk).status == Payment.Status.REQUIRES_ACTION

    # Someone else's intent, once paid, is not theirs to settle — and not visible to them.
    authenticate(stripe_on, payment.stripe_payment_intent_id or "", client_secret)
    stranger = Client()
    stranger.force_login(UserFactory())
    foreign = stranger.get(
        f"/billing/topup/return?payment_intent={payment.stripe_payment_intent_id}"
    )
    assert foreign.status_code == 404
    assert stranger.get(f"/billing/payments/{payment.pk}/").status_code == 404
    assert balance(api_key) == before
    # Unknown ids, and ids that are not intent ids.
    assert client.get("/billing/topup/return?payment_intent=pi_doesnotexist").status_code == 404
    assert client.get("/billing/topup/return?payment_intent=../../admin").status_code == 404
    # A key that is not yours cannot be topped up.
    other_key = ApiKeyFactory()
    refused = client.post("/billing/topup", {"api_key": other_key.pk, "pack": "small"})
    assert refused.status_code == 400
    assert balance(other_key) == ApiKey.objects.get(pk=other_key.pk).balance
    assert not Payment.objects.filter(api_key=other_key).exists()


def test_a_declined_card_fails_the_payment_and_credits_nothing(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    client, user, api_key = buyer
    before = balance(api_key)
    save_card(client, stripe_on, CARD_DECLINED_ON_CHARGE)
    body = client.post("/billing/topup", {"api_key": api_key.pk, "pack": "small"}).json()
    assert body["status"] == "failed" and "declined" in body["message"].lower()
    assert balance(api_key) == before
    page = client.get(f"/billing/payments/{body['payment']}/")
    assert b"declined" in page.content.lower()


def test_unknown_pack_and_missing_card_are_refused_with_a_reason(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    client, user, api_key = buyer
    no_card = client.post("/billing/topup", {"api_key": api_key.pk, "pack": "small"})
    assert no_card.status_code == 400 and "card" in no_card.json()["error"]["message"].lower()
    save_card(client, stripe_on, CARD_OK)
    bad_pack = client.post("/billing/topup", {"api_key": api_key.pk, "pack": "free-tokens"})
    assert bad_pack.status_code == 400 and "pack" in bad_pack.json()["error"]["message"].lower()
    assert not Payment.objects.exists()


def test_without_stripe_keys_the_page_says_how_to_configure_and_admins_can_still_grant(
    settings: Any, buyer: tuple[Client, User, ApiKey]
) -> None:
    settings.STRIPE_SECRET_KEY = ""
    client, user, api_key = buyer
    page = client.get("/billing/")
    assert page.status_code == 200
    assert b"Payments are not configured" in page.content and b"STRIPE_SECRET_KEY" in page.content
    refused = client.post("/billing/card/setup")
    assert refused.status_code == 503
    from django.core.management import call_command

    before = balance(api_key)
    call_command("grant", str(api_key.pk), "5000")
    assert balance(api_key) == before + 5000


def test_pages_need_a_login_and_a_csrf_token(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    client, user, api_key = buyer
    anonymous = Client()
    assert anonymous.get("/billing/").status_code == 302
    assert (
        anonymous.post("/billing/topup", {"api_key": api_key.pk, "pack": "small"}).status_code
        == 302
    )
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert (
        strict.post("/billing/topup", {"api_key": api_key.pk, "pack": "small"}).status_code == 403
    )
    assert (
        strict.post(f"/billing/keys/{api_key.pk}/auto-recharge", {"enabled": "on"}).status_code
        == 403
    )


def test_the_payments_list_shows_date_pack_amount_status_and_receipt_to_the_user_and_admins(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    client, user, api_key = buyer
    save_card(client, stripe_on, CARD_OK)
    client.post("/billing/topup", {"api_key": api_key.pk, "pack": "large"})
    Payment.objects.update(receipt_url="https://pay.stripe.com/receipts/test")
    page = client.get("/billing/").content.decode()
    assert (
        "$40.00" in page
        and "large" in page
        and "Paid" in page
        and "pay.stripe.com/receipts" in page
    )
    # Another user's payments are not listed.
    stranger = Client()
    stranger.force_login(UserFactory())
    assert "$40.00" not in stranger.get("/billing/").content.decode()

    staff = User.objects.create_user(
        email="ops@example.com", password="x", is_staff=True, is_superuser=True
    )
    admin = Client()
    admin.force_login(staff)
    listing = admin.get("/admin/billing/payment/").content.decode()
    assert user.email in listing and "large" in listing
    assert Client().get("/admin/billing/payment/").status_code == 302


# --- Webhooks --------------------------------------------------------------------------------


def test_bad_missing_or_re_serialised_signatures_are_refused_without_side_effects(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    """ADVERSARIAL 11."""
    client, user, api_key = buyer
    payment = paid_at_stripe_only(client, stripe_on, api_key)
    before = balance(api_key)
    body = stripe_event("payment_intent.succeeded", {"id": payment.stripe_payment_intent_id})
    good = stripe_signature(body)

    assert post_event(client, body, None).status_code == 400
    assert post_event(client, body, "").status_code == 400
    assert post_event(client, body, "t=123,v1=deadbeef").status_code == 400
    assert post_event(client, body, stripe_signature(body, secret="whsec_wrong")).status_code == 400
    assert post_event(client, body, "garbage").status_code == 400
    reserialised = body.replace(b'", "', b'","')
    assert reserialised != body
    assert post_event(client, reserialised, good).status_code == 400
    assert post_event(client, b"not json", stripe_signature(b"not json")).status_code == 400
    assert StripeEvent.objects.count() == 0
    assert balance(api_key) == before

    # The same body, correctly signed, is accepted (the refusals were about the signature).
    assert post_event(client, body, good).status_code == 200
    assert balance(api_key) == before + 1_000_000


def test_signatures_from_301_seconds_ago_or_an_hour_ahead_are_refused(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    """ADVERSARIAL 12."""
    client, user, api_key = buyer
    payment = paid_at_stripe_only(client, stripe_on, api_key)
    before = balance(api_key)
    body = stripe_event("payment_intent.succeeded", {"id": payment.stripe_payment_intent_id})
    now = int(time.time())
    assert post_event(client, body, stripe_signature(body, timestamp=now - 301)).status_code == 400
    assert post_event(client, body, stripe_signature(body, timestamp=now + 3600)).status_code == 400
    assert StripeEvent.objects.count() == 0 and balance(api_key) == before
    assert post_event(client, body, stripe_signature(body, timestamp=now - 200)).status_code == 200
    assert balance(api_key) == before + 1_000_000


def test_the_same_event_delivered_twice_at_once_credits_once(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    """ADVERSARIAL 13."""
    client, user, api_key = buyer
    payment = paid_at_stripe_only(client, stripe_on, api_key)
    before = balance(api_key)
    body = stripe_event("payment_intent.succeeded", {"id": payment.stripe_payment_intent_id})
    barrier = threading.Barrier(4)

    def deliver(_: int) -> int:
        barrier.wait()
        return post_event(Client(), body, stripe_signature(body)).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(deliver, range(4)))
    assert all(200 <= status < 300 for status in statuses), statuses
    assert balance(api_key) == before + 1_000_000
    assert topup_credits(api_key) == 1
    assert StripeEvent.objects.count() == 1
    assert StripeEvent.objects.get().status == StripeEvent.Status.PROCESSED


def test_a_refund_arriving_before_the_success_ends_in_the_right_balance(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    """ADVERSARIAL 14 (out of order): charge.refunded first, then payment_intent.succeeded."""
    client, user, api_key = buyer
    payment, client_secret = pending_3ds_topup(client, stripe_on, api_key)
    intent_id = payment.stripe_payment_intent_id or ""
    authenticate(stripe_on, intent_id, client_secret)
    stripe_on.client().v1.refunds.create(params={"payment_intent": intent_id})  # type: ignore[attr-defined]
    charge_id = stripe_on.client().v1.payment_intents.retrieve(intent_id).latest_charge  # type: ignore[attr-defined]
    charge_id = charge_id if isinstance(charge_id, str) else charge_id.id
    before = balance(api_key)

    refunded = stripe_event("charge.refunded", {"id": charge_id, "payment_intent": intent_id})
    succeeded = stripe_event("payment_intent.succeeded", {"id": intent_id})
    assert post_event(client, refunded, stripe_signature(refunded)).status_code == 200
    assert post_event(client, succeeded, stripe_signature(succeeded)).status_code == 200
    assert post_event(client, refunded, stripe_signature(refunded)).status_code == 200

    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert payment.credited_tokens == payment.refunded_tokens == 1_000_000
    assert balance(api_key) == before  # credited, then taken back: nothing gained, nothing lost


def test_a_refund_of_tokens_already_spent_takes_what_is_left_and_records_the_shortfall(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    client, user, api_key = buyer
    save_card(client, stripe_on, CARD_OK)
    body = client.post("/billing/topup", {"api_key": api_key.pk, "pack": "small"}).json()
    payment = Payment.objects.get(pk=body["payment"])
    # Spend all but 100 tokens.
    from metering.ledger import usage_admit

    usage_admit(api_key=api_key, model="m", text_tokens=balance(api_key) - 100)
    stripe_on.client().v1.refunds.create(  # type: ignore[attr-defined]
        params={"payment_intent": payment.stripe_payment_intent_id, "amount": 250}
    )
    event = stripe_event("charge.refunded", {"id": payment.stripe_charge_id})
    assert post_event(client, event, stripe_signature(event)).status_code == 200

    payment.refresh_from_db()
    assert payment.status == Payment.Status.PARTIALLY_REFUNDED
    assert payment.refunded_tokens == 100
    assert payment.refund_shortfall_tokens == 500_000 - 100
    assert balance(api_key) == 0  # never below zero
    assert ledger_mismatches() == []


def test_a_handler_failing_after_its_commit_is_retried_by_stripe_as_a_no_op(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADVERSARIAL 14 (handler fails after commit)."""
    client, user, api_key = buyer
    payment = paid_at_stripe_only(client, stripe_on, api_key)
    before = balance(api_key)
    original = webhooks.HANDLERS["payment_intent.succeeded"]

    def credit_then_crash(obj: dict[str, Any]) -> None:
        original(obj)
        raise RuntimeError("lost the connection after the commit")

    monkeypatch.setitem(webhooks.HANDLERS, "payment_intent.succeeded", credit_then_crash)
    body = stripe_event("payment_intent.succeeded", {"id": payment.stripe_payment_intent_id})
    first = post_event(client, body, stripe_signature(body))
    assert first.status_code == 503  # Stripe will deliver it again
    assert balance(api_key) == before + 1_000_000
    assert StripeEvent.objects.get().status == StripeEvent.Status.FAILED

    monkeypatch.setitem(webhooks.HANDLERS, "payment_intent.succeeded", original)
    retry = post_event(client, body, stripe_signature(body))
    assert retry.status_code == 200
    assert balance(api_key) == before + 1_000_000
    assert StripeEvent.objects.get().status == StripeEvent.Status.PROCESSED
    # Once processed, a further replay does nothing at all.
    assert post_event(client, body, stripe_signature(body)).status_code == 200
    assert topup_credits(api_key) == 1


def test_events_that_are_not_ours_or_unknown_are_acknowledged_and_change_nothing(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    client, user, api_key = buyer
    unknown = stripe_event("customer.created", {"id": "cus_x"})
    assert post_event(client, unknown, stripe_signature(unknown)).status_code == 200
    assert StripeEvent.objects.get().status == StripeEvent.Status.IGNORED
    # A real intent of this Stripe account that no payment here created.
    stripe = stripe_on.client()
    method = stripe.v1.payment_methods.create(  # type: ignore[attr-defined]
        params={
            "type": "card",
            "card": {"number": CARD_OK, "exp_month": 1, "exp_year": 2033, "cvc": "123"},
        }
    )
    intent = stripe.v1.payment_intents.create(  # type: ignore[attr-defined]
        params={"amount": 500, "currency": "usd", "payment_method": method.id, "confirm": True}
    )
    foreign = stripe_event("payment_intent.succeeded", {"id": intent.id})
    assert post_event(client, foreign, stripe_signature(foreign)).status_code == 200
    assert not Payment.objects.exists()


def test_setup_intent_succeeded_saves_the_card_when_the_browser_did_not_come_back(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    client, user, api_key = buyer
    secret = client.post("/billing/card/setup").json()["client_secret"]
    setup_intent = secret.split("_secret_")[0]
    stripe_on.client().v1.setup_intents.confirm(  # type: ignore[attr-defined]
        setup_intent,
        params={
            "client_secret": secret,
            "payment_method_data": {
                "type": "card",
                "card": {"number": CARD_OK, "exp_month": 1, "exp_year": 2033, "cvc": "123"},
            },
        },
    )
    event = stripe_event(
        "setup_intent.succeeded",
        {
            "id": setup_intent,
            "customer": user.stripe_customer_id or User.objects.get(pk=user.pk).stripe_customer_id,
        },
    )
    assert post_event(client, event, stripe_signature(event)).status_code == 200
    assert User.objects.get(pk=user.pk).card_label == "Visa •••• 4242"


# --- Auto-recharge ---------------------------------------------------------------------------


def embed(client: Client, api_key: ApiKey) -> Any:
    return client.post(
        "/v1/embeddings",
        {"input": ["hello world"]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",  # type: ignore[attr-defined]
    )


def enable_auto_recharge(client: Client, api_key: ApiKey, threshold: int, cap: str = "100") -> None:
    response = client.post(
        f"/billing/keys/{api_key.pk}/auto-recharge",
        {"enabled": "on", "threshold_tokens": str(threshold), "pack_id": "", "monthly_cap": cap},
    )
    assert response.status_code == 302
    assert AutoRecharge.objects.get(api_key=api_key).enabled


def test_auto_recharge_buys_the_last_top_ups_pack_when_a_debit_crosses_the_threshold(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey], default_model: Any
) -> None:
    client, user, api_key = buyer
    save_card(client, stripe_on, CARD_OK)
    client.post("/billing/topup", {"api_key": api_key.pk, "pack": "small"})
    enable_auto_recharge(client, api_key, threshold=balance(api_key))  # the next debit crosses it
    before = balance(api_key)

    response = embed(client, api_key)
    assert response.status_code == 200
    local_tasks_wait()
    charged = response.json()["usage"]["total_tokens"]
    recharge = Payment.objects.get(kind=Payment.Kind.AUTO_RECHARGE)
    assert recharge.pack_id == "small" and recharge.status == Payment.Status.SUCCEEDED
    assert balance(api_key) == before - charged + 1_000_000
    # Above the threshold again: the next request triggers nothing.
    embed(client, api_key)
    local_tasks_wait()
    assert Payment.objects.filter(kind=Payment.Kind.AUTO_RECHARGE).count() == 1
    assert AutoRecharge.objects.get(api_key=api_key).generation == 1


def test_auto_recharge_on_a_card_that_needs_authentication_pauses_and_tells_the_user(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey], default_model: Any, settings: Any
) -> None:
    """ADVERSARIAL 10: no credit, paused, the user is told how to finish; no retry loop."""
    settings.SITE_URL = "http://embeddings.example"
    client, user, api_key = buyer
    save_card(client, stripe_on, CARD_3DS)
    enable_auto_recharge(client, api_key, threshold=balance(api_key) + 1)
    before = balance(api_key)
    mail.outbox.clear()

    first = embed(client, api_key)
    local_tasks_wait()
    payment = Payment.objects.get(kind=Payment.Kind.AUTO_RECHARGE)
    assert payment.status == Payment.Status.REQUIRES_ACTION
    assert balance(api_key) == before - first.json()["usage"]["total_tokens"]  # no credit
    recharge = AutoRecharge.objects.get(api_key=api_key)
    assert recharge.paused_at is not None and recharge.pending_payment_id == payment.pk

    # Told: one e-mail with the link to finish, and a banner on every page.
    assert len(mail.outbox) == 1
    link = f"http://embeddings.example/billing/payments/{payment.pk}/"
    assert link in mail.outbox[0].body and user.email in mail.outbox[0].to
    banner = client.get("/billing/").content.decode()
    assert "Auto-recharge is paused" in banner and f"/billing/payments/{payment.pk}/" in banner

    # No retry loop: more debits under the threshold charge nothing more.
    for _ in range(3):
        assert embed(client, api_key).status_code == 200
    local_tasks_wait()
    assert Payment.objects.filter(kind=Payment.Kind.AUTO_RECHARGE).count() == 1
    assert len(mail.outbox) == 1

    # Finishing the payment on its page credits once and resumes auto-recharge.
    page = client.get(f"/billing/payments/{payment.pk}/")
    client_secret = page.context["client_secret"]
    assert client_secret and b"Confirm the payment" in page.content
    authenticate(stripe_on, payment.stripe_payment_intent_id or "", client_secret)
    assert client.get(page.context["return_url"]).status_code == 302
    payment.refresh_from_db()
    assert payment.status == Payment.Status.SUCCEEDED
    assert topup_credits(api_key) == 1
    recharge.refresh_from_db()
    assert (
        recharge.paused_at is None
        and "Auto-recharge is paused" not in client.get("/billing/").content.decode()
    )


def test_auto_recharge_on_a_declined_card_pauses_and_tells_the_user(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey], default_model: Any
) -> None:
    client, user, api_key = buyer
    save_card(client, stripe_on, CARD_DECLINED_ON_CHARGE)
    enable_auto_recharge(client, api_key, threshold=balance(api_key) + 1)
    before = balance(api_key)
    mail.outbox.clear()
    cost = embed(client, api_key).json()["usage"]["total_tokens"]
    embed(client, api_key)
    local_tasks_wait()
    payment = Payment.objects.get(kind=Payment.Kind.AUTO_RECHARGE)
    assert payment.status == Payment.Status.FAILED and "declined" in payment.failure_message.lower()
    assert balance(api_key) == before - 2 * cost
    assert AutoRecharge.objects.get(api_key=api_key).paused_at is not None
    assert len(mail.outbox) == 1 and "declined" in mail.outbox[0].body.lower()


def test_auto_recharge_stops_at_the_monthly_cap(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey], default_model: Any
) -> None:
    client, user, api_key = buyer
    save_card(client, stripe_on, CARD_OK)
    # Cap $4.99: one $5 pack would exceed it.
    enable_auto_recharge(client, api_key, threshold=balance(api_key) + 1, cap="4.99")
    embed(client, api_key)
    local_tasks_wait()
    assert not Payment.objects.exists()
    recharge = AutoRecharge.objects.get(api_key=api_key)
    assert recharge.paused_at is not None and "cap" in recharge.paused_reason


def test_turning_auto_recharge_on_needs_a_saved_card(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey]
) -> None:
    client, user, api_key = buyer
    response = client.post(
        f"/billing/keys/{api_key.pk}/auto-recharge",
        {"enabled": "on", "threshold_tokens": "1000", "pack_id": "", "monthly_cap": "50"},
        follow=True,
    )
    assert b"Add a card" in response.content
    assert not AutoRecharge.objects.filter(api_key=api_key, enabled=True).exists()
    with pytest.raises(Exception, match="Unknown token pack"):
        auto_recharge_configure(
            api_key=api_key, enabled=False, threshold_tokens=1, pack_id="nope", monthly_cap_amount=1
        )
    assert [pack.id for pack in token_packs()] == ["small", "large"]


def test_a_batch_jobs_debit_also_triggers_auto_recharge(
    stripe_on: LocalStripe, buyer: tuple[Client, User, ApiKey], default_model: Any
) -> None:
    from batch.processing import batch_job_process

    client, user, api_key = buyer
    save_card(client, stripe_on, CARD_OK)
    enable_auto_recharge(client, api_key, threshold=balance(api_key))  # any debit crosses it
    before = balance(api_key)
    lines = [{"custom_id": f"line-{i}", "body": {"input": f"text number {i}"}} for i in range(4)]
    created = client.post(
        "/v1/batch/embeddings",
        {"model": default_model.name, "input": lines},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",  # type: ignore[attr-defined]
    )
    assert created.status_code == 200, created.content
    batch_job_process(job_id=created.json()["batch_id"])  # what a worker does
    local_tasks_wait()
    spent = client.get(
        f"/v1/batch/{created.json()['batch_id']}",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",  # type: ignore[attr-defined]
    ).json()["stats"]["total_tokens"]
    assert spent > 0
    assert (
        Payment.objects.filter(
            kind=Payment.Kind.AUTO_RECHARGE, status=Payment.Status.SUCCEEDED
        ).count()
        == 1
    )
    assert balance(api_key) == before - spent + 1_000_000
