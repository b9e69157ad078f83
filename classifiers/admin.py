from django.contrib import admin

from classifiers.models import Classifier


@admin.register(Classifier)
class ClassifierAdmin(admin.ModelAdmin):
    """Classifiers by owner and model; their weights and examples are not shown."""

    list_display = ("id", "owner", "model", "access", "num_samples", "used_number", "created_at")
    list_filter = ("access", "model")
    search_fields = ("id", "owner__email")
    exclude = ("weights", "bias", "examples", "example_labels")
    readonly_fields = ("owner", "model", "dimensions", "labels", "num_samples")
