"""API keys: format, storage, authentication (ADVERSARIAL rows 1 and 2)."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client

from billing.models import ApiKey
from billing.services import api_key_revoke
from metering.keys import BODY_LENGTH, CHECKSUM_LENGTH, key_digest, key_generate, key_is_well_formed
from tests.factories import ApiKeyFactory, UserFactory
from tests.jina_spec import assert_error_envelope

ROOT = Path(__file__).resolve().parents[2]


def test_key_has_prefix_random_body_and_checksum() -> None:
    keys = {key_generate() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(rf"jina_[0-9A-Za-z]{{{BODY_LENGTH + CHECKSUM_LENGTH}}}", key)
        assert key_is_well_formed(key)
    # 43 base62 characters carry 256 bits: the body is an encoding of 32 random bytes.
    assert 62**BODY_LENGTH >= 2**256


def test_one_mistyped_character_breaks_the_checksum() -> None:
    key = key_generate()
    position = 10
    replacement = "A" if key[position] != "A" else "B"
    mistyped = key[:position] + replacement + key[position + 1 :]
    assert not key_is_well_formed(mistyped)
    assert not key_is_well_formed(key[:-1])
    assert not key_is_well_formed("sk-" + key[5:])


@pytest.mark.django_db
def test_database_holds_only_the_digest() -> None:
    api_key = ApiKeyFactory()
    plaintext = api_key.plaintext
    row = ApiKey.objects.values().get(pk=api_key.pk)
    assert row["digest"] == key_digest(plaintext)
    assert plaintext not in json.dumps(row, default=str)
    assert plaintext[len(api_key.prefix) :] not in json.dumps(row, default=str)


@pytest.mark.django_db(transaction=True)
def test_plaintext_appears_once_and_never_in_database_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, client: Client, default_model
) -> None:
    """ADVERSARIAL 1: create a key, use it, then search the database, logs and responses."""
    caplog.set_level(logging.DEBUG)
    out = io.StringIO()
    call_command("createkey", "--email", "owner@example.com", stdout=out, stderr=io.StringIO())
    printed = out.getvalue().strip().splitlines()
    key = printed[-1]
    assert printed.count(key) == 1
    response = client.post(
        "/v1/embeddings",
        data=json.dumps({"input": "hello"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert response.status_code == 200
    assert key not in response.content.decode()
    assert key not in caplog.text
    # A full dump of every table: the key is nowhere, only its digest.
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    assert key not in dump.getvalue()
    assert key_digest(key) in dump.getvalue()
    with connection.cursor() as cursor:
        cursor.execute("SELECT digest, prefix FROM billing_apikey")
        rows = cursor.fetchall()
    assert all(key not in "".join(row) for row in rows)


@pytest.mark.django_db
def test_tampered_checksum_is_refused_without_a_database_query(
    client: Client, django_assert_num_queries
) -> None:
    """ADVERSARIAL 2: a valid prefix and a wrong checksum never reach the database."""
    key = ApiKeyFactory().plaintext
    tampered = key[:-1] + ("x" if key[-1] != "x" else "y")
    with django_assert_num_queries(0):
        response = client.post(
            "/v1/embeddings",
            data=json.dumps({"input": "hello"}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {tampered}",
        )
    assert response.status_code == 401
    assert_error_envelope(response.json(), "AUTH_INVALID_API_KEY")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_revoked_key_is_refused_at_once(post_embeddings, api_key) -> None:
    assert post_embeddings({"input": "hello"}).status_code == 200
    api_key_revoke(api_key=api_key)
    response = post_embeddings({"input": "hello"})
    assert response.status_code == 401
    assert_error_envelope(response.json(), "AUTH_INVALID_API_KEY")


def test_inactive_user_keys_are_refused(post_embeddings, api_key) -> None:
    api_key.user.is_active = False
    api_key.user.save()
    assert post_embeddings({"input": "hello"}).status_code == 401


def test_well_formed_but_unknown_key_is_refused(post_embeddings) -> None:
    response = post_embeddings({"input": "hello"}, key=key_generate())
    assert response.status_code == 401
    assert_error_envelope(response.json(), "AUTH_INVALID_API_KEY")


@pytest.mark.django_db
def test_key_in_query_string_or_body_is_ignored(client: Client, default_model) -> None:
    """ADVERSARIAL 2: query-string keys (and keys in the body) do not authenticate."""
    key = ApiKeyFactory().plaintext
    for url in (f"/v1/embeddings?api_key={key}", f"/v1/embeddings?key={key}&token={key}"):
        response = client.post(
            url, data=json.dumps({"input": "hi", "api_key": key}), content_type="application/json"
        )
        assert response.status_code == 401
        assert_error_envelope(response.json(), "AUTH_MISSING_API_KEY")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("", "AUTH_MISSING_API_KEY"),
        ("Basic dXNlcjpwYXNz", "AUTH_INVALID_FORMAT"),
        ("Bearer", "AUTH_INVALID_FORMAT"),
        ("Bearer a b", "AUTH_INVALID_FORMAT"),
        ("Bearer not-a-key", "AUTH_INVALID_API_KEY"),
        ("Bearer None", "AUTH_INVALID_API_KEY"),
    ],
)
def test_malformed_authorization_headers(
    client: Client, default_model, header: str, code: str
) -> None:
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.post(
        "/v1/embeddings", data=json.dumps({"input": "hi"}), content_type="application/json", **extra
    )
    assert response.status_code == 401
    assert_error_envelope(response.json(), code)


def test_last_used_is_recorded(post_embeddings, api_key) -> None:
    assert api_key.last_used_at is None
    post_embeddings({"input": "hello"})
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None


@pytest.mark.django_db
def test_a_user_owns_many_keys_each_with_its_own_name() -> None:
    user = UserFactory()
    first = ApiKeyFactory(user=user, name="laptop")
    second = ApiKeyFactory(user=user, name="ci")
    assert first.plaintext != second.plaintext
    assert set(user.api_keys.values_list("name", flat=True)) == {"laptop", "ci"}


@pytest.mark.e2e  # starts a process of its own
@pytest.mark.django_db(transaction=True)
def test_createkey_prints_only_the_key_on_the_last_line(tmp_path: Path) -> None:
    """The operator CLI, run as a process: the last stdout line is a usable key."""
    env_db = tmp_path / "db"
    env = {"DATA_DIR": str(env_db), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    result = subprocess.run(
        [sys.executable, "manage.py", "createkey", "--email", "ops@example.com", "--name", "ops"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    last = result.stdout.strip().splitlines()[-1]
    assert key_is_well_formed(last)
    assert result.stdout.strip() == last
    again = subprocess.run(
        [sys.executable, "manage.py", "createkey", "--email", "ops@example.com"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert again.stdout.strip().splitlines()[-1] != last  # same user, a second key
    bad = subprocess.run(
        [sys.executable, "manage.py", "createkey", "--email", "not-an-email"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_a_key_revoked_by_another_process_is_refused_within_the_cache_time(
    post_embeddings, api_key, settings, monkeypatch
) -> None:
    """ADVERSARIAL 2's "within seconds": the cache never serves a revoked key longer than
    KEY_CACHE_SECONDS (here 5 s) — another process's revocation is a bare database update."""
    from django.utils import timezone

    from billing.models import ApiKey
    from metering import selectors
    from tests.clock import FakeClock

    clock = FakeClock()
    monkeypatch.setattr(selectors._key_cache, "clock", clock)
    settings.KEY_CACHE_SECONDS = 5
    assert post_embeddings({"input": "hello"}).status_code == 200
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    clock.advance(4.5)
    assert post_embeddings({"input": "hello"}).status_code == 200  # still cached here
    clock.advance(1)
    assert post_embeddings({"input": "hello"}).status_code == 401
