"""Routes of the batch API (included by embeddings_site/urls.py). Like every /v1 route they take
an optional trailing slash."""

from django.urls import re_path

from batch.views import (
    BatchCancelApi,
    BatchDetailApi,
    BatchEmbeddingCreateApi,
    BatchErrorsApi,
    BatchesApi,
    BatchJobApi,
    BatchOutputApi,
    FileContentApi,
    FileDetailApi,
    FilesApi,
)

_ID = r"(?P<batch_id>[^/]+)"
_FILE = r"(?P<file_id>[^/]+)"

urlpatterns = [
    # Jina
    re_path(r"^v1/batch/embeddings/?$", BatchEmbeddingCreateApi.as_view(), name="batch-create"),
    re_path(
        rf"^v1/batch/{_ID}/output/?$",
        BatchOutputApi.as_view(),
        name="batch-output",
    ),
    re_path(
        rf"^v1/batch/{_ID}/errors/?$",
        BatchErrorsApi.as_view(),
        name="batch-errors",
    ),
    re_path(rf"^v1/batch/{_ID}/?$", BatchJobApi.as_view(), name="batch-detail"),
    # OpenAI (GET /v1/batches lists the jobs of both formats)
    re_path(r"^v1/batches/?$", BatchesApi.as_view(), name="batches"),
    re_path(rf"^v1/batches/{_ID}/cancel/?$", BatchCancelApi.as_view(), name="batches-cancel"),
    re_path(rf"^v1/batches/{_ID}/?$", BatchDetailApi.as_view(), name="batches-detail"),
    re_path(r"^v1/files/?$", FilesApi.as_view(), name="files"),
    re_path(rf"^v1/files/{_FILE}/content/?$", FileContentApi.as_view(), name="files-content"),
    re_path(rf"^v1/files/{_FILE}/?$", FileDetailApi.as_view(), name="files-detail"),
]
