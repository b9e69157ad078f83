"""Health probes: /health and /live (the process answers), /ready (it can take traffic).

/ready is the load balancer's probe, so it asks only what this process needs to be worth
sending requests to: the database, and the default model (or, when the default is not
enabled, any model). Every other model's state is in the body; one that fails to load shows
as failed there without taking the gateway out of rotation — its requests answer 503 alone.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from embeddings_site.json import json_response
from embeddings_site.metrics import metrics_caller_allowed
from inference.backends.base import Capability
from inference.registry import runtimes
from inference.selectors import embedding_model_list


@require_GET
def health(request: HttpRequest) -> HttpResponse:
    return json_response({"status": "ok"})


@require_GET
def live(request: HttpRequest) -> HttpResponse:
    return json_response({"status": "alive"})


@require_GET
def ready(request: HttpRequest) -> HttpResponse:
    """200 when the database answers and the model that decides readiness is loaded; else 503.

    The body lists every enabled model's state: "ready" when all are loaded, "degraded" when
    the gateway serves but some model does not. Each model's detail and its workers (URLs,
    errors) are shown only to staff or with METRICS_TOKEN as a bearer, as /metrics is.
    """
    checks: dict[str, object] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
        models = list(embedding_model_list())
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
        return json_response({"status": "not ready", "checks": checks}, status=503)
    if not models:
        checks["models"] = "no enabled models (run `python manage.py register_models`)"
        return json_response({"status": "not ready", "checks": checks}, status=503)
    # The probe is anonymous; load errors and worker URLs and errors describe the inside of
    # the deployment, so only the operator (staff or the metrics token) sees them.
    operator = metrics_caller_allowed(request)
    model_states: dict[str, dict[str, object]] = {}
    unloaded = []
    for model in models:
        status = runtimes.status(model)
        model_states[model.name] = {"state": status.state}
        if operator:
            model_states[model.name]["detail"] = status.detail
            backend = runtimes.loaded_backend(model)
            if backend is not None and backend.can(Capability.WORKERS):
                model_states[model.name]["workers"] = backend.workers_status()
        if status.state == "not loaded":
            unloaded.append(model)
    if unloaded:
        runtimes.warm(unloaded)
    checks["models"] = model_states
    default = settings.EMBEDDINGS_DEFAULT_MODEL
    loaded = {name for name, state in model_states.items() if state["state"] == "loaded"}
    if default in model_states:
        checks["required"] = f"the default model {default}"
        ok = default in loaded
    else:
        checks["required"] = f"any model (the default, {default}, is not enabled)"
        ok = bool(loaded)
    if not ok:
        status_word = "not ready"
    elif len(loaded) < len(model_states):
        status_word = "degraded"
    else:
        status_word = "ready"
    return json_response({"status": status_word, "checks": checks}, status=200 if ok else 503)
