"""ADVERSARIAL 27: 200 concurrent connections to one gateway process. What the model cannot take
is shed at once with a coded 503 and Retry-After, nothing is charged for it, and nothing waits
past its deadline in a queue."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.infra import Gateway, create_key

pytestmark = pytest.mark.e2e

CLIENTS = 200


def test_two_hundred_concurrent_clients_on_one_process_are_served_or_shed_with_a_code(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=16,
        env={"EMBEDDINGS_MAX_QUEUED_TOKENS": "2048", "REQUEST_TIMEOUT_SECONDS": "30"},
    ).start()
    gateways.append(gateway)
    start = 10_000_000
    key = create_key(
        gateway, "--tokens", str(start), "--concurrency", "1000", "--rpm", "100000",
        email="crowd@example.com",
    )  # fmt: skip
    text = "Overload is shed at the door, not queued for minutes behind other work. " * 4

    def client(index: int) -> requests.Response:
        return requests.post(
            f"{gateway.url}/v1/embeddings",
            json={"input": [f"{index} {text}"] * 16},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        answers = list(pool.map(client, range(CLIENTS)))

    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 503, 504}, sorted(set(statuses))
    shed = [answer for answer in answers if answer.status_code == 503]
    assert shed, "a crowd 10x what the queue holds must be shed, not queued"
    for answer in shed:
        assert answer.json()["code"] == "SERVICE_OVERLOADED"
        assert int(answer.headers["Retry-After"]) >= 1
    for answer in (a for a in answers if a.status_code == 504):
        assert answer.json()["code"] == "SERVICE_TIMEOUT"
    assert statuses.count(200) > 0
    served = sum(a.json()["usage"]["total_tokens"] for a in answers if a.status_code == 200)
    balance = gateway.manage(
        "shell", "-c",
        "from billing.models import ApiKey; "
        "print(ApiKey.objects.get(user__email='crowd@example.com').balance)",
    ).stdout.split()[-1]  # fmt: skip
    assert int(balance) == start - served
    assert gateway.manage("ledger_check", check=False).returncode == 0
