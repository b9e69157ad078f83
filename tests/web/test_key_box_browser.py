"""The key box in chromium: a visitor without an account pastes a key, sees its balance and
limits, and gets the card form; the key is in no address the browser asked for or kept.

(The purchase itself is tested against localstripe in tests/billing/test_key_box.py: the
browser's part there is Stripe.js's createPaymentMethod, which localstripe's Stripe.js does not
implement.)"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from billing.models import ApiKey
from billing.services import api_key_grant
from tests.factories import ApiKeyFactory
from tests.infra import stripe_env
from tests.web.test_browser import browser, csp_violations, shot  # noqa: F401 - a fixture

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def visitor(browser: Any) -> Iterator[Any]:  # noqa: F811 - the imported fixture
    """A page in a fresh browser context with no account; fails on any CSP refusal."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    refused = csp_violations(page)
    yield page
    context.close()
    assert not refused, f"the Content-Security-Policy refused: {refused}"


def test_a_visitor_pastes_a_key_and_sees_its_balance_and_the_card_form(
    live_server: Any, visitor: Any, localstripe: Any, settings: Any
) -> None:
    page = visitor
    for name, value in stripe_env(localstripe).items():
        setattr(settings, name, value)
    settings.TOKEN_PACKS = [
        {"id": "small", "name": "1M tokens", "tokens": 1_000_000, "amount": 500, "currency": "usd"}
    ]
    api_key = ApiKeyFactory()
    api_key_grant(api_key=api_key, tokens=1_234_567)
    balance = ApiKey.objects.get(pk=api_key.pk).balance
    asked: list[str] = []
    failed: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )

    page.goto(f"{live_server.url}/pricing/")
    page.click("nav >> text=Key balance")
    page.wait_for_url(f"{live_server.url}/billing/key/")
    page.fill("#key-box-key", api_key.plaintext)
    page.click("#key-box-lookup button[type=submit]")
    page.wait_for_selector("#key-box-result")
    page.wait_for_selector("#key-box-card input[placeholder=number]")
    shot(page, "key-box")

    assert page.get_attribute("#key-box-balance", "data-balance") == str(balance)
    assert (page.text_content("#key-box-tier") or "").strip() == "Standard"
    assert "1M tokens" in (page.text_content("#key-box-pack") or "")
    assert page.url == f"{live_server.url}/billing/key/"
    assert not any(api_key.plaintext in url for url in asked), asked
    assert api_key.plaintext not in (page.evaluate("() => document.body.innerHTML") or "")
    assert not failed, failed
    assert not errors, errors
