"""A batch job's records on a real Celery worker (Redis broker, LOG_FORMAT=json): every record
its task writes carries the job's id and the id of the request that created it, in JSON lines
(the worker logs through LOGGING, not Celery's own text format)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.batch.test_batch_e2e import FINAL, Client, make_lines
from tests.infra import CeleryWorker, Gateway, create_key

pytestmark = pytest.mark.e2e

BATCH_TASK = "batch.tasks.batch_job_run"


def json_records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_every_record_of_a_batch_task_carries_the_job_and_the_request_that_created_it(
    gateways: list[Gateway], redis_server, postgres_url, tmp_path: Path
) -> None:
    env = {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": postgres_url,
        "BATCH_CHUNK_TOKENS": "40",
        "LOG_FORMAT": "json",
    }
    gateway = Gateway(tmp_path / "gw", workers=1, threads=4, env=env).start()
    gateways.append(gateway)
    worker = CeleryWorker(tmp_path, env=gateway.env, concurrency=2).start()
    try:
        key = create_key(gateway, "--tokens", "100000", email="batch-logs@example.com")
        response = requests.post(
            f"{gateway.url}/v1/batch/embeddings",
            json={"input": make_lines(30)},
            headers={"Authorization": f"Bearer {key}", "X-Request-ID": "creates-the-batch"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        job_id = response.json()["batch_id"]
        status = Client(gateway, key).wait(job_id, lambda s: s["status"] in FINAL)
    finally:
        worker.stop()

    assert status["status"] == "completed", status
    records = json_records(worker.log)
    # Celery's own records are JSON lines of the same shape as the gateway's.
    assert any(
        r["logger"].startswith("celery") and r["message"].endswith(" ready.") for r in records
    )
    task_records = [r for r in records if r.get("task_name") == BATCH_TASK]
    chunks = [r for r in task_records if r["logger"] == "batch.processing"]
    assert len(chunks) >= 2, "the job ran in one chunk: the test would prove less"
    for record in task_records:
        assert record["batch_id"] == job_id, record
        assert record["request_id"] == "creates-the-batch", record
        assert record["key_prefix"] == key[: len("jina_") + 8], record
        assert record["task_id"], record
    # And every record naming the job (whatever logged it) names the request that created it.
    assert all(
        r["request_id"] == "creates-the-batch" for r in records if r.get("batch_id") == job_id
    )
    # The creating request's own summary knows the job it created.
    [summary] = [
        r
        for r in json_records(gateway.log)
        if r.get("request_id") == "creates-the-batch" and r["logger"] == "embeddings_site.requests"
    ]
    assert summary["batch_id"] == job_id and summary["status"] == 200
    assert key not in worker.log.read_text() and key not in gateway.log.read_text()
