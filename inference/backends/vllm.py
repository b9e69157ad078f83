"""The GPU path: a pool of vLLM workers (any OpenAI-compatible embedding server) over HTTP.

The gateway has already tokenized (it must count), so it sends token ids and the worker does
not tokenize again; vectors come back as base64 float32. Each process keeps, per model:
least-outstanding-requests choice among available workers, an active health check, and a
circuit breaker.

Error kinds decide what happens (TEI's `ErrorType`): a transport error or a 5xx blames the
worker (its breaker counts it) and, an embedding request being idempotent, is retried once on
another worker; a 4xx is the input's fault, so it reaches the client as BackendInputError, the
worker stays in the pool and no other worker is bothered with it; a timeout is not retried (it
would double the wait) and becomes a 504. Each call waits no longer than the request's deadline.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import numpy as np
from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q
from django.utils import timezone
from opentelemetry.trace import SpanKind

from embeddings_site.deadlines import current_deadline
from embeddings_site.log_context import current_request_id
from embeddings_site.metrics import worker_call
from embeddings_site.tracing import span, span_set_raw, trace_headers_inject
from inference.backends.base import (
    BackendError,
    BackendHealth,
    BackendInputError,
    BackendOverloaded,
    BackendTimeout,
    Capability,
    EmbeddingBackend,
    EmbedItem,
)
from inference.backends.scoring import PairItem

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
# How much of a worker's refusal reaches the client.
REFUSAL_MESSAGE_CHARS = 300
# 4xx answers that say the worker is set up wrong (served model name, auth, path), not that the
# input is: another worker may be set up right.
MISCONFIGURED_STATUSES = frozenset({401, 403, 404, 405})


@dataclass
class WorkerState:
    """One worker as this process sees it."""

    worker_id: int
    url: str
    served_name: str
    accepts_token_ids: bool
    outstanding: int = 0
    consecutive_failures: int = 0
    open_until: float = 0.0
    healthy: bool = True
    detail: str = "not checked yet"

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.open_until

    def status(self, now: float) -> str:
        if not self.healthy:
            return "unhealthy"
        if now < self.open_until:
            return "circuit open"
        return "healthy"


class WorkerPool:
    """The workers of one model: which to call next, and which to leave alone for now."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._workers: dict[str, WorkerState] = {}
        self._lock = threading.Lock()
        self._refreshed = 0.0

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the registered workers (at most every REFRESH_SECONDS)."""
        now = time.monotonic()
        if not force and now - self._refreshed < REFRESH_SECONDS:
            return
        self._refreshed = now
        from inference.models import Worker

        fresh_after = timezone.now() - timedelta(seconds=settings.WORKER_HEARTBEAT_TTL_SECONDS)
        rows = list(
            Worker.objects.select_related("model")
            .filter(model__name=self.model_name, enabled=True)
            .filter(Q(source=Worker.Source.OPERATOR) | Q(last_heartbeat_at__gte=fresh_after))
        )
        with self._lock:
            current = {}
            for row in rows:
                state = self._workers.get(row.url) or WorkerState(
                    worker_id=row.pk,
                    url=row.url.rstrip("/"),
                    served_name=row.served_name,
                    accepts_token_ids=row.accepts_token_ids,
                )
                state.served_name, state.accepts_token_ids = row.served_name, row.accepts_token_ids
                current[row.url] = state
            self._workers = current

    def snapshot(self) -> list[WorkerState]:
        with self._lock:
            return list(self._workers.values())

    def acquire(self, exclude: set[str]) -> WorkerState | None:
        """The available worker with the fewest requests in flight (None when there is none)."""
        now = time.monotonic()
        with self._lock:
            candidates = [
                w for w in self._workers.values() if w.url not in exclude and w.available(now)
            ]
            if not candidates:
                return None
            worker = min(candidates, key=lambda w: w.outstanding)
            worker.outstanding += 1
            return worker

    def release(self, worker: WorkerState, *, failed: bool) -> None:
        with self._lock:
            worker.outstanding -= 1
            if not failed:
                worker.consecutive_failures = 0
                return
            worker.consecutive_failures += 1
            if worker.consecutive_failures >= settings.WORKER_BREAKER_FAILURES:
                worker.open_until = time.monotonic() + settings.WORKER_BREAKER_SECONDS
                logger.warning(
                    "Worker %s: circuit open after %d failures",
                    worker.url,
                    worker.consecutive_failures,
                )


def worker_request_id() -> str:
    """The X-Request-ID of one worker call: the gateway request's id and a suffix of its own.

    vLLM takes the header as its request id (its logs show it) and refuses an id that is
    already running, so two calls must never share one: a client may send the same
    X-Request-ID twice at once, and one request may call a worker more than once."""
    request_id = current_request_id() or "gw"
    return f"{request_id}-{secrets.token_hex(3)}"


class _WorkerFailed(Exception):
    """The worker could not serve the request (transport error, 5xx): blame it, try another."""


class _WorkerBusy(Exception):
    """The worker answered 429: try another, without blaming it."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class _CallBudget:
    """How long one worker call may take: the worker timeout, or less when the deadline is near."""

    seconds: float
    cut_by_deadline: bool


def _call_budget() -> _CallBudget:
    """The time limit of the next worker call; raises BackendTimeout once the deadline passed."""
    limit = float(settings.WORKER_REQUEST_TIMEOUT_SECONDS)
    deadline = current_deadline()
    if deadline is None:
        return _CallBudget(limit, cut_by_deadline=False)
    if deadline.expired:
        raise BackendTimeout("the request's deadline passed before a worker was called")
    remaining = deadline.remaining()
    if remaining < limit:
        return _CallBudget(remaining, cut_by_deadline=True)
    return _CallBudget(limit, cut_by_deadline=False)


class VllmBackend(EmbeddingBackend):
    """Embeds through the model's registered workers."""

    def __init__(
        self,
        *,
        model_name: str,
        capabilities: frozenset[Capability] = frozenset({Capability.EMBED}),
    ) -> None:
        # Workers answer pooled vectors (or scores) only: never token-level output.
        self.capabilities = capabilities | {Capability.WORKERS}
        self.model_name = model_name
        self.pool = WorkerPool(model_name)
        self._client: httpx.Client | None = None
        self._checker: threading.Thread | None = None
        self._stopped = threading.Event()

    def load(self) -> None:
        self._client = httpx.Client(
            timeout=httpx.Timeout(
                settings.WORKER_REQUEST_TIMEOUT_SECONDS,
                connect=settings.WORKER_CONNECT_TIMEOUT_SECONDS,
            ),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self.pool.refresh(force=True)
        self.check_health()
        self._checker = threading.Thread(
            target=self._check_forever, name=f"health-{self.model_name}", daemon=True
        )
        self._checker.start()

    def _http(self) -> httpx.Client:
        if self._client is None:
            raise BackendError("backend not loaded")
        return self._client

    def health(self) -> BackendHealth:
        now = time.monotonic()
        workers = self.pool.snapshot()
        available = [w for w in workers if w.available(now)]
        detail = f"{len(available)}/{len(workers)} workers available"
        return BackendHealth(ok=bool(available), detail=detail)

    def workers_status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {"url": w.url, "state": w.status(now), "outstanding": w.outstanding, "detail": w.detail}
            for w in self.pool.snapshot()
        ]

    # --- health ------------------------------------------------------------------------

    def _check_forever(self) -> None:
        while not self._stopped.wait(settings.WORKER_HEALTH_INTERVAL_SECONDS):
            try:
                self.pool.refresh(force=True)
                self.check_health()
            except Exception:
                logger.exception("Health check of %s workers failed", self.model_name)
            finally:
                close_old_connections()

    def check_health(self) -> None:
        """GET /health on each worker; record changes on the Worker rows for the admin."""
        client = self._http()
        from inference.models import Worker

        for worker in self.pool.snapshot():
            try:
                response = client.get(f"{worker.url}/health", timeout=1.5)
                healthy, detail = response.status_code == 200, f"/health {response.status_code}"
            except httpx.HTTPError as exc:
                healthy, detail = False, type(exc).__name__
            changed = healthy != worker.healthy or detail != worker.detail
            worker.healthy, worker.detail = healthy, detail
            if healthy and time.monotonic() >= worker.open_until:
                worker.consecutive_failures = 0
            if changed:
                Worker.objects.filter(pk=worker.worker_id).update(
                    health_state="healthy" if healthy else "unhealthy",
                    health_detail=detail[:255],
                    health_checked_at=timezone.now(),
                )

    # --- embedding ---------------------------------------------------------------------

    def embed(self, items: Sequence[EmbedItem]) -> np.ndarray:
        if any(item.spans is not None for item in items):
            raise BackendError("late chunking is not available on vLLM workers")
        self.pool.refresh()
        rows: list[np.ndarray | None] = [None] * len(items)
        texts = [i for i, item in enumerate(items) if item.image is None]
        if texts:
            vectors = self._call(
                lambda worker: self._text_payload(worker, [items[i] for i in texts])
            )
            for index, vector in zip(texts, vectors, strict=True):
                rows[index] = vector
        for index, item in enumerate(items):
            if item.image is not None:
                rows[index] = self._call(
                    lambda worker, image=item.image: self._image_payload(worker, image)
                )[0]
        return np.stack([row for row in rows if row is not None]).astype(np.float32)

    def _text_payload(self, worker: WorkerState, items: list[EmbedItem]) -> dict[str, Any]:
        if not worker.accepts_token_ids:  # a server that tokenizes itself (TEI, …)
            texts = [item.text if item.text is not None else item.token_ids for item in items]
            return {"model": worker.served_name, "input": texts, "encoding_format": "base64"}
        # vLLM: our token ids, and the raw pooled vectors (`use_activation: false` skips its
        # normalisation) — normalisation and Matryoshka truncation happen in the gateway.
        return {
            "model": worker.served_name,
            "input": [item.token_ids for item in items],
            "encoding_format": "base64",
            "use_activation": False,
        }

    def _image_payload(self, worker: WorkerState, image: Any) -> dict[str, Any]:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
        return {
            "model": worker.served_name,
            "messages": [message],
            "encoding_format": "base64",
            "use_activation": False,
        }

    # --- reranking (a cross-encoder served by vLLM's pooling runner) ---------------------

    def score(self, pairs: Sequence[PairItem]) -> np.ndarray:
        """Scores through the workers' /rerank (vLLM's Jina/Cohere-compatible endpoint).

        vLLM's scoring API takes text only, so it tokenizes the pairs again: the documents are
        sent as the gateway cut them (what is left after truncation), which it counted.
        """
        if not self.can(Capability.SCORE_PAIRS):
            return super().score(pairs)  # an embedding model's workers have no /rerank
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        queries = {pair.query for pair in pairs}
        if len(queries) != 1:
            raise BackendError("one rerank call scores one query against its documents")
        self.pool.refresh()
        payload = {
            "query": pairs[0].query,
            "documents": [pair.document for pair in pairs],
            "use_activation": True,  # the sigmoid of the logit, as sentence-transformers does
        }
        rows = self._call(
            lambda worker: {"model": worker.served_name, **payload},
            path="/rerank",
            parse=_rerank_scores,
        )
        return np.asarray(rows, dtype=np.float32).reshape(len(pairs))

    def _call(
        self, make_payload: Any, *, path: str = "/v1/embeddings", parse: Any = None
    ) -> list[np.ndarray]:
        """POST to the least-loaded worker; after a worker's failure once more to another one."""
        tried: set[str] = set()
        last_error = "no healthy worker"
        busy: _WorkerBusy | None = None
        for _attempt in range(2):
            budget = _call_budget()
            worker = self.pool.acquire(tried)
            if worker is None:
                break
            tried.add(worker.url)
            failed = True
            try:
                with worker_call(model=self.model_name, worker=worker.url):
                    vectors = self._post(
                        worker, make_payload(worker), budget, path=path, parse=parse
                    )
                failed = False
                return vectors
            except BackendInputError:
                failed = False  # it answered, and another worker would refuse the input too
                raise
            except BackendTimeout:
                # A call cut short by the request's deadline says nothing about the worker.
                failed = not budget.cut_by_deadline
                raise
            except _WorkerBusy as exc:
                failed, busy = False, exc
                last_error = f"{worker.url}: {exc}"
            except _WorkerFailed as exc:
                last_error = f"{worker.url}: {exc}"
                logger.warning("Worker %s failed: %s", worker.url, exc)
            finally:
                self.pool.release(worker, failed=failed)
        if busy is not None:
            raise BackendOverloaded(
                f"the workers of {self.model_name} are busy ({last_error})",
                retry_after=busy.retry_after,
            )
        raise BackendError(f"no worker of {self.model_name} could serve the request ({last_error})")

    def _post(
        self,
        worker: WorkerState,
        payload: dict[str, Any],
        budget: _CallBudget,
        *,
        path: str = "/v1/embeddings",
        parse: Any = None,
    ) -> list[np.ndarray]:
        timeout = httpx.Timeout(
            budget.seconds, connect=min(settings.WORKER_CONNECT_TIMEOUT_SECONDS, budget.seconds)
        )
        url = f"{worker.url}{path}"
        with span(
            f"POST {path}",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "url.full": url,
                "server.address": worker.url,
            },
        ) as current:
            headers = {"X-Request-ID": worker_request_id()}
            trace_headers_inject(headers)
            response = self._send(url, payload, timeout, headers, budget, worker)
            span_set_raw(current, {"http.response.status_code": response.status_code})
            return self._answer(response, payload, parse)

    def _send(
        self,
        url: str,
        payload: dict[str, Any],
        timeout: httpx.Timeout,
        headers: dict[str, str],
        budget: _CallBudget,
        worker: WorkerState,
    ) -> httpx.Response:
        try:
            return self._http().post(url, json=payload, timeout=timeout, headers=headers)
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
            # Not retried: another worker would only double the client's wait.
            waited = "the request's deadline" if budget.cut_by_deadline else "the worker timeout"
            raise BackendTimeout(
                f"worker {worker.url} did not answer within {budget.seconds:.3g} s ({waited})"
            ) from exc
        except httpx.HTTPError as exc:
            raise _WorkerFailed(type(exc).__name__) from exc

    def _answer(
        self, response: httpx.Response, payload: dict[str, Any], parse: Any
    ) -> list[np.ndarray]:
        status = response.status_code
        if status == 200 and parse is not None:
            return parse(response, payload)
        if status == 200:
            return _vectors(response, expected=len(payload["input"]) if "input" in payload else 1)
        if status == 429:
            raise _WorkerBusy(
                f"HTTP 429 {_refusal_message(response)}", retry_after=_retry_after(response)
            )
        if 400 <= status < 500 and status not in MISCONFIGURED_STATUSES:
            raise BackendInputError(_refusal_message(response))
        raise _WorkerFailed(f"HTTP {status} {_refusal_message(response)}")


def _vectors(response: httpx.Response, *, expected: int) -> list[np.ndarray]:
    """The vectors of a 200 answer, in input order; a malformed answer is the worker's failure."""
    try:
        data = sorted(response.json()["data"], key=lambda item: item["index"])
        vectors = [_decode(item["embedding"]) for item in data]
    except (ValueError, KeyError, TypeError) as exc:
        raise _WorkerFailed(f"malformed answer ({type(exc).__name__})") from exc
    if len(vectors) != expected:
        raise _WorkerFailed(f"{len(vectors)} vectors for {expected} inputs")
    return vectors


def _rerank_scores(response: httpx.Response, payload: dict[str, Any]) -> list[np.ndarray]:
    """The scores of a /rerank answer, in document order; a malformed one is the worker's fault."""
    expected = len(payload["documents"])
    try:
        results = response.json()["results"]
        scores = {int(item["index"]): float(item["relevance_score"]) for item in results}
    except (ValueError, KeyError, TypeError) as exc:
        raise _WorkerFailed(f"malformed rerank answer ({type(exc).__name__})") from exc
    if sorted(scores) != list(range(expected)):
        raise _WorkerFailed(f"{len(scores)} scores for {expected} documents")
    return [np.asarray(scores[index], dtype=np.float32) for index in range(expected)]


def _refusal_message(response: httpx.Response) -> str:
    """The worker's own words, trimmed: vLLM's `{"error": {"message"}}`, TEI's `{"error": "…"}`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        else:
            message = body.get("message") or body.get("detail")
    text = " ".join(str(message or response.text or f"HTTP {response.status_code}").split())
    if len(text) > REFUSAL_MESSAGE_CHARS:
        text = text[: REFUSAL_MESSAGE_CHARS - 1] + "…"
    return text


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get("Retry-After", "1")), 0.0)
    except ValueError:
        return 1.0


def _decode(embedding: Any) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)
