import os

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Models and inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Models load from local directories only; nothing may reach for a model hub at run
        # time. Set before the backends first import transformers (huggingface_hub reads
        # HF_HUB_OFFLINE once, at its import); an operator's own value wins.
        for name in (
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_HUB_DISABLE_PROGRESS_BARS",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS",
        ):
            os.environ.setdefault(name, "1")
