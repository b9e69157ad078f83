"""Worker registration (launcher heartbeats, operator CLI) and the launcher's config."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from inference.backends.vllm import WorkerPool
from inference.models import Worker
from inference.worker_launcher import WorkerConfig, WorkerConfigError, vllm_command, vllm_env
from tests.factories import EmbeddingModelFactory
from tests.jina_spec import assert_error_envelope

pytestmark = pytest.mark.django_db


@pytest.fixture
def vllm_model(db):
    return EmbeddingModelFactory(name="minilm-vllm", hugging_face_id="", backend="vllm")


def heartbeat(client, token, method="post", **body):
    return getattr(client, method)(
        "/internal/workers",
        data=json.dumps({"model": "minilm-vllm", "url": "http://10.1.2.3:8001", **body}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def test_workers_register_with_the_worker_token_only(client, vllm_model, settings) -> None:
    settings.WORKER_TOKEN = "s3cret-worker-token"
    refused = heartbeat(client, "wrong")
    assert refused.status_code == 401
    assert_error_envelope(refused.json(), "AUTH_INVALID_API_KEY")
    assert not Worker.objects.exists()
    settings.WORKER_TOKEN = ""
    assert heartbeat(client, "").status_code == 401  # no token configured: nobody registers
    settings.WORKER_TOKEN = "s3cret-worker-token"
    accepted = heartbeat(client, "s3cret-worker-token", served_model_name="all-MiniLM-L6-v2")
    assert accepted.status_code == 200
    worker = Worker.objects.get()
    assert (worker.source, worker.served_name, worker.url) == (
        "launcher",
        "all-MiniLM-L6-v2",
        "http://10.1.2.3:8001",
    )


def test_heartbeat_keeps_a_launcher_worker_in_the_pool_and_leaving_removes_it(
    client, vllm_model, settings
) -> None:
    settings.WORKER_TOKEN = "t"
    heartbeat(client, "t")
    pool = WorkerPool("minilm-vllm")
    pool.refresh(force=True)
    assert [w.url for w in pool.snapshot()] == ["http://10.1.2.3:8001"]
    # A heartbeat older than the TTL: out of the pool.
    Worker.objects.update(
        last_heartbeat_at=timezone.now()
        - timedelta(seconds=settings.WORKER_HEARTBEAT_TTL_SECONDS + 1)
    )
    pool.refresh(force=True)
    assert pool.snapshot() == []
    heartbeat(client, "t")
    assert heartbeat(client, "t", method="delete").json() == {"removed": 1}
    assert not Worker.objects.exists()


def test_heartbeat_for_an_unknown_model(client, vllm_model, settings) -> None:
    settings.WORKER_TOKEN = "t"
    response = heartbeat(client, "t", model="nope")
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_MODEL_NOT_FOUND")


def test_least_outstanding_choice_and_the_circuit_breaker(vllm_model, settings) -> None:
    settings.WORKER_BREAKER_FAILURES = 2
    for port in (8001, 8002):
        Worker.objects.create(model=vllm_model, url=f"http://10.1.2.3:{port}")
    pool = WorkerPool("minilm-vllm")
    pool.refresh(force=True)
    first = pool.acquire(set())
    second = pool.acquire(set())
    assert {first.url, second.url} == {"http://10.1.2.3:8001", "http://10.1.2.3:8002"}
    pool.release(first, failed=False)
    assert pool.acquire(set()).url == first.url  # the one with fewer in flight
    pool.release(first, failed=False)
    pool.release(second, failed=True)
    assert pool.acquire({first.url}) is second
    pool.release(second, failed=True)  # second failure in a row: circuit open
    assert pool.acquire({first.url}) is None
    assert second.status(time.monotonic()) == "circuit open"


def test_register_worker_command(vllm_model, default_model) -> None:
    out = io.StringIO()
    call_command(
        "register_worker",
        "--model",
        "minilm-vllm",
        "--url",
        "http://tei:8080/",
        "--text-input",
        stdout=out,
    )
    worker = Worker.objects.get()
    assert (worker.url, worker.source, worker.accepts_token_ids) == (
        "http://tei:8080",
        "operator",
        False,
    )
    with pytest.raises(CommandError, match="not vllm workers"):
        call_command(
            "register_worker", "--model", "all-MiniLM-L6-v2", "--url", "http://x:1", stdout=out
        )
    call_command(
        "register_worker",
        "--model",
        "minilm-vllm",
        "--url",
        "http://tei:8080",
        "--remove",
        stdout=out,
    )
    assert not Worker.objects.exists()


def test_worker_config_in_the_seeds_shape(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(
        """
[generator]
type = "vllm"
model_path = "/models/qwen3-embedding-8b"
max_model_len = 2048
max_num_seqs = 16
task = "embed"
extra_args = ["--dtype", "float32"]

[server]
host = "0.0.0.0"
port = 9001
advertise_url = "http://gpu-7:9001"

[queue]
url = "http://gateway:8000/"
token = "worker-token"
checkpoint_name = "qwen3-embedding-8b"
"""
    )
    config = WorkerConfig.from_toml(path)
    assert config.url == "http://gpu-7:9001"
    assert config.gateway_url == "http://gateway:8000"
    assert config.served_model_name == "qwen3-embedding-8b"
    command = vllm_command(config)
    assert command[1:6] == [
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/qwen3-embedding-8b",
        "--runner",
    ]
    assert command[command.index("--max-model-len") : command.index("--max-model-len") + 2] == [
        "--max-model-len",
        "2048",
    ]
    assert command[-2:] == ["--dtype", "float32"]
    path.write_text("[generator]\ntype = 'vllm'\n")
    with pytest.raises(WorkerConfigError, match="model_path"):
        WorkerConfig.from_toml(path)


def test_cpu_threads_run_a_vllm_cpu_worker_on_that_many_threads_in_one_process(
    tmp_path: Path,
) -> None:
    path = tmp_path / "worker.toml"
    seeds = """
[generator]
type = "vllm"
model_path = "/models/all-MiniLM-L6-v2"
{generator}

[queue]
url = "http://gateway:8000"
token = "worker-token"
"""
    path.write_text(seeds.format(generator='cpu_threads = 1\nenv = { OMP_NUM_THREADS = "2" }'))
    config = WorkerConfig.from_toml(path)
    command = vllm_command(config)
    assert command[command.index("--distributed-executor-backend") + 1] == "uni"
    env = vllm_env(config, {"PATH": "/usr/bin"})
    assert env["PATH"] == "/usr/bin"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"

    path.write_text(seeds.format(generator='env = { VLLM_CPU_KVCACHE_SPACE = "1" }'))
    config = WorkerConfig.from_toml(path)
    assert "--distributed-executor-backend" not in vllm_command(config)
    assert "OMP_NUM_THREADS" not in vllm_env(config, {})
    assert vllm_env(config, {})["VLLM_CPU_KVCACHE_SPACE"] == "1"

    for wrong in ("cpu_threads = 0", 'cpu_threads = "1"', "cpu_threads = true"):
        path.write_text(seeds.format(generator=wrong))
        with pytest.raises(WorkerConfigError, match="cpu_threads must be a whole number"):
            WorkerConfig.from_toml(path)
    path.write_text(
        seeds.format(generator='cpu_threads = 1\nenv = { VLLM_CPU_OMP_THREADS_BIND = "0-1" }')
    )
    with pytest.raises(WorkerConfigError, match="VLLM_CPU_OMP_THREADS_BIND"):
        WorkerConfig.from_toml(path)
