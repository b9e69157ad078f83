"""/v1/rerank (Jina) and /v2/rerank (Cohere)."""

from django.urls import URLPattern, re_path

from inference.rerank_views import CohereRerankCreateApi, RerankCreateApi

# An optional trailing slash, as on every /v1 route: a redirect would drop the POST body.
urlpatterns: list[URLPattern] = [
    re_path(r"^v1/rerank/?$", RerankCreateApi.as_view(), name="rerank-create"),
    re_path(r"^v2/rerank/?$", CohereRerankCreateApi.as_view(), name="rerank-create-cohere"),
]
