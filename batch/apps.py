from django.apps import AppConfig


class BatchConfig(AppConfig):
    name = "batch"
    verbose_name = "Batch embedding jobs"
    default_auto_field = "django.db.models.BigAutoField"
