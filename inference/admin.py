from django.contrib import admin

from inference.models import EmbeddingModel, Worker


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


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    list_display = ["name", "backend", "dimensions", "max_tokens", "matryoshka", "enabled"]
    list_filter = ["backend", "enabled"]
    search_fields = ["name", "hugging_face_id"]
    inlines = [WorkerInline]


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
