"""A new key's plaintext is handed to its owner once, in the page that answers the creation, and
kept nowhere on the server: not in the session table (ADVERSARIAL 1: a row there decodes without
any secret), not in a cookie, a log line or any other table."""

from __future__ import annotations

import logging
import re
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client

from billing.models import ApiKey
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def session_store() -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore()


def decoded_sessions() -> list[str]:
    """Every session row as anyone who can read the table sees it: decoded, no secret needed."""
    store = session_store()
    return [
        f"{row.session_data} {store.decode(row.session_data)!r}" for row in Session.objects.all()
    ]


def every_stored_value() -> str:
    """Every cell of every table, as text."""
    cells = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            cells.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(cells)


def create_key(client: Client, name: str) -> tuple[Any, str]:
    response = client.post("/dashboard/keys", {"name": name})
    found = re.search(r'id="new-key-value">(jina_\w+)<', response.content.decode())
    assert found is not None, response.content.decode()[:2000]
    return response, found.group(1)


def test_a_new_keys_plaintext_is_only_in_the_creation_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ADVERSARIAL 1: create a key through the page, then look for its plaintext everywhere."""
    assert settings.SESSION_ENGINE == "django.contrib.sessions.backends.db"  # as configured
    caplog.set_level(logging.DEBUG)
    user = UserFactory()
    client = Client()
    client.force_login(user)

    created, plaintext = create_key(client, "ci")

    # Shown once, with a copy button and a way on to the dashboard, and not cached by the browser.
    assert created.status_code == 201
    page = created.content.decode()
    assert f'data-copy-text="{plaintext}"' in page
    assert 'href="/dashboard/"' in page
    assert "no-store" in created["Cache-Control"]
    assert ApiKey.objects.get(user=user).prefix in plaintext
    assert Session.objects.exists()  # the logged-in session row is there to be searched

    nxt = client.get("/dashboard/")
    assert nxt.status_code == 200
    assert ApiKey.objects.get(user=user).prefix in nxt.content.decode()
    assert plaintext not in nxt.content.decode()
    assert not any(plaintext in row for row in decoded_sessions())
    assert plaintext not in every_stored_value()
    assert not any(plaintext in morsel.value for morsel in client.cookies.values())
    assert plaintext not in caplog.text


def test_a_plaintext_left_in_a_session_by_the_old_flow_is_dropped_unread() -> None:
    user = UserFactory()
    leaked = "jina_" + "0" * 40
    for visit in (
        lambda client: client.get("/dashboard/"),
        lambda client: client.post("/dashboard/keys", {"name": ""}),  # a refused creation
        lambda client: client.post("/dashboard/keys", {"name": "second"}),
    ):
        client = Client()
        client.force_login(user)
        session = client.session
        session["new_key"] = {"key": leaked, "prefix": leaked[:12], "name": "old"}
        session.save()
        assert any(leaked in row for row in decoded_sessions())

        response = visit(client)

        assert leaked not in response.content.decode()
        assert not any(leaked in row for row in decoded_sessions())


def test_the_migration_clears_plaintexts_from_sessions_nobody_visits_again() -> None:
    """Rows from before the fix: the next migrate drops the entry, or the row where unreadable."""
    from django.apps import apps

    migration = import_module("billing.migrations.0006_forget_plaintext_keys_in_sessions")
    leaked = "jina_" + "1" * 40
    user = UserFactory()
    kept = Client()
    kept.force_login(user)
    session = kept.session
    session["new_key"] = {"key": leaked, "prefix": leaked[:12], "name": "old"}
    session.save()
    # A row signed with a secret this server no longer has: unusable, and it may hold a key too.
    Session.objects.create(
        session_key="x" * 32,
        session_data=leaked,
        expire_date=Session.objects.get().expire_date,
    )

    migration.forget_plaintext_keys(apps, None)

    assert not any(leaked in row for row in decoded_sessions())
    assert Session.objects.count() == 1
    assert kept.get("/dashboard/").status_code == 200  # still signed in
