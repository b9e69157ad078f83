"""Issue 16's journey bugs in Debian's chromium: the playground's key button signed in, Embed
without a key, and revoking a funded key after moving its tokens."""

from __future__ import annotations

import re
from typing import Any

import pytest

from billing.models import ApiKey, User
from billing.services import api_key_grant
from tests.factories import ApiKeyFactory, EmbeddingModelFactory
from tests.web import test_browser as browser_tests
from tests.web.test_browser import PASSWORD, log_in, shot, wait_for_playground_key

pytestmark = pytest.mark.django_db(transaction=True)

browser = browser_tests.browser
page = browser_tests.page


def test_signed_in_the_key_button_asks_first_and_says_when_the_new_key_is_empty(
    live_server: Any, page: Any, settings: Any
) -> None:
    settings.TRIAL_TOKENS = 10_000
    EmbeddingModelFactory()
    user = User.objects.create_user(email="keys@example.com", password=PASSWORD)
    user.email_verified_at = user.date_joined
    user.save()
    production = ApiKeyFactory(user=user, name="production")  # the trial went to this one
    log_in(page, live_server.url, "keys@example.com")
    page.goto(f"{live_server.url}/")

    for _ in range(3):
        page.click("#pg-get-key")
    note = page.locator("#pg-key-note")
    assert "Paste one of your keys" in (note.text_content() or "")
    assert ApiKey.objects.filter(user=user).count() == 1
    shot(page, "playground-key-ask")

    page.click("#pg-confirm-key")
    wait_for_playground_key(page)

    assert ApiKey.objects.filter(user=user).count() == 2
    made = ApiKey.objects.get(user=user, name="playground")
    said = note.text_content() or ""
    assert f"{made.prefix}… is saved" in said and "It has 0 tokens" in said
    assert f"from production ({production.prefix}…)" in said
    assert note.get_by_role("link", name="Top up").get_attribute("href") == (
        f"/billing/?key={made.pk}"
    )
    assert note.get_by_role("link", name="Move tokens").get_attribute("href") == (
        f"/dashboard/keys/{production.pk}/#move-tokens"
    )
    shot(page, "playground-key-empty")


def test_embed_without_a_key_says_how_to_get_one_and_sends_nothing(
    live_server: Any, page: Any
) -> None:
    EmbeddingModelFactory()
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if "/v1/" in request.url else None)
    page.goto(f"{live_server.url}/")
    assert page.input_value("#pg-key") == ""

    page.click("#pg-run")

    page.wait_for_selector("#pg-error:not([hidden])")
    error = page.text_content("#pg-error") or ""
    assert "get a free trial key with the button above, or sign up" in error
    assert "AUTH_" not in error and sent == []
    shot(page, "playground-no-key")


def test_revoking_a_funded_key_moves_its_tokens_to_another_key_first(
    live_server: Any, page: Any, settings: Any
) -> None:
    settings.TRIAL_TOKENS = 0
    user = User.objects.create_user(email="revoker@example.com", password=PASSWORD)
    paid = ApiKeyFactory(user=user, name="paid")
    api_key_grant(api_key=paid, tokens=2_000_000_000, note="bought")
    keep = ApiKeyFactory(user=user, name="keep")
    log_in(page, live_server.url, "revoker@example.com")

    page.locator(f"#keys tr[data-prefix='{paid.prefix}']").get_by_role(
        "link", name="Revoke…"
    ).click()
    page.wait_for_url(re.compile(rf".*/dashboard/keys/{paid.pk}/revoke$"))
    warning = page.text_content("#revoke-balance-warning") or ""
    assert "2,000,000,000" in warning
    shot(page, "key-revoke-warning")
    page.select_option("#id_move_to", str(keep.pk))
    page.click("#revoke-and-move")

    page.wait_for_url(re.compile(r".*/dashboard/$"))
    assert "2,000,000,000 tokens moved to keep" in (page.text_content("ul.messages") or "")
    keep_row = page.locator(f"#keys tr[data-prefix='{keep.prefix}'] .balance")
    assert keep_row.get_attribute("data-balance") == "2000000000"
    paid.refresh_from_db()
    assert paid.revoked_at is not None and paid.balance == 0

    page.goto(f"{live_server.url}/dashboard/keys/{paid.pk}/")
    assert page.locator("#key-revoked").text_content() == "revoked"
    assert page.get_by_role("link", name="Top up").count() == 0
    shot(page, "key-revoked")
