"""The Celery app, used only when CELERY_BROKER_URL (or REDIS_URL) names a broker. Without one
nothing is sent to Celery: background tasks run on thread pools of the gateway process
(embeddings_site.background; batch jobs on BATCH_LOCAL_WORKERS threads), and the periodic jobs
on its threads instead of beat."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embeddings_site.settings")

app = Celery("embeddings_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

from embeddings_site import task_context  # noqa: E402, F401 - connects the logs-and-traces signals
