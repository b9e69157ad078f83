"""One unit of work's log fields never reach another's records: threads the gateway starts
(the sweeper and the other periodic jobs, the usage flusher) start with none, a local task
carries only its sender's request id, key prefix and batch id, and a group commit leader
writes the others' work under no request's id."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from embeddings_site.background import local_tasks_wait, periodic_start, task_enqueue
from embeddings_site.log_context import LogContextFilter, log_context, log_scope
from metering.group_commit import GroupCommit


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for another thread to reach a state (a bounded condition wait, not a clock)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.001)


def test_a_periodic_job_started_during_a_request_logs_under_no_request() -> None:
    seen: list[dict[str, Any]] = []
    ran = threading.Event()

    def job() -> None:
        seen.append(dict(log_context()))
        ran.set()

    with log_scope(request_id="starts-the-sweeper", key_prefix="jina_AAAAAAAA"):
        periodic_start(job, name="test-periodic", interval=3600, first_run_now=True)
        assert ran.wait(10)
    assert seen == [{}]


@pytest.mark.django_db  # a pool thread closes its database connection after each task
def test_local_tasks_carry_their_senders_request_and_nothing_of_earlier_tasks(settings) -> None:
    settings.CELERY_BROKER_URL = ""
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    def task(label: str) -> None:
        with lock:
            seen.append({"label": label, **log_context()})

    task.name = "tests.task"  # type: ignore[attr-defined]
    with log_scope(request_id="req-a", key_prefix="jina_AAAAAAAA", endpoint="embeddings"):
        task_enqueue(task, "a")
    with log_scope(request_id="req-b", batch_id="batch_b"):
        task_enqueue(task, "b")
    task_enqueue(task, "none")  # sent from no request (a periodic job)
    local_tasks_wait()

    by_label = {entry.pop("label"): entry for entry in seen}
    assert by_label == {
        "a": {"request_id": "req-a", "key_prefix": "jina_AAAAAAAA", "task_name": "tests.task"},
        "b": {"request_id": "req-b", "batch_id": "batch_b", "task_name": "tests.task"},
        "none": {"task_name": "tests.task"},
    }


class GatedApply:
    """The first group waits at a gate (so that others queue behind it); every group's items
    are recorded with the log fields it was written under."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.groups: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, items: Sequence[str]) -> list[object]:
        if not self.groups:
            self.gate.wait(10)
        self.groups.append((sorted(items), dict(log_context())))
        return list(items)


def test_a_group_commit_leader_writes_the_others_work_under_no_request() -> None:
    apply = GatedApply()
    commit: GroupCommit[str] = GroupCommit(apply)

    def submit(request_id: str) -> object:
        with log_scope(request_id=request_id):
            return commit.commit(request_id)

    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(submit, "alone")
        wait_until(lambda: commit._writing and not commit._queue)
        rest = [pool.submit(submit, name) for name in ("follower-1", "follower-2")]
        wait_until(lambda: len(commit._queue) == 2)
        apply.gate.set()
        assert [future.result() for future in (first, *rest)] == [
            "alone",
            "follower-1",
            "follower-2",
        ]

    assert apply.groups == [
        (["alone"], {"request_id": "alone"}),  # its own work, under its own id
        (["follower-1", "follower-2"], {}),  # two requests' work: neither's id
    ]


def test_a_field_passed_with_extra_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("test", logging.INFO, __file__, 1, "message", None, None)
    record.request_id = "explicit"
    with log_scope(request_id="ambient", model="m"):
        LogContextFilter().filter(record)
    assert record.request_id == "explicit"
    assert record.model == "m"  # type: ignore[attr-defined]
