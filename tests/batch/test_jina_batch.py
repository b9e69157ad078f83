"""The Jina batch format in-process: create, run, status, output and errors files, bad input,
ownership (ADVERSARIAL 3), insufficient balance mid-job, cancel, expiry, input_url, webhooks.

Jobs are run here by calling the runner (`batch_job_process`) the way a worker does; the
live-server and Celery tests run them on the real worker paths.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from batch.models import BatchJob
from batch.processing import batch_job_process
from batch.tasks import batch_maintenance, batch_webhook_send
from billing.models import ApiKey, LedgerEntry, UsageRecord
from tests.batch.conftest import BatchApi, inline_lines, key_with, lines_of
from tests.jina_spec import assert_error_envelope, assert_valid

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings turn text into vectors.",
    ["two inputs", "in one line"],
    {"text": "a text document"},
    "Batch jobs run on workers.",
    "Exactly once, even when a worker dies.",
    "short",
    "A somewhat longer sentence, so that the chunks differ in size from one another.",
]


def balance(key: ApiKey) -> int:
    return ApiKey.objects.get(pk=key.pk).balance


def batch_debits(key: ApiKey) -> int:
    """Tokens the ledger took from a key for batch work (debits minus refunds)."""
    entries = LedgerEntry.objects.filter(api_key=key, usage__endpoint="batch")
    return -sum(entries.values_list("tokens", flat=True))


def create_and_run(api: BatchApi, body: dict) -> dict:
    response = api.create(body)
    assert response.status_code == 200, response.content
    job_id = response.json()["batch_id"]
    batch_job_process(job_id=job_id)
    return api.status(job_id)


@pytest.mark.slow
def test_an_inline_job_answers_each_line_as_the_embeddings_api_would(
    batch_api, post_embeddings, api_key, settings
) -> None:
    settings.BATCH_CHUNK_TOKENS = 24  # several chunks
    start = balance(api_key)
    lines = inline_lines(TEXTS)
    lines[1]["body"]["dimensions"] = 64  # a line's own options override the job's
    response = batch_api.create(
        {"model": "all-MiniLM-L6-v2", "input": lines, "task": "retrieval.passage"}
    )
    assert response.status_code == 200, response.content
    created = response.json()
    assert_valid(created, "BatchStatus")
    assert created["status"] == "pending"
    assert created["stats"] == {"total": 8, "completed": 0, "failed": 0, "total_tokens": 0}
    assert created["output_url"] is None

    batch_job_process(job_id=created["batch_id"])

    status = batch_api.status(created["batch_id"])
    assert_valid(status, "BatchStatus")
    assert status["status"] == "completed"
    assert status["completed_at"] and status["expires_at"]
    assert status["stats"]["completed"] == 8 and status["stats"]["failed"] == 0
    assert status["output_url"].endswith(f"/v1/batch/{created['batch_id']}/output")
    assert status["error_file_url"] is None

    output = lines_of(batch_api.get(f"/v1/batch/{created['batch_id']}/output"))
    assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]
    for line, sent in zip(output, lines, strict=True):
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        direct = post_embeddings(
            {"model": "all-MiniLM-L6-v2", "task": "retrieval.passage", **sent["body"]}
        ).json()
        assert body["usage"] == direct["usage"]
        assert body["model"] == direct["model"]
        np.testing.assert_allclose(
            [item["embedding"] for item in body["data"]],
            [item["embedding"] for item in direct["data"]],
            atol=1e-5,
        )
    assert len(output[1]["response"]["body"]["data"][0]["embedding"]) == 64
    assert len(output[2]["response"]["body"]["data"]) == 2

    line_tokens = sum(line["response"]["body"]["usage"]["total_tokens"] for line in output)
    assert status["stats"]["total_tokens"] == line_tokens == batch_debits(api_key)
    assert UsageRecord.objects.filter(api_key=api_key, endpoint="batch").count() > 1  # chunks
    direct_tokens = line_tokens  # post_embeddings charged the same again, once per line
    assert balance(api_key) == start - line_tokens - direct_tokens


@pytest.mark.slow
def test_bad_lines_go_to_the_errors_file_uncharged(batch_api, api_key) -> None:
    lines = [
        {"custom_id": "good", "body": {"input": "fine"}},
        {"custom_id": "empty", "body": {"input": ""}},
        {"custom_id": "no-input", "body": {}},
        {"custom_id": "bad-task", "body": {"input": "x", "task": "poetry"}},
        {"custom_id": "too-long", "body": {"input": "word " * 600}},
        {"custom_id": "bad-type", "body": {"input": "x", "normalized": "yes"}},
        {"custom_id": "also-good", "body": {"input": "word " * 600, "truncate": True}},
    ]
    status = create_and_run(batch_api, {"model": "all-MiniLM-L6-v2", "input": lines})

    assert status["status"] == "completed"
    assert status["stats"]["completed"] == 2 and status["stats"]["failed"] == 5
    assert status["error_file_url"].endswith("/errors")
    errors = {
        line["custom_id"]: line
        for line in lines_of(batch_api.get(f"/v1/batch/{status['batch_id']}/errors"))
    }
    codes = {custom_id: line["response"]["body"]["code"] for custom_id, line in errors.items()}
    assert codes == {
        "empty": "INPUT_EMPTY",
        "no-input": "INPUT_VALIDATION_ERROR",
        "bad-task": "INPUT_UNSUPPORTED_TASK",
        "too-long": "INPUT_TOKEN_LIMIT_EXCEEDED",
        "bad-type": "INPUT_VALIDATION_ERROR",
    }
    for line in errors.values():
        assert line["response"]["status_code"] == 400
        assert_error_envelope(line["response"]["body"], line["error"]["code"])
    output = lines_of(batch_api.get(f"/v1/batch/{status['batch_id']}/output"))
    assert [line["custom_id"] for line in output] == ["good", "also-good"]
    charged = sum(line["response"]["body"]["usage"]["total_tokens"] for line in output)
    assert status["stats"]["total_tokens"] == charged == batch_debits(api_key)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"input": [{"body": {"input": "x"}}]}, "INPUT_VALIDATION_ERROR", "custom_id"),
        (
            {"input": [{"custom_id": "", "body": {"input": "x"}}]},
            "INPUT_VALIDATION_ERROR",
            "custom_id",
        ),
        (
            {"input": [{"custom_id": 7, "body": {"input": "x"}}]},
            "INPUT_VALIDATION_ERROR",
            "custom_id",
        ),
        (
            {"input": [{"custom_id": "a", "body": {"input": "x"}}] * 2},
            "INPUT_VALIDATION_ERROR",
            "custom_id",
        ),
        ({"input": ["just text"]}, "INPUT_VALIDATION_ERROR", "input"),
        ({"input": [{"custom_id": "a", "body": "x"}]}, "INPUT_VALIDATION_ERROR", "body"),
        ({"input": []}, "INPUT_EMPTY", "input"),
        ({"input": inline_lines(["x"] * 4)}, "INPUT_TOO_MANY_ITEMS", "input"),
        (
            {"input": inline_lines(["x"]), "model": "no-such-model"},
            "INPUT_MODEL_NOT_FOUND",
            "model",
        ),
        (
            {"input": [{"custom_id": "a", "body": {"input": "x", "model": "other-model"}}]},
            "INPUT_MODEL_NOT_FOUND",
            "model",
        ),
        ({"input": inline_lines(["x"]), "task": "poetry"}, "INPUT_UNSUPPORTED_TASK", "task"),
        ({"input": inline_lines(["x"]), "dimensions": 0}, "INPUT_VALIDATION_ERROR", "dimensions"),
        ({"model": "all-MiniLM-L6-v2"}, "INPUT_VALIDATION_ERROR", "input"),
        (
            {"input": inline_lines(["x"]), "input_url": "https://example.com/x.jsonl"},
            "INPUT_VALIDATION_ERROR",
            "input",
        ),
        ({"input_url": "gs://bucket/inputs.jsonl"}, "INPUT_VALIDATION_ERROR", "input_url"),
        ({"input_url": "http://127.0.0.1:9/x.jsonl"}, "INPUT_VALIDATION_ERROR", "input_url"),
        (
            {"input": inline_lines(["x"]), "webhook_url": "http://169.254.169.254/hook"},
            "INPUT_VALIDATION_ERROR",
            "webhook_url",
        ),
        ({"input": "not a list"}, "INPUT_VALIDATION_ERROR", "input"),
    ],
    ids=[
        "missing-custom-id",
        "empty-custom-id",
        "numeric-custom-id",
        "duplicate-custom-id",
        "line-not-an-object",
        "body-not-an-object",
        "no-lines",
        "too-many-lines",
        "unknown-model",
        "unknown-line-model",
        "unknown-task",
        "zero-dimensions",
        "no-input",
        "input-and-input-url",
        "input-url-not-http",
        "input-url-loopback",
        "webhook-link-local",
        "input-not-a-list",
    ],
)
def test_bad_requests_are_refused_with_a_code(batch_api, settings, body, code, param) -> None:
    settings.BATCH_MAX_LINES = 3
    response = batch_api.create(body)
    assert response.status_code == 400, response.content
    assert_error_envelope(response.json(), code)
    assert response.json()["error"]["param"] == param
    assert not BatchJob.objects.exists()


def test_malformed_json_body_and_wrong_content_type(batch_api) -> None:
    response = batch_api.client.post(
        "/v1/batch/embeddings", data="{not json", content_type="application/json", **batch_api.auth
    )
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_INVALID_JSON")
    response = batch_api.client.post(
        "/v1/batch/embeddings", data="x", content_type="text/plain", **batch_api.auth
    )
    assert response.status_code == 415
    assert_error_envelope(response.json(), "INPUT_UNSUPPORTED_MEDIA_TYPE")


def test_a_key_without_tokens_cannot_start_a_job(client, default_model) -> None:
    api = BatchApi(client, key_with(0))
    response = api.create({"input": inline_lines(["x"])})
    assert response.status_code == 403
    assert_error_envelope(response.json(), "AUTHZ_INSUFFICIENT_BALANCE")


def test_without_a_key_nothing_is_readable(client, batch_api) -> None:
    job_id = batch_api.create({"input": inline_lines(["x"])}).json()["batch_id"]
    response = client.get(f"/v1/batch/{job_id}")
    assert response.status_code == 401
    assert_error_envelope(response.json(), "AUTH_MISSING_API_KEY")


def test_another_key_gets_404_for_everything_and_nothing_changes(client, batch_api) -> None:
    """ADVERSARIAL 3: key B reads, cancels and downloads A's job (both formats) → 404."""
    job_id = batch_api.create({"input": inline_lines(TEXTS[:3])}).json()["batch_id"]
    before = batch_api.status(job_id)
    other = BatchApi(client, key_with(1000))

    attempts = [
        other.get(f"/v1/batch/{job_id}"),
        other.delete(f"/v1/batch/{job_id}"),
        other.get(f"/v1/batch/{job_id}/output"),
        other.get(f"/v1/batch/{job_id}/errors"),
        other.get(f"/v1/batches/{job_id}"),
        other.post(f"/v1/batches/{job_id}/cancel"),
        other.get(f"/v1/files/{before['input_file_id']}"),
        other.get(f"/v1/files/{before['input_file_id']}/content"),
        other.delete(f"/v1/files/{before['input_file_id']}"),
    ]
    for response in attempts:
        assert response.status_code == 404, response.content
        assert_error_envelope(response.json(), "RESOURCE_NOT_FOUND")
    assert other.get("/v1/batches").json()["data"] == []
    assert batch_api.status(job_id) == before

    batch_job_process(job_id=job_id)
    status = batch_api.status(job_id)
    assert status["status"] == "completed"
    for path in (f"/v1/batch/{job_id}/output", f"/v1/files/file-{job_id}-output/content"):
        response = other.get(path)
        assert response.status_code == 404
        assert_error_envelope(response.json(), "RESOURCE_NOT_FOUND")
    assert len(lines_of(batch_api.get(f"/v1/batch/{job_id}/output"))) == 3


def test_running_out_of_tokens_mid_job_fails_it_cleanly(client, default_model, settings) -> None:
    """The lines the key paid for are in the output; the rest are in the errors file with
    AUTHZ_INSUFFICIENT_BALANCE, uncharged; the job is failed and says why."""
    settings.BATCH_CHUNK_TOKENS = 20
    key = key_with(45)
    api = BatchApi(client, key)
    lines = inline_lines([f"sentence number {n} of the job" for n in range(12)])
    status = create_and_run(api, {"input": lines})

    assert status["status"] == "failed"
    assert status["error_code"] == "AUTHZ_INSUFFICIENT_BALANCE"
    assert "Insufficient balance" in status["error"]
    stats = status["stats"]
    assert 0 < stats["completed"] < 12
    assert stats["completed"] + stats["failed"] == 12
    output = lines_of(api.get(f"/v1/batch/{status['batch_id']}/output"))
    errors = lines_of(api.get(f"/v1/batch/{status['batch_id']}/errors"))
    assert len(output) == stats["completed"] and len(errors) == stats["failed"]
    assert {line["custom_id"] for line in output + errors} == {line["custom_id"] for line in lines}
    assert {line["error"]["code"] for line in errors} == {"AUTHZ_INSUFFICIENT_BALANCE"}
    charged = sum(line["response"]["body"]["usage"]["total_tokens"] for line in output)
    assert stats["total_tokens"] == charged == batch_debits(key) == 45 - balance(key)


def test_cancel_a_pending_job_runs_and_charges_nothing(batch_api, api_key) -> None:
    start = balance(api_key)
    job_id = batch_api.create({"input": inline_lines(TEXTS)}).json()["batch_id"]
    response = batch_api.delete(f"/v1/batch/{job_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    batch_job_process(job_id=job_id)  # a run already queued finds nothing to do
    status = batch_api.status(job_id)
    assert status["status"] == "cancelled"
    assert status["stats"]["completed"] == 0
    assert balance(api_key) == start
    assert lines_of(batch_api.get(f"/v1/batch/{job_id}/output")) == []
    assert batch_api.delete(f"/v1/batch/{job_id}").status_code == 200  # again: no change


@pytest.mark.slow
def test_cancel_mid_job_stops_it_and_charges_only_committed_chunks(
    batch_api, api_key, settings, monkeypatch
) -> None:
    """The job is cancelled after its second chunk is committed, while its third is computed:
    the third is dropped uncharged and no chunk follows."""
    import batch.processing as processing
    from batch.services import batch_job_cancel

    settings.BATCH_CHUNK_TOKENS = 12
    job_id = batch_api.create(
        {"input": inline_lines([f"line {n} text" for n in range(10)])}
    ).json()["batch_id"]
    commit = processing.batch_chunk_commit
    calls = []

    def commit_then_cancel(**kwargs):
        calls.append(kwargs["result"].index)
        if len(calls) == 3:
            batch_job_cancel(job=BatchJob.objects.get(pk=job_id))
        return commit(**kwargs)

    monkeypatch.setattr(processing, "batch_chunk_commit", commit_then_cancel)
    batch_job_process(job_id=job_id)

    assert calls == [0, 1, 2]
    status = batch_api.status(job_id)
    assert status["status"] == "cancelled"
    output = lines_of(batch_api.get(f"/v1/batch/{job_id}/output"))
    assert 0 < len(output) == status["stats"]["completed"] < 10
    charged = sum(line["response"]["body"]["usage"]["total_tokens"] for line in output)
    assert status["stats"]["total_tokens"] == charged == batch_debits(api_key)


@pytest.mark.slow
def test_a_completed_job_cannot_be_cancelled(batch_api) -> None:
    status = create_and_run(batch_api, {"input": inline_lines(["x"])})
    response = batch_api.delete(f"/v1/batch/{status['batch_id']}")
    assert response.status_code == 409
    assert_error_envelope(response.json(), "RESOURCE_CONFLICT")
    assert batch_api.status(status["batch_id"])["status"] == "completed"


def test_files_are_not_ready_while_the_job_runs(batch_api) -> None:
    job_id = batch_api.create({"input": inline_lines(["x"])}).json()["batch_id"]
    response = batch_api.get(f"/v1/batch/{job_id}/output")
    assert response.status_code == 409
    assert_error_envelope(response.json(), "RESOURCE_CONFLICT")


@pytest.mark.slow
def test_outputs_expire(batch_api, api_key) -> None:
    done = create_and_run(batch_api, {"input": inline_lines(TEXTS[:2])})["batch_id"]
    running = batch_api.create({"input": inline_lines(TEXTS[:2])}).json()["batch_id"]
    fresh = create_and_run(batch_api, {"input": inline_lines(TEXTS[:2])})["batch_id"]
    BatchJob.objects.filter(pk__in=[done, running]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    spent = balance(api_key)

    batch_maintenance()

    for job_id in (done, running):
        status = batch_api.status(job_id)
        assert status["status"] == "expired"
        assert status["output_url"] is None
        response = batch_api.get(f"/v1/batch/{job_id}/output")
        assert response.status_code == 410
        assert_error_envelope(response.json(), "RESOURCE_EXPIRED")
    batch_job_process(job_id=running)  # its queued run does nothing now
    assert batch_api.status(running)["stats"]["completed"] == 0
    assert balance(api_key) == spent
    assert batch_api.status(fresh)["status"] == "completed"
    assert len(lines_of(batch_api.get(f"/v1/batch/{fresh}/output"))) == 2


def test_a_job_from_an_input_url(batch_api, http_server, settings) -> None:
    settings.BATCH_URL_ALLOWED_HOSTS = [http_server.host]  # stands for a public server
    lines = inline_lines(TEXTS[:5])
    http_server.routes["/inputs.jsonl"] = (200, "\n".join(json.dumps(x) for x in lines).encode())
    response = batch_api.create({"input_url": http_server.url("/inputs.jsonl")})
    assert response.status_code == 200, response.content
    assert response.json()["stats"]["total"] == 0  # known once the file is fetched
    job_id = response.json()["batch_id"]

    batch_job_process(job_id=job_id)

    status = batch_api.status(job_id)
    assert status["status"] == "completed"
    assert status["stats"]["total"] == status["stats"]["completed"] == 5
    output = lines_of(batch_api.get(f"/v1/batch/{job_id}/output"))
    assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b'{"custom_id": "a", "body": {"input": "x"}}\n{oops\n', "INPUT_INVALID_JSON"),
        (b'{"custom_id": "a", "body": {"input": "x"}}\n' * 2, "INPUT_VALIDATION_ERROR"),
        (None, "INPUT_VALIDATION_ERROR"),  # the server answers 404
    ],
    ids=["malformed-jsonl", "duplicate-custom-id", "not-found"],
)
def test_a_bad_input_url_fails_the_job_with_a_code(
    batch_api, http_server, settings, api_key, content, code
) -> None:
    settings.BATCH_URL_ALLOWED_HOSTS = [http_server.host]
    if content is not None:
        http_server.routes["/inputs.jsonl"] = (200, content)
    start = balance(api_key)
    status = create_and_run(batch_api, {"input_url": http_server.url("/inputs.jsonl")})
    assert status["status"] == "failed"
    assert status["error_code"] == code
    assert status["error"]
    assert balance(api_key) == start


def test_the_webhook_is_signed_and_verifiable(batch_api, http_server, settings) -> None:
    settings.BATCH_URL_ALLOWED_HOSTS = [http_server.host]
    created = batch_api.create(
        {"input": inline_lines(TEXTS[:2]), "webhook_url": http_server.url("/hook")}
    ).json()
    secret = created["webhook_secret"]
    assert secret.startswith("whsec_")
    batch_job_process(job_id=created["batch_id"])
    batch_webhook_send(created["batch_id"])  # the task the job's completion queued

    [delivery] = http_server.posts
    headers, body = delivery["headers"], delivery["body"]
    timestamp = headers["X-Webhook-Timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    assert hmac.compare_digest(headers["X-Webhook-Signature"], f"v1={expected.hexdigest()}")
    assert headers["X-Webhook-Id"] == created["batch_id"]
    payload = json.loads(body)
    assert_valid(payload, "BatchStatus")
    assert payload["status"] == "completed" and "webhook_secret" not in payload
    assert payload["stats"]["completed"] == 2

    batch_webhook_send(created["batch_id"])  # delivered: not sent again
    assert len(http_server.posts) == 1


def test_a_failing_webhook_is_retried_later(batch_api, http_server, settings) -> None:
    settings.BATCH_URL_ALLOWED_HOSTS = [http_server.host]
    http_server.post_status = 500
    created = batch_api.create(
        {"input": inline_lines(["x"]), "webhook_url": http_server.url("/hook")}
    ).json()
    batch_job_process(job_id=created["batch_id"])
    batch_webhook_send(created["batch_id"])
    batch_webhook_send(created["batch_id"])  # the next attempt is not due yet
    assert len(http_server.posts) == 1
    job = BatchJob.objects.get(pk=created["batch_id"])
    assert job.webhook_status == "pending" and job.webhook_next_attempt_at > timezone.now()

    http_server.post_status = 204
    BatchJob.objects.filter(pk=job.pk).update(webhook_next_attempt_at=timezone.now())
    batch_webhook_send(created["batch_id"])
    assert len(http_server.posts) == 2
    assert BatchJob.objects.get(pk=job.pk).webhook_status == "delivered"


def test_the_list_serves_both_formats(batch_api) -> None:
    first = batch_api.create({"input": inline_lines(["x"])}).json()["batch_id"]
    second = batch_api.create({"input": inline_lines(["y"])}).json()["batch_id"]
    listed = batch_api.get("/v1/batches?limit=1").json()
    assert listed["object"] == "list" and listed["has_more"] is True
    assert [job["id"] for job in listed["data"]] == [second]
    assert listed["data"][0]["object"] == "batch" and listed["data"][0]["status"] == "validating"
    assert listed["data"][0]["stats"]["total"] == 1  # Jina's names beside OpenAI's
    rest = batch_api.get(f"/v1/batches?limit=1&after={second}").json()
    assert [job["id"] for job in rest["data"]] == [first] and rest["has_more"] is False
    jina = batch_api.get("/v1/batches?shape=jina").json()
    assert [job["batch_id"] for job in jina] == [second, first]
    for job in jina:
        assert_valid(job, "BatchStatus")
    response = batch_api.get("/v1/batches?limit=1000")
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_VALIDATION_ERROR")


def test_the_dashboard_selector_lists_a_keys_jobs_with_progress(batch_api, api_key, client) -> None:
    from batch.selectors import batch_job_list

    done = create_and_run(batch_api, {"input": inline_lines(TEXTS[:4])})["batch_id"]
    waiting = batch_api.create({"input": inline_lines(TEXTS[:2])}).json()["batch_id"]
    BatchApi(client, key_with(100)).create({"input": inline_lines(["someone else's"])})

    jobs = list(batch_job_list(api_key=api_key))

    assert [job.id for job in jobs] == [waiting, done]
    assert (jobs[0].status, jobs[0].progress, jobs[0].total_lines) == ("pending", 0.0, 2)
    assert (jobs[1].status, jobs[1].progress, jobs[1].completed_lines) == ("completed", 1.0, 4)
    assert jobs[1].total_tokens == batch_api.status(done)["stats"]["total_tokens"] > 0
