from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from inference.models import EmbeddingModel, Worker
from inference.registry import CHECKPOINT_FIELDS, checkpoint_check, checkpoint_needs_check


class WorkerInline(admin.TabularInline):
    model = Worker
    extra = 0
    fields = [
        "url",
        "served_model_name",
        "accepts_token_ids",
        "source",
        "enabled",
        "health_state",
        "health_detail",
        "health_checked_at",
        "last_heartbeat_at",
    ]
    readonly_fields = [
        "source",
        "health_state",
        "health_detail",
        "health_checked_at",
        "last_heartbeat_at",
    ]


class EmbeddingModelForm(forms.ModelForm):
    """The registry entry, refused when its checkpoint cannot serve it as entered.

    (No Meta: the admin builds it from EmbeddingModelAdmin's fields.)
    """

    checkpoint_notes: list[str]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or self.cleaned_data
        self.checkpoint_notes = []
        if any(cleaned.get(name) is None for name in CHECKPOINT_FIELDS):
            return cleaned  # a field is already refused; its own error says why
        entry = EmbeddingModel(**{name: cleaned[name] for name in CHECKPOINT_FIELDS})
        if not checkpoint_needs_check(entry, self.instance if self.instance.pk else None):
            return cleaned
        check = checkpoint_check(entry)
        self.checkpoint_notes = check.skipped
        for field_name, problems in check.errors.items():
            for problem in problems:
                self.add_error(field_name, problem)
        return cleaned


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    form = EmbeddingModelForm
    list_display = ["name", "backend", "dimensions", "max_tokens", "matryoshka", "enabled"]
    list_filter = ["backend", "enabled"]
    search_fields = ["name", "hugging_face_id"]
    inlines = [WorkerInline]

    def save_model(
        self, request: HttpRequest, obj: EmbeddingModel, form: forms.ModelForm, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        for note in getattr(form, "checkpoint_notes", []):
            self.message_user(request, f"Not checked: {note}", level=messages.WARNING)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "url",
        "source",
        "enabled",
        "health_state",
        "health_checked_at",
        "last_heartbeat_at",
    ]
    list_filter = ["model", "source", "enabled", "health_state"]
    readonly_fields = ["health_state", "health_detail", "health_checked_at", "last_heartbeat_at"]
