"""Classification through a real gunicorn with the `requests` library: train, classify, list,
delete, and every charge in the ledger."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.classifiers.topics import held_out, training_items
from tests.infra import Gateway, create_key
from tests.jina_spec import assert_valid

pytestmark = pytest.mark.e2e


def test_train_classify_and_delete_on_a_live_server(gateways, tmp_path) -> None:
    gateway = Gateway(tmp_path / "gw", workers=1, threads=4, env={}).start()
    gateways.append(gateway)
    owner = create_key(gateway, "--tokens", "100000", email="owner@example.com")
    stranger = create_key(gateway, "--tokens", "100000", email="stranger@example.com")
    session = requests.Session()

    def post(path: str, body: dict, key: str = owner) -> requests.Response:
        return session.post(
            f"{gateway.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )

    trained = post("/v1/train", {"input": training_items(), "num_iters": 3})
    assert trained.status_code == 200, trained.text
    assert_valid(trained.json(), "TrainingResponse")
    classifier_id = trained.json()["classifier_id"]

    texts, truth = held_out()
    few_shot = post("/v1/classify", {"classifier_id": classifier_id, "input": texts})
    assert few_shot.status_code == 200, few_shot.text
    assert_valid(few_shot.json(), "ClassificationResponse")
    predicted = [item["prediction"] for item in few_shot.json()["data"]]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= 0.8 * len(truth)

    zero_shot = post("/v1/classify", {"input": texts[:3], "labels": ["sports", "cooking"]})
    assert zero_shot.status_code == 200, zero_shot.text
    assert_valid(zero_shot.json(), "ClassificationResponse")
    assert zero_shot.headers["X-RateLimit-Limit-Requests"]

    assert (
        post("/v1/classify", {"classifier_id": classifier_id, "input": "x"}, stranger).status_code
        == 404
    )
    listed = session.get(
        f"{gateway.url}/v1/classifiers", headers={"Authorization": f"Bearer {owner}"}
    )
    assert [item["classifier_id"] for item in listed.json()] == [classifier_id]
    deleted = session.delete(
        f"{gateway.url}/v1/classifiers/{classifier_id}/",
        headers={"Authorization": f"Bearer {owner}"},
    )
    assert deleted.status_code == 200, deleted.text
    assert post("/v1/classify", {"classifier_id": classifier_id, "input": "x"}).status_code == 404

    # The balance fell by exactly the usage the three served requests reported.
    charged = sum(r.json()["usage"]["total_tokens"] for r in (trained, few_shot, zero_shot))
    script = (
        "import json; from metering.selectors import api_key_get_active; "
        "from billing.models import UsageRecord; "
        f"k = api_key_get_active(key={owner!r}); "
        "rows = UsageRecord.objects.filter(api_key=k, status='succeeded'); "
        "print(json.dumps({'balance': k.balance, "
        "'endpoints': sorted(rows.values_list('endpoint', flat=True)), "
        "'charged': sum(rows.values_list('charged_tokens', flat=True))}))"
    )
    state = json.loads(gateway.manage("shell", "-c", script).stdout.strip().splitlines()[-1])
    assert state == {
        "balance": 100000 - charged,
        "endpoints": ["classify", "classify", "train"],
        "charged": charged,
    }
    assert gateway.manage("ledger_check", check=False).returncode == 0


def test_concurrent_updates_of_one_classifier_all_apply_on_postgres(
    gateways, postgres_url, tmp_path
) -> None:
    gateway = Gateway(
        tmp_path / "gw", workers=2, threads=4, env={"DATABASE_URL": postgres_url}
    ).start()
    gateways.append(gateway)
    key = create_key(gateway, "--tokens", "1000000", "--concurrency", "10")
    headers = {"Authorization": f"Bearer {key}"}
    items = training_items()
    created = requests.post(
        f"{gateway.url}/v1/train",
        json={"input": items[:6], "num_iters": 2},
        headers=headers,
        timeout=120,
    )
    assert created.status_code == 200, created.text
    classifier_id = created.json()["classifier_id"]
    batches = [items[6 + 6 * i : 12 + 6 * i] for i in range(4)]
    barrier = threading.Barrier(len(batches))

    def update(batch: list[dict]) -> requests.Response:
        barrier.wait()
        return requests.post(
            f"{gateway.url}/v1/train",
            json={"classifier_id": classifier_id, "input": batch, "num_iters": 2},
            headers=headers,
            timeout=120,
        )

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        responses = list(pool.map(update, batches))

    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    summary = requests.get(
        f"{gateway.url}/v1/classifiers/{classifier_id}", headers=headers, timeout=30
    ).json()
    # No update was lost: each one retrained on everything committed before it.
    assert summary["updated_number"] == 4
    assert summary["metadata_"]["num_samples"] == 30
    assert gateway.manage("ledger_check", check=False).returncode == 0
