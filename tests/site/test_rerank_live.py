"""Rerank against a real gunicorn on Postgres: the `cohere` SDK's ClientV2.rerank unchanged,
Jina's RerankingResponse, and every charge equal to the usage answered (ledger_check)."""

from __future__ import annotations

import json

import cohere
import pytest
import requests

from tests.inference.cross_encoders import MAX_TOKENS, make_tiny_cross_encoder
from tests.infra import Gateway
from tests.jina_spec import assert_error_envelope, assert_valid

pytestmark = pytest.mark.e2e

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Photosynthesis turns sunlight into chemical energy in plants.",
    "Paris is the capital and largest city of France.",
    "The stock market fell sharply on Tuesday.",
]
RERANKER = "tiny-reranker"


@pytest.fixture
def gateway(gateways, tmp_path, postgres_url) -> Gateway:
    checkpoint = make_tiny_cross_encoder(tmp_path / "tiny-cross-encoder")
    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=4,
        env={"DATABASE_URL": postgres_url, "RERANK_MAX_DOCUMENTS": "10"},
    )
    gateway.directory.mkdir(parents=True, exist_ok=True)
    gateway.manage("migrate", "--noinput", "-v0")
    gateway.manage(
        "register_model", "--name", RERANKER, "--kind", "reranker", "--source", str(checkpoint),
        "--dimensions", "1", "--max-tokens", str(MAX_TOKENS),
    )  # fmt: skip
    gateways.append(gateway.start())
    return gateway


def create_key(gateway: Gateway) -> str:
    result = gateway.manage("createkey", "--email", "rerank@example.com", "--tokens", "100000")
    return result.stdout.strip().splitlines()[-1]


def key_state(gateway: Gateway, key: str) -> dict:
    script = (
        "import json; from metering.selectors import api_key_get_active; "
        "from billing.models import UsageRecord; "
        f"k = api_key_get_active(key={key!r}); "
        "rows = list(UsageRecord.objects.filter(api_key=k).values_list('endpoint', 'charged_tokens')); "
        "print(json.dumps({'balance': k.balance, 'rows': rows}))"
    )
    return json.loads(gateway.manage("shell", "-c", script).stdout.strip().splitlines()[-1])


def test_the_cohere_sdk_reranks_unchanged(gateway) -> None:
    key = create_key(gateway)
    before = key_state(gateway, key)["balance"]
    client = cohere.ClientV2(api_key=key, base_url=gateway.url)
    charged = 0
    for model in ("all-MiniLM-L6-v2", RERANKER):
        response = client.rerank(model=model, query=QUERY, documents=DOCUMENTS, top_n=2)
        assert len(response.results) == 2
        scores = [result.relevance_score for result in response.results]
        assert scores == sorted(scores, reverse=True)
        assert {result.index for result in response.results} <= set(range(len(DOCUMENTS)))
        assert response.id
        assert response.meta is not None and response.meta.billed_units is not None
        charged += int(response.meta.billed_units.input_tokens or 0)
        if model == "all-MiniLM-L6-v2":
            assert response.results[0].index == 1  # the document about Paris, by cosine
    with pytest.raises(cohere.errors.BadRequestError):
        client.rerank(model=RERANKER, query=QUERY, documents=["a document"] * 11)
    state = key_state(gateway, key)
    assert before - state["balance"] == charged > 0
    assert {endpoint for endpoint, tokens in state["rows"] if tokens} == {"rerank"}
    assert sum(tokens for _, tokens in state["rows"]) == charged
    assert gateway.manage("ledger_check", check=False).returncode == 0


def test_jina_rerank_answers_a_reranking_response(gateway) -> None:
    key = create_key(gateway)
    headers = {"Authorization": f"Bearer {key}"}
    before = key_state(gateway, key)["balance"]
    charged = 0
    for model in ("all-MiniLM-L6-v2", RERANKER):
        response = requests.post(
            f"{gateway.url}/v1/rerank",
            json={"model": model, "query": QUERY, "documents": DOCUMENTS, "top_n": 3},
            headers=headers,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert_valid(body, "RerankingResponse")
        assert [r["document"]["text"] for r in body["results"]] == [
            DOCUMENTS[r["index"]] for r in body["results"]
        ]
        charged += body["usage"]["total_tokens"]
    refused = requests.post(
        f"{gateway.url}/v1/rerank",
        json={"model": RERANKER, "query": QUERY, "documents": ["word " * 500]},
        headers=headers,
        timeout=60,
    )
    assert refused.status_code == 400
    assert_error_envelope(refused.json(), "INPUT_TOKEN_LIMIT_EXCEEDED")
    assert before - key_state(gateway, key)["balance"] == charged
    assert gateway.manage("ledger_check", check=False).returncode == 0
