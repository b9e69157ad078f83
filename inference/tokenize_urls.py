"""/v1/tokenize."""

from django.urls import URLPattern, re_path

from inference.tokenize_views import TokenizeCreateApi

urlpatterns: list[URLPattern] = [
    re_path(r"^v1/tokenize/?$", TokenizeCreateApi.as_view(), name="tokenize"),
]
