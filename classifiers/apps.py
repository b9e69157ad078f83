from django.apps import AppConfig


class ClassifiersConfig(AppConfig):
    """Zero-shot and few-shot classification over the embedding models (/v1/classify, /v1/train,
    /v1/classifiers)."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "classifiers"
