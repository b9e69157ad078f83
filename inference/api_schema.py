"""What the OpenAPI schema says about embedding requests that only the registry knows: the
tasks the enabled models serve (a drf-spectacular postprocessing hook).

A request may still name a task its own model does not serve (400 INPUT_UNSUPPORTED_TASK):
the schema bounds what any model accepts.
"""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError

from inference.selectors import embedding_model_list

# The request bodies that carry embedding options.
_REQUESTS = ("EmbeddingRequest", "JinaBatchRequest")


def registry_tasks(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: `task` as an enum of the tasks the enabled models serve."""
    try:
        tasks = sorted({task for model in embedding_model_list() for task in (model.tasks or {})})
    except DatabaseError:  # `manage.py check` builds the schema before any migration
        return result
    schemas = result.get("components", {}).get("schemas", {})
    for name in _REQUESTS:
        for component in (schemas.get(name), schemas.get(f"{name}Request")):
            properties = (component or {}).get("properties", {})
            if "task" in properties:
                properties["task"]["enum"] = [*tasks, None]
    return result
