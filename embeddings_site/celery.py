"""The Celery app. With no CELERY_BROKER_URL / REDIS_URL, tasks run eagerly in-process."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embeddings_site.settings")

app = Celery("embeddings_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

from embeddings_site import task_context  # noqa: E402, F401 - connects the logs-and-traces signals
