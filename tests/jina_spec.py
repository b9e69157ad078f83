"""Validators for Jina's public OpenAPI schemas (tests/spec/jina-openapi.json, OpenAPI 3.1)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SPEC_PATH = Path(__file__).parent / "spec" / "jina-openapi.json"


@functools.cache
def _spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


@functools.cache
def validator(schema_name: str) -> Draft202012Validator:
    """A validator for components/schemas/<schema_name>, with the spec's $refs resolvable."""
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": _spec()["components"]}
    return Draft202012Validator(root)


def assert_valid(instance: Any, schema_name: str) -> None:
    errors = sorted(validator(schema_name).iter_errors(instance), key=lambda e: e.path)
    assert not errors, f"not a valid {schema_name}: " + "; ".join(
        f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]
    )


def assert_error_envelope(body: dict[str, Any], code: str) -> None:
    """Jina's ErrorResponse and OpenAI's error object, both carrying the same code."""
    assert_valid(body, "ErrorResponse")
    assert body["code"] == code, body
    assert body["request_id"]
    assert body["error"]["code"] == code
    assert body["error"]["message"] == body["detail"]
    assert body["error"]["type"]
    assert "data" not in body
