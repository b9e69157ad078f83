"""Request lines of a batch: parsed from JSONL (uploads, input_url) or inline JSON (Jina).

A line is `{"custom_id": "...", "body": {...}}` — the Jina format — optionally with OpenAI's
`"method": "POST"` and `"url": "/v1/embeddings"`. What makes the whole file unusable is refused
here with a code: a line that is not JSON, not an object, without a string custom_id, a
custom_id seen before, a body that is not an object, another method or URL, too many lines.
What is wrong inside a body (an empty input, an unknown task, …) is that line's own error and
goes to the job's errors file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings

from embeddings_site.errors import ApiError, ErrorCode

EMBEDDINGS_ENDPOINT = "/v1/embeddings"
MAX_CUSTOM_ID_LENGTH = 512


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch: its position (0-based), the caller's id and the request body."""

    index: int
    custom_id: str
    body: dict[str, Any]


def _invalid(message: str, *, param: str | None = None) -> ApiError:
    return ApiError(ErrorCode.INPUT_VALIDATION_ERROR, message, param=param)


def _line(item: Any, index: int, *, where: str, seen: set[str]) -> BatchLine:
    if not isinstance(item, dict):
        raise _invalid(f"{where} must be a JSON object with custom_id and body.", param="input")
    custom_id = item.get("custom_id")
    if custom_id is None or custom_id == "":
        raise _invalid(f"{where} has no custom_id.", param="custom_id")
    if not isinstance(custom_id, str):
        raise _invalid(f"{where}: custom_id must be a string.", param="custom_id")
    if len(custom_id) > MAX_CUSTOM_ID_LENGTH:
        raise _invalid(
            f"{where}: custom_id is longer than {MAX_CUSTOM_ID_LENGTH} characters.",
            param="custom_id",
        )
    if custom_id in seen:
        raise _invalid(
            f"{where}: custom_id {custom_id[:80]!r} is used by an earlier line; each line "
            "needs its own.",
            param="custom_id",
        )
    seen.add(custom_id)
    method = item.get("method", "POST")
    if method != "POST":
        raise _invalid(f"{where}: method must be POST.", param="method")
    url = item.get("url", EMBEDDINGS_ENDPOINT)
    if url != EMBEDDINGS_ENDPOINT:
        raise _invalid(
            f"{where}: url must be {EMBEDDINGS_ENDPOINT}, the only batch endpoint.", param="url"
        )
    body = item.get("body")
    if not isinstance(body, dict):
        raise _invalid(
            f"{where}: body must be a JSON object (the embeddings request).", param="body"
        )
    return BatchLine(index=index, custom_id=custom_id, body=body)


def _check_count(count: int) -> None:
    if count == 0:
        raise ApiError(ErrorCode.INPUT_EMPTY, "The batch has no request lines.", param="input")
    limit = settings.BATCH_MAX_LINES
    if count > limit:
        raise ApiError(
            ErrorCode.INPUT_TOO_MANY_ITEMS,
            f"The batch has {count:,} lines; the limit is {limit:,}. Split it into several jobs.",
            param="input",
        )


def batch_lines_from_list(items: list[Any]) -> list[BatchLine]:
    """Inline lines of a Jina request (`input`: a list of line objects)."""
    _check_count(len(items))
    seen: set[str] = set()
    return [
        _line(item, index, where=f"input[{index}]", seen=seen) for index, item in enumerate(items)
    ]


def batch_lines_from_jsonl(content: bytes) -> list[BatchLine]:
    """The lines of a JSONL file; blank lines are skipped, line numbers in errors are 1-based."""
    raw_lines = [
        (number, raw)
        for number, raw in enumerate(content.split(b"\n"), start=1)
        if raw.strip() and raw.strip() != b"\r"
    ]
    _check_count(len(raw_lines))
    seen: set[str] = set()
    lines = []
    for index, (number, raw) in enumerate(raw_lines):
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(
                ErrorCode.INPUT_INVALID_JSON,
                f"Line {number} is not valid JSON ({exc}). Each line must be one JSON object.",
                param="file",
            ) from exc
        lines.append(_line(item, index, where=f"Line {number}", seen=seen))
    return lines


def batch_lines_to_jsonl(lines: list[BatchLine]) -> bytes:
    """JSONL for lines (how inline input is stored)."""
    return b"".join(
        orjson.dumps({"custom_id": line.custom_id, "body": line.body}) + b"\n" for line in lines
    )
