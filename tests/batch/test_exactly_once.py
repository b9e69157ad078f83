"""Each completed line is charged exactly once, whatever happens to the runner (ADVERSARIAL 8
in-process; tests/batch/test_batch_e2e.py kills a real Celery worker)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

import batch.processing as processing
from batch.models import BatchChunk, BatchJob
from batch.processing import batch_job_process
from billing.models import LedgerEntry, UsageRecord
from tests.batch.conftest import inline_lines, lines_of

TEXTS = [f"line number {n} of a job that is charged once" for n in range(14)]


class WorkerKilled(BaseException):
    """Stands for SIGKILL: nothing after it runs, no `except Exception` catches it."""


def expire_lease(job_id: str) -> None:
    """Time passes: the dead runner's lease runs out."""
    BatchJob.objects.filter(pk=job_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


def assert_charged_once(batch_api, api_key, job_id: str) -> None:
    status = batch_api.status(job_id)
    assert status["status"] == "completed"
    output = lines_of(batch_api.get(f"/v1/batch/{job_id}/output"))
    ids = Counter(line["custom_id"] for line in output)
    assert ids == Counter(f"req-{n}" for n in range(len(TEXTS)))  # every line once
    charged = sum(line["response"]["body"]["usage"]["total_tokens"] for line in output)
    debits = LedgerEntry.objects.filter(api_key=api_key, usage__endpoint="batch")
    assert (
        -sum(debits.values_list("tokens", flat=True)) == charged == status["stats"]["total_tokens"]
    )
    usage = UsageRecord.objects.filter(api_key=api_key, endpoint="batch")
    request_ids = list(usage.values_list("request_id", flat=True))
    assert (
        len(request_ids)
        == len(set(request_ids))
        == BatchChunk.objects.filter(job_id=job_id).count()
    )


@pytest.fixture
def job_id(batch_api, settings) -> str:
    settings.BATCH_CHUNK_TOKENS = 30
    return batch_api.create({"input": inline_lines(TEXTS)}).json()["batch_id"]


@pytest.mark.slow
def test_killed_while_computing_a_chunk(batch_api, api_key, job_id, monkeypatch) -> None:
    commit = processing.batch_chunk_commit
    calls = []

    def die_on_the_third(**kwargs):
        calls.append(kwargs["result"].index)
        if len(calls) == 3:
            raise WorkerKilled
        return commit(**kwargs)

    monkeypatch.setattr(processing, "batch_chunk_commit", die_on_the_third)
    with pytest.raises(WorkerKilled):
        batch_job_process(job_id=job_id)
    assert batch_api.status(job_id)["status"] == "processing"
    batch_job_process(job_id=job_id)  # another worker: the lease still holds, it waits
    assert BatchJob.objects.get(pk=job_id).next_chunk == 2

    monkeypatch.setattr(processing, "batch_chunk_commit", commit)
    expire_lease(job_id)
    batch_job_process(job_id=job_id)

    assert_charged_once(batch_api, api_key, job_id)
    assert BatchJob.objects.get(pk=job_id).runs == 2


@pytest.mark.slow
def test_killed_inside_the_commit_after_the_debit(batch_api, api_key, job_id, monkeypatch) -> None:
    """The debit and the chunk are one transaction: a death between them undoes the debit."""
    create = BatchChunk.objects.create
    calls = []

    def die_after_the_debit(**kwargs):
        calls.append(kwargs["index"])
        if len(calls) == 2:
            raise WorkerKilled
        return create(**kwargs)

    monkeypatch.setattr(BatchChunk.objects, "create", die_after_the_debit)
    with pytest.raises(WorkerKilled):
        batch_job_process(job_id=job_id)
    assert UsageRecord.objects.filter(api_key=api_key, endpoint="batch").count() == 1

    monkeypatch.setattr(BatchChunk.objects, "create", create)
    expire_lease(job_id)
    batch_job_process(job_id=job_id)

    assert_charged_once(batch_api, api_key, job_id)


@pytest.mark.slow
def test_two_runners_on_one_chunk_commit_it_once(batch_api, api_key, job_id, monkeypatch) -> None:
    """Runner A is slow: its lease runs out mid-chunk and runner B runs the whole job. A's
    late commit of the chunk B already committed is dropped, uncharged."""
    commit = processing.batch_chunk_commit
    outcomes = []
    state = {"nested": False}

    def slow_first_runner(**kwargs):
        if not state["nested"]:
            state["nested"] = True
            expire_lease(job_id)
            batch_job_process(job_id=job_id)  # runner B, start to finish
            outcomes.append(commit(**kwargs))  # runner A, late
            return outcomes[-1]
        return commit(**kwargs)

    monkeypatch.setattr(processing, "batch_chunk_commit", slow_first_runner)
    batch_job_process(job_id=job_id)

    assert outcomes == [processing.ChunkCommit.STALE]
    assert_charged_once(batch_api, api_key, job_id)


@pytest.mark.slow
def test_a_job_that_keeps_dying_fails_after_its_last_run(
    batch_api, api_key, job_id, monkeypatch, settings
) -> None:
    settings.BATCH_MAX_RUNS = 2

    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(processing, "batch_chunk_commit", broken)
    for _ in range(3):
        batch_job_process(job_id=job_id)
        expire_lease(job_id)
    status = batch_api.status(job_id)
    assert status["status"] == "failed"
    assert status["error_code"] == "INTERNAL_ERROR"
    assert status["stats"]["failed"] == len(TEXTS) and status["stats"]["total_tokens"] == 0
    errors = lines_of(batch_api.get(f"/v1/batch/{job_id}/errors"))
    assert len(errors) == len(TEXTS)
    assert not UsageRecord.objects.filter(api_key=api_key, endpoint="batch").exists()
