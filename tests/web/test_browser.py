"""The web product in a real browser: Playwright for Python driving Debian's chromium.

Every page visited is saved as a screenshot under $TEST_ARTIFACTS_DIR (var/test-artifacts by
default) for people to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core import mail
from django.utils import timezone

from billing.models import ApiKey, User
from tests.factories import ApiKeyFactory, EmbeddingModelFactory

# Playwright's sync API runs an event loop in this thread; the ORM calls made here between page
# actions are plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get(
        "TEST_ARTIFACTS_DIR", Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
    )
)
PASSWORD = "a long and unusual passphrase"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        yield browser
        browser.close()


# Refusals by design: Redoc's "powered by" logo from its CDN (this site loads nothing from one).
EXPECTED_REFUSALS = ("https://cdn.redoc.ly/",)


def csp_violations(page: Any) -> list[str]:
    """The page's Content-Security-Policy refusals, as chromium reports them on the console."""
    refused: list[str] = []

    def seen(message: Any) -> None:
        text = message.text
        if "Content Security Policy" in text and not any(u in text for u in EXPECTED_REFUSALS):
            refused.append(text)

    page.on("console", seen)
    return refused


class Problems:
    """Everything a page did wrong: console errors, uncaught exceptions, failed requests and
    responses of 400 or more (each an entry saying what), but for answers a test provokes on
    purpose (`provoked`: URL patterns)."""

    def __init__(self, page: Any, *, provoked: tuple[str, ...] = ()) -> None:
        self.found: list[str] = []
        page.on(
            "console",
            lambda m: (
                m.type == "error"
                and self.found.append(f"console: {m.text} ({m.location.get('url', '')})")
            ),
        )
        page.on("pageerror", lambda error: self.found.append(f"exception: {error}"))
        # net::ERR_ABORTED is Chromium cancelling what a navigation made moot (the favicon of
        # a page just left); an error answer is still caught, as its 4xx/5xx status.
        page.on(
            "requestfailed",
            lambda r: (
                None
                if r.failure == "net::ERR_ABORTED"
                else self.found.append(f"failed: {r.url} {r.failure}")
            ),
        )
        page.on(
            "response",
            lambda r: (
                r.status >= 400
                and not any(re.search(pattern, r.url) for pattern in provoked)
                and self.found.append(f"HTTP {r.status}: {r.request.method} {r.url}")
            ),
        )


def wait_for_playground_key(page: Any) -> None:
    """Until the playground's key field holds a key (a Playwright assertion: the page's CSP
    refuses the eval that wait_for_function's string predicates need)."""
    from playwright.sync_api import expect

    expect(page.locator("#pg-key")).to_have_value(re.compile(r"^jina_"), timeout=60_000)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    refused = csp_violations(page)
    yield page
    context.close()
    assert not refused, f"the Content-Security-Policy refused: {refused}"


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_up(page: Any, base: str, email: str) -> None:
    page.goto(f"{base}/accounts/signup/")
    shot(page, "signup")
    page.fill("#id_email", email)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("#signup-form button[type=submit]")
    page.wait_for_url(f"{base}/accounts/signup/sent/")
    assert email in (page.text_content("#signup-sent") or "")


def log_in(page: Any, base: str, email: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", email)
    page.fill("#id_password", PASSWORD)
    page.click("main form button[type=submit]")
    page.wait_for_url(re.compile(r".*/dashboard/$"))


def embed_in_playground(page: Any) -> dict[str, Any]:
    page.select_option("#pg-model", "all-MiniLM-L6-v2")
    page.click("#pg-run")
    page.wait_for_selector("#pg-heatmap-table")
    return json.loads(page.text_content("#pg-response") or "{}")


def test_sign_up_create_a_key_embed_three_texts_and_see_it_on_the_dashboard(
    live_server: Any, page: Any, settings: Any
) -> None:
    EmbeddingModelFactory()
    base = live_server.url
    sign_up(page, base, "ada@example.com")
    shot(page, "signup-sent")

    # The mailed link verifies the address and, in the browser that signed up, signs in.
    link = re.search(r"https?://\S+/accounts/verify/\S+/", mail.outbox[-1].body)
    assert link is not None and mail.outbox[-1].to == ["ada@example.com"]
    page.goto(link.group(0))
    assert "is verified" in (page.text_content("#verify-email-done") or "")
    shot(page, "email-verified")
    page.goto(f"{base}/dashboard/")
    page.wait_for_url(f"{base}/dashboard/")
    shot(page, "dashboard-empty")
    assert page.locator("#verify-email-banner").count() == 0

    page.fill("#key-create input[name=name]", "laptop")
    page.click("#key-create button[type=submit]")
    key = (page.text_content("#new-key-value") or "").strip()
    assert key.startswith("jina_")
    shot(page, "dashboard-new-key")
    api_key = ApiKey.objects.get(user__email="ada@example.com")
    assert api_key.balance == settings.TRIAL_TOKENS

    page.click("[data-use-in-playground]")
    page.wait_for_url(f"{base}/")
    assert page.input_value("#pg-key") == key
    response = embed_in_playground(page)
    shot(page, "playground")

    # Three texts in, three vectors out; the heatmap is their cosine similarity matrix.
    assert len(response["data"]) == 3
    vectors = np.array([item["embedding"] for item in response["data"]], dtype=np.float64)
    expected = (
        vectors
        @ vectors.T
        / np.outer(np.linalg.norm(vectors, axis=1), np.linalg.norm(vectors, axis=1))
    )
    cells = page.query_selector_all("#pg-heatmap-table td")
    assert len(cells) == 9
    for cell in cells:
        i, j = int(cell.get_attribute("data-i")), int(cell.get_attribute("data-j"))
        assert float(cell.get_attribute("data-value")) == pytest.approx(expected[i, j], abs=1e-6)
    total = response["usage"]["total_tokens"]
    assert total > 0
    assert page.text_content("#pg-total-tokens") == f"{total} tokens"

    # The dashboard: today's bars and the key's balance move by exactly that usage.
    page.goto(f"{base}/dashboard/")
    shot(page, "dashboard")
    today = timezone.now().date().isoformat()
    assert page.get_attribute(f"#chart-tokens rect[data-day='{today}']", "data-value") == str(total)
    assert page.get_attribute(f"#chart-requests rect[data-day='{today}']", "data-value") == "1"
    balance = page.get_attribute(
        f"#keys tr[data-prefix='{api_key.prefix}'] .balance", "data-balance"
    )
    assert int(balance or 0) == settings.TRIAL_TOKENS - total
    assert ApiKey.objects.get(pk=api_key.pk).balance == settings.TRIAL_TOKENS - total

    page.click(f"#keys tr[data-prefix='{api_key.prefix}'] a")
    assert (
        int(page.get_attribute("#key-balance", "data-balance") or 0)
        == settings.TRIAL_TOKENS - total
    )
    assert page.locator("#ledger").text_content().count("Usage debit") == 1
    shot(page, "key-detail")


def test_the_snippets_run_as_written_return_the_same_vectors(
    live_server: Any, page: Any, tmp_path: Path
) -> None:
    EmbeddingModelFactory()
    api_key = ApiKeyFactory()
    page.goto(f"{live_server.url}/")
    page.fill("#pg-key", api_key.plaintext)
    page.fill("#pg-dimensions", "64")
    page.select_option("#pg-task", index=0)
    response = embed_in_playground(page)
    reference = np.array([item["embedding"] for item in response["data"]], dtype=np.float32)
    assert reference.shape == (3, 64)

    env = {**os.environ, "EMBEDDINGS_API_KEY": api_key.plaintext}
    outputs = {}
    curl = page.text_content("#snippet-curl") or ""
    assert "$EMBEDDINGS_API_KEY" in curl and api_key.plaintext not in curl
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run the curl snippet")
    outputs["curl"] = subprocess.run(
        ["bash", "-c", curl], env=env, capture_output=True, text=True, check=True
    ).stdout
    for name in ("openai", "requests"):
        code = page.text_content(f"#snippet-{name}") or ""
        script = tmp_path / f"snippet_{name}.py"
        script.write_text(code)
        run = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        outputs[name] = run.stdout
    page.click(".tab[data-tab=openai]")
    shot(page, "playground-snippets")

    for name, output in outputs.items():
        body = json.loads(output)
        vectors = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
        np.testing.assert_allclose(vectors, reference, atol=1e-6, err_msg=name)
        assert body["usage"]["total_tokens"] == response["usage"]["total_tokens"], name


def test_errors_are_shown_as_the_api_returned_them(live_server: Any, page: Any) -> None:
    EmbeddingModelFactory()
    page.goto(f"{live_server.url}/")
    page.fill("#pg-key", "jina_not_a_real_key")
    page.select_option("#pg-model", "all-MiniLM-L6-v2")
    page.click("#pg-run")
    page.wait_for_selector("#pg-error:not([hidden])")
    body = json.loads(page.text_content("#pg-response") or "{}")
    assert body["code"] == "AUTH_INVALID_API_KEY"
    assert "401 AUTH_INVALID_API_KEY" in (page.text_content("#pg-error") or "")
    shot(page, "playground-error")


def test_a_visitor_gets_a_trial_key_and_can_embed(
    live_server: Any, page: Any, settings: Any
) -> None:
    EmbeddingModelFactory()
    page.goto(f"{live_server.url}/")
    page.click("#pg-get-key")
    wait_for_playground_key(page)
    response = embed_in_playground(page)
    key = ApiKey.objects.get(name="playground trial")
    assert key.balance == settings.VISITOR_TRIAL_TOKENS - response["usage"]["total_tokens"]
    assert not key.user.has_usable_password()


def test_logging_out_forgets_the_playground_key_kept_in_this_browser(
    live_server: Any, page: Any
) -> None:
    """The next person at this browser must not find the last user's key in the playground."""
    EmbeddingModelFactory()
    User.objects.create_user(email="shared-laptop@example.com", password=PASSWORD)
    log_in(page, live_server.url, "shared-laptop@example.com")
    page.goto(f"{live_server.url}/")
    page.click("#pg-get-key")
    page.click("#pg-confirm-key")  # signed in, a key is made only on an explicit confirm
    wait_for_playground_key(page)
    stored = "localStorage.getItem('embeddings.playground.key')"
    assert (page.evaluate(stored) or "").startswith("jina_")

    page.click("header.site form button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    assert page.locator("header.site >> text=Log in").count() == 1
    assert page.evaluate(stored) is None
    assert page.input_value("#pg-key") == ""


def test_staff_see_totals_across_users_and_act_on_keys(live_server: Any, page: Any) -> None:
    EmbeddingModelFactory()
    from metering.ledger import usage_admit, usage_succeed

    for email, tokens in (("big@example.com", 5000), ("small@example.com", 700)):
        key = ApiKeyFactory(user__email=email)
        usage_succeed(
            usage=usage_admit(api_key=key, model="all-MiniLM-L6-v2", text_tokens=tokens),
            latency_ms=1,
        )
    User.objects.create_user(email="ops@example.com", password=PASSWORD, is_staff=True)
    log_in(page, live_server.url, "ops@example.com")
    page.goto(f"{live_server.url}/staff/")
    shot(page, "staff")
    totals = page.get_attribute("#model-totals td[data-tokens]", "data-tokens")
    assert totals == "5700"
    assert page.locator("#top-users tbody tr").first.text_content().count("big@example.com") == 1
    today = timezone.now().date().isoformat()
    assert page.get_attribute(f"#chart-all-tokens rect[data-day='{today}']", "data-value") == "5700"

    small = ApiKey.objects.get(user__email="small@example.com")
    page.fill("input[name=q]", "small@")
    page.click("form[method=get] button")
    row = page.locator(f"#staff-keys tr[data-prefix='{small.prefix}']")
    row.locator("form.grant input[name=tokens]").fill("1234")
    row.locator("form.grant button").click()
    page.wait_for_selector(".messages")
    assert ApiKey.objects.get(pk=small.pk).balance == small.balance + 1234
    shot(page, "staff-after-grant")


def test_a_normal_user_is_refused_the_staff_pages(live_server: Any, page: Any) -> None:
    User.objects.create_user(email="user@example.com", password=PASSWORD)
    response = page.goto(f"{live_server.url}/staff/")
    assert "/accounts/login/" in page.url  # anonymous: log in first
    log_in(page, live_server.url, "user@example.com")
    response = page.goto(f"{live_server.url}/staff/")
    assert response.status == 403
    assert "Forbidden" in (page.text_content("h1") or "")
    shot(page, "staff-forbidden")


def test_every_page_renders_styled_and_fits_a_phone(live_server: Any, browser: Any) -> None:
    EmbeddingModelFactory()
    User.objects.create_user(
        email="phone@example.com", password=PASSWORD, is_staff=True, is_superuser=True
    )
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    refused = csp_violations(page)
    log_in(page, live_server.url, "phone@example.com")
    page.fill("#key-create input[name=name]", "phone")
    page.click("#key-create button[type=submit]")
    key = ApiKey.objects.get(user__email="phone@example.com")
    for name, path in (
        ("mobile-playground", "/"),
        ("mobile-dashboard", "/dashboard/"),
        ("mobile-key", f"/dashboard/keys/{key.pk}/"),
        ("mobile-billing", "/billing/"),
        ("mobile-staff", "/staff/"),
        ("api-reference", "/docs/"),
        ("mobile-password-reset", "/accounts/password-reset/"),
    ):
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        if path != "/docs/":
            # Our stylesheet applied, and nothing wider than the phone's screen.
            assert page.evaluate("getComputedStyle(document.body).fontFamily").startswith(
                "system-ui"
            ), path
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} is {overflow}px wider than the screen"
        else:
            page.wait_for_selector("text=Create embeddings", state="attached")
        shot(page, name)
    context.close()
    assert not refused, f"the Content-Security-Policy refused: {refused}"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.inference.images import make_tiny_clip

    return str(make_tiny_clip(tmp_path_factory.mktemp("tiny-clip")))


def test_the_playground_embeds_an_uploaded_image_and_bills_its_tiles(
    live_server: Any, page: Any, tiny_clip: str, tmp_path: Path
) -> None:
    from inference.models import EmbeddingModel
    from tests.inference.images import image_bytes

    EmbeddingModelFactory()
    EmbeddingModel.objects.create(
        name="tiny-clip-v2",
        backend="clip",
        source=tiny_clip,
        dimensions=16,
        max_tokens=77,
        modalities=["text", "image"],
        tasks={"retrieval.query": "", "retrieval.passage": ""},
        image_tile_size=512,
        tokens_per_tile=4000,
    )
    picture = tmp_path / "photo.png"
    picture.write_bytes(image_bytes(600, 400))  # 2 x 1 tiles of 512 px at 4,000 tokens
    api_key = ApiKeyFactory()
    page.goto(f"{live_server.url}/")
    page.fill("#pg-key", api_key.plaintext)
    page.select_option("#pg-model", "tiny-clip-v2")
    assert page.is_visible("#pg-add-image-file-label")
    page.set_input_files("#pg-add-image-file", str(picture))
    page.wait_for_selector("#pg-inputs img.thumb")
    page.click("#pg-run")
    page.wait_for_selector("#pg-heatmap-table")
    response = json.loads(page.text_content("#pg-response") or "{}")
    shot(page, "playground-image")
    assert len(response["data"]) == 4
    assert response["usage"]["image_tokens"] == 8000
    assert len(page.query_selector_all("#pg-heatmap-table td")) == 16
    assert (
        ApiKey.objects.get(pk=api_key.pk).balance
        == api_key.balance - response["usage"]["total_tokens"]
    )
    # Text-only models hide the image buttons.
    page.select_option("#pg-model", "all-MiniLM-L6-v2")
    assert not page.is_visible("#pg-add-image-file-label")


def test_top_up_on_the_billing_page_with_stripe_js_and_3d_secure(
    live_server: Any, page: Any, localstripe: Any, settings: Any
) -> None:
    """The billing page's own JavaScript with localstripe's Stripe.js: card form, 3-D Secure
    when saving the card and again when paying, back to the payment page, credited once."""
    from billing.models import LedgerEntry, Payment
    from tests.infra import stripe_env

    for name, value in stripe_env(localstripe).items():
        setattr(settings, name, value)
    settings.TOKEN_PACKS = [
        {"id": "small", "name": "1M tokens", "tokens": 1_000_000, "amount": 500, "currency": "usd"}
    ]
    localstripe.send_webhooks_to(f"{live_server.url}/billing/stripe/webhook")
    User.objects.create_user(email="buyer@example.com", password=PASSWORD)
    log_in(page, live_server.url, "buyer@example.com")
    page.fill("#key-create input[name=name]", "paid")
    page.click("#key-create button[type=submit]")
    api_key = ApiKey.objects.get(user__email="buyer@example.com")
    before = api_key.balance

    page.goto(f"{live_server.url}/billing/")
    page.wait_for_selector("#card-element input[placeholder=number]")
    for field, value in (
        ("number", "4000002760003184"),
        ("exp_month", "12"),
        ("exp_year", "34"),
        ("cvc", "123"),
        ("postal_code", "10115"),
    ):
        page.fill(f"#card-element input[placeholder={field}]", value)
    shot(page, "billing-card")
    page.click("#topup-submit")
    page.click("text=Complete authentication")  # the bank's page when saving the card
    page.click("text=Complete authentication")  # and when paying
    page.wait_for_url(re.compile(r".*/billing/payments/\d+/$"))
    assert page.get_attribute("#payment", "data-status") == "succeeded"
    shot(page, "payment-paid")

    payment = Payment.objects.get(api_key=api_key)
    assert payment.status == Payment.Status.SUCCEEDED
    assert ApiKey.objects.get(pk=api_key.pk).balance == before + 1_000_000
    assert LedgerEntry.objects.filter(api_key=api_key, kind="topup").count() == 1
    page.goto(f"{live_server.url}/billing/")
    assert "Visa •••• 3184" in (page.text_content("#topup-form") or "")
    assert "$5.00" in (page.text_content("#payments") or "")
    shot(page, "billing")
