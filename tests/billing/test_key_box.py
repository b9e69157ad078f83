"""The key box (/billing/key/): anyone holding a key sees its balance, limits and last days'
usage and buys a pack for it, without an account. The key travels in a POST body only and is
kept nowhere; the purchase step is named by a short-lived signed token for the key's id."""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.core import signing
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from billing.models import ApiKey, LedgerEntry, Payment, StripeEvent, UsageDaily, UsageRecord
from billing.pages import KEY_BOX_PURCHASE_SALT, KEY_BOX_REFUSAL
from billing.services import api_key_grant, api_key_revoke, user_suspend
from metering.ledger import ledger_mismatches
from tests.billing.test_payments import CARD_3DS, CARD_OK, PACKS, authenticate, wait_for
from tests.factories import ApiKeyFactory, UserFactory
from tests.infra import LocalStripe, stripe_env
from tests.web.test_key_secrecy import decoded_sessions, every_stored_value

URL = "/billing/key/"


@pytest.fixture(autouse=True)
def _fresh_limits(settings: Any) -> None:
    settings.IP_RATE_LIMIT_KEY_LOOKUP = "1000/h"
    # The purchase form is shown only when payments are on; nothing here reaches Stripe
    # (the localstripe tests below point these at a real stand-in).
    settings.STRIPE_SECRET_KEY = "sk_test_never_called"
    settings.TOKEN_PACKS = PACKS
    cache.clear()


class OldSigner(signing.TimestampSigner):
    """Signs as the key box did 31 minutes ago."""

    def timestamp(self) -> str:
        return signing.b62_encode(int(time.time()) - 31 * 60)


def lookup(client: Client, key: str) -> Any:
    return client.post(URL, {"key": key})


def purchase_token(page: str) -> str:
    found = re.search(r'name="token" value="([^"]+)"', page)
    assert found is not None, page[:3000]
    return found.group(1)


@pytest.mark.django_db
def test_a_good_key_shows_its_balance_tier_limits_and_usage_by_day_and_endpoint(
    settings: Any,
) -> None:
    settings.RATE_LIMIT_TIERS = {
        **settings.RATE_LIMIT_TIERS,
        "standard": {"rpm": 123, "tpm": 45_678, "concurrency": 7},
    }
    api_key = ApiKeyFactory()
    api_key_grant(api_key=api_key, tokens=2_500_000)
    balance = ApiKey.objects.get(pk=api_key.pk).balance
    yesterday = timezone.now().date() - timedelta(days=1)
    long_ago = timezone.now().date() - timedelta(days=30)
    for day, requests_ in ((yesterday, 4), (long_ago, 99)):
        UsageDaily.objects.create(
            api_key=api_key,
            endpoint="rerank",
            model="m",
            day=day,
            requests=requests_,
            charged_tokens=400,
        )
    UsageRecord.objects.create(
        api_key=api_key,
        endpoint="embeddings",
        model="m",
        status=UsageRecord.Status.SUCCEEDED,
        text_tokens=11,
        charged_tokens=11,
    )

    response = lookup(Client(), api_key.plaintext)

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    assert f'data-balance="{balance}"' in page
    assert 'id="key-box-tier">Standard<' in page
    assert 'data-rpm="123"' in page and 'data-tpm="45678"' in page
    assert 'data-concurrency="7"' in page
    today = timezone.now().date()
    assert f'data-day="{today:%Y-%m-%d}" data-endpoint="embeddings"' in page
    assert f'data-day="{yesterday:%Y-%m-%d}" data-endpoint="rerank"' in page
    assert 'data-requests="4"' in page
    assert f'data-day="{long_ago:%Y-%m-%d}"' not in page  # older than the last 7 days
    assert api_key.plaintext not in page


@pytest.mark.django_db
def test_bad_revoked_suspended_and_expired_keys_get_one_generic_refusal() -> None:
    revoked = ApiKeyFactory()
    api_key_revoke(api_key=revoked)
    suspended = ApiKeyFactory()
    user_suspend(user=suspended.user)
    expired = ApiKeyFactory()
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    unknown = "jina_" + "0" * 40
    answers = []
    for key in (
        "",
        "not a key",
        unknown,
        revoked.plaintext,
        suspended.plaintext,
        expired.plaintext,
    ):
        response = lookup(Client(), key)
        page = response.content.decode()
        answers.append((response.status_code, KEY_BOX_REFUSAL in page, "key-box-result" in page))
        assert "no-store" in response["Cache-Control"]
    assert set(answers) == {(400, True, False)}


@pytest.mark.django_db
def test_the_key_is_in_no_url_redirect_cookie_session_table_or_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    api_key = ApiKeyFactory()
    client = Client()
    client.force_login(UserFactory())  # a session row exists to be searched
    assert client.get(URL).status_code == 200
    # A key in the query string is never read: the page answers as if nothing was entered.
    got = client.get(URL, {"key": api_key.plaintext})
    assert got.status_code == 200 and "key-box-result" not in got.content.decode()

    response = lookup(client, api_key.plaintext)

    assert response.status_code == 200 and not response.has_header("Location")
    page = response.content.decode()
    assert api_key.plaintext not in page
    token = purchase_token(page)
    assert api_key.plaintext not in token
    assert signing.loads(token, salt=KEY_BOX_PURCHASE_SALT) == {"key": api_key.pk}
    for url in re.findall(r'(?:href|action|data-[a-z-]+-url)="([^"]*)"', page):
        assert api_key.plaintext not in url
    assert not any(api_key.plaintext in morsel.value for morsel in client.cookies.values())
    assert not any(api_key.plaintext in row for row in decoded_sessions())
    assert api_key.plaintext not in every_stored_value()
    assert api_key.plaintext not in caplog.text


@pytest.mark.django_db
def test_lookups_are_limited_per_ip_with_the_usual_429(settings: Any) -> None:
    settings.IP_RATE_LIMIT_KEY_LOOKUP = "3/h"
    cache.clear()
    api_key = ApiKeyFactory()
    client = Client(REMOTE_ADDR="203.0.113.9")
    answers = [lookup(client, api_key.plaintext) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert "RATE_IP_LIMIT_EXCEEDED" in answers[-1].content.decode()
    assert "key-box-result" not in answers[-1].content.decode()
    # The page itself (GET) still loads; another address has its own allowance.
    assert client.get(URL).status_code == 200
    assert lookup(Client(REMOTE_ADDR="203.0.113.10"), api_key.plaintext).status_code == 200


@pytest.mark.django_db
def test_a_purchase_token_buys_for_its_key_only_and_expires(settings: Any) -> None:
    """Forged, re-targeted and stale tokens are refused before anything is charged."""
    settings.TOKEN_PACKS = PACKS
    mine, other = ApiKeyFactory(), ApiKeyFactory()
    token = purchase_token(lookup(Client(), mine.plaintext).content.decode())
    client = Client()

    def pay(token: str) -> Any:
        return client.post(
            "/billing/key/pay", {"token": token, "pack": "small", "payment_method": "pm_x"}
        )

    # Altered, or signed for another purpose: the signature does not match.
    unsigned, _, signature = token.partition(":")
    retargeted = signing.dumps({"key": other.pk}, salt="another salt")
    for forged in ("", "junk", f"{unsigned}x:{signature}", retargeted):
        refused = pay(forged)
        assert refused.status_code == 400, forged
        assert "Enter the key again" in refused.json()["error"]["message"]
    # Signed 31 minutes ago: past its 30-minute lifetime.
    assert (
        pay(OldSigner(salt=KEY_BOX_PURCHASE_SALT).sign_object({"key": mine.pk})).status_code == 400
    )
    assert not Payment.objects.exists()
    # The token of a key revoked since its lookup buys nothing either.
    api_key_revoke(api_key=mine)
    revoked = pay(token)
    assert revoked.status_code == 400 and not Payment.objects.exists()


# --- A real purchase against localstripe -----------------------------------------------------


@pytest.fixture
def stripe_on(settings: Any, localstripe: LocalStripe) -> LocalStripe:
    for name, value in stripe_env(localstripe).items():
        setattr(settings, name, value)
    settings.TOKEN_PACKS = PACKS
    localstripe.send_webhooks_to(None)
    return localstripe


def card_entered(server: LocalStripe, number: str) -> str:
    """What Stripe.js's createPaymentMethod does with the card typed into the page."""
    response = requests.post(
        f"{server.url}/v1/payment_methods",
        data={
            "type": "card",
            "card[number]": number,
            "card[exp_month]": "12",
            "card[exp_year]": "2034",
            "card[cvc]": "123",
        },
        auth=("sk_test_localstripe", ""),
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["id"])


def topups(api_key: ApiKey) -> list[int]:
    return list(
        LedgerEntry.objects.filter(api_key=api_key, kind=LedgerEntry.Kind.TOPUP).values_list(
            "tokens", flat=True
        )
    )


@pytest.mark.django_db(transaction=True)
def test_buying_a_pack_by_key_credits_exactly_the_pack_once(
    stripe_on: LocalStripe, live_server: Any
) -> None:
    """Paid, then settled again by Stripe's webhook and by a repeated settle: credited once."""
    stripe_on.send_webhooks_to(f"{live_server.url}/billing/stripe/webhook")
    api_key = ApiKeyFactory()
    before = ApiKey.objects.get(pk=api_key.pk).balance
    client = Client()
    token = purchase_token(lookup(client, api_key.plaintext).content.decode())

    paid = client.post(
        "/billing/key/pay",
        {"token": token, "pack": "large", "payment_method": card_entered(stripe_on, CARD_OK)},
    )

    assert paid.status_code == 200, paid.content
    body = paid.json()
    assert body["status"] == "succeeded" and body["tokens"] == 10_000_000
    assert body["balance"] == before + 10_000_000
    payment = Payment.objects.get()
    # Paid on the key's owner's account, for that key; the card was not kept for later.
    assert (payment.user_id, payment.api_key_id) == (api_key.user_id, api_key.pk)
    owner = api_key.user
    owner.refresh_from_db()
    assert owner.stripe_customer_id and not owner.stripe_payment_method_id
    # localstripe signs payment_intent.succeeded and posts it to the live server about 1 s later.
    wait_for(
        lambda: StripeEvent.objects.filter(
            type="payment_intent.succeeded",
            payload__data__object__id=payment.stripe_payment_intent_id,
            status=StripeEvent.Status.PROCESSED,
        ).exists(),
        what="localstripe's webhook, processed",
    )
    # The settle path, run again (a duplicate), credits nothing more.
    again = client.post(
        "/billing/key/settle", {"token": token, "payment_intent": payment.stripe_payment_intent_id}
    )
    assert again.status_code == 200 and again.json()["balance"] == before + 10_000_000
    assert topups(api_key) == [10_000_000]
    assert ApiKey.objects.get(pk=api_key.pk).balance == before + 10_000_000
    assert ledger_mismatches() == []
    assert api_key.plaintext not in every_stored_value()


@pytest.mark.django_db(transaction=True)
def test_a_3ds_card_is_authenticated_then_settled_once_and_the_owners_saved_card_is_refused(
    stripe_on: LocalStripe,
) -> None:
    api_key = ApiKeyFactory()
    before = ApiKey.objects.get(pk=api_key.pk).balance
    client = Client()
    token = purchase_token(lookup(client, api_key.plaintext).content.decode())
    pending = client.post(
        "/billing/key/pay",
        {"token": token, "pack": "small", "payment_method": card_entered(stripe_on, CARD_3DS)},
    ).json()
    assert pending["status"] == "requires_action" and pending["client_secret"]
    assert ApiKey.objects.get(pk=api_key.pk).balance == before
    # Another key's token cannot settle (or see) this payment.
    other = ApiKeyFactory()
    other_token = purchase_token(lookup(client, other.plaintext).content.decode())
    assert (
        client.post(
            "/billing/key/settle",
            {"token": other_token, "payment_intent": pending["payment_intent"]},
        ).status_code
        == 404
    )

    authenticate(stripe_on, pending["payment_intent"], pending["client_secret"])
    settled = client.post(
        "/billing/key/settle", {"token": token, "payment_intent": pending["payment_intent"]}
    ).json()

    assert settled["status"] == "succeeded" and settled["balance"] == before + 1_000_000
    assert topups(api_key) == [1_000_000]
    # A card saved to a customer (as the owner's would be) is not a key holder's to charge.
    attached = card_entered(stripe_on, CARD_OK)
    stripe_on.client().v1.payment_methods.attach(  # type: ignore[attr-defined]
        attached, params={"customer": ApiKey.objects.get(pk=api_key.pk).user.stripe_customer_id}
    )
    for card in (attached, "pm_nosuchcard", "tok_visa"):
        refused = client.post(
            "/billing/key/pay", {"token": token, "pack": "small", "payment_method": card}
        )
        assert refused.status_code == 400, (card, refused.content)
    unknown_pack = client.post(
        "/billing/key/pay",
        {"token": token, "pack": "huge", "payment_method": card_entered(stripe_on, CARD_OK)},
    )
    assert unknown_pack.status_code == 400
    assert Payment.objects.count() == 1
    assert ledger_mismatches() == []


@pytest.mark.django_db
def test_cross_site_posts_without_a_csrf_token_are_refused() -> None:
    api_key = ApiKeyFactory()
    token = purchase_token(lookup(Client(), api_key.plaintext).content.decode())
    forged = Client(enforce_csrf_checks=True)
    assert forged.post(URL, {"key": api_key.plaintext}).status_code == 403
    for path in ("/billing/key/pay", "/billing/key/settle"):
        assert forged.post(path, {"token": token, "pack": "small"}).status_code == 403
    assert not Payment.objects.exists()
