"""GET /v1/files/{id}/content names the download as uploaded, in RFC 6266's form."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import pytest

pytestmark = pytest.mark.django_db

LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"input": "hi"}}\n'


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("batch.jsonl", 'attachment; filename="batch.jsonl"'),
        ('odd "quoted" name.jsonl', r'attachment; filename="odd \"quoted\" name.jsonl"'),
    ],
)
def test_an_ascii_name_is_a_quoted_filename(batch_api: Any, name: str, header: str) -> None:
    uploaded = batch_api.upload(LINE, name=name)
    assert uploaded.status_code == 200, uploaded.content
    response = batch_api.get(f"/v1/files/{uploaded.json()['id']}/content")
    assert response.status_code == 200
    assert response["Content-Disposition"] == header


def test_a_non_ascii_name_is_filename_star_in_utf8(batch_api: Any) -> None:
    name = "données-été №1.jsonl"
    uploaded = batch_api.upload(LINE, name=name)
    assert uploaded.status_code == 200, uploaded.content
    assert uploaded.json()["filename"] == name
    response = batch_api.get(f"/v1/files/{uploaded.json()['id']}/content")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == LINE
    disposition = response["Content-Disposition"]
    assert "=?utf-8?" not in disposition.lower()  # no RFC 2047 encoded word
    prefix = "attachment; filename*=utf-8''"
    assert disposition.lower().startswith(prefix)
    assert unquote(disposition[len(prefix) :]) == name
