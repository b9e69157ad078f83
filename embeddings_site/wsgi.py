"""WSGI entry point (gunicorn). Starts loading the enabled models as soon as the app is built."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embeddings_site.settings")
django.setup(set_prefix=False)

from embeddings_site.handlers import SplitHandler  # noqa: E402 - needs the apps loaded

# API routes through their own short middleware chain, pages through the whole one.
application = SplitHandler()


def _warm_models() -> None:
    from django.conf import settings

    if not settings.EMBEDDINGS_WARM_ON_START:
        return
    from django.db import connection

    from inference.registry import runtimes
    from inference.selectors import embedding_model_list

    try:
        models = list(embedding_model_list())
    except Exception:  # noqa: BLE001, S110 - an unmigrated database; /ready reports it
        return
    finally:
        connection.close()  # the loading thread is not a request: give the connection back
    runtimes.warm(models)


def _start_maintenance() -> None:
    from batch.tasks import start_batch_maintenance_thread
    from metering.tasks import maintenance_start

    maintenance_start()
    start_batch_maintenance_thread()


def _start_tracing() -> None:
    from embeddings_site.tracing import tracing_start

    tracing_start(role="gateway")  # once per gunicorn worker, when OTLP is configured


_start_tracing()
_warm_models()
_start_maintenance()
