"""A new account's trial tokens wait for its e-mail address (issue 14.1): sign-up mails a signed,
expiring link; following it verifies the address and grants TRIAL_TOKENS once."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from django.core import mail, signing
from django.test import Client

from billing.models import ApiKey, LedgerEntry, User
from billing.services import EMAIL_VERIFICATION_MAX_AGE

pytestmark = pytest.mark.django_db

PASSWORD = "a long and unusual passphrase"


def sign_up(email: str, address: str = "198.51.100.1") -> Client:
    client = Client(REMOTE_ADDR=address)
    response = client.post(
        "/accounts/signup/", {"email": email, "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response.status_code == 302, response.content.decode()
    assert response["Location"] == "/accounts/signup/sent/"
    # Sign-up signs nobody in (an address with an account would answer differently); the
    # password does.
    assert client.login(username=email, password=PASSWORD)
    return client


def link_in_mail_to(email: str) -> str:
    [message] = [m for m in mail.outbox if m.to == [email]][-1:]
    found = re.search(r"https?://[^/\s]+(/accounts/verify/\S+/)", message.body)
    assert found is not None, message.body
    return found.group(1)


def trial_tokens_of(email: str) -> int:
    entries = LedgerEntry.objects.filter(
        api_key__user__email=email, kind=LedgerEntry.Kind.TRIAL_GRANT
    )
    return sum(entry.tokens for entry in entries)


def test_the_trial_arrives_when_the_mailed_link_is_followed_and_only_once(settings: Any) -> None:
    settings.TRIAL_TOKENS = 10_000_000
    client = sign_up("ada@example.com")
    dashboard = client.get("/dashboard/").content.decode()
    assert "Verify your e-mail to get 10,000,000 free tokens" in dashboard
    client.post("/dashboard/keys", {"name": "first"})
    key = ApiKey.objects.get(user__email="ada@example.com")
    assert key.balance == 0 and trial_tokens_of("ada@example.com") == 0
    assert mail.outbox[-1].subject == "Verify your e-mail address"

    link = link_in_mail_to("ada@example.com")
    # Followed in the browser that signed up (and is signed in): verified at once.
    page = client.get(link)
    assert page.status_code == 200
    assert "10,000,000 free trial tokens were added" in page.content.decode()
    key.refresh_from_db()
    assert key.balance == 10_000_000 and trial_tokens_of("ada@example.com") == 10_000_000
    assert User.objects.get(email="ada@example.com").email_verified_at is not None
    assert "Verify your e-mail" not in client.get("/dashboard/").content.decode()

    again = client.get(link)
    assert again.status_code == 200 and "already verified" in again.content.decode()
    key.refresh_from_db()
    assert key.balance == 10_000_000 and trial_tokens_of("ada@example.com") == 10_000_000
    # Later keys start empty.
    client.post("/dashboard/keys", {"name": "second"})
    assert ApiKey.objects.get(name="second").balance == 0


def test_verified_before_the_first_key_the_key_comes_with_the_trial(settings: Any) -> None:
    settings.TRIAL_TOKENS = 5_000
    client = sign_up("bea@example.com")
    page = client.get(link_in_mail_to("bea@example.com"))
    assert "Your first key comes with 5,000 free trial tokens" in page.content.decode()
    client.post("/dashboard/keys", {"name": "first"})
    client.post("/dashboard/keys", {"name": "second"})
    assert ApiKey.objects.get(name="first").balance == 5_000
    assert ApiKey.objects.get(name="second").balance == 0
    assert trial_tokens_of("bea@example.com") == 5_000


def test_an_expired_or_tampered_link_is_refused_and_grants_nothing(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.TRIAL_TOKENS = 10_000_000
    client = sign_up("cy@example.com")
    client.post("/dashboard/keys", {"name": "first"})
    link = link_in_mail_to("cy@example.com")

    tampered = link[:-3] + ("A" if link[-3] != "A" else "B") + link[-2:]
    for bad in (tampered, link.replace("/verify/", "/verify/x"), "/accounts/verify/nonsense/"):
        page = client.get(bad)
        assert page.status_code == 400, bad
        assert "This verification link is not valid" in page.content.decode()

    # The same link, followed after it expired.
    later = time.time() + EMAIL_VERIFICATION_MAX_AGE.total_seconds() + 60
    monkeypatch.setattr(signing.time, "time", lambda: later)
    page = client.get(link)
    assert page.status_code == 400 and "has expired" in page.content.decode()
    monkeypatch.undo()

    assert User.objects.get(email="cy@example.com").email_verified_at is None
    assert trial_tokens_of("cy@example.com") == 0
    assert ApiKey.objects.get(user__email="cy@example.com").balance == 0


def test_a_link_for_an_address_the_account_no_longer_has_is_refused() -> None:
    client = sign_up("old@example.com")
    link = link_in_mail_to("old@example.com")
    User.objects.filter(email="old@example.com").update(email="new@example.com")
    page = client.get(link)
    assert page.status_code == 400 and "no longer has" in page.content.decode()
    assert User.objects.get(email="new@example.com").email_verified_at is None


@pytest.mark.slow
def test_fifty_sign_ups_from_one_address_get_no_tokens_until_verified(settings: Any) -> None:
    settings.TRIAL_TOKENS = 10_000_000
    settings.IP_RATE_LIMIT_SIGNUP = "100/h"
    emails = [f"farm{i}@example.com" for i in range(50)]
    for email in emails:
        client = sign_up(email, address="198.51.100.50")
        assert client.post("/dashboard/keys", {"name": "farmed"}).status_code == 201
    farmed = ApiKey.objects.filter(user__email__in=emails)
    assert farmed.count() == 50
    assert sum(key.balance for key in farmed) == 0
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TRIAL_GRANT).exists()
    assert len(mail.outbox) == 50

    # Only a followed link (one mailbox) turns into tokens: in a browser of its own, the
    # mailbox's holder sets the password, and the keys made before it are revoked, so the
    # trial waits for the next key.
    owner = Client()
    link = link_in_mail_to(emails[7])
    owner.post(
        link, {"new_password1": "owner's own phrase 7", "new_password2": "owner's own phrase 7"}
    )
    assert trial_tokens_of(emails[7]) == 0
    assert owner.post("/dashboard/keys", {"name": "mine"}).status_code == 201
    assert sum(key.balance for key in farmed.all()) == 10_000_000
    assert trial_tokens_of(emails[7]) == 10_000_000


def test_resend_mails_a_fresh_link_until_the_address_is_verified() -> None:
    client = sign_up("dan@example.com", address="198.51.100.2")
    mail.outbox.clear()
    response = client.post("/accounts/verify/")
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["dan@example.com"]
    assert client.get(link_in_mail_to("dan@example.com")).status_code == 200

    mail.outbox.clear()
    client.post("/accounts/verify/")
    assert mail.outbox == []
    assert "already verified" in client.get("/dashboard/").content.decode()
    # Signed-out visitors cannot ask for mail.
    assert Client().post("/accounts/verify/").status_code == 302
    assert mail.outbox == []


def test_resend_is_limited_per_ip(settings: Any) -> None:
    settings.IP_RATE_LIMIT_PASSWORD_RESET = "2/m"
    client = sign_up("eve@example.com", address="198.51.100.3")
    statuses = [client.post("/accounts/verify/").status_code for _ in range(3)]
    assert statuses == [302, 302, 429]


def test_with_trials_off_verification_grants_nothing_and_no_banner_shows(settings: Any) -> None:
    settings.TRIAL_TOKENS = 0
    client = sign_up("fay@example.com", address="198.51.100.4")
    assert "free tokens" not in client.get("/dashboard/").content.decode()
    assert "free trial tokens" not in mail.outbox[-1].body
    client.post("/dashboard/keys", {"name": "first"})
    page = client.get(link_in_mail_to("fay@example.com"))
    assert page.status_code == 200 and "is verified" in page.content.decode()
    assert ApiKey.objects.get(user__email="fay@example.com").balance == 0
    assert trial_tokens_of("fay@example.com") == 0


def test_an_address_squatted_before_its_owner_signs_up_goes_to_the_mailbox_holder(
    settings: Any,
) -> None:
    """Pre-account takeover: someone signs up with another's address, stays signed in and makes
    a key. The owner follows the mailed link in their own browser: they choose the password,
    the squatter's session and key stop working, and the trial goes to the owner's key."""
    settings.TRIAL_TOKENS = 10_000_000
    squatter = sign_up("victim@example.com", address="198.51.100.66")
    assert squatter.post("/dashboard/keys", {"name": "squatted"}).status_code == 201
    squatted_key = ApiKey.objects.get(user__email="victim@example.com")

    owner = Client(REMOTE_ADDR="203.0.113.7")
    link = link_in_mail_to("victim@example.com")
    form = owner.get(link)
    assert form.status_code == 200 and "Choose your password" in form.content.decode()
    user = User.objects.get(email="victim@example.com")
    assert user.email_verified_at is None  # a GET (a mail scanner, too) changes nothing

    weak = owner.post(link, {"new_password1": "short", "new_password2": "short"})
    assert weak.status_code == 200 and "too short" in weak.content.decode()
    chosen = "the mailbox holder's own phrase"
    done = owner.post(link, {"new_password1": chosen, "new_password2": chosen})
    assert done.status_code == 200 and "is verified" in done.content.decode()

    user.refresh_from_db()
    assert user.email_verified_at is not None and user.check_password(chosen)
    assert not user.check_password(PASSWORD)
    assert squatter.get("/dashboard/").status_code == 302  # signed out: the password changed
    squatted_key.refresh_from_db()
    assert squatted_key.revoked_at is not None and squatted_key.balance == 0
    assert owner.get("/dashboard/").status_code == 200  # the owner is signed in
    assert owner.post("/dashboard/keys", {"name": "mine"}).status_code == 201
    assert ApiKey.objects.get(name="mine").balance == 10_000_000
    # The link is spent: following it again changes nothing.
    again = Client().get(link)
    assert "already verified" in again.content.decode()
