"""Issue 14.6: the published schema and the API agree. A bounded schemathesis run against the
real server (gunicorn, a funded key, a fixed seed, every check): any 5xx, any response, status
or header the schema does not describe, and any request the schema calls invalid that the
server accepts fails it. tests/site/schemathesis.toml states the few exceptions and why.
Then the eight findings of the issue, each pinned on its own."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infra import Gateway

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = 42
MAX_EXAMPLES = 40  # per operation and phase: about 1,500 requests in all


@pytest.mark.e2e
def test_schemathesis_finds_no_server_error_and_no_schema_disagreement(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=4,
        env={"IP_RATE_LIMIT_ANONYMOUS": "100000/m"},
    ).start()
    gateways.append(gateway)
    key = gateway.manage(
        "createkey",
        "--email=fuzz@example.com",
        "--tokens=1000000000",
        "--rpm=1000000",
        "--tpm=1000000000",
        "--concurrency=100",
    ).stdout.split()[-1]
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(CONFIG),
            "--no-color",
            "run",
            f"{gateway.url}/api/schema/",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            "all",
            "--seed",
            str(SEED),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "60",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
    assert " passed" in run.stdout
    # Whatever the fuzzer did, every token is accounted for.
    assert gateway.manage("ledger_check", check=False).returncode == 0


# --- The findings, one by one (through the test client, against /api/schema/) -------------


@pytest.fixture
def schema(client: Any, db: None) -> dict[str, Any]:
    return client.get("/api/schema/?format=json").json()


def component(schema: dict[str, Any], name: str) -> dict[str, Any]:
    components = schema["components"]["schemas"]
    return components.get(name) or components[f"{name}Request"]


def test_the_result_downloads_document_their_401(schema: dict[str, Any]) -> None:
    for path in ("/v1/batch/{batch_id}/output", "/v1/batch/{batch_id}/errors"):
        assert "401" in schema["paths"][path]["get"]["responses"], path
    assert "401" in schema["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]


@pytest.mark.usefixtures("default_model")
def test_what_the_schema_refuses_the_api_refuses(
    schema: dict[str, Any], post_embeddings: Any, api_key: Any, client: Any
) -> None:
    request = component(schema, "EmbeddingRequest")["properties"]
    assert request["embedding_type"]["anyOf"][1]["minItems"] == 1
    assert request["input"]["anyOf"][0]["pattern"]  # some text, not "" nor spaces
    assert request["user"]["type"] == "string"
    for body, code in (
        ({"input": "hi", "embedding_type": []}, "INPUT_VALIDATION_ERROR"),
        ({"input": ""}, "INPUT_EMPTY"),
        ({"input": " \u200b\x00"}, "INPUT_EMPTY"),
        ({"input": "hi", "user": 0}, "INPUT_VALIDATION_ERROR"),
    ):
        response = post_embeddings(body)
        assert response.status_code == 400, body
        assert response.json()["code"] == code, body

    batch = component(schema, "JinaBatchRequest")
    assert batch["properties"]["input_url"]["minLength"] == 1
    assert batch["oneOf"] == [{"required": ["input"]}, {"required": ["input_url"]}]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key.plaintext}"}
    line = {"custom_id": "a", "body": {"input": "hi"}}
    for body in ({"input_url": ""}, {}, {"input": [line], "input_url": "https://example.com/a"}):
        response = client.post(
            "/v1/batch/embeddings", body, content_type="application/json", **auth
        )
        assert response.status_code == 400, body

    upload = component(schema, "FileUploadRequest")
    assert upload["properties"]["purpose"]  # an enum of "batch"
    response = client.post("/v1/files", {"purpose": "assistants", "file": _jsonl(line)}, **auth)
    assert response.status_code == 400
    assert "purpose must be 'batch'" in response.json()["detail"]


def _jsonl(line: dict[str, Any]) -> Any:
    handle = io.BytesIO(json.dumps(line).encode() + b"\n")
    handle.name = "lines.jsonl"
    return handle
