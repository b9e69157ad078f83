"""/v1/classify, /v1/train and /v1/classifiers."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
