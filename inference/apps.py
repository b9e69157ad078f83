from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Models and inference"
    default_auto_field = "django.db.models.BigAutoField"
