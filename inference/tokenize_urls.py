"""/v1/tokenize."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
