"""JSON in and out with orjson: strict parsing (depth, number range) and fast numpy output."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpResponse
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=_DUMP_OPTIONS)


def json_response(data: Any, *, status: int = 200) -> HttpResponse:
    return HttpResponse(dumps(data), status=status, content_type="application/json")


class OrjsonParser(BaseParser):
    """Parses JSON bodies; orjson refuses >1024 levels of nesting and numbers that overflow."""

    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        body = stream.read() if stream is not None else b""
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"Request body is not valid JSON: {exc}") from exc


class OrjsonRenderer(BaseRenderer):
    media_type = "application/json"
    format = "json"
    charset = None

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        if data is None:
            return b""
        return dumps(data)
