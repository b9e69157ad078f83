"""Faults in the middle of a request's life, as users and the ledger see them: gunicorn gateways
on Postgres and a shared Redis, with Postgres dropping connections under load and a worker
process killed while it serves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from billing.models import UsageRecord
from tests.infra import (
    Gateway,
    create_key,
    postgres_key_state,
    postgres_query,
    postgres_terminate_connections,
)

pytestmark = pytest.mark.e2e

# What a fault may answer: the lifecycle's coded 503s and its 504.
FAULT_CODES = {503: {"SERVICE_UNAVAILABLE", "SERVICE_OVERLOADED"}, 504: {"SERVICE_TIMEOUT"}}


def embed(gateway: Gateway, key: str, body: object, timeout: float = 60) -> requests.Response:
    return requests.post(
        f"{gateway.url}/v1/embeddings",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout,
    )


def setting(gateway: Gateway, name: str) -> float:
    """A setting as the gateway's processes compute it from their environment."""
    script = f"from django.conf import settings; print(settings.{name})"
    return float(gateway.manage("shell", "-c", script).stdout.strip().splitlines()[-1])


def test_postgres_dropping_connections_under_load_costs_only_what_was_served(
    gateways: list[Gateway], redis_server, postgres_url: str, tmp_path: Path
) -> None:
    """Postgres terminates the gateway's connections again and again while 24 clients embed:
    no 500, every error a coded 503/504, nothing left pending (no sweeper needed), the balance
    down by exactly the usage of the 200s, the ledger balanced, and the gateway serves after."""
    gateway = Gateway(
        tmp_path / "gw",
        workers=2,
        threads=16,
        env={
            "DATABASE_URL": postgres_url,
            "REDIS_URL": redis_server.url,
            # Nothing may be left for the sweeper to mend: it does not run within this test.
            "USAGE_ABANDONED_AFTER_SECONDS": "3600",
        },
    ).start()
    gateways.append(gateway)
    email = "terminated@example.com"
    start = 100_000_000
    key = create_key(
        gateway, "--tokens", str(start), "--concurrency", "500", "--rpm", "100000", "--tpm",
        "1000000000", email=email,
    )  # fmt: skip

    answers: list[requests.Response] = []
    failures: list[BaseException] = []
    progress = threading.Condition()
    stop = threading.Event()

    def client(index: int) -> None:
        turn = 0
        while not stop.is_set():
            body = {"input": [f"client {index} turn {turn} " * 8] * (1 + turn % 8)}
            try:
                response = embed(gateway, key, body)
            except requests.RequestException as exc:
                failures.append(exc)
                return
            with progress:
                answers.append(response)
                progress.notify_all()
            turn += 1

    def answered_more_than(count: int) -> None:
        with progress:
            assert progress.wait_for(lambda: len(answers) > count, timeout=60), "load stalled"

    terminated = 0
    with ThreadPoolExecutor(max_workers=24) as pool:
        clients = [pool.submit(client, index) for index in range(24)]
        try:
            # Each round waits for fresh answers, so requests are in flight at every drop.
            for _ in range(25):
                answered_more_than(len(answers) + 3)
                terminated += postgres_terminate_connections(postgres_url)
        finally:
            stop.set()
        for future in clients:
            future.result()

    assert failures == []
    assert terminated > 0
    statuses = [r.status_code for r in answers]
    print(f"{statuses.count(200)} served, {len(statuses) - statuses.count(200)} refused")
    assert 500 not in statuses
    errors = [r for r in answers if r.status_code != 200]
    assert {r.status_code for r in errors} <= set(FAULT_CODES)
    assert [
        (r.status_code, r.json().get("code"))
        for r in errors
        if r.json().get("code") not in FAULT_CODES[r.status_code]
    ] == []
    served = sum(r.json()["usage"]["total_tokens"] for r in answers if r.status_code == 200)
    state = postgres_key_state(postgres_url, email)
    pending = postgres_query(
        postgres_url,
        f"SELECT request_id FROM {UsageRecord._meta.db_table} WHERE status = 'pending'",  # noqa: S608
    )
    answered = {r.headers.get("X-Request-ID"): r for r in answers}
    assert [
        (request_id, answered[request_id].status_code, answered[request_id].text[:200])
        if request_id in answered
        else (request_id, "no answer")
        for (request_id,) in pending
    ] == []
    assert state["balance"] == start - served
    ledger = gateway.manage("ledger_check", check=False)
    assert ledger.returncode == 0, ledger.stderr

    after = [embed(gateway, key, {"input": "after the storm"}) for _ in range(8)]
    assert [r.status_code for r in after] == [200] * 8


def test_a_killed_worker_gives_back_its_slots_and_debits_within_about_a_deadline(
    gateways: list[Gateway], redis_server, postgres_url: str, tmp_path: Path
) -> None:
    """kill -9 of a worker serving both requests a concurrency-2 key may have in flight: another
    gateway on the same Redis serves the key again once the slots' lease runs out (the deadline
    plus a margin, not the old 300 s), and the sweeper of a live process refunds both debits."""
    env = {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_server.url,
        "RATE_LIMIT_REDIS_URL": redis_server.url,
        "REQUEST_TIMEOUT_SECONDS": "8",
        "USAGE_SWEEP_INTERVAL_SECONDS": "1",
        # Two big requests are queued together in one process.
        "EMBEDDINGS_MAX_QUEUED_TOKENS": "1000000",
    }
    doomed = Gateway(tmp_path / "doomed", workers=1, threads=4, env=env).start()
    gateways.append(doomed)
    survivor = Gateway(tmp_path / "survivor", workers=1, threads=4, env=env).start()
    gateways.append(survivor)
    lease = setting(survivor, "CONCURRENCY_LEASE_SECONDS")
    abandoned_after = setting(survivor, "USAGE_ABANDONED_AFTER_SECONDS")
    assert lease < 60 and abandoned_after < 60  # both follow the 8 s deadline
    email = "killed@example.com"
    start = 100_000_000
    key = create_key(doomed, "--tokens", str(start), "--concurrency", "2", email=email)
    long_body = {"input": ["a long sentence about many different things " * 5] * 2048}

    def long_request() -> None:
        with contextlib.suppress(requests.RequestException):  # its worker dies under it
            embed(doomed, key, long_body)

    senders = [threading.Thread(target=long_request) for _ in range(2)]
    for sender in senders:
        sender.start()
    in_flight_by = time.monotonic() + 30
    while postgres_key_state(postgres_url, email)["statuses"].get("pending", 0) < 2:  # type: ignore[attr-defined]
        assert time.monotonic() < in_flight_by, "the two requests never reached their debits"
    for pid in doomed.worker_pids():
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for sender in senders:
        sender.join(timeout=60)

    polls: list[requests.Response] = []
    while not polls or polls[-1].status_code != 200:
        assert time.monotonic() < killed_at + lease + 15, (
            f"the key is still refused {lease + 15:.0f}s after the kill: "
            f"{[r.status_code for r in polls[-3:]]}"
        )
        if polls:
            threading.Event().wait(0.5)
        polls.append(embed(survivor, key, {"input": "hello"}))
    refused = [(r.status_code, r.json()["code"]) for r in polls[:-1]]
    assert set(refused) <= {(429, "RATE_CONCURRENCY_LIMIT_EXCEEDED")}
    served = polls[-1].json()["usage"]["total_tokens"]
    print(f"served again {time.monotonic() - killed_at:.1f}s after the kill (lease {lease:.0f}s)")

    while (state := postgres_key_state(postgres_url, email))["statuses"].get("pending", 0):  # type: ignore[attr-defined]
        assert time.monotonic() < killed_at + abandoned_after + 15, (
            f"debits still pending {abandoned_after + 15:.0f}s after the kill: {state}"
        )
        threading.Event().wait(0.5)
    print(f"refunded {time.monotonic() - killed_at:.1f}s after the kill")
    statuses = state["statuses"]
    assert (statuses.get("abandoned"), statuses.get("succeeded")) == (2, 1)  # type: ignore[attr-defined]
    assert state["balance"] == start - served
    ledger = survivor.manage("ledger_check", check=False)
    assert ledger.returncode == 0, ledger.stderr
    doomed.wait_ready()
    assert embed(doomed, key, {"input": "the restarted worker serves"}).status_code == 200
