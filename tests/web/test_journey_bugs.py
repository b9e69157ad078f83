"""Issue 16's journey bugs, over Django's test client: the playground's key button, revoked keys,
moving tokens between one's keys (and from a key being revoked), requests without a model, the
banner's and the API's words, and billing's packs, cap currency and receipts."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from billing.models import ApiKey, AutoRecharge, LedgerEntry, Payment, UsageDaily, UsageRecord, User
from billing.payments import auto_recharge_run
from billing.services import api_key_grant, api_key_revoke, user_suspend
from tests.factories import ApiKeyFactory, EmbeddingModelFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_trial(settings: Any) -> None:
    """Balances in these tests are the tokens they grant."""
    settings.TRIAL_TOKENS = 0


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def funded_key(user: User, tokens: int, name: str = "funded") -> ApiKey:
    api_key = ApiKeyFactory(user=user, name=name)
    api_key_grant(api_key=api_key, tokens=tokens, note="test")
    api_key.refresh_from_db()
    return api_key


def balances(*keys: ApiKey) -> list[int]:
    return [ApiKey.objects.get(pk=key.pk).balance for key in keys]


def text(response: Any) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


# --- 1. the playground's key button ----------------------------------------------------------


def test_signed_in_the_playground_key_button_mints_nothing_without_an_explicit_confirm() -> None:
    user = UserFactory()
    ApiKeyFactory(user=user, name="production")
    client = logged_in(user)
    before = ApiKey.objects.count()

    for _ in range(3):
        response = client.post("/playground/key")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "CONFIRM_REQUIRED"
    assert ApiKey.objects.count() == before


def test_confirmed_playground_keys_get_their_own_names_and_a_zero_balance_is_said() -> None:
    user = UserFactory()
    funded = funded_key(user, 5_000, name="production")
    client = logged_in(user)

    first = client.post("/playground/key", {"confirm": "1"})
    second = client.post("/playground/key", {"confirm": "1"})

    assert (first.status_code, second.status_code) == (201, 201)
    assert (first.json()["name"], second.json()["name"]) == ("playground", "playground 2")
    body = first.json()
    # The trial went to the user's first key: this one has nothing, and the answer says so and
    # where the tokens can come from, instead of handing over a key every request fails with.
    assert body["balance"] == 0
    assert body["message"].startswith("It has 0 tokens") and funded.prefix in body["message"]
    assert body["top_up_url"] == f"/billing/?key={ApiKey.objects.get(name='playground').pk}"
    assert body["move_url"] == f"/dashboard/keys/{funded.pk}/#move-tokens"


def test_a_users_first_key_made_in_the_playground_carries_the_trial(settings: Any) -> None:
    settings.TRIAL_TOKENS = 10_000
    client = logged_in(UserFactory())
    body = client.post("/playground/key", {"confirm": "1"}).json()
    assert body["balance"] == 10_000 and "message" not in body


# --- 2. a revoked key ------------------------------------------------------------------------


def test_a_revoked_keys_page_says_so_and_offers_no_top_up_or_auto_recharge() -> None:
    user = UserFactory()
    api_key = ApiKeyFactory(user=user)
    client = logged_in(user)
    live = text(client.get(f"/dashboard/keys/{api_key.pk}/"))
    assert f'href="/billing/?key={api_key.pk}"' in live and "auto-recharge-" in live
    assert 'id="key-revoked"' not in live

    api_key_revoke(api_key=api_key)
    page = text(client.get(f"/dashboard/keys/{api_key.pk}/"))
    assert '<span class="badge bad" id="key-revoked">revoked</span>' in page
    assert "/billing/?key=" not in page and "auto-recharge-" not in page
    assert "Top up" not in page and "Revoke this key" not in page


@pytest.mark.parametrize("whose", ["revoked", "foreign", "unknown"])
def test_billing_linked_with_a_key_it_cannot_top_up_preselects_none_and_says_why(
    whose: str, settings: Any
) -> None:
    settings.STRIPE_SECRET_KEY = "sk_test_not_called"
    user = UserFactory()
    ApiKeyFactory(user=user, name="other")
    revoked = ApiKeyFactory(user=user, name="old")
    api_key_revoke(api_key=revoked)
    key_id = {
        "revoked": revoked.pk,
        "foreign": ApiKeyFactory(user=UserFactory()).pk,
        "unknown": 999_999,
    }[whose]

    page = text(logged_in(user).get(f"/billing/?key={key_id}"))

    assert 'id="topup-key-refused"' in page
    assert ("is revoked: it cannot be topped up" in page) == (whose == "revoked")
    assert '<option value="" selected disabled>Choose a key</option>' in page
    assert not re.search(r'<option value="\d+" selected', page)


def test_billing_linked_with_an_active_key_preselects_it(settings: Any) -> None:
    settings.STRIPE_SECRET_KEY = "sk_test_not_called"
    user = UserFactory()
    ApiKeyFactory(user=user, name="first")
    second = ApiKeyFactory(user=user, name="second")
    page = text(logged_in(user).get(f"/billing/?key={second.pk}"))
    assert f'<option value="{second.pk}" selected>' in page and "topup-key-refused" not in page


# --- 3. moving tokens, and revoking a funded key ---------------------------------------------


def test_moving_tokens_between_ones_keys_is_one_pair_of_ledger_entries() -> None:
    user = UserFactory()
    source, destination = funded_key(user, 10_000, "a"), ApiKeyFactory(user=user, name="b")
    client = logged_in(user)
    assert 'id="move-tokens-form"' in text(client.get(f"/dashboard/keys/{source.pk}/"))

    response = client.post(
        f"/dashboard/keys/{source.pk}/move", {"destination": destination.pk, "tokens": "2500"}
    )

    assert response.status_code == 302
    assert balances(source, destination) == [7_500, 2_500]
    out = LedgerEntry.objects.get(api_key=source, kind=LedgerEntry.Kind.TRANSFER_OUT)
    into = LedgerEntry.objects.get(api_key=destination, kind=LedgerEntry.Kind.TRANSFER_IN)
    assert (out.tokens, into.tokens) == (-2_500, 2_500)
    assert destination.prefix in out.reference and source.prefix in into.reference
    page = text(client.get(f"/dashboard/keys/{source.pk}/"))
    assert "Moved 2,500 tokens" in page and "Moved to another key" in page
    call_command("ledger_check")


def test_a_move_is_refused_past_the_balance_to_a_revoked_or_foreign_key_and_changes_nothing() -> (
    None
):
    user = UserFactory()
    source = funded_key(user, 1_000, "a")
    revoked = ApiKeyFactory(user=user, name="gone")
    api_key_revoke(api_key=revoked)
    foreign = funded_key(UserFactory(), 1_000, "theirs")
    client = logged_in(user)
    destination = ApiKeyFactory(user=user, name="b")

    too_much = client.post(
        f"/dashboard/keys/{source.pk}/move",
        {"destination": destination.pk, "tokens": "1001"},
        follow=True,
    )
    assert "holds 1,000 tokens; it cannot move 1,001" in text(too_much)
    for target in (revoked, foreign, source):
        client.post(f"/dashboard/keys/{source.pk}/move", {"destination": target.pk, "tokens": 1})
    # Nor out of someone else's key.
    assert client.post(
        f"/dashboard/keys/{foreign.pk}/move", {"destination": destination.pk}
    ).status_code == (404)
    assert balances(source, destination, revoked, foreign) == [1_000, 0, 0, 1_000]
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TRANSFER_OUT).exists()


def test_tokens_left_on_a_revoked_key_can_still_be_moved_off_it() -> None:
    user = UserFactory()
    source, destination = funded_key(user, 3_000, "a"), ApiKeyFactory(user=user, name="b")
    api_key_revoke(api_key=source)
    client = logged_in(user)
    page = text(client.get(f"/dashboard/keys/{source.pk}/"))
    assert "It still holds 3,000 tokens" in page and 'id="move-tokens-form"' in page

    client.post(f"/dashboard/keys/{source.pk}/move", {"destination": destination.pk})

    assert balances(source, destination) == [0, 3_000]


def test_revoking_a_funded_key_warns_and_offers_to_move_its_tokens_first() -> None:
    user = UserFactory()
    source, destination = funded_key(user, 2_000_000_000, "paid"), ApiKeyFactory(user=user)
    client = logged_in(user)
    dashboard = text(client.get("/dashboard/"))
    # The dashboard's Revoke of a funded key leads to the question, not straight to revocation.
    assert f'<a class="button danger" href="/dashboard/keys/{source.pk}/revoke">' in dashboard

    question = text(client.get(f"/dashboard/keys/{source.pk}/revoke"))
    assert "This key holds <strong>2,000,000,000</strong> tokens" in question
    assert f'<option value="{destination.pk}">' in question
    # A bare POST (no choice) revokes nothing.
    assert client.post(f"/dashboard/keys/{source.pk}/revoke").status_code == 400
    assert ApiKey.objects.get(pk=source.pk).revoked_at is None

    done = client.post(
        f"/dashboard/keys/{source.pk}/revoke", {"move_to": destination.pk}, follow=True
    )

    assert "2,000,000,000 tokens moved to" in text(done)
    source.refresh_from_db()
    assert source.revoked_at is not None
    assert balances(source, destination) == [0, 2_000_000_000]
    call_command("ledger_check")


def test_revoking_a_funded_key_can_leave_its_tokens_and_a_bad_destination_revokes_nothing() -> None:
    user = UserFactory()
    source = funded_key(user, 500, "paid")
    client = logged_in(user)
    foreign = ApiKeyFactory(user=UserFactory())
    refused = client.post(f"/dashboard/keys/{source.pk}/revoke", {"move_to": foreign.pk})
    assert refused.status_code == 400 and ApiKey.objects.get(pk=source.pk).revoked_at is None

    left = client.post(f"/dashboard/keys/{source.pk}/revoke", {"leave_tokens": "on"}, follow=True)

    assert "Its 500 tokens stay on it" in text(left)
    assert ApiKey.objects.get(pk=source.pk).revoked_at is not None
    assert balances(source) == [500]


def test_an_empty_key_is_revoked_at_once_from_the_dashboard() -> None:
    user = UserFactory()
    empty = ApiKeyFactory(user=user)
    logged_in(user).post(f"/dashboard/keys/{empty.pk}/revoke")
    assert ApiKey.objects.get(pk=empty.pk).revoked_at is not None


# --- 4. requests refused before a model was chosen -------------------------------------------


def test_rows_without_a_model_read_no_model_and_staff_draws_no_untitled_chart() -> None:
    user = UserFactory()
    api_key = funded_key(user, 1_000)
    model = EmbeddingModelFactory()
    yesterday = (timezone.now() - timedelta(days=1)).date()
    for name, errors in ((model.name, 0), ("", 4)):
        UsageDaily.objects.create(
            api_key=api_key, model=name, day=yesterday, requests=4, errors=errors
        )
    UsageRecord.objects.create(
        api_key=api_key, model="", status=UsageRecord.Status.FAILED, http_status=400
    )
    staff = User.objects.create_user(email="ops@example.com", password="x" * 20, is_staff=True)

    for client, url, table in (
        (logged_in(user), "/dashboard/", "usage-by-model"),
        (logged_in(user), f"/dashboard/keys/{api_key.pk}/", None),
        (logged_in(staff), "/staff/", "model-totals"),
    ):
        page = text(client.get(url))
        assert "(no model)" in page, url
        assert "<td></td>" not in page, url
        if table:
            rows = page.split(f'id="{table}"')[1].split("</table>")[0]
            assert "<tr><td>(no model)" not in rows  # titled, muted, with why
            assert "Refused before a model was chosen" in rows
    staff_page = text(logged_in(staff).get("/staff/"))
    assert "<h3></h3>" not in staff_page
    assert f"<h3>{model.name}</h3>" in staff_page


# --- 5. the words of the banner and the API --------------------------------------------------


def test_the_monthly_cap_banner_asks_to_raise_the_cap_not_to_finish_a_payment() -> None:
    user = UserFactory(stripe_payment_method_id="pm_card_visa", card_label="Visa 4242")
    api_key = ApiKeyFactory(user=user)
    AutoRecharge.objects.create(
        api_key=api_key, enabled=True, threshold_tokens=1_000, monthly_cap_amount=0
    )

    assert auto_recharge_run(api_key_id=api_key.pk) is None  # Stripe is never called

    recharge = AutoRecharge.objects.get(api_key=api_key)
    assert recharge.paused_cause == AutoRecharge.PauseCause.CAP
    banner = text(logged_in(user).get("/dashboard/")).split('class="banner bad"')[1]
    banner = banner.split("</div>")[0]
    assert "cap (0.00 USD) is reached" in banner
    assert "Raise the monthly cap" in banner and "Finish the payment" not in banner
    assert f'href="/billing/#auto-recharge-{api_key.pk}"' in banner


def test_a_suspended_users_key_is_told_the_account_is_suspended(
    default_model: Any, client: Client
) -> None:
    api_key = ApiKeyFactory()
    revoked = ApiKeyFactory(user=api_key.user, name="old")
    api_key_revoke(api_key=revoked)

    def embed(key: str) -> Any:
        return client.post(
            "/v1/embeddings",
            data=json.dumps({"model": default_model.name, "input": ["hi"]}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key}",
        )

    assert "revoked" in embed(revoked.plaintext).json()["detail"]
    user_suspend(user=api_key.user)
    answer = embed(api_key.plaintext)
    assert answer.status_code == 401
    assert answer.json()["code"] == "AUTH_INVALID_API_KEY"
    assert "account that owns this API key is suspended" in answer.json()["detail"]
    unknown = embed("jina_" + "x" * 60).json()["detail"]
    assert "suspended" not in unknown and "revoked" not in unknown


# --- 9. billing: pack names, the cap's currency, receipts ------------------------------------


def test_billing_names_packs_shows_the_caps_currency_and_links_receipts() -> None:
    user = UserFactory()
    api_key = ApiKeyFactory(user=user)
    common = {"user": user, "api_key": api_key, "tokens": 10**9, "amount": 5_000}
    paid = Payment.objects.create(
        **common,
        pack_id="pack-1b",
        currency="usd",
        status=Payment.Status.SUCCEEDED,
        idempotency_key="a",
        receipt_url="https://pay.stripe.com/receipts/r_1",
    )
    local = Payment.objects.create(
        **common, pack_id="pack-1b", currency="usd", status="succeeded", idempotency_key="b"
    )
    failed = Payment.objects.create(
        **common, pack_id="pack-1b", currency="usd", status="failed", idempotency_key="c"
    )
    client = logged_in(user)

    page = text(client.get("/billing/"))

    table = page.split('id="payments"')[1]
    assert "1 billion tokens" in table and "pack-1b" not in table
    assert f'<a href="/billing/payments/{paid.pk}/" class="receipt">Receipt</a>' in table
    assert f'<a href="/billing/payments/{local.pk}/" class="receipt">Receipt</a>' in table
    assert f'/billing/payments/{failed.pk}/" class="receipt"' not in table
    assert 'href="https://pay.stripe.com/receipts/r_1"' in table
    assert f'<label for="cap-{api_key.pk}">Monthly cap (USD)</label>' in page
    assert "pack-1b" not in text(client.get("/dashboard/")).split("<h2>Payments</h2>")[1]

    receipt = text(client.get(f"/billing/payments/{paid.pk}/"))
    assert "<h1>Receipt</h1>" in receipt and "1 billion tokens" in receipt
    assert "$50.00 for 1,000,000,000 tokens" in receipt and "Stripe's receipt" in receipt
    assert "<h1>Payment</h1>" in text(client.get(f"/billing/payments/{failed.pk}/"))
