"""Health probes: /health and /live (the process answers), /ready (it can serve every model)."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from embeddings_site.json import json_response
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
    """200 when the database answers and every enabled model has a working backend; else 503."""
    checks: dict[str, object] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
        models = list(embedding_model_list())
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
        return json_response({"status": "not ready", "checks": checks}, status=503)
    model_states = {}
    unloaded = []
    for model in models:
        status = runtimes.status(model)
        model_states[model.name] = {"state": status.state, "detail": status.detail}
        workers_status = getattr(runtimes.loaded_backend(model), "workers_status", None)
        if workers_status is not None:
            model_states[model.name]["workers"] = workers_status()
        if status.state == "not loaded":
            unloaded.append(model)
    if unloaded:
        runtimes.warm(unloaded)
    checks["models"] = model_states
    ok = bool(models) and all(state["state"] == "loaded" for state in model_states.values())
    if not models:
        checks["models"] = "no enabled models (run `python manage.py register_models`)"
    return json_response(
        {"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503
    )
