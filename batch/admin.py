"""Batch jobs and files in the admin: read-only views for support (the API changes them)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from batch.models import BatchFile, BatchJob


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BatchJob)
class BatchJobAdmin(_ReadOnly):
    list_display = (
        "id",
        "api_key",
        "format",
        "model",
        "status",
        "total_lines",
        "completed_lines",
        "failed_lines",
        "total_tokens",
        "created_at",
    )
    list_filter = ("status", "format")
    search_fields = ("id", "api_key__prefix")
    exclude = ("webhook_secret",)


@admin.register(BatchFile)
class BatchFileAdmin(_ReadOnly):
    list_display = ("id", "api_key", "origin", "filename", "size", "lines", "created_at")
    list_filter = ("origin",)
    search_fields = ("id", "api_key__prefix")
    exclude = ("content",)
