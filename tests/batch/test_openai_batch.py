"""The OpenAI batch format through the real `openai` SDK against a live server — which runs the
jobs on its own threads, as the embedded default (`make run` without Redis) does."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import requests

from billing.models import ApiKey, LedgerEntry
from tests.factories import ApiKeyFactory, EmbeddingModelFactory
from tests.jina_spec import assert_valid

if TYPE_CHECKING:
    import openai

MODEL = "all-MiniLM-L6-v2"
TEXTS = [f"Document number {n} about batch embeddings." for n in range(30)]

pytestmark = pytest.mark.django_db(transaction=True)


def openai_lines(texts: list[str], **body: Any) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"doc-{index}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": MODEL, "input": text, **body},
            }
        ).encode()
        + b"\n"
        for index, text in enumerate(texts)
    )


@pytest.fixture
def server(live_server, settings):
    settings.BATCH_CHUNK_TOKENS = 64
    EmbeddingModelFactory()
    return live_server.url


@pytest.fixture
def key(server) -> ApiKey:
    return ApiKeyFactory()


@pytest.fixture
def oai(server, key) -> openai.OpenAI:
    import openai  # here: collecting the other layers need not load the SDK

    return openai.OpenAI(base_url=f"{server}/v1", api_key=key.plaintext, max_retries=0)


def wait_until_stopped(oai: openai.OpenAI, batch_id: str) -> Any:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        batch = oai.batches.retrieve(batch_id)
        if batch.status in {"completed", "failed", "cancelled", "expired"}:
            return batch
        time.sleep(0.1)
    pytest.fail(f"batch {batch_id} still {batch.status} after 120 s")


def test_the_openai_sdk_runs_a_batch_unchanged(oai, key) -> None:
    start = ApiKey.objects.get(pk=key.pk).balance
    uploaded = oai.files.create(file=("batch.jsonl", openai_lines(TEXTS)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(openai_lines(TEXTS))
    assert oai.files.retrieve(uploaded.id).filename == "batch.jsonl"
    assert oai.files.content(uploaded.id).read() == openai_lines(TEXTS)

    created = oai.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata={"project": "tests"},
    )
    assert created.status in {"validating", "in_progress", "completed"}
    assert created.input_file_id == uploaded.id and created.metadata == {"project": "tests"}

    batch = wait_until_stopped(oai, created.id)

    assert batch.status == "completed"
    assert batch.request_counts.total == batch.request_counts.completed == len(TEXTS)
    assert batch.request_counts.failed == 0 and batch.error_file_id is None
    assert batch.completed_at >= batch.created_at and batch.output_file_id
    output_file = oai.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output"
    content = oai.files.content(batch.output_file_id).read()
    assert output_file.bytes == len(content)
    lines = [json.loads(line) for line in content.splitlines()]
    assert [line["custom_id"] for line in lines] == [f"doc-{n}" for n in range(len(TEXTS))]

    direct = oai.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    for line, item in zip(lines, direct.data, strict=True):
        assert line["response"]["status_code"] == 200 and line["error"] is None
        body = line["response"]["body"]
        np.testing.assert_allclose(body["data"][0]["embedding"], item.embedding, atol=1e-5)
    tokens = sum(line["response"]["body"]["usage"]["total_tokens"] for line in lines)
    assert tokens == direct.usage.total_tokens == batch.usage.total_tokens
    debits = LedgerEntry.objects.filter(api_key=key, usage__endpoint="batch")
    assert -sum(debits.values_list("tokens", flat=True)) == tokens
    assert ApiKey.objects.get(pk=key.pk).balance == start - 2 * tokens

    listed = oai.batches.list(limit=10)
    assert [item.id for item in listed.data] == [created.id]


def test_the_same_inline_job_on_the_jina_route_of_the_embedded_default(server, key) -> None:
    """The Jina format on the live server's own threads (no broker, SQLite)."""
    headers = {"Authorization": f"Bearer {key.plaintext}"}
    lines = [{"custom_id": f"j-{n}", "body": {"input": text}} for n, text in enumerate(TEXTS)]
    created = requests.post(
        f"{server}/v1/batch/embeddings",
        json={"model": MODEL, "input": lines, "embedding_type": "base64"},
        headers=headers,
        timeout=30,
    ).json()
    deadline = time.monotonic() + 120
    status = created
    while status["status"] in {"pending", "processing"} and time.monotonic() < deadline:
        time.sleep(0.1)
        status = requests.get(
            f"{server}/v1/batch/{created['batch_id']}", headers=headers, timeout=30
        ).json()
    assert_valid(status, "BatchStatus")
    assert status["status"] == "completed"
    response = requests.get(status["output_url"], headers=headers, timeout=30)
    assert response.headers["Content-Type"] == "application/jsonl"
    output = [json.loads(line) for line in response.content.splitlines()]
    assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]
    assert all(isinstance(o["response"]["body"]["data"][0]["embedding"], str) for o in output)
    tokens = sum(line["response"]["body"]["usage"]["total_tokens"] for line in output)
    assert status["stats"]["total_tokens"] == tokens


WINDOW = {"endpoint": "/v1/embeddings", "completion_window": "24h"}


def test_bad_uploads_and_batches_are_refused_with_codes(oai, settings) -> None:
    import openai  # here: collecting the other layers need not load the SDK

    settings.BATCH_MAX_LINES = 5
    settings.BATCH_MAX_FILE_BYTES = 2000
    good = openai_lines(TEXTS[:2])
    cases = [
        (b'{"custom_id": "a", "body": {"input": "x"}}\nnot json\n', "INPUT_INVALID_JSON", 400),
        (b'{"body": {"input": "x"}}\n', "INPUT_VALIDATION_ERROR", 400),
        (openai_lines(["x"]) * 2, "INPUT_VALIDATION_ERROR", 400),  # duplicate custom_id
        (openai_lines(["x"] * 6), "INPUT_TOO_MANY_ITEMS", 400),
        (openai_lines(["x"], model="no-such-model"), "INPUT_MODEL_NOT_FOUND", 400),
        (good.replace(b"/v1/embeddings", b"/v1/chat/completions"), "INPUT_VALIDATION_ERROR", 400),
        (openai_lines(["word " * 400]), "INPUT_BODY_TOO_LARGE", 413),
        (b"", "INPUT_EMPTY", 400),
    ]
    for content, code, status in cases:
        with pytest.raises(openai.APIStatusError) as raised:
            oai.files.create(file=("batch.jsonl", content), purpose="batch")
        assert raised.value.status_code == status, (content[:60], raised.value.body)
        assert raised.value.body["code"] == code

    with pytest.raises(openai.BadRequestError) as raised:
        oai.files.create(file=("batch.jsonl", good), purpose="fine-tune")
    assert raised.value.body["param"] == "purpose"

    uploaded = oai.files.create(file=("batch.jsonl", good), purpose="batch")
    for kwargs, param in [
        ({"endpoint": "/v1/chat/completions", "completion_window": "24h"}, "endpoint"),
        ({"endpoint": "/v1/embeddings", "completion_window": "48h"}, "completion_window"),
        # OpenAI's metadata bounds: 16 keys, keys of 64 characters, values of 512.
        ({**WINDOW, "metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
        ({**WINDOW, "metadata": {"k" * 65: "v"}}, "metadata"),
        ({**WINDOW, "metadata": {"k": "v" * 513}}, "metadata"),
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            oai.batches.create(input_file_id=uploaded.id, **kwargs)
        assert raised.value.body["code"] == "INPUT_VALIDATION_ERROR"
        assert raised.value.body["param"].split(".")[0] == param  # metadata.<key> for a value
    with pytest.raises(openai.NotFoundError):
        oai.batches.create(
            input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h"
        )
    assert oai.batches.list().data == []
    widest = {f"{n:0>64}": "v" * 512 for n in range(16)}
    created = oai.batches.create(input_file_id=uploaded.id, metadata=widest, **WINDOW)
    assert created.metadata == widest
    assert wait_until_stopped(oai, created.id).status == "completed"


def test_another_key_cannot_see_or_cancel_a_batch(oai, server) -> None:
    """ADVERSARIAL 3 through the SDK: NotFoundError for every read, cancel and download."""
    import openai  # here: collecting the other layers need not load the SDK

    uploaded = oai.files.create(file=("batch.jsonl", openai_lines(TEXTS[:3])), purpose="batch")
    batch = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    batch = wait_until_stopped(oai, batch.id)
    other = openai.OpenAI(base_url=f"{server}/v1", api_key=ApiKeyFactory().plaintext, max_retries=0)
    for call in (
        lambda: other.batches.retrieve(batch.id),
        lambda: other.batches.cancel(batch.id),
        lambda: other.files.retrieve(uploaded.id),
        lambda: other.files.content(uploaded.id),
        lambda: other.files.content(batch.output_file_id),
        lambda: other.files.delete(uploaded.id),
        lambda: other.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.batches.list().data == [] and other.files.list().data == []
    assert oai.batches.retrieve(batch.id).status == "completed"
    assert oai.files.content(batch.output_file_id).read().count(b"\n") == 3

    with pytest.raises(openai.ConflictError) as raised:  # stopped: nothing to cancel
        oai.batches.cancel(batch.id)
    assert raised.value.body["code"] == "RESOURCE_CONFLICT"
    assert [f.id for f in oai.files.list().data] == [uploaded.id]
    assert oai.files.delete(uploaded.id).deleted is True
    assert oai.files.list().data == []
