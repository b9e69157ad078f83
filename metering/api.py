"""The base of every metered /v1 view: bearer key, the lifecycle's work, rate-limit headers."""

from __future__ import annotations

import logging
from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.models import ApiKey
from embeddings_site import deadlines
from embeddings_site.deadlines import Deadline
from embeddings_site.errors import ApiError, ErrorCode, api_error_from_exception, error_response
from embeddings_site.log_context import log_context_update
from metering.authentication import ApiKeyAuthentication
from metering.lifecycle import MeteredWork

logger = logging.getLogger(__name__)


class MeteredApiView(APIView):
    """A /v1 view billed to the calling key.

    `request.work` is the request's MeteredWork; the view hands it to `metered_run` with its
    operation. Every response, success or error, carries the rate-limit headers; any error
    after the debit refunds it; an unexpected exception becomes an INTERNAL_ERROR envelope
    (logged with its traceback here, never shown to the client) and is refunded too.
    """

    authentication_classes = [ApiKeyAuthentication]
    endpoint = "embeddings"

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        log_context_update(endpoint=self.endpoint)
        super().initial(request, *args, **kwargs)
        api_key: ApiKey = request.auth  # type: ignore[assignment]
        arrived = getattr(request._request, "arrived", None) or deadlines.clock()
        request.work = MeteredWork(  # type: ignore[attr-defined]
            api_key=api_key,
            request_id=getattr(request, "request_id", ""),
            endpoint=self.endpoint,
            deadline=Deadline.after(started=arrived),
        )

    def handle_exception(self, exc: Exception) -> Response:
        error = api_error_from_exception(exc)
        if error is None:
            logger.exception("Unhandled error in %s", type(self).__name__, exc_info=exc)
            error = ApiError(
                ErrorCode.INTERNAL_ERROR,
                "An unexpected error occurred. If this persists, contact support with the request_id.",
            )
        work: MeteredWork[Any] | None = getattr(self.request, "work", None)
        if work is not None:
            work.fail(error)
        return error_response(self.request, error)  # type: ignore[return-value]

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        work: MeteredWork[Any] | None = getattr(request, "work", None)
        if work is not None:
            for name, value in work.headers().items():
                if name not in response:
                    response[name] = value
            work.close()
        return response
