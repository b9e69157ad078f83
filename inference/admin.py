from django.contrib import admin

from inference.models import EmbeddingModel


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    list_display = ["name", "backend", "dimensions", "max_tokens", "matryoshka", "enabled"]
    list_filter = ["backend", "enabled"]
    search_fields = ["name", "hugging_face_id"]
