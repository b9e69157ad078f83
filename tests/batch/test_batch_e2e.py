"""Batch jobs across real processes: gunicorn gateways on Postgres, a Redis broker and real
Celery workers — a 1,000-line job, a worker killed mid-job (ADVERSARIAL 8), cancel mid-job —
and the embedded default (gunicorn on SQLite, no Redis) running the same job on its own threads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.batch.conftest import LocalHttpServer
from tests.billing.test_metering_e2e import assert_ledger_ok, create_key, key_state
from tests.infra import CeleryWorker, Gateway

pytestmark = pytest.mark.e2e

FINAL = {"completed", "failed", "cancelled", "expired"}
WORDS = [
    "batch",
    "jobs",
    "embed",
    "many",
    "lines",
    "on",
    "workers",
    "and",
    "charge",
    "each",
    "line",
    "exactly",
    "once",
]


def make_lines(count: int) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"line-{n}",
            "body": {"input": " ".join(WORDS[(n + i) % len(WORDS)] for i in range(4 + n % 7))},
        }
        for n in range(count)
    ]


class Client:
    def __init__(self, gateway: Gateway, key: str) -> None:
        self.url = gateway.url
        self.headers = {"Authorization": f"Bearer {key}"}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/v1/batch/embeddings", json=body, headers=self.headers, timeout=60
        )
        assert response.status_code == 200, response.text
        return response.json()

    def status(self, job_id: str) -> dict[str, Any]:
        response = requests.get(f"{self.url}/v1/batch/{job_id}", headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        response = requests.delete(
            f"{self.url}/v1/batch/{job_id}", headers=self.headers, timeout=30
        )
        assert response.status_code == 200, response.text
        return response.json()

    def lines(self, job_id: str, kind: str) -> list[dict[str, Any]]:
        response = requests.get(
            f"{self.url}/v1/batch/{job_id}/{kind}", headers=self.headers, timeout=60
        )
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.content.splitlines()]

    def wait(self, job_id: str, until: Any, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status = self.status(job_id)
        while not until(status):
            if time.monotonic() > deadline:
                pytest.fail(f"batch {job_id} did not get there in {timeout}s: {status}")
            time.sleep(0.1)
            status = self.status(job_id)
        return status


def job_row(gateway: Gateway, job_id: str) -> dict[str, Any]:
    """The job's runner bookkeeping and its usage rows, read from the gateway's database."""
    script = (
        "import json; from batch.models import BatchJob; from billing.models import UsageRecord; "
        f"j = BatchJob.objects.get(pk={job_id!r}); "
        f"rows = list(UsageRecord.objects.filter(request_id__startswith={job_id + ':'!r})"
        ".values_list('request_id', 'charged_tokens', 'status')); "
        "print(json.dumps({'runs': j.runs, 'lease': j.lease_token, 'usage': rows}))"
    )
    return json.loads(gateway.manage("shell", "-c", script).stdout.strip().splitlines()[-1])


def assert_charged_once(
    gateway: Gateway, key: str, tokens: int, job_id: str, status: dict[str, Any], output: list
) -> None:
    """Each output line once, the job's tokens = its lines' usage = the ledger's debit."""
    counts = Counter(line["custom_id"] for line in output)
    assert all(n == 1 for n in counts.values()), "a line was output twice"
    usage = sum(line["response"]["body"]["usage"]["total_tokens"] for line in output)
    assert status["stats"]["total_tokens"] == usage
    assert key_state(gateway, key)["balance"] == tokens - usage
    rows = job_row(gateway, job_id)["usage"]
    assert len({row[0] for row in rows}) == len(rows)  # one usage row per chunk
    assert sum(row[1] for row in rows) == usage and {row[2] for row in rows} <= {"succeeded"}
    assert_ledger_ok(gateway)


def start_gateway(tmp_path: Path, gateways: list, env: dict[str, str]) -> Gateway:
    gateway = Gateway(tmp_path / "gw", workers=1, threads=8, env=env).start()
    gateways.append(gateway)
    return gateway


def test_a_thousand_line_job_on_a_celery_worker(
    gateways, redis_server, postgres_url, tmp_path
) -> None:
    """Output lines match the input by custom_id; stats.total_tokens = the lines' usage = the
    debit; the worker delivers the signed webhook."""
    hook = LocalHttpServer().start()
    try:
        env = {
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": postgres_url,
            "BATCH_CHUNK_TOKENS": "2048",
            "BATCH_URL_ALLOWED_HOSTS": hook.host,
        }
        gateway = start_gateway(tmp_path, gateways, env)
        worker = CeleryWorker(tmp_path, env=gateway.env, concurrency=2).start()
        try:
            key = create_key(gateway, "--tokens", "1000000")
            client = Client(gateway, key)
            lines = make_lines(1000)
            created = client.create(
                {"model": "all-MiniLM-L6-v2", "input": lines, "webhook_url": hook.url("/done")}
            )
            status = client.wait(created["batch_id"], lambda s: s["status"] in FINAL)

            assert status["status"] == "completed"
            assert status["stats"]["completed"] == 1000 and status["stats"]["failed"] == 0
            output = client.lines(created["batch_id"], "output")
            assert sorted(line["custom_id"] for line in output) == sorted(
                line["custom_id"] for line in lines
            )
            assert client.lines(created["batch_id"], "errors") == []
            assert_charged_once(gateway, key, 1_000_000, created["batch_id"], status, output)
            assert len(job_row(gateway, created["batch_id"])["usage"]) > 1  # several chunks

            deadline = time.monotonic() + 30
            while not hook.posts and time.monotonic() < deadline:
                time.sleep(0.1)
            [delivery] = hook.posts
            stamp = delivery["headers"]["X-Webhook-Timestamp"]
            digest = hmac.new(
                created["webhook_secret"].encode(),
                f"{stamp}.".encode() + delivery["body"],
                hashlib.sha256,
            ).hexdigest()
            assert delivery["headers"]["X-Webhook-Signature"] == f"v1={digest}"
            assert json.loads(delivery["body"])["stats"] == status["stats"]
        finally:
            worker.stop()
    finally:
        hook.stop()


def test_a_worker_killed_mid_job_resumes_without_charging_a_line_twice(
    gateways, redis_server, postgres_url, tmp_path
) -> None:
    """ADVERSARIAL 8: SIGKILL the worker while it runs the job; a worker started afterwards
    resumes it once the dead one's lease runs out, and the job completes, each line charged once."""
    env = {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": postgres_url,
        "BATCH_CHUNK_TOKENS": "40",
        "BATCH_LEASE_SECONDS": "4",
    }
    gateway = start_gateway(tmp_path, gateways, env)
    key = create_key(gateway, "--tokens", "1000000")
    client = Client(gateway, key)
    first = CeleryWorker(tmp_path / "first", env=gateway.env, concurrency=1)
    (tmp_path / "first").mkdir()
    first.start()
    created = client.create({"input": make_lines(400)})
    job_id = created["batch_id"]
    client.wait(job_id, lambda s: s["stats"]["completed"] >= 20)
    first.stop(signal.SIGKILL)

    killed = client.status(job_id)
    assert killed["status"] == "processing", "the job finished before the worker was killed"
    assert killed["stats"]["completed"] < 400

    (tmp_path / "second").mkdir()
    second = CeleryWorker(tmp_path / "second", env=gateway.env, concurrency=1).start()
    try:
        status = client.wait(job_id, lambda s: s["status"] in FINAL)
    finally:
        second.stop()

    assert status["status"] == "completed"
    assert status["stats"]["completed"] == 400
    output = client.lines(job_id, "output")
    assert {line["custom_id"] for line in output} == {f"line-{n}" for n in range(400)}
    assert_charged_once(gateway, key, 1_000_000, job_id, status, output)
    assert job_row(gateway, job_id)["runs"] >= 2


def test_cancel_mid_job_stops_work_and_charges_only_completed_lines(
    gateways, redis_server, postgres_url, tmp_path
) -> None:
    env = {"REDIS_URL": redis_server.url, "DATABASE_URL": postgres_url, "BATCH_CHUNK_TOKENS": "40"}
    gateway = start_gateway(tmp_path, gateways, env)
    worker = CeleryWorker(tmp_path, env=gateway.env, concurrency=1).start()
    try:
        key = create_key(gateway, "--tokens", "1000000")
        client = Client(gateway, key)
        job_id = client.create({"input": make_lines(400)})["batch_id"]
        client.wait(job_id, lambda s: s["stats"]["completed"] >= 10)

        cancelled = client.cancel(job_id)

        assert cancelled["status"] == "cancelled"
        deadline = time.monotonic() + 60
        while job_row(gateway, job_id)["lease"] and time.monotonic() < deadline:
            time.sleep(0.2)  # the worker notices at its next commit and lets the job go
        assert job_row(gateway, job_id)["lease"] == ""
    finally:
        worker.stop()
    status = client.status(job_id)
    assert status["status"] == "cancelled"
    assert status["stats"] == cancelled["stats"]  # nothing committed after the cancel
    assert 10 <= status["stats"]["completed"] < 400
    output = client.lines(job_id, "output")
    assert len(output) == status["stats"]["completed"]
    assert_charged_once(gateway, key, 1_000_000, job_id, status, output)


def test_the_embedded_default_runs_the_same_job_without_redis(gateways, tmp_path) -> None:
    """`make run` without REDIS_URL: SQLite, no broker; a gateway thread runs the job."""
    gateway = start_gateway(tmp_path, gateways, {"BATCH_CHUNK_TOKENS": "256"})
    key = create_key(gateway, "--tokens", "100000")
    client = Client(gateway, key)
    lines = make_lines(120)
    job_id = client.create({"model": "all-MiniLM-L6-v2", "input": lines})["batch_id"]
    status = client.wait(job_id, lambda s: s["status"] in FINAL)
    assert status["status"] == "completed"
    output = client.lines(job_id, "output")
    assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]
    assert_charged_once(gateway, key, 100_000, job_id, status, output)
