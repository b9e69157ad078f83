"""Quotas per key on batch work (issue 14.3): active jobs, lines in them, input_url jobs an hour
and stored upload bytes — each refused with its code before anything is stored or fetched —
and a key without tokens can neither start a job nor upload a file."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from batch.models import BatchFile, BatchJob
from batch.processing import batch_job_process
from batch.tasks import batch_maintenance
from tests.batch.conftest import BatchApi, LocalHttpServer, inline_lines, key_with
from tests.billing.test_metering_e2e import create_key
from tests.factories import ApiKeyFactory, EmbeddingModelFactory
from tests.infra import Gateway
from tests.jina_spec import assert_error_envelope

QUOTA = "RATE_BATCH_QUOTA_EXCEEDED"


def openai_file(count: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"doc-{n}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"input": f"document {n}"},
            }
        ).encode()
        + b"\n"
        for n in range(count)
    )


def openai_create(api: BatchApi, file_id: str):
    return api.post(
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"},
    )


def stored(key) -> tuple[int, int]:
    return (
        BatchJob.objects.filter(api_key=key).count(),
        BatchFile.objects.filter(api_key=key).count(),
    )


def assert_refused(response, code: str = QUOTA) -> None:
    assert response.status_code == 429, response.content
    assert_error_envelope(response.json(), code)


def test_the_job_past_the_active_quota_is_refused_in_both_formats(
    batch_api, api_key, client, settings
) -> None:
    settings.BATCH_MAX_ACTIVE_JOBS_PER_KEY = 2
    upload = batch_api.upload(openai_file(2))
    assert upload.status_code == 200, upload.content
    first = batch_api.create({"input": inline_lines(["a"])})
    assert first.status_code == 200, first.content
    assert openai_create(batch_api, upload.json()["id"]).status_code == 200
    before = stored(api_key)

    assert_refused(batch_api.create({"input": inline_lines(["b"])}))
    assert_refused(openai_create(batch_api, upload.json()["id"]))
    assert stored(api_key) == before  # no job, no inline file

    other = BatchApi(client, ApiKeyFactory())  # the quota is per key
    assert other.create({"input": inline_lines(["c"])}).status_code == 200

    # A job that stopped frees its place.
    assert batch_api.delete(f"/v1/batch/{first.json()['batch_id']}").status_code == 200
    assert batch_api.create({"input": inline_lines(["d"])}).status_code == 200


def test_lines_in_flight_are_bounded_and_freed_when_a_job_finishes(
    batch_api, api_key, settings
) -> None:
    settings.BATCH_MAX_ACTIVE_LINES_PER_KEY = 5
    running = batch_api.create({"input": inline_lines(["a", "b", "c"])})
    assert running.status_code == 200
    before = stored(api_key)

    refused = batch_api.create({"input": inline_lines(["d", "e", "f"])})
    assert_refused(refused)
    assert "5" in refused.json()["detail"]
    upload = batch_api.upload(openai_file(3))
    assert_refused(openai_create(batch_api, upload.json()["id"]))
    assert stored(api_key) == (before[0], before[1] + 1)  # only the upload

    assert batch_api.create({"input": inline_lines(["g", "h"])}).status_code == 200  # 3 + 2 fit
    batch_job_process(job_id=running.json()["batch_id"])
    assert batch_api.status(running.json()["batch_id"])["status"] == "completed"
    assert openai_create(batch_api, upload.json()["id"]).status_code == 200


@pytest.mark.slow
def test_input_url_jobs_past_the_hourly_quota_are_refused_and_never_fetched(
    batch_api, api_key, http_server, settings
) -> None:
    settings.BATCH_URL_ALLOWED_HOSTS = [http_server.host]
    settings.BATCH_MAX_URL_JOBS_PER_HOUR_PER_KEY = 2
    http_server.routes["/in.jsonl"] = (200, b'{"custom_id": "a", "body": {"input": "x"}}\n')
    url = http_server.url("/in.jsonl")
    for _ in range(2):
        response = batch_api.create({"input_url": url})
        assert response.status_code == 200, response.content
        batch_job_process(job_id=response.json()["batch_id"])
        assert batch_api.status(response.json()["batch_id"])["status"] == "completed"
    assert http_server.connections == 2
    jobs = BatchJob.objects.filter(api_key=api_key).count()

    refused = batch_api.create({"input_url": url})
    assert_refused(refused)
    assert 1 <= int(refused["Retry-After"]) <= 3600
    # Finished jobs count too: the quota bounds fetches, not jobs in flight.
    assert (
        batch_api.create({"input": inline_lines(["inline jobs are not counted"])}).status_code
        == 200
    )
    batch_maintenance()
    assert BatchJob.objects.filter(api_key=api_key, input_url=url).count() == jobs
    assert http_server.connections == 2

    # An hour after the first, its place is free again.
    oldest = BatchJob.objects.filter(api_key=api_key, input_url=url).earliest("created_at")
    BatchJob.objects.filter(pk=oldest.pk).update(
        created_at=timezone.now() - timedelta(hours=1, seconds=1)
    )
    assert batch_api.create({"input_url": url}).status_code == 200


def test_uploads_past_the_storage_quota_are_refused_and_not_stored(
    batch_api, api_key, settings
) -> None:
    content = openai_file(20)
    settings.BATCH_MAX_STORED_BYTES_PER_KEY = 2 * len(content) + 10
    first = batch_api.upload(content)
    assert first.status_code == 200, first.content
    assert batch_api.upload(openai_file(20)).status_code == 200

    refused = batch_api.upload(openai_file(20))
    assert_refused(refused, "RATE_FILE_STORAGE_QUOTA_EXCEEDED")
    assert refused.json()["error"]["param"] == "file"
    assert len(batch_api.get("/v1/files").json()["data"]) == 2

    # Deleting a file, or its expiry, frees its bytes; inline job inputs are not counted.
    assert batch_api.delete(f"/v1/files/{first.json()['id']}").status_code == 200
    assert batch_api.create({"input": inline_lines(["x" * 500] * 3)}).status_code == 200
    assert batch_api.upload(openai_file(20)).status_code == 200
    BatchFile.objects.filter(api_key=api_key, origin=BatchFile.Origin.UPLOAD).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert batch_api.upload(openai_file(20)).status_code == 200


def test_a_key_without_tokens_cannot_upload(client, default_model) -> None:
    key = key_with(0)
    response = BatchApi(client, key).upload(openai_file(1))
    assert response.status_code == 403
    assert_error_envelope(response.json(), "AUTHZ_INSUFFICIENT_BALANCE")
    assert stored(key) == (0, 0)


def test_a_quota_of_zero_is_off(batch_api, settings) -> None:
    settings.BATCH_MAX_ACTIVE_JOBS_PER_KEY = 0
    settings.BATCH_MAX_ACTIVE_LINES_PER_KEY = 0
    for _ in range(3):
        assert batch_api.create({"input": inline_lines(["x"])}).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_creations_of_one_key_do_not_pass_the_quota(
    live_server, http_server, settings
) -> None:
    """Eight input_url creations at once against a quota of three: the key's row lock (or
    SQLite's one writer) makes each see the others, so exactly three get through."""
    settings.BATCH_URL_ALLOWED_HOSTS = [http_server.host]
    settings.BATCH_MAX_URL_JOBS_PER_HOUR_PER_KEY = 3
    http_server.routes["/in.jsonl"] = (200, b'{"custom_id": "a", "body": {"input": "x"}}\n')
    EmbeddingModelFactory()
    key = ApiKeyFactory()

    def create(_: int) -> int:
        return requests.post(
            f"{live_server.url}/v1/batch/embeddings",
            json={"input_url": http_server.url("/in.jsonl")},
            headers={"Authorization": f"Bearer {key.plaintext}"},
            timeout=60,
        ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(create, range(8)))
    assert statuses == [200] * 3 + [429] * 5
    assert BatchJob.objects.filter(api_key=key).count() == 3
    deadline = time.monotonic() + 60  # let the server's runners finish before the tables go
    while BatchJob.objects.filter(api_key=key, status__in=BatchJob.ACTIVE).exists():
        assert time.monotonic() < deadline, "jobs still running after 60 s"
        time.sleep(0.05)
    assert http_server.connections == 3


@pytest.mark.e2e
def test_concurrent_creations_on_postgres_are_held_to_the_quota(
    gateways, postgres_url, tmp_path
) -> None:
    """The same race across two gunicorn workers on Postgres, where only the key's row lock
    keeps the creations from each counting the jobs before the others commit."""
    source = LocalHttpServer().start()
    try:
        source.routes["/in.jsonl"] = (200, b'{"custom_id": "a", "body": {"input": "x"}}\n')
        env = {
            "DATABASE_URL": postgres_url,
            "BATCH_URL_ALLOWED_HOSTS": source.host,
            "BATCH_MAX_URL_JOBS_PER_HOUR_PER_KEY": "3",
        }
        gateway = Gateway(tmp_path / "gw", workers=2, threads=8, env=env).start()
        gateways.append(gateway)
        key = create_key(gateway, "--tokens", "100000")
        barrier = threading.Barrier(12)

        def create(_: int) -> int:
            barrier.wait()
            return requests.post(
                f"{gateway.url}/v1/batch/embeddings",
                json={"input_url": source.url("/in.jsonl")},
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            ).status_code

        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = sorted(pool.map(create, range(12)))
        assert statuses == [200] * 3 + [429] * 9
        listed = requests.get(
            f"{gateway.url}/v1/batches?limit=100",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ).json()["data"]
        assert len(listed) == 3
    finally:
        source.stop()
