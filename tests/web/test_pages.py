"""Accounts, dashboards and staff pages over Django's test client: CSRF (ADVERSARIAL 23), who may
see and do what, per-IP limits on the forms, password reset, and the API reference."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from billing.models import ApiKey, AutoRecharge, User
from tests.factories import ApiKeyFactory, EmbeddingModelFactory, UserFactory
from tests.infra import ROOT

pytestmark = pytest.mark.django_db

PASSWORD = "a long and unusual passphrase"


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_cross_site_posts_without_a_csrf_token_are_refused_and_change_nothing() -> None:
    """ADVERSARIAL 23 (first half)."""
    user = UserFactory()
    staff = User.objects.create_user(email="ops@example.com", password=PASSWORD, is_staff=True)
    api_key = ApiKeyFactory(user=user)
    forged = Client(enforce_csrf_checks=True)
    forged.force_login(user)
    forged_staff = Client(enforce_csrf_checks=True)
    forged_staff.force_login(staff)
    before = (
        ApiKey.objects.count(),
        ApiKey.objects.get(pk=api_key.pk).balance,
        User.objects.count(),
    )

    for client, url, data in (
        (forged, "/dashboard/keys", {"name": "evil"}),
        (forged, f"/dashboard/keys/{api_key.pk}/revoke", {}),
        (forged, "/playground/key", {}),
        (forged, "/billing/topup", {"api_key": api_key.pk, "pack": "pack-1b"}),
        (forged, f"/billing/keys/{api_key.pk}/auto-recharge", {"enabled": "on"}),
        (forged, "/accounts/logout/", {}),
        (forged_staff, f"/staff/keys/{api_key.pk}/grant", {"tokens": "1000000"}),
        (forged_staff, f"/staff/keys/{api_key.pk}/revoke", {}),
        (forged_staff, f"/staff/users/{user.pk}/suspend", {"action": "suspend"}),
        (
            Client(enforce_csrf_checks=True),
            "/accounts/signup/",
            {"email": "x@example.com", "password1": PASSWORD, "password2": PASSWORD},
        ),
        (
            Client(enforce_csrf_checks=True),
            "/accounts/login/",
            {"username": user.email, "password": PASSWORD},
        ),
    ):
        response = client.post(
            url, data, HTTP_ORIGIN="https://evil.example", HTTP_ACCEPT="text/html"
        )
        assert response.status_code == 403, url

    api_key.refresh_from_db()
    user.refresh_from_db()
    assert (ApiKey.objects.count(), api_key.balance, User.objects.count()) == before
    assert api_key.revoked_at is None and user.is_active


@pytest.mark.e2e  # starts a process of its own
def test_deploy_checks_pass_with_production_settings(tmp_path: Any) -> None:
    """ADVERSARIAL 23 (second half): `manage.py check --deploy` gives no warnings."""
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))
        },
        "DJANGO_ENV": "production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "DJANGO_ALLOWED_HOSTS": "embeddings.example.com",
        "DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_sign_up_refuses_mismatched_and_weak_passwords() -> None:
    UserFactory(email="taken@example.com")
    client = Client()
    for data, message in (
        (
            {"email": "new@example.com", "password1": PASSWORD, "password2": PASSWORD + "x"},
            "differ",
        ),
        (
            {"email": "new@example.com", "password1": "12345678", "password2": "12345678"},
            "too common",
        ),
        ({"email": "not-an-email", "password1": PASSWORD, "password2": PASSWORD}, "valid email"),
    ):
        response = client.post("/accounts/signup/", data)
        assert response.status_code == 200 and message in response.content.decode(), message
    assert not User.objects.filter(email="new@example.com").exists()

    response = client.post(
        "/accounts/signup/",
        {"email": "New@Example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302 and response["Location"] == "/accounts/signup/sent/"
    assert "new@example.com" in client.get("/accounts/signup/sent/").content.decode()
    user = User.objects.get(email="new@example.com")
    assert user.check_password(PASSWORD)
    # The password signs in; the first key waits for the e-mail to be verified.
    assert client.login(username="new@example.com", password=PASSWORD)
    assert client.get("/dashboard/").status_code == 200
    client.post("/dashboard/keys", {"name": "first"})
    assert ApiKey.objects.get(user=user).ledger_entries.filter(kind="trial_grant").count() == 0


def test_forms_are_limited_per_ip(settings: Any) -> None:
    settings.IP_RATE_LIMIT_SIGNUP = "2/m"
    settings.IP_RATE_LIMIT_TRIAL_KEY = "1/m"
    settings.IP_RATE_LIMIT_LOGIN = "3/m"
    client = Client(REMOTE_ADDR="203.0.113.7")
    statuses = [
        client.post(
            "/accounts/signup/", {"email": f"u{i}@example.com", "password1": "x", "password2": "y"}
        ).status_code
        for i in range(3)
    ]
    assert statuses == [200, 200, 429]
    assert client.post("/playground/key").status_code == 200
    limited = client.post("/playground/key", HTTP_ACCEPT="application/json")
    assert limited.status_code == 429 and limited.json()["code"] == "RATE_IP_LIMIT_EXCEEDED"
    logins = [
        client.post("/accounts/login/", {"username": "a@b.c", "password": "x"}).status_code
        for _ in range(4)
    ]
    assert logins == [200, 200, 200, 429]
    # Another address is not affected.
    assert Client(REMOTE_ADDR="203.0.113.8").post("/playground/key").status_code == 200


def test_password_reset_by_e_mail() -> None:
    user = UserFactory(email="forgetful@example.com")
    client = Client()
    assert (
        client.post("/accounts/password-reset/", {"email": "forgetful@example.com"}).status_code
        == 302
    )
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/\s]+(/accounts/reset/\S+)", mail.outbox[0].body)
    assert link is not None
    form = client.get(link.group(1), follow=True)
    assert form.status_code == 200
    done = client.post(
        form.redirect_chain[-1][0], {"new_password1": PASSWORD, "new_password2": PASSWORD}
    )
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    # The link works once.
    again = client.get(link.group(1), follow=True)
    assert "no longer valid" in again.content.decode()
    # An unknown address sends nothing and says the same thing.
    mail.outbox.clear()
    assert (
        client.post("/accounts/password-reset/", {"email": "nobody@example.com"}).status_code == 302
    )
    assert mail.outbox == []


def test_users_see_and_revoke_only_their_own_keys() -> None:
    mine, theirs = ApiKeyFactory(), ApiKeyFactory()
    client = logged_in(mine.user)
    dashboard = client.get("/dashboard/").content.decode()
    assert mine.prefix in dashboard and theirs.prefix not in dashboard
    assert client.get(f"/dashboard/keys/{theirs.pk}/").status_code == 404
    assert client.post(f"/dashboard/keys/{theirs.pk}/revoke").status_code == 404
    assert ApiKey.objects.get(pk=theirs.pk).revoked_at is None
    # The key holds its trial: revoking it says what becomes of the tokens (issue 16.3).
    assert client.post(f"/dashboard/keys/{mine.pk}/revoke").status_code == 400
    assert ApiKey.objects.get(pk=mine.pk).revoked_at is None
    assert (
        client.post(f"/dashboard/keys/{mine.pk}/revoke", {"leave_tokens": "on"}).status_code == 302
    )
    assert ApiKey.objects.get(pk=mine.pk).revoked_at is not None


def test_a_new_key_is_shown_once() -> None:
    user = UserFactory()
    client = logged_in(user)
    created = client.post("/dashboard/keys", {"name": "ci"}).content.decode()
    plaintext = re.search(r'id="new-key-value">(jina_\w+)<', created)
    assert plaintext is not None
    assert ApiKey.objects.get(user=user).prefix in plaintext.group(1)
    assert plaintext.group(1) not in client.get("/dashboard/").content.decode()


def test_staff_pages_and_actions_need_staff() -> None:
    api_key = ApiKeyFactory()
    user_client = logged_in(UserFactory())
    for url in ("/staff/",):
        assert Client().get(url)["Location"].startswith("/accounts/login/")
        assert user_client.get(url, HTTP_ACCEPT="text/html").status_code == 403
    for url, data in (
        (f"/staff/keys/{api_key.pk}/grant", {"tokens": "5"}),
        (f"/staff/keys/{api_key.pk}/limits", {"tier": "premium"}),
        (f"/staff/keys/{api_key.pk}/revoke", {}),
        (f"/staff/users/{api_key.user.pk}/suspend", {"action": "suspend"}),
    ):
        assert user_client.post(url, data).status_code == 403, url
    api_key.refresh_from_db()
    assert api_key.tier == "standard" and api_key.revoked_at is None and api_key.user.is_active


def test_staff_change_limits_revoke_keys_and_suspend_users(default_model: Any) -> None:
    api_key = ApiKeyFactory()
    staff = logged_in(
        User.objects.create_user(email="ops@example.com", password=PASSWORD, is_staff=True)
    )
    staff.post(
        f"/staff/keys/{api_key.pk}/limits",
        {"tier": "premium", "rpm": "42", "tpm": "", "concurrency": ""},
    )
    api_key.refresh_from_db()
    assert api_key.tier == "premium" and api_key.rpm_limit == 42

    staff.post(f"/staff/users/{api_key.user.pk}/suspend", {"action": "suspend"})
    refused = Client().post(
        "/v1/embeddings",
        {"input": "hi"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",
    )
    assert refused.status_code == 401
    staff.post(f"/staff/users/{api_key.user.pk}/suspend", {"action": "restore"})
    served = Client().post(
        "/v1/embeddings",
        {"input": "hi"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",
    )
    assert served.status_code == 200
    staff.post(f"/staff/keys/{api_key.pk}/revoke")
    assert ApiKey.objects.get(pk=api_key.pk).revoked_at is not None


def test_pages_answer_errors_as_pages_and_the_api_as_json() -> None:
    page = Client().get("/no/such/page/", HTTP_ACCEPT="text/html,application/xhtml+xml")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")
    assert b"RESOURCE_NOT_FOUND" in page.content
    api = Client().get("/v1/no-such-route", HTTP_ACCEPT="text/html")
    assert api.status_code == 404 and api.json()["code"] == "RESOURCE_NOT_FOUND"


def _v1_routes() -> set[str]:
    routes: set[str] = set()

    def walk(patterns: list[Any], prefix: str) -> None:
        for pattern in patterns:
            text = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, text)
            elif isinstance(pattern, URLPattern) and text.lstrip("^").startswith("v1/"):
                routes.add(text)

    walk(get_resolver().url_patterns, "")
    return routes


def test_the_api_reference_covers_every_v1_route_and_needs_no_cdn() -> None:
    EmbeddingModelFactory()
    response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)
    documented = set(schema["paths"])
    for route in _v1_routes():
        # ^v1/models/(?P<model_id>.+?)/?$  ->  /v1/models/{model_id}
        path = "/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route).lstrip("^").removesuffix(
            "$"
        ).removesuffix("/?")
        assert path in documented, f"{route} is missing from the API reference"
    embeddings = schema["paths"]["/v1/embeddings"]["post"]
    assert {"200", "400", "401", "403", "429"} <= set(embeddings["responses"])
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"

    docs = Client().get("/docs/").content.decode()
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', docs)
    assert scripts and all(src.startswith("/static/") for src in scripts), scripts
    playground = Client().get("/").content.decode()
    assert 'href="/docs/"' in playground


def test_the_dashboard_and_key_page_list_a_keys_batch_jobs_with_progress(
    default_model: Any,
) -> None:
    from batch.processing import batch_job_process

    api_key = ApiKeyFactory()
    lines = [{"custom_id": f"line-{i}", "body": {"input": f"text {i}"}} for i in range(3)]
    created = Client().post(
        "/v1/batch/embeddings",
        {"model": "all-MiniLM-L6-v2", "input": lines},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",
    )
    assert created.status_code == 200, created.content
    job_id = created.json()["batch_id"]
    client = logged_in(api_key.user)
    pending = re.search(
        rf'<tr data-job="{job_id}">(.*?)</tr>', client.get("/dashboard/").content.decode(), re.S
    )
    assert pending is not None and 'data-done="0"' in pending.group(1)
    batch_job_process(job_id=job_id)  # what a worker does
    for url in ("/dashboard/", f"/dashboard/keys/{api_key.pk}/"):
        page = client.get(url).content.decode()
        row = re.search(rf'<tr data-job="{job_id}">(.*?)</tr>', page, re.S)
        assert row is not None, url
        assert "Completed" in row.group(1) and 'data-done="3"' in row.group(1)
    assert job_id not in logged_in(UserFactory()).get("/dashboard/").content.decode()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("monthly_cap", "inf", "Monthly cap: Enter an amount"),
        ("monthly_cap", "nan", "Monthly cap: Enter an amount"),
        ("monthly_cap", "1e308", "Monthly cap: The monthly cap can be at most 21,474,836.47."),
        ("monthly_cap", "-1", "Monthly cap: The monthly cap cannot be negative."),
        ("threshold_tokens", "1" * 24, "Recharge below: Enter a whole number of tokens"),
        ("threshold_tokens", "12abc", "Recharge below: Enter a whole number of tokens"),
    ],
)
def test_an_auto_recharge_value_out_of_range_is_a_form_error_and_saves_nothing(
    field: str, value: str, message: str
) -> None:
    api_key = ApiKeyFactory()
    client = logged_in(api_key.user)
    typed = {"threshold_tokens": "5000", "pack_id": "", "monthly_cap": "20"} | {field: value}

    response = client.post(f"/billing/keys/{api_key.pk}/auto-recharge", typed)

    assert response.status_code == 400
    page = response.content.decode()
    form = page[page.index(f'id="auto-recharge-{api_key.pk}"') :]
    assert message in form[: form.index("</form>")]
    recharge = AutoRecharge.objects.filter(api_key=api_key).first()
    assert recharge is None or (recharge.threshold_tokens, recharge.monthly_cap_amount) == (
        1_000_000,
        100_000,
    )


def test_auto_recharge_settings_typed_with_separators_and_cents_are_saved() -> None:
    api_key = ApiKeyFactory()
    client = logged_in(api_key.user)
    response = client.post(
        f"/billing/keys/{api_key.pk}/auto-recharge",
        {"threshold_tokens": "1,500_000", "pack_id": "", "monthly_cap": "4.99"},
    )
    assert response.status_code == 302
    recharge = AutoRecharge.objects.get(api_key=api_key)
    assert (recharge.enabled, recharge.threshold_tokens, recharge.monthly_cap_amount) == (
        False,
        1_500_000,
        499,
    )
