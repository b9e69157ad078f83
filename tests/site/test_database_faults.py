"""The gateway's Postgres connections, seen from outside: their timeouts, how many the gunicorn
processes hold under load, and what users get when Postgres drops them or a lock is held.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests

from billing.models import ApiKey, User
from tests.infra import (
    Gateway,
    create_key,
    postgres_connections,
    postgres_key_state,
    postgres_terminate_connections,
)

pytestmark = pytest.mark.e2e

SHOW_TIMEOUTS = (
    "from django.db import connection\n"
    "with connection.cursor() as cursor:\n"
    "    for name in ('statement_timeout', 'lock_timeout'):\n"
    "        cursor.execute(f'SHOW {name}')\n"
    "        print(name, cursor.fetchone()[0])\n"
)


def shown_timeouts(gateway: Gateway) -> dict[str, str]:
    out = gateway.manage("shell", "-c", SHOW_TIMEOUTS).stdout
    return dict(line.split() for line in out.splitlines() if line.endswith(("s", "ms")))


def embed(gateway: Gateway, key: str, body: object) -> requests.Response:
    return requests.post(
        f"{gateway.url}/v1/embeddings",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_every_connection_carries_the_statement_and_lock_timeouts(
    postgres_url: str, tmp_path: Path
) -> None:
    defaults = Gateway(
        tmp_path / "defaults", workers=1, threads=1, env={"DATABASE_URL": postgres_url}
    )
    defaults.manage("migrate", "--noinput", "-v0")
    assert shown_timeouts(defaults) == {"statement_timeout": "30s", "lock_timeout": "5s"}

    tuned = Gateway(
        tmp_path / "tuned",
        workers=1,
        threads=1,
        env={
            "DATABASE_URL": postgres_url,
            "DATABASE_STATEMENT_TIMEOUT_MS": "1500",
            "DATABASE_LOCK_TIMEOUT_MS": "250",
        },
    )
    assert shown_timeouts(tuned) == {"statement_timeout": "1500ms", "lock_timeout": "250ms"}


def test_four_processes_of_sixteen_threads_hold_at_most_four_pools(
    gateways: list[Gateway], redis_server, postgres_url: str, tmp_path: Path
) -> None:
    """64 request threads, a pool of 4 per process: Postgres never sees more than 16 of the
    gateway's connections, and every request is still served (threads wait for a connection)."""
    max_size = 4
    gateway = Gateway(
        tmp_path / "gw",
        workers=4,
        threads=16,
        env={
            "DATABASE_URL": postgres_url,
            "REDIS_URL": redis_server.url,
            "DATABASE_POOL_MAX_SIZE": str(max_size),
            # Every request reads its key and model from the database.
            "KEY_CACHE_SECONDS": "0",
            "MODEL_CACHE_SECONDS": "0",
        },
    ).start()
    gateways.append(gateway)
    key = create_key(
        gateway, "--tokens", "100000000", "--concurrency", "500", "--rpm", "100000", "--tpm",
        "1000000000", email="pool@example.com",
    )  # fmt: skip

    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, postgres_connections(postgres_url))

    def user(index: int) -> list[int]:
        statuses = []
        for turn in range(6):
            if turn % 2:
                response = requests.get(f"{gateway.url}/v1/models", timeout=60)
            else:
                response = embed(gateway, key, {"input": [f"text {index} {turn}"] * 4})
            statuses.append(response.status_code)
        return statuses

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(max_workers=64) as pool:
            statuses = [code for codes in pool.map(user, range(64)) for code in codes]
    finally:
        done.set()
        sampler.join()

    print(f"peak gateway connections: {peak} (4 processes x pool max {max_size})")
    assert statuses == [200] * len(statuses)
    assert 0 < peak <= 4 * max_size


def test_pages_answer_after_postgres_drops_every_connection(
    gateways: list[Gateway], postgres_url: str, tmp_path: Path
) -> None:
    """A Postgres restart or failover drops the pooled connections: the next requests reconnect
    instead of failing with a 500."""
    gateway = Gateway(
        tmp_path / "gw",
        workers=2,
        threads=4,
        env={"DATABASE_URL": postgres_url, "KEY_CACHE_SECONDS": "0", "MODEL_CACHE_SECONDS": "0"},
    ).start()
    gateways.append(gateway)
    email = "dropped@example.com"
    key = create_key(gateway, "--tokens", "1000000", email=email)
    gateway.manage(
        "shell",
        "-c",
        f"from billing.models import User; u = User.objects.get(email={email!r}); "
        "u.set_password('a long pass phrase'); u.save()",
    )
    browser = requests.Session()
    browser.get(f"{gateway.url}/accounts/login/", timeout=30)
    login = browser.post(
        f"{gateway.url}/accounts/login/",
        data={
            "username": email,
            "password": "a long pass phrase",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        },
        headers={"Referer": f"{gateway.url}/accounts/login/"},
        timeout=30,
    )
    assert login.url.endswith("/dashboard/"), login.text[:500]

    def visit() -> list[tuple[str, int]]:
        return [
            ("dashboard", browser.get(f"{gateway.url}/dashboard/", timeout=30).status_code),
            ("models", requests.get(f"{gateway.url}/v1/models", timeout=30).status_code),
            ("embeddings", embed(gateway, key, {"input": "hello"}).status_code),
            ("ready", requests.get(f"{gateway.url}/ready", timeout=30).status_code),
        ]

    for _ in range(4):  # both processes hold connections in their pools
        assert {status for _, status in visit()} == {200}
    assert postgres_terminate_connections(postgres_url) > 0

    after = [answer for _ in range(8) for answer in visit()]

    assert [answer for answer in after if answer[1] != 200] == []
    assert "Traceback" not in gateway.log.read_text()


def test_a_key_locked_by_a_stuck_transaction_is_answered_within_the_lock_timeout(
    gateways: list[Gateway], postgres_url: str, tmp_path: Path
) -> None:
    """A transaction that holds the key's row (a stuck admin session, a long migration) makes
    its requests wait at most DATABASE_LOCK_TIMEOUT_MS: a coded 503, nothing charged."""
    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=4,
        env={"DATABASE_URL": postgres_url, "DATABASE_LOCK_TIMEOUT_MS": "300"},
    ).start()
    gateways.append(gateway)
    email = "locked@example.com"
    key = create_key(gateway, "--tokens", "1000000", email=email)
    assert embed(gateway, key, {"input": "warm"}).status_code == 200
    before = postgres_key_state(postgres_url, email)["balance"]

    with psycopg.connect(postgres_url) as stuck:
        stuck.execute(
            f"SELECT k.id FROM {ApiKey._meta.db_table} k"  # noqa: S608 - table names
            f" JOIN {User._meta.db_table} u ON u.id = k.user_id WHERE u.email = %s FOR UPDATE",
            (email,),
        )
        during = [embed(gateway, key, {"input": "hello"}) for _ in range(3)]
        stuck.rollback()

    assert [r.status_code for r in during] == [503] * 3
    assert {r.json()["code"] for r in during} == {"SERVICE_UNAVAILABLE"}
    served = embed(gateway, key, {"input": "hello"})
    assert served.status_code == 200
    state = postgres_key_state(postgres_url, email)
    assert state["balance"] == before - served.json()["usage"]["total_tokens"]  # type: ignore[operator]
    assert state["statuses"].get("pending", 0) == 0  # type: ignore[attr-defined]
    assert gateway.manage("ledger_check", check=False).returncode == 0
