"""Issue 14's acceptance on the real server (gunicorn on Postgres): fifty sign-ups from one
address, each with a different X-Forwarded-For, get no trial tokens until an address is
verified, buy no extra sign-up allowance, and learn nothing about which addresses have
accounts."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import requests

from tests.infra import Gateway, RedisServer, postgres_query

pytestmark = pytest.mark.e2e

PASSWORD = "a long and unusual passphrase"
SIGNUPS = 50


def form_post(session: requests.Session, base: str, path: str, data: dict[str, str], **kw):
    session.get(f"{base}{path}", timeout=30)
    return session.post(
        f"{base}{path}",
        data={**data, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        allow_redirects=False,
        timeout=60,
        **kw,
    )


def sign_up(base: str, email: str, forwarded: str) -> tuple[int, str]:
    """The sign-up answer and the page it leads to, with the address blanked out."""
    with requests.Session() as session:
        response = form_post(
            session,
            base,
            "/accounts/signup/",
            {"email": email, "password1": PASSWORD, "password2": PASSWORD},
            headers={"X-Forwarded-For": forwarded},
        )
        if response.status_code != 302:
            return response.status_code, ""
        page = session.get(f"{base}{response.headers['Location']}", timeout=30).text
    # Per-response values: the CSRF token and the CSP nonce.
    page = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"|nonce="[^"]+"', "", page)
    return 302, page.replace(email, "<email>")


def mailed_link(gateway: Gateway, email: str, timeout: float = 30) -> str:
    """The verification link the console mail backend printed for `email`."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(r"To: " + re.escape(email) + r".*?(/accounts/verify/\S+/)", re.S)
    while time.monotonic() < deadline:
        found = pattern.search(gateway.log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.1)
    pytest.fail(f"no mail to {email}:\n{gateway.log.read_text()[-3000:]}")


def trial_tokens(database_url: str) -> int:
    [(total,)] = postgres_query(
        database_url,
        "SELECT COALESCE(SUM(tokens), 0) FROM billing_ledgerentry WHERE kind = 'trial_grant'",
    )
    return int(total)


def test_fifty_sign_ups_from_one_address_get_nothing_until_verified(
    gateways: list[Gateway], tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    # Two gunicorn processes share their per-IP counts through Redis, as in production.
    gateway = Gateway(
        tmp_path / "gw",
        workers=2,
        threads=4,
        env={
            "DATABASE_URL": postgres_url,
            "REDIS_URL": redis_server.url,
            "TRIAL_TOKENS": "10000000",
            "IP_RATE_LIMIT_SIGNUP": f"{SIGNUPS}/h",
            "EMBEDDINGS_WARM_ON_START": "false",
        },
    ).start()
    gateways.append(gateway)
    base = gateway.url

    emails = [f"farm{n}@example.com" for n in range(SIGNUPS)]
    answers = [sign_up(base, email, forwarded=f"198.51.{n}.{n}") for n, email in enumerate(emails)]
    assert [status for status, _ in answers] == [302] * SIGNUPS
    # A header the server does not trust buys no fresh allowance.
    assert sign_up(base, "one-more@example.com", forwarded="203.0.113.99")[0] == 429
    # No sign-up signed anyone in, and no account has a trial token.
    assert trial_tokens(postgres_url) == 0

    # Signing in with the password works, and a first key still waits for the address.
    with requests.Session() as session:
        login = form_post(
            session,
            base,
            "/accounts/login/",
            {"username": emails[7], "password": PASSWORD},
        )
        assert login.status_code == 302
        created = form_post(session, base, "/dashboard/keys", {"name": "first"})
        assert created.status_code == 201
        assert trial_tokens(postgres_url) == 0

        # One followed link (in the browser signed in to the account: verified at once), one
        # trial, to that account's first key.
        verified = session.get(f"{base}{mailed_link(gateway, emails[7])}", timeout=30)
        assert verified.status_code == 200 and "is verified" in verified.text
    assert trial_tokens(postgres_url) == 10_000_000
    [(balance,)] = postgres_query(
        postgres_url,
        "SELECT k.balance FROM billing_apikey k JOIN billing_user u ON u.id = k.user_id "
        "WHERE u.email = %s",
        (emails[7],),
    )
    assert balance == 10_000_000


def test_sign_up_with_a_taken_address_looks_like_any_other(
    gateways: list[Gateway], tmp_path: Path, postgres_url: str
) -> None:
    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=4,
        env={"DATABASE_URL": postgres_url, "EMBEDDINGS_WARM_ON_START": "false"},
    ).start()
    gateways.append(gateway)
    assert sign_up(gateway.url, "taken@example.com", forwarded="198.51.100.1")[0] == 302
    new = sign_up(gateway.url, "fresh@example.com", forwarded="198.51.100.2")
    taken = sign_up(gateway.url, "taken@example.com", forwarded="198.51.100.3")
    assert new == taken
    [(accounts,)] = postgres_query(
        postgres_url, "SELECT count(*) FROM billing_user WHERE email = 'taken@example.com'"
    )
    assert accounts == 1
