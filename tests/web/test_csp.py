"""Every HTML page carries a strict Content-Security-Policy with a nonce fresh per response, and
each <script> the page holds carries that nonce: an injected script (one without it) does not
run next to the playground's key and Stripe.js."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from billing.models import User
from embeddings_site.csp import STYLE_ATTRIBUTES
from tests.factories import ApiKeyFactory
from tests.infra import ROOT

pytestmark = pytest.mark.django_db

STRIPE_JS_URL = "http://127.0.0.1:8420/js.stripe.com/v3/"
SCRIPT_TAG = re.compile(r"<script\b[^>]*>", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)


def policy(response: Any) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {
        name: sources
        for name, *sources in (part.split() for part in header.split(";") if part.strip())
    }


def nonce_of(response: Any) -> str:
    (nonce,) = [
        s[len("'nonce-") : -1] for s in policy(response)["script-src"] if s.startswith("'nonce-")
    ]
    return nonce


@pytest.fixture
def stripe_configured(settings: Any) -> None:
    settings.STRIPE_SECRET_KEY = "sk_test_csp"
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_csp"
    settings.STRIPE_JS_URL = STRIPE_JS_URL


def pages(client: Client) -> dict[str, Any]:
    return {
        path: client.get(path)
        for path in ("/", "/accounts/signup/", "/dashboard/", "/billing/", "/docs/")
    }


def test_every_page_sends_a_strict_policy_with_a_fresh_nonce_its_scripts_carry(
    stripe_configured: None,
) -> None:
    user = User.objects.create_user(email="csp@example.com", password="x" * 20)
    ApiKeyFactory(user=user)
    client = Client()
    served = {"/accounts/login/": client.get("/accounts/login/")}
    client.force_login(user)
    served |= pages(client)
    again = pages(client)

    for path, response in served.items():
        assert response.status_code == 200, path
        rules = policy(response)
        assert rules["default-src"] == ["'self'"], path
        assert rules["object-src"] == ["'none'"], path
        assert rules["base-uri"] == ["'self'"], path
        assert rules["frame-ancestors"] == ["'none'"], path
        assert rules["form-action"] == ["'self'"], path
        assert "'unsafe-inline'" not in rules["script-src"], path
        assert "'unsafe-eval'" not in rules["script-src"], path
        assert "http://127.0.0.1:8420" in rules["script-src"], path
        assert "http://127.0.0.1:8420" in rules["frame-src"], path
        nonce = nonce_of(response)
        assert len(nonce) >= 22, path
        if path in again:
            assert nonce_of(again[path]) != nonce, f"{path} reused its nonce"
        html = response.content.decode()
        scripts = SCRIPT_TAG.findall(html)
        executable = [tag for tag in scripts if 'type="application/json"' not in tag]
        assert all(f'nonce="{nonce}"' in tag for tag in executable), (path, executable)
        assert not INLINE_HANDLER.search(html), path

    # The pages that run scripts do have them, so the check above is not vacuous.
    assert STRIPE_JS_URL in served["/billing/"].content.decode()
    assert "playground.js" in served["/"].content.decode()
    assert "redoc.standalone.js" in served["/docs/"].content.decode()


def test_only_the_api_reference_may_use_inline_styles() -> None:
    client = Client()
    client.force_login(User.objects.create_user(email="styles@example.com", password="x" * 20))
    assert "'unsafe-inline'" in policy(client.get("/docs/"))["style-src"]
    for path in ("/", "/dashboard/", "/billing/"):
        response = client.get(path)
        if "Content-Security-Policy" in response:
            assert "'unsafe-inline'" not in policy(response)["style-src"], path


def test_the_templates_style_attributes_are_the_ones_the_policy_allows() -> None:
    used = {
        value
        for template in (ROOT / "templates").rglob("*.html")
        for value in re.findall(r'\sstyle="([^"]*)"', template.read_text())
    }
    assert used <= set(STYLE_ATTRIBUTES), used - set(STYLE_ATTRIBUTES)


def test_json_answers_carry_no_policy() -> None:
    response = Client().get("/v1/models")
    assert "Content-Security-Policy" not in response


def test_production_stripe_js_is_allowed_its_api_and_frames(settings: Any) -> None:
    """With the default Stripe.js URL, the hosts Stripe's CSP guide names are allowed."""
    settings.STRIPE_JS_URL = "https://js.stripe.com/v3/"
    rules = policy(Client().get("/"))
    assert "https://js.stripe.com" in rules["script-src"]
    assert {"https://js.stripe.com", "https://hooks.stripe.com"} <= set(rules["frame-src"])
    assert "https://api.stripe.com" in rules["connect-src"]
