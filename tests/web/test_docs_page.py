"""Issue 16, bug 7: the API reference at /docs/. Its schema types every /v1 answer (no free-form
object for Redoc to sample as `property1`), describes every request field and names its
components once ("EmbeddingRequest", not "EmbeddingRequestRequest"); in a real browser the page
loads with nothing refused and nothing from another origin, and leads back to the site."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from tests.factories import EmbeddingModelFactory
from tests.web import test_browser as browser_tests
from tests.web.test_browser import ARTIFACTS

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

browser = browser_tests.browser


# Objects the reference spec (shared/reference/jina-openapi.json) leaves open itself.
OPEN_BY_SPEC = {
    f"{answer}.items.properties.metadata_"
    for answer in ("GET /v1/classifiers 200", "POST /v1/classifiers 200")
} | {"GET /v1/classifiers/{classifier_id} 200.properties.metadata_"}


@pytest.fixture
def schema(client: Client, db: None) -> dict[str, Any]:
    return dict(client.get("/api/schema/?format=json").json())


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def free_form_objects(schema: dict[str, Any], node: Any, path: str, seen: set[str]) -> list[str]:
    """Where an object's properties are left open (`additionalProperties: {}` with none
    named): Redoc samples those as `property1`, `property2`."""
    if isinstance(node, list):
        return [
            hit
            for i, item in enumerate(node)
            for hit in free_form_objects(schema, item, f"{path}[{i}]", seen)
        ]
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        if node["$ref"] in seen:
            return []
        seen.add(node["$ref"])
        return free_form_objects(schema, resolve(schema, node), node["$ref"], seen)
    hits = []
    # Jina's ClassifierSummary.metadata_ is open in Jina's own spec too (OPEN_BY_SPEC).
    open_object = node.get("type") == "object" and not node.get("properties")
    left_open = node.get("additionalProperties", True) in ({}, True)
    if open_object and left_open and path not in OPEN_BY_SPEC:
        hits.append(path)
    for key, value in node.items():
        hits.extend(free_form_objects(schema, value, f"{path}.{key}", seen))
    return hits


def json_answers(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for route, item in schema["paths"].items():
        for method, operation in item.items():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {}).get("application/json")
                if content and status.startswith("2"):
                    yield f"{method.upper()} {route} {status}", content["schema"]


def test_every_v1_answer_is_typed(schema: dict[str, Any]) -> None:
    answers = dict(json_answers(schema))
    assert "GET /v1/batches 200" in answers and "POST /v1/files 200" in answers
    for name, answer in answers.items():
        resolved = resolve(schema, answer)
        assert {"properties", "items", "anyOf", "oneOf"} & set(resolved), name
        assert not free_form_objects(schema, answer, name, set()), name
    # The batch and file objects name what batch.formats puts in them.
    batch = schema["components"]["schemas"]["OpenAIBatch"]["properties"]
    assert {"id", "status", "request_counts", "usage", "output_file_id"} <= set(batch)
    status = schema["components"]["schemas"]["JinaBatchStatus"]["properties"]
    assert {"batch_id", "status", "stats", "output_url"} <= set(status)
    listing = schema["components"]["schemas"]["BatchList"]["oneOf"]
    assert {"$ref": "#/components/schemas/JinaBatchStatus"} in [b.get("items") for b in listing]


def test_component_names_are_not_doubled_and_refs_follow(schema: dict[str, Any]) -> None:
    names = set(schema["components"]["schemas"])
    assert not [name for name in names if name.endswith("RequestRequest")]
    assert {"EmbeddingRequest", "JinaBatchRequest", "TokenizeRequest"} <= names
    body = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/EmbeddingRequest"}
    text = str(schema)
    assert "RequestRequest" not in text
    # What the postprocessing hooks add by name is still there.
    assert schema["components"]["schemas"]["JinaBatchRequest"]["oneOf"]
    assert "enum" in schema["components"]["schemas"]["EmbeddingRequest"]["properties"]["task"]


def test_every_request_field_is_described(schema: dict[str, Any]) -> None:
    undescribed = []
    for route, item in schema["paths"].items():
        for method, operation in item.items():
            for content in operation.get("requestBody", {}).get("content", {}).values():
                body = resolve(schema, content["schema"])
                for field, spec in body.get("properties", {}).items():
                    if not resolve(schema, spec).get("description") and not spec.get("description"):
                        undescribed.append(f"{method.upper()} {route}: {field}")
    assert not undescribed


@pytest.mark.django_db(transaction=True)
def test_the_reference_loads_offline_clean_and_leads_back_to_the_site(
    live_server: Any, browser: Any
) -> None:
    EmbeddingModelFactory()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    foreign: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda r: errors.append(f"{r.url}: {r.failure}"))
    page.on(
        "response",
        lambda r: errors.append(f"{r.url}: {r.status}") if r.status >= 400 else None,
    )
    page.on(
        "request",
        lambda r: (
            None if r.url.startswith((live_server.url, "data:", "blob:")) else foreign.append(r.url)
        ),
    )
    try:
        page.goto(f"{live_server.url}/docs/")
        page.locator("h2", has_text="Create a batch (OpenAI format)").wait_for()
        page.wait_for_load_state("networkidle")
        # Redoc's sidebar logo comes from this site.
        logo = page.locator("img[alt='redocly logo']")
        assert logo.count() == 1 and logo.get_attribute("src") == "/static/favicon.svg"
        assert page.evaluate("document.querySelector(\"img[alt='redocly logo']\").naturalWidth") > 0
        # The top of the page (Redoc's full page is some 30,000 pixels tall).
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "docs.png"))
        # A batch answer is sampled from its fields, not as property1.
        assert "property1" not in page.content()
        page.click("#docs-home")
        page.wait_for_url(f"{live_server.url}/")
        assert page.locator("#pg-operations").count() == 1
        assert page.goto(f"{live_server.url}/favicon.ico").status == 200
    finally:
        context.close()
    assert not errors, errors
    assert not foreign, foreign


def test_bounds_that_are_settings_are_published_as_set(
    client: Client, settings, api_key, default_model
) -> None:
    """A smaller EMBEDDINGS_MAX_INPUTS is what the schema states, so a schema-valid list is
    never the server's 400."""
    settings.EMBEDDINGS_MAX_INPUTS = 5
    text = client.get("/api/schema/?format=json").content.decode()
    assert "x-bound-by" not in text and "{EMBEDDINGS_MAX_INPUTS}" not in text
    schemas = json.loads(text)["components"]["schemas"]
    inputs = schemas["EmbeddingRequest"]["properties"]["input"]
    (listed,) = [
        variant
        for variant in inputs["anyOf"]
        if variant.get("type") == "array" and "maxItems" in variant
    ]
    assert listed["maxItems"] == 5 and "at most 5 items" in inputs["description"]
    # ... and what the server refuses: one item past the bound is a coded 400.
    refused = client.post(
        "/v1/embeddings",
        data=json.dumps({"input": ["a"] * 6}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",
    )
    assert refused.status_code == 400 and refused.json()["code"] == "INPUT_TOO_MANY_ITEMS"
