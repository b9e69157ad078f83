"""vLLM's fields and /v1/tokenize against a real gunicorn, with the openai SDK as the client."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.infra import Gateway, create_key


@pytest.mark.e2e
def test_openai_sdk_with_vllm_fields_and_tokenize(gateways: list[Gateway], tmp_path: Path) -> None:
    import openai  # here: collecting the other layers need not load the SDK

    gateway = Gateway(tmp_path / "gw", workers=1, threads=2, env={}).start()
    gateways.append(gateway)
    key = create_key(gateway, "--tokens=100000", "--rpm=1000", email="vllm@example.com")
    client = openai.OpenAI(api_key=key, base_url=f"{gateway.url}/v1")
    text = "Half precision halves the bytes on the wire."

    full = client.embeddings.create(model="all-MiniLM-L6-v2", input=text, encoding_format="float")
    reference = np.array(full.data[0].embedding, dtype=np.float32)
    half = client.embeddings.create(
        model="all-MiniLM-L6-v2",
        input=text,
        encoding_format="base64",
        extra_body={"embed_dtype": "float16"},
    )
    values = np.frombuffer(base64.b64decode(half.data[0].embedding), dtype=np.float16)
    np.testing.assert_allclose(values.astype(np.float32), reference, rtol=2**-11, atol=2**-24)

    cut = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=text, extra_body={"truncate_prompt_tokens": 5}
    )
    assert cut.usage.total_tokens == 5
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(
            model="all-MiniLM-L6-v2", input=text, extra_body={"truncate_prompt_tokens": 8193}
        )
    assert refused.value.response.json()["error"]["param"] == "truncate_prompt_tokens"

    multi = requests.post(
        f"{gateway.url}/v1/embeddings",
        json={"input": [text], "return_multivector": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ).json()
    assert len(multi["data"][0]["embeddings"]) == multi["usage"]["total_tokens"]

    tokens = requests.post(
        f"{gateway.url}/v1/tokenize",
        json={"prompt": text},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert tokens.status_code == 200
    assert tokens.json()["count"] == full.usage.total_tokens
    assert tokens.headers["X-RateLimit-Limit-Requests"] == "1000"
    charged = (
        full.usage.total_tokens
        + half.usage.total_tokens
        + cut.usage.total_tokens
        + multi["usage"]["total_tokens"]
    )
    balance = gateway.manage(
        "shell",
        "-c",
        "from billing.models import ApiKey; "
        "print(ApiKey.objects.get(user__email='vllm@example.com').balance)",
    )
    assert int(balance.stdout.split()[-1]) == 100000 - charged  # tokenize cost nothing
    assert gateway.manage("ledger_check", check=False).returncode == 0
