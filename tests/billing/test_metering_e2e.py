"""Metering across real processes: gunicorn gateways on Postgres (and SQLite) sharing a Redis.

ADVERSARIAL rows 4, 5, 7, 16 and 17, and the issue's four-process acceptance, each as a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.infra import Gateway, RedisServer

pytestmark = pytest.mark.e2e


def create_key(gateway: Gateway, *args: str) -> str:
    result = gateway.manage("createkey", "--email", "load@example.com", *args)
    return result.stdout.strip().splitlines()[-1]


def embed(url: str, key: str, body: dict) -> requests.Response:
    return requests.post(
        f"{url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


def fire(url: str, key: str, bodies: list[dict]) -> list[requests.Response]:
    """Send all bodies at once (a barrier releases every thread together)."""
    barrier = threading.Barrier(len(bodies))

    def post(body: dict) -> requests.Response:
        barrier.wait()
        return embed(url, key, body)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(post, bodies))


def key_state(gateway: Gateway, key: str) -> dict:
    """The key's balance and usage rows, read straight from the gateway's database."""
    script = (
        "import json; from metering.selectors import api_key_get_active; "
        "from billing.models import UsageRecord; "
        f"k = api_key_get_active(key={key!r}); "
        "rows = list(UsageRecord.objects.filter(api_key=k).values('status','charged_tokens','http_status','request_id')); "
        "print(json.dumps({'balance': k.balance, 'rows': rows}))"
    )
    return json.loads(gateway.manage("shell", "-c", script).stdout.strip().splitlines()[-1])


def assert_ledger_ok(gateway: Gateway) -> None:
    result = gateway.manage("ledger_check", check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
def test_fifty_parallel_requests_on_a_balance_for_exactly_ten(
    request, gateways, redis_server, tmp_path, database
) -> None:
    """ADVERSARIAL 4: exactly 10 served, 40 refused with 403, balance 0 and never negative."""
    env = {"REDIS_URL": redis_server.url}
    if database == "postgres":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    gateway = Gateway(tmp_path / "gw", workers=2, threads=32, env=env).start()
    gateways.append(gateway)
    probe = create_key(gateway, "--tokens", "1000")
    cost = embed(gateway.url, probe, {"input": "hello"}).json()["usage"]["total_tokens"]
    key = create_key(gateway, "--tokens", str(10 * cost), "--concurrency", "100")

    responses = fire(gateway.url, key, [{"input": "hello"}] * 50)

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 10 + [403] * 40
    assert {r.json()["code"] for r in responses if r.status_code == 403} == {
        "AUTHZ_INSUFFICIENT_BALANCE"
    }
    state = key_state(gateway, key)
    assert state["balance"] == 0
    served = [row for row in state["rows"] if row["status"] == "succeeded"]
    assert len(served) == 10 and all(row["charged_tokens"] == cost for row in served)
    assert_ledger_ok(gateway)


def test_mixed_sizes_near_the_balance_never_overspend(
    gateways, redis_server, postgres_url, tmp_path
) -> None:
    """ADVERSARIAL 5: total charged ≤ balance, and each charge equals the usage sent back."""
    gateway = Gateway(
        tmp_path / "gw",
        workers=2,
        threads=32,
        env={"REDIS_URL": redis_server.url, "DATABASE_URL": postgres_url},
    ).start()
    gateways.append(gateway)
    balance = 400
    key = create_key(gateway, "--tokens", str(balance), "--concurrency", "100")
    bodies = [{"input": ["word " * (5 + (i * 7) % 60)] * (1 + i % 3)} for i in range(40)]

    responses = fire(gateway.url, key, bodies)

    assert {r.status_code for r in responses} <= {200, 403}
    charged = {
        r.headers["X-Request-ID"]: r.json()["usage"]["total_tokens"]
        for r in responses
        if r.status_code == 200
    }
    assert 0 < sum(charged.values()) <= balance
    state = key_state(gateway, key)
    assert state["balance"] == balance - sum(charged.values()) >= 0
    rows = {row["request_id"]: row for row in state["rows"] if row["status"] == "succeeded"}
    assert {rid: row["charged_tokens"] for rid, row in rows.items()} == charged
    assert_ledger_ok(gateway)


def test_four_gateway_processes_share_one_limit(
    gateways, redis_server, postgres_url, tmp_path
) -> None:
    """Four processes, one Redis: 60 concurrent requests on RPM 25 → exactly 25 served (ADVERSARIAL 17),
    the rest 429 with Retry-After and rate-limit headers; the same for TPM; an oversize request → 400."""
    gateway = Gateway(
        tmp_path / "gw",
        workers=4,
        threads=16,
        env={"REDIS_URL": redis_server.url, "DATABASE_URL": postgres_url},
    ).start()
    gateways.append(gateway)

    rpm_key = create_key(gateway, "--tokens", "100000", "--rpm", "25", "--concurrency", "100")
    responses = fire(gateway.url, rpm_key, [{"input": "hello"}] * 60)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 25 and codes.count(429) == 35
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["code"] == "RATE_REQUEST_LIMIT_EXCEEDED"
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-limit-requests"] == "25"

    cost = responses[codes.index(200)].json()["usage"]["total_tokens"]
    tpm_key = create_key(
        gateway, "--tokens", "100000", "--tpm", str(25 * cost), "--concurrency", "100"
    )
    responses = fire(gateway.url, tpm_key, [{"input": "hello"}] * 60)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 25 and codes.count(429) == 35
    assert {r.json()["code"] for r in responses if r.status_code == 429} == {
        "RATE_TOKEN_LIMIT_EXCEEDED"
    }

    # Larger than the whole TPM: 400 once counted. (While the key's minute is already full, as
    # tpm_key's is, it is refused 429 before it is counted, and gets the 400 when it retries.)
    fresh_key = create_key(
        gateway, "--tokens", "100000", "--tpm", str(25 * cost), "--concurrency", "100"
    )
    oversize = embed(gateway.url, fresh_key, {"input": "word " * 100})
    assert oversize.status_code == 400
    assert oversize.json()["code"] == "INPUT_TOKEN_LIMIT_EXCEEDED"
    assert_ledger_ok(gateway)


def test_a_gateway_killed_mid_request_leaves_no_unsettled_debit(
    gateways, postgres_url, tmp_path
) -> None:
    """ADVERSARIAL 7: kill -9 the worker while it serves; the sweeper refunds the debit."""
    gateway = Gateway(
        tmp_path / "gw", workers=1, threads=4, env={"DATABASE_URL": postgres_url}
    ).start()
    gateways.append(gateway)
    key = create_key(gateway, "--tokens", "10000000")
    big = {"input": ["a long sentence about many different things " * 5] * 2048}

    def post() -> None:
        with contextlib.suppress(requests.RequestException):  # the worker dies under it
            embed(gateway.url, key, big)

    sender = threading.Thread(target=post)
    sender.start()
    deadline = time.monotonic() + 60
    while not any(row["status"] == "pending" for row in key_state(gateway, key)["rows"]):
        assert time.monotonic() < deadline, "the request never reached its debit"
        time.sleep(0.2)
    for pid in gateway.worker_pids():
        os.kill(pid, signal.SIGKILL)
    sender.join(timeout=60)

    state = key_state(gateway, key)
    assert [row["status"] for row in state["rows"]] == ["pending"]
    assert state["balance"] < 10_000_000
    assert_ledger_ok(gateway)  # the debit is on the ledger, with its usage row

    swept = gateway.manage("sweep_usage", "--older-than", "0")
    assert "refunded 1" in swept.stdout
    state = key_state(gateway, key)
    assert state["balance"] == 10_000_000
    assert [row["status"] for row in state["rows"]] == ["abandoned"]
    assert_ledger_ok(gateway)


def test_redis_stopped_while_serving(gateways, postgres_url, tmp_path) -> None:
    """ADVERSARIAL 16: billing stays exact, the limiter falls back to per-process limits, no 500."""
    redis = RedisServer(tmp_path / "redis").start()
    gateway = Gateway(
        tmp_path / "gw",
        workers=2,
        threads=8,
        env={"REDIS_URL": redis.url, "DATABASE_URL": postgres_url},
    ).start()
    gateways.append(gateway)
    key = create_key(gateway, "--tokens", "100000", "--rpm", "1000")
    before = embed(gateway.url, key, {"input": "hello"})
    assert before.status_code == 200
    redis.stop()
    during = [embed(gateway.url, key, {"input": "hello"}) for _ in range(10)]
    assert [r.status_code for r in during] == [200] * 10
    assert all("x-ratelimit-remaining-requests" in r.headers for r in during)
    redis.start()
    # Back on Redis once the limiter retries it: the restarted server (which keeps nothing)
    # holds the key's window again. Every request meanwhile is served and charged.
    import redis as redis_py

    back = redis_py.Redis.from_url(redis.url)
    after = []
    deadline = time.monotonic() + 30
    while not back.keys("rl:*"):  # the limiter's keys (metering.limiter.RedisLimiter)
        assert time.monotonic() < deadline, "the limiter never went back to Redis"
        after.append(embed(gateway.url, key, {"input": "hello"}))
    back.close()
    assert after and [r.status_code for r in after] == [200] * len(after)
    cost = before.json()["usage"]["total_tokens"]
    assert key_state(gateway, key)["balance"] == 100000 - (11 + len(after)) * cost
    assert "Traceback" not in gateway.log.read_text()
    assert_ledger_ok(gateway)
    redis.stop()


def test_sqlite_default_writes_refusals_in_the_background(gateways, tmp_path: Path) -> None:
    """The embedded default (SQLite, no Redis): refused requests reach the usage table in a batch."""
    gateway = Gateway(tmp_path / "gw", workers=1, threads=8, env={}).start()
    gateways.append(gateway)
    key = create_key(gateway, "--tokens", "5")
    refused = [embed(gateway.url, key, {"input": "x" * 50}) for _ in range(3)]
    assert [r.status_code for r in refused] == [403] * 3
    deadline = time.monotonic() + 10
    while len(key_state(gateway, key)["rows"]) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert {row["http_status"] for row in key_state(gateway, key)["rows"]} == {403}


def test_a_key_whose_row_is_locked_holds_up_only_its_own_writes(
    gateways, postgres_url, tmp_path
) -> None:
    """Group commit on Postgres: while one key's row is locked (a long transaction elsewhere),
    that key's requests wait, and another key's requests are still served at once."""
    import psycopg

    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=8,
        env={
            "DATABASE_URL": postgres_url,
            "DATABASE_LOCK_TIMEOUT_MS": "120000",
            "DATABASE_STATEMENT_TIMEOUT_MS": "120000",
        },
    ).start()
    gateways.append(gateway)
    hot, cold = (create_key(gateway, "--tokens", "100000") for _ in range(2))
    for key in (hot, cold):  # authenticated, cached and touched: the next writes are debits
        assert embed(gateway.url, key, {"input": "warm"}).status_code == 200
    with psycopg.connect(postgres_url) as admin:
        ids = {row[0]: row[1] for row in admin.execute("SELECT prefix, id FROM billing_apikey")}
    hot_id = next(i for prefix, i in ids.items() if hot.startswith(prefix))
    cold_id = next(i for prefix, i in ids.items() if cold.startswith(prefix))
    assert hot_id % 4 != cold_id % 4, "the two keys must fall in different lanes"

    locker = psycopg.connect(postgres_url)
    locker.execute("SELECT balance FROM billing_apikey WHERE id = %s FOR UPDATE", [hot_id])
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(embed, gateway.url, hot, {"input": "hot"})
        with psycopg.connect(postgres_url, autocommit=True) as watcher:
            deadline = time.monotonic() + 60
            while not watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "the hot key's debit never reached its row"
                time.sleep(0.01)
        served = embed(gateway.url, cold, {"input": "cold"})
        assert served.status_code == 200  # while the hot key's row is still locked
        assert not waiting.done()
        locker.rollback()
        locker.close()
        assert waiting.result().status_code == 200
    assert_ledger_ok(gateway)
