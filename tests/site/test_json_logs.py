"""LOG_FORMAT=json on a real gunicorn gateway: every record is a JSON line, every record of a
request carries that request's id (and, once it is known, its key prefix), each API request
ends with one summary record holding its key prefix, endpoint, model, status, code and
latency, and concurrent requests on the threads of one process never get each other's fields.
No secret sent with a request reaches the log."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.infra import Gateway, create_key

pytestmark = pytest.mark.e2e

Record = dict[str, Any]


def json_records(gateway: Gateway) -> list[Record]:
    """The log's JSON lines, parsed (a line that starts like JSON must be JSON)."""
    return [
        json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith("{")
    ]


def wait_for_records(
    gateway: Gateway, done: Callable[[list[Record]], bool], timeout: float = 30
) -> list[Record]:
    """The records, once `done` holds for them (gunicorn writes the access line after the
    response has gone out, so the test may read the log before it is there)."""
    deadline = time.monotonic() + timeout
    while True:
        records = json_records(gateway)
        if done(records):
            return records
        if time.monotonic() > deadline:
            pytest.fail(f"log incomplete after {timeout}s:\n{gateway.log.read_text()[-4000:]}")
        time.sleep(0.05)


def key_prefix(key: str) -> str:
    return key[: len("jina_") + 8]


def test_every_record_of_a_request_carries_its_own_fields(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gateway = Gateway(
        tmp_path / "gw", workers=1, threads=4, env={"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
    ).start()
    gateways.append(gateway)
    keys = {
        "alpha": create_key(gateway, email="json-alpha@example.com"),
        "beta": create_key(gateway, email="json-beta@example.com"),
    }

    def call(name: str, n: int) -> requests.Response:
        return requests.post(
            f"{gateway.url}/v1/embeddings",
            json={"model": "all-MiniLM-L6-v2", "input": [f"{name} request {n}", "and more"]},
            headers={"Authorization": f"Bearer {keys[name]}", "X-Request-ID": f"{name}-{n}"},
            timeout=60,
        )

    # Two clients at once on one gunicorn process with four threads: their records interleave.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(call, name, n) for n in range(6) for name in keys]
        responses = [future.result() for future in futures]
    refused = requests.post(
        f"{gateway.url}/v1/embeddings",
        json={"input": "hello"},
        headers={"Authorization": "Bearer jina_made-up", "X-Request-ID": "refused-1"},
        timeout=30,
    )

    assert all(response.status_code == 200 for response in responses), responses
    assert refused.status_code == 401
    ids = {f"{name}-{n}": name for n in range(6) for name in keys}
    assert {response.headers["X-Request-ID"] for response in responses} == set(ids)

    def complete(records: list[Record]) -> bool:
        accessed = {r.get("request_id") for r in records if r.get("logger") == "gunicorn.access"}
        return accessed >= {*ids, "refused-1"}

    records = wait_for_records(gateway, complete)
    # Nothing else is written either: Python's warnings go through logging as well.
    assert all(line.startswith("{") for line in gateway.log.read_text().splitlines())
    loggers = {record["logger"] for record in records}
    # gunicorn's own log, its access log and Django's records are all JSON lines.
    assert {"gunicorn.error", "gunicorn.access", "embeddings_site.requests"} <= loggers
    assert all({"timestamp", "level", "logger", "message"} <= record.keys() for record in records)

    for request_id, name in ids.items():
        own = [record for record in records if record.get("request_id") == request_id]
        summaries = [r for r in own if r["logger"] == "embeddings_site.requests"]
        assert len(summaries) == 1, own
        [summary] = summaries
        assert summary["key_prefix"] == key_prefix(keys[name])
        assert summary["endpoint"] == "embeddings"
        assert summary["path"] == "/v1/embeddings"
        assert summary["model"] == "all-MiniLM-L6-v2"
        assert summary["status"] == 200
        assert "code" not in summary
        assert summary["tokens"] > 0
        assert isinstance(summary["latency_ms"], int | float) and summary["latency_ms"] > 0
        # The lifecycle's own records (at DEBUG) are this request's too.
        lifecycle = [r for r in own if r["logger"] == "metering.lifecycle"]
        assert {r["message"].split()[0] for r in lifecycle} == {"Admitted", "Debited"}
        [access] = [r for r in own if r["logger"] == "gunicorn.access"]
        assert access["status"] == 200 and access["path"] == "/v1/embeddings"
        # No record of this request carries the other key's prefix or another request's
        # fields: every record after authentication names this request's key.
        for record in own:
            if record["logger"] != "gunicorn.access":
                assert record.get("key_prefix") == key_prefix(keys[name]), record

    # Every record the lifecycle wrote belongs to one of the requests, with that request's key.
    for record in records:
        if record["logger"] == "metering.lifecycle":
            assert record.get("request_id") in ids, record
            assert record["key_prefix"] == key_prefix(keys[ids[record["request_id"]]]), record

    assert all(key not in gateway.log.read_text() for key in keys.values())

    [refusal] = [
        r
        for r in records
        if r.get("request_id") == "refused-1" and r["logger"] == "embeddings_site.requests"
    ]
    assert refusal["status"] == 401
    assert refusal["code"] == "AUTH_INVALID_API_KEY"
    assert refusal["endpoint"] == "embeddings"
    assert "key_prefix" not in refusal


def test_no_secret_sent_with_a_request_reaches_the_json_log(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gateway = Gateway(tmp_path / "gw", workers=1, threads=2, env={"LOG_FORMAT": "json"}).start()
    gateways.append(gateway)
    key = create_key(gateway, email="json-secrets@example.com")
    stripe_secret = "sk_test_" + "S3cr3t" * 8

    response = requests.post(
        f"{gateway.url}/v1/embeddings",
        params={
            "marker": "secrets",
            "api_key": key,
            "password": "hunter2-password",
            "next": stripe_secret,
            "whsec": "whsec_" + "W" * 32,
        },
        json={"input": "hello"},
        headers={
            "Authorization": f"Bearer {key}",
            "X-Request-ID": "secrets-1",
            "Referer": f"https://example.com/?token={key}",
        },
        timeout=30,
    )

    assert response.status_code == 200, response.text
    records = wait_for_records(
        gateway,
        lambda rs: any(
            r.get("request_id") == "secrets-1" and r["logger"] == "gunicorn.access" for r in rs
        ),
    )
    log = gateway.log.read_text()
    assert key not in log
    assert key[len("jina_") + 8 :] not in log  # not even the part after the display prefix
    assert "hunter2" not in log and stripe_secret not in log and "whsec_W" not in log
    [access] = [
        r
        for r in records
        if r.get("request_id") == "secrets-1" and r["logger"] == "gunicorn.access"
    ]
    # What is not secret is still there for whoever reads the log.
    assert "marker=secrets" in access["query"] and "api_key=REDACTED" in access["query"]
    assert "password=REDACTED" in access["query"]
    assert access["message"].startswith("POST /v1/embeddings?marker=secrets&api_key=REDACTED")
    assert access["referer"] == "https://example.com/?token=REDACTED"
