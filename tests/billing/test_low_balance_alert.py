"""The low-balance e-mail: one when a request takes the balance below the key's threshold, none
while it stays below, and one again after a top-up lifted it back above (a real localstripe)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.core import mail
from django.test import Client

from billing.models import ApiKey, User
from billing.services import api_key_create, api_key_settings_update
from embeddings_site.background import local_tasks_wait
from tests.billing.test_payments import CARD_OK, embed, save_card  # noqa: F401
from tests.factories import UserFactory
from tests.infra import LocalStripe, stripe_env

pytestmark = pytest.mark.django_db(transaction=True)

# A pack small enough that a few requests spend it again.
PACKS = [{"id": "tiny", "name": "40 tokens", "tokens": 40, "amount": 50, "currency": "usd"}]


def alerts_for(user: User) -> list[Any]:
    local_tasks_wait()
    return [
        message
        for message in mail.outbox
        if message.to == [user.email] and message.subject.startswith("Low balance")
    ]


def balance(api_key: ApiKey) -> int:
    return ApiKey.objects.get(pk=api_key.pk).balance


@pytest.fixture
def owner_key(db: None) -> tuple[Client, User, ApiKey]:
    user = UserFactory()
    api_key, plaintext = api_key_create(user=user, name="search", tokens=100)
    api_key.plaintext = plaintext  # type: ignore[attr-defined]
    client = Client()
    client.force_login(user)
    return client, user, api_key


def alert_below(api_key: ApiKey, tokens: int) -> None:
    api_key_settings_update(
        api_key=api_key,
        name=api_key.name,
        expires_at=None,
        allowed_models=[],
        low_balance_alert_tokens=tokens,
    )


def test_crossing_the_threshold_mails_once_and_staying_below_mails_no_more(
    owner_key: tuple[Client, User, ApiKey], default_model: Any, settings: Any
) -> None:
    client, user, api_key = owner_key
    alert_below(api_key, 99)

    first = embed(client, api_key)
    assert first.status_code == 200
    alerts = alerts_for(user)
    assert len(alerts) == 1
    left = 100 - first.json()["usage"]["total_tokens"]
    assert alerts[0].subject == f"Low balance on API key {api_key.prefix}…"
    assert f"has {left:,} tokens left, below the 99" in alerts[0].body
    assert f"{settings.SITE_URL}/billing/?key={api_key.pk}" in alerts[0].body
    assert f"{settings.SITE_URL}/dashboard/keys/{api_key.pk}/" in alerts[0].body

    # Below the threshold, request after request and several at once: nothing more.
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda _: embed(Client(), api_key).status_code, range(4)))
    assert statuses == [200] * 4
    assert len(alerts_for(user)) == 1


@pytest.mark.slow
def test_many_requests_crossing_at_once_mail_once(
    owner_key: tuple[Client, User, ApiKey], default_model: Any
) -> None:
    client, user, api_key = owner_key
    alert_below(api_key, 90)
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda _: embed(Client(), api_key).status_code, range(12)))
    assert statuses == [200] * 12 and balance(api_key) < 90
    assert len(alerts_for(user)) == 1


def test_a_key_without_a_threshold_gets_no_mail_and_a_new_threshold_is_a_new_alert(
    owner_key: tuple[Client, User, ApiKey], default_model: Any
) -> None:
    client, user, api_key = owner_key
    embed(client, api_key)
    assert alerts_for(user) == []
    alert_below(api_key, 99)
    embed(client, api_key)
    assert len(alerts_for(user)) == 1
    alert_below(api_key, 98)  # changed: armed again, and the balance is below it
    embed(client, api_key)
    assert len(alerts_for(user)) == 2


def test_a_top_up_above_the_threshold_re_arms_the_alert(
    owner_key: tuple[Client, User, ApiKey],
    default_model: Any,
    settings: Any,
    localstripe: LocalStripe,
) -> None:
    for name, value in stripe_env(localstripe).items():
        setattr(settings, name, value)
    settings.TOKEN_PACKS = PACKS
    localstripe.send_webhooks_to(None)
    client, user, api_key = owner_key
    alert_below(api_key, 99)
    embed(client, api_key)
    assert len(alerts_for(user)) == 1

    save_card(client, localstripe, CARD_OK)
    paid = client.post("/billing/topup", {"api_key": api_key.pk, "pack": "tiny"}).json()
    assert paid["status"] == "succeeded", paid
    assert balance(api_key) >= 99
    assert ApiKey.objects.get(pk=api_key.pk).low_balance_alerted_at is None

    # Spend down again: the request that crosses mails once more, the rest stay quiet.
    while balance(api_key) >= 99:
        assert embed(client, api_key).status_code == 200
    embed(client, api_key)
    assert len(alerts_for(user)) == 2
