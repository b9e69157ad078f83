"""A batch job's records: on a real Celery worker (Redis broker, LOG_FORMAT=json) every record
its task writes carries the job's id and the id of the request that created it, in JSON lines
(the worker logs through LOGGING, not Celery's own text format); a run resumed by the
maintenance task, which no request sent, names the creating request as well."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from batch.processing import batch_job_process
from embeddings_site.log_context import LogContextFilter, log_scope
from tests.batch.conftest import inline_lines
from tests.batch.test_batch_e2e import FINAL, Client, make_lines
from tests.infra import CeleryWorker, Gateway, create_key

BATCH_TASK = "batch.tasks.batch_job_run"


def json_records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.mark.e2e
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


class Recorded(logging.Handler):
    """The records of one logger, with the log fields a handler's filter puts on them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(LogContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def processing_records() -> Iterator[list[logging.LogRecord]]:
    handler = Recorded()
    log = logging.getLogger("batch.processing")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler.records
    log.removeHandler(handler)
    log.setLevel(level)


@pytest.mark.slow  # a batch job run in process, chunk by chunk (7 s)
def test_a_resumed_run_names_the_request_that_created_the_job(
    client, api_key, default_model, settings, processing_records
) -> None:
    settings.BATCH_CHUNK_TOKENS = 12  # several chunks
    response = client.post(
        "/v1/batch/embeddings",
        data=json.dumps({"input": inline_lines(["one two three", "four five six"] * 3)}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",
        HTTP_X_REQUEST_ID="created-the-job",
    )
    assert response.status_code == 200, response.content
    job_id = response.json()["batch_id"]

    # As the maintenance task runs it: under a task's scope that no request sent.
    with log_scope(task_name="batch.tasks.batch_job_run"):
        batch_job_process(job_id=job_id)

    chunks = [r for r in processing_records if "chunk" in r.getMessage()]
    assert len(chunks) >= 2
    for record in processing_records:
        assert record.request_id == "created-the-job"  # type: ignore[attr-defined]
        assert record.batch_id == job_id  # type: ignore[attr-defined]
        assert record.key_prefix == api_key.prefix  # type: ignore[attr-defined]
