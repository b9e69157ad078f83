"""Issue 14.5: sign-up does not tell a stranger which e-mail addresses have accounts. The page
after sign-up is the same for a new address and a taken one; the owner of a taken one is told
by mail, and only the browser that signed up is signed in by its verification link."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core import mail
from django.test import Client

from billing.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "a long and unusual passphrase"


def sign_up(client: Client, email: str, password: str = PASSWORD) -> tuple[Any, str]:
    """The sign-up response and the page it leads to, with the address itself blanked out."""
    response = client.post(
        "/accounts/signup/", {"email": email, "password1": password, "password2": password}
    )
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    # Per-response values: the CSRF token and the CSP nonce.
    page = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"|nonce="[^"]+"', "", page)
    return response, page.replace(email.lower(), "<email>")


def test_a_taken_address_gets_the_same_answer_as_a_new_one() -> None:
    owner = User.objects.create_user(email="taken@example.com", password="the owner's own one")
    new_response, new_page = sign_up(Client(REMOTE_ADDR="198.51.100.1"), "fresh@example.com")
    taken_response, taken_page = sign_up(Client(REMOTE_ADDR="198.51.100.2"), "Taken@Example.com")

    assert taken_response["Location"] == new_response["Location"] == "/accounts/signup/sent/"
    assert taken_page == new_page
    assert "Check your inbox" in new_page
    # Nothing about the taken account changed, and no second one exists.
    owner.refresh_from_db()
    assert owner.check_password("the owner's own one")
    assert User.objects.filter(email__iexact="taken@example.com").count() == 1
    # Each address got one mail: the new one its link, the taken one a note that it has an account.
    by_address = {message.to[0]: message for message in mail.outbox}
    assert set(by_address) == {"fresh@example.com", "taken@example.com"}
    assert "/accounts/verify/" in by_address["fresh@example.com"].body
    note = by_address["taken@example.com"]
    assert note.subject == "You already have an account"
    assert "/accounts/login/" in note.body and "/accounts/password-reset/" in note.body
    assert "/accounts/verify/" not in note.body


def test_sign_up_signs_nobody_in_and_the_link_signs_in_only_the_browser_that_signed_up() -> None:
    browser = Client(REMOTE_ADDR="198.51.100.3")
    sign_up(browser, "ada@example.com")
    assert browser.get("/dashboard/").status_code == 302  # to the log-in page
    [message] = mail.outbox
    link = re.search(r"https?://[^/\s]+(/accounts/verify/\S+/)", message.body)
    assert link is not None

    # Opened elsewhere first (a mail scanner, another device): a form asks for a password, and
    # nothing is verified and nobody signed in until it is posted.
    elsewhere = Client()
    assert "Choose your password" in elsewhere.get(link.group(1)).content.decode()
    assert elsewhere.get("/dashboard/").status_code == 302
    # Then the signing-up browser: verified, and signed in by its own link.
    assert "is verified" in browser.get(link.group(1)).content.decode()
    assert browser.get("/dashboard/").status_code == 200
    # Once verified, the link signs in nobody else.
    assert "already verified" in elsewhere.get(link.group(1)).content.decode()
    assert elsewhere.get("/dashboard/").status_code == 302

    second = Client(REMOTE_ADDR="198.51.100.4")
    sign_up(second, "bea@example.com")
    link = re.search(r"https?://[^/\s]+(/accounts/verify/\S+/)", mail.outbox[-1].body)
    assert link is not None
    page = second.get(link.group(1))
    assert "is verified" in page.content.decode()
    assert second.get("/dashboard/").status_code == 200


def test_the_sent_page_needs_a_sign_up_first() -> None:
    response = Client().get("/accounts/signup/sent/")
    assert response.status_code == 302 and response["Location"] == "/accounts/signup/"
