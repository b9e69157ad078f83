"""Issue 16.3 under concurrency: moves of tokens between one user's keys, sent at once to two
gunicorn processes on Postgres, never move more than a key holds, never deadlock when they go
in opposite directions, and keep every balance equal to its ledger (`ledger_check`)."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from billing.models import ApiKey, LedgerEntry
from tests.infra import Gateway, postgres_query

pytestmark = pytest.mark.e2e

# The user, three keys (a and b funded by an operator's grant, c empty) and a signed-in session,
# made in the gateway's database by the product's own services.
_SETUP = """
from importlib import import_module
from django.conf import settings
from billing.models import User
from billing.services import api_key_create
user = User.objects.create_user(email="mover@example.com", password="a long passphrase 16")
a, _ = api_key_create(user=user, name="a", tokens=1000)
b, _ = api_key_create(user=user, name="b", tokens=1000)
c, _ = api_key_create(user=user, name="c", tokens=0)
session = import_module(settings.SESSION_ENGINE).SessionStore()
session["_auth_user_id"] = str(user.pk)
session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
session["_auth_user_hash"] = user.get_session_auth_hash()
session.create()
print(a.pk, b.pk, c.pk, session.session_key)
"""


def test_concurrent_moves_from_one_key_never_move_more_than_it_holds(
    gateways: list[Gateway], tmp_path: Path, postgres_url: str
) -> None:
    gateway = Gateway(
        tmp_path / "gw",
        workers=2,
        threads=8,
        env={
            "DATABASE_URL": postgres_url,
            "EMBEDDINGS_WARM_ON_START": "false",
            "IP_RATE_LIMIT_FORMS": "10000/m",
        },
    ).start(wait_ready=False)
    gateways.append(gateway)
    a, b, c, session_key = gateway.manage("shell", "-c", _SETUP).stdout.split()[-4:]
    csrf = secrets.token_hex(16)  # a 32-character secret, sent as cookie and header

    def move(source: str, destination: str, tokens: int) -> int:
        with requests.Session() as session:
            session.cookies.update({"sessionid": session_key, "csrftoken": csrf})
            return session.post(
                f"{gateway.url}/dashboard/keys/{source}/move",
                data={"destination": destination, "tokens": str(tokens)},
                headers={"X-CSRFToken": csrf},
                allow_redirects=False,
                timeout=60,
            ).status_code

    # Sixteen moves of 150 out of a's 1,000 tokens, to b and to c, all at once: six fit.
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda n: move(a, (b, c)[n % 2], 150), range(16)))
    assert codes == [302] * 16  # each answered (moved, or refused with a message), none a 500

    def balance(key: str) -> int:
        [(tokens,)] = postgres_query(
            postgres_url,
            f"SELECT balance FROM {ApiKey._meta.db_table} WHERE id = %s",  # noqa: S608
            (int(key),),
        )
        return int(tokens)

    def entries(key: str, kind: str) -> list[int]:
        rows = postgres_query(
            postgres_url,
            f"SELECT tokens FROM {LedgerEntry._meta.db_table}"  # noqa: S608 - a table name
            " WHERE api_key_id = %s AND kind = %s",
            (int(key), kind),
        )
        return [int(tokens) for (tokens,) in rows]

    assert entries(a, LedgerEntry.Kind.TRANSFER_OUT) == [-150] * 6
    assert balance(a) == 100
    assert balance(b) + balance(c) == 1000 + 900

    # Moves in opposite directions at once (b to a and a to b) lock both rows in one order, so
    # none waits on the other forever; the tokens between them stay what they were.
    before = balance(a) + balance(b)
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda n: move(a, b, 40) if n % 2 else move(b, a, 70), range(24)))
    assert codes == [302] * 24
    assert balance(a) + balance(b) == before and min(balance(a), balance(b)) >= 0
    for key in (a, b, c):
        moved_out = entries(key, LedgerEntry.Kind.TRANSFER_OUT)
        assert all(tokens < 0 for tokens in moved_out)
    [(net,)] = postgres_query(
        postgres_url,
        f"SELECT COALESCE(SUM(tokens), 0) FROM {LedgerEntry._meta.db_table}"  # noqa: S608
        " WHERE kind IN ('transfer_out', 'transfer_in')",
    )
    assert net == 0  # every debit has its credit
    checked = gateway.manage("ledger_check", check=False)
    assert checked.returncode == 0, checked.stderr
