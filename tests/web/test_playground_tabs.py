"""The playground's Rerank and Classify tabs in a real browser (Playwright on Debian's chromium),
on the embedded default model, against the live API (issue 15).

What a user sees must be what the API answers: the ranked documents with the API's own scores,
each input's labels with the API's scores and the prediction highlighted, on the one key the
tabs share; and the page keeps its strict Content-Security-Policy (the `page` fixture fails a
test on any refusal).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from billing.models import ApiKey
from billing.services import api_key_grant
from inference.models import EmbeddingModel
from tests.factories import ApiKeyFactory, EmbeddingModelFactory
from tests.web import test_browser as browser_tests
from tests.web.test_browser import shot, wait_for_playground_key

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = pytest.mark.django_db(transaction=True)

# test_browser's chromium and its page, which fails a test on any CSP refusal.
browser = browser_tests.browser
page = browser_tests.page

MODEL = "all-MiniLM-L6-v2"
QUERY = "Which animal can run the fastest?"
DOCUMENTS = [
    "Quarterly revenue grew by twelve percent on strong cloud sales.",
    "The cheetah is the fastest land animal, sprinting at over 100 km/h.",
    "Paris is the capital and largest city of France.",
]
INPUTS = [
    "The striker scored twice in the final minutes to win the match.",
    "The central bank raised interest rates again to fight inflation.",
]
LABELS = ["Sports", "Finance"]


def api(base: str, path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """The same request sent straight to the API, as a client would."""
    response = requests.post(
        f"{base}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def rendered(page: Any, selector: str) -> list[dict[str, Any]]:
    """The rows a result list shows: their data attributes and visible score."""
    return [
        {
            "index": item.get_attribute("data-index"),
            "label": item.get_attribute("data-label"),
            "score": float(item.get_attribute("data-score") or "nan"),
            "shown": item.query_selector(".score").text_content(),
            "classes": item.get_attribute("class") or "",
            "bar": item.query_selector(".score-bar > span").evaluate(
                "node => node.getBoundingClientRect().width"
            ),
        }
        for item in page.query_selector_all(selector)
    ]


def test_rerank_three_documents_shows_the_relevant_one_first_with_the_apis_scores(
    live_server: Any, page: Any, tmp_path: Path
) -> None:
    EmbeddingModelFactory()
    api_key = ApiKeyFactory()
    before = api_key.balance
    base = live_server.url
    page.goto(f"{base}/")
    page.fill("#pg-key", api_key.plaintext)
    page.click("#pg-tab-rerank")
    assert page.is_visible("#pg-rerank-query") and not page.is_visible("#pg-model")
    assert page.text_content("#pg-run") == "Rerank"
    page.select_option("#pg-rerank-model", MODEL)
    page.fill("#pg-rerank-query", QUERY)
    page.fill("#pg-rerank-documents", "\n".join(DOCUMENTS))
    page.click("#pg-run")
    page.wait_for_selector("#pg-ranking-list")
    shot(page, "playground-rerank")

    response = json.loads(page.text_content("#pg-response") or "{}")
    expected = api(
        base,
        "/v1/rerank",
        api_key.plaintext,
        {"model": MODEL, "query": QUERY, "documents": DOCUMENTS, "return_documents": True},
    )
    rows = rendered(page, "#pg-ranking-list li")
    assert [row["index"] for row in rows] == [str(r["index"]) for r in expected["results"]]
    assert rows[0]["index"] == "1", "the cheetah document answers the query"
    for row, result in zip(rows, expected["results"], strict=True):
        assert row["score"] == pytest.approx(result["relevance_score"], abs=1e-6)
        assert row["shown"] == f"{result['relevance_score']:.4f}"
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)
    # Longer bars for higher scores, and each document's own text beside its score.
    assert rows[0]["bar"] > rows[-1]["bar"] >= 0
    texts = page.locator("#pg-ranking-list li .score-text").all_text_contents()
    assert texts == [DOCUMENTS[int(row["index"] or 0)] for row in rows]

    # The usage shown is what was charged, for the page's request and the test's own.
    total = response["usage"]["total_tokens"]
    assert total == expected["usage"]["total_tokens"] > 0
    assert page.text_content("#pg-total-tokens") == f"{total} tokens"
    assert ApiKey.objects.get(pk=api_key.pk).balance == before - 2 * total

    # The snippets are exactly this request: run as written, they get the same ranking.
    curl = page.text_content("#snippet-curl") or ""
    assert "/v1/rerank" in curl and api_key.plaintext not in curl
    assert not page.is_visible(".tab[data-tab=openai]")  # the openai SDK has no rerank
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run the curl snippet")
    output = subprocess.run(
        ["bash", "-c", curl],
        env={**os.environ, "EMBEDDINGS_API_KEY": api_key.plaintext},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    outputs = {"curl": output}
    # The requests and cohere SDK snippets too (Cohere's v2 client posts to /v2/rerank).
    page.click(".tab[data-tab=cohere]")
    shot(page, "playground-rerank-cohere")
    for name in ("requests", "cohere"):
        script = tmp_path / f"snippet_{name}.py"
        script.write_text(page.text_content(f"#snippet-{name}") or "")
        run = subprocess.run(
            [sys.executable, str(script)],
            env={**os.environ, "EMBEDDINGS_API_KEY": api_key.plaintext},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        outputs[name] = run.stdout
    for name, text in outputs.items():
        results = json.loads(text)["results"]
        assert [r["index"] for r in results] == [r["index"] for r in expected["results"]], name
        assert [r["relevance_score"] for r in results] == pytest.approx(
            [r["relevance_score"] for r in expected["results"]], abs=1e-6
        ), name


def test_classify_two_inputs_with_two_labels_shows_the_right_predictions(
    live_server: Any, page: Any
) -> None:
    EmbeddingModelFactory()
    api_key = ApiKeyFactory()
    base = live_server.url
    page.goto(f"{base}/#classify")  # a tab can be linked to
    page.fill("#pg-key", api_key.plaintext)
    assert page.is_visible("#pg-classify-inputs")
    page.select_option("#pg-classify-model", MODEL)
    page.fill("#pg-classify-inputs", "\n".join(INPUTS))
    page.fill("#pg-classify-labels", "\n".join(LABELS))
    page.click("#pg-run")
    page.wait_for_selector("#pg-labels-list")
    shot(page, "playground-classify")

    expected = api(
        base, "/v1/classify", api_key.plaintext, {"model": MODEL, "input": INPUTS, "labels": LABELS}
    )
    sections = page.query_selector_all("#pg-labels-list section.classification")
    assert [s.get_attribute("data-prediction") for s in sections] == ["Sports", "Finance"]
    assert [s.get_attribute("data-prediction") for s in sections] == [
        item["prediction"] for item in expected["data"]
    ]
    for section, item in zip(sections, expected["data"], strict=True):
        assert section.query_selector(".classified-input").text_content() == INPUTS[item["index"]]
        scores = {
            entry.get_attribute("data-label"): float(entry.get_attribute("data-score") or "nan")
            for entry in section.query_selector_all("li.label-score")
        }
        assert scores == {
            p["label"]: pytest.approx(p["score"], abs=1e-6) for p in item["predictions"]
        }
        # The prediction is highlighted, first, and only it.
        highlighted = section.query_selector_all("li.prediction")
        assert [h.get_attribute("data-label") for h in highlighted] == [item["prediction"]]
        first = section.query_selector("li.label-score")
        assert first.get_attribute("data-label") == item["prediction"]
    total = json.loads(page.text_content("#pg-response") or "{}")["usage"]["total_tokens"]
    assert total == expected["usage"]["total_tokens"] > 0


def test_the_tabs_share_the_key_and_offer_the_models_that_serve_them(
    live_server: Any, page: Any, settings: Any
) -> None:
    EmbeddingModelFactory()
    # A cross-encoder serves rerank only: it is not offered for embeddings or classification.
    EmbeddingModel.objects.create(
        name="tiny-reranker",
        kind="reranker",
        backend="cpu",
        source="/nonexistent/only-listed",
        dimensions=1,
        max_tokens=128,
    )
    page.goto(f"{live_server.url}/")
    page.click("#pg-get-key")  # a visitor's trial key, on the Embed tab
    wait_for_playground_key(page)
    key = page.input_value("#pg-key")

    def offered(select: str) -> list[str]:
        return [o.get_attribute("value") or "" for o in page.query_selector_all(f"{select} option")]

    assert "tiny-reranker" not in offered("#pg-model")
    assert "tiny-reranker" not in offered("#pg-classify-model")
    assert offered("#pg-rerank-model") == [MODEL, "tiny-reranker"]

    page.click("#pg-tab-rerank")
    assert page.input_value("#pg-key") == key
    page.select_option("#pg-rerank-model", MODEL)
    page.click("#pg-run")
    page.wait_for_selector("#pg-ranking-list")
    rerank_tokens = json.loads(page.text_content("#pg-response") or "{}")["usage"]["total_tokens"]

    # Back on Embed, its own result area and response are there, not the rerank's.
    page.click("#pg-tab-embed")
    assert page.text_content("#pg-run") == "Embed"
    assert page.text_content("#pg-response") == "{}"
    page.click("#pg-tab-classify")
    page.click("#pg-run")
    page.wait_for_selector("#pg-labels-list")
    classify_tokens = json.loads(page.text_content("#pg-response") or "{}")["usage"]["total_tokens"]
    trial = ApiKey.objects.get(name="playground trial")
    assert trial.balance == settings.VISITOR_TRIAL_TOKENS - rerank_tokens - classify_tokens
    page.click("#pg-tab-rerank")  # the rerank result is still shown on its tab
    assert page.is_visible("#pg-ranking-list")
    assert json.loads(page.text_content("#pg-response") or "{}")["usage"]["total_tokens"] == (
        rerank_tokens
    )


def test_the_rerank_and_classify_results_fit_a_phone(live_server: Any, browser: Any) -> None:
    EmbeddingModelFactory()
    api_key = ApiKeyFactory()
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    refused = browser_tests.csp_violations(phone)
    for tab, result in (("rerank", "#pg-ranking-list"), ("classify", "#pg-labels-list")):
        phone.goto(f"{live_server.url}/#{tab}")
        phone.fill("#pg-key", api_key.plaintext)
        phone.click("#pg-run")
        phone.wait_for_selector(result)
        overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the {tab} tab is {overflow}px wider than the screen"
        shot(phone, f"mobile-playground-{tab}")
    context.close()
    assert not refused, f"the Content-Security-Policy refused: {refused}"


def test_classify_with_a_trained_classifier_shows_its_labels_and_predictions(
    live_server: Any, page: Any
) -> None:
    from tests.classifiers.topics import HELD_OUT, training_items

    EmbeddingModelFactory()
    api_key = ApiKeyFactory()
    base = live_server.url
    trained = api(
        base,
        "/v1/train",
        api_key.plaintext,
        {"model": MODEL, "input": training_items(), "num_iters": 3},
    )
    inputs = [HELD_OUT["astronomy"][0], HELD_OUT["sports"][0]]
    expected = api(
        base,
        "/v1/classify",
        api_key.plaintext,
        {"classifier_id": trained["classifier_id"], "input": inputs},
    )
    page.goto(f"{base}/#classify")
    page.fill("#pg-key", api_key.plaintext)
    page.fill("#pg-classifier-id", trained["classifier_id"])
    page.fill("#pg-classify-inputs", "\n".join(inputs))
    page.click("#pg-run")
    page.wait_for_selector("#pg-labels-list")
    shot(page, "playground-classify-few-shot")
    sent = json.loads((page.text_content("#snippet-curl") or "").split("<<'JSON'\n")[1][:-6])
    assert sent == {"classifier_id": trained["classifier_id"], "input": inputs}
    sections = page.query_selector_all("#pg-labels-list section.classification")
    assert [s.get_attribute("data-prediction") for s in sections] == [
        item["prediction"] for item in expected["data"]
    ]
    for section, item in zip(sections, expected["data"], strict=True):
        labels = [e.get_attribute("data-label") for e in section.query_selector_all("li")]
        assert sorted(labels) == sorted(p["label"] for p in item["predictions"])


def test_what_the_tabs_ran_shows_on_the_dashboard_by_endpoint(live_server: Any, page: Any) -> None:
    from billing.models import User

    EmbeddingModelFactory()
    user = User.objects.create_user(email="tabs@example.com", password=browser_tests.PASSWORD)
    api_key = ApiKeyFactory(user=user)
    api_key_grant(api_key=api_key, tokens=10_000, note="an unverified account's key starts empty")
    base = live_server.url
    browser_tests.log_in(page, base, "tabs@example.com")
    page.goto(f"{base}/")
    page.fill("#pg-key", api_key.plaintext)
    charged = {}
    for tab, result in (("rerank", "#pg-ranking-list"), ("classify", "#pg-labels-list")):
        page.click(f"#pg-tab-{tab}")
        page.click("#pg-run")
        page.wait_for_selector(result)
        charged[tab] = json.loads(page.text_content("#pg-response") or "{}")["usage"][
            "total_tokens"
        ]
    page.click("#pg-tab-embed")
    page.click("#pg-run")
    page.wait_for_selector("#pg-heatmap-table")
    charged["embeddings"] = json.loads(page.text_content("#pg-response") or "{}")["usage"][
        "total_tokens"
    ]

    for path in ("/dashboard/", f"/dashboard/keys/{api_key.pk}/"):
        page.goto(f"{base}{path}")
        shown = {
            row.get_attribute("data-endpoint"): int(
                row.query_selector("td[data-tokens]").get_attribute("data-tokens")
            )
            for row in page.query_selector_all("#usage-by-endpoint tr[data-endpoint]")
        }
        assert shown == charged, path
    shot(page, "key-detail-by-endpoint")
