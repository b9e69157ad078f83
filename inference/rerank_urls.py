"""/v1/rerank (Jina) and /v2/rerank (Cohere)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
