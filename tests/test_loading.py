"""load_model: sources, dtypes, sharded checkpoints, and clear errors for bad inputs."""

import json
import os
import shutil
import time

import jax.numpy as jnp
import numpy as np
import pytest

from workbench.loading.checkpoint import CheckpointError
from workbench.loading.loader import load_model
from workbench.loading.sources import ModelSourceError
from workbench.models.registry import UnsupportedArchitectureError


def _copy(src, tmp_path, name="m"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_embedded_model_loads_with_tokenizer_and_sensible_logits(embedded):
    assert embedded.config.architecture == "LlamaForCausalLM"
    assert embedded.config.num_hidden_layers == 30 and embedded.config.tie_word_embeddings
    assert embedded.tokenizer is not None and 2 in embedded.eos_token_ids
    prompt = embedded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=True)
    logits = embedded.logits([prompt])
    assert logits.shape == (1, len(prompt), embedded.config.vocab_size)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    top = embedded.tokenizer.decode([int(logits[0, -1].argmax())])
    assert top.strip() in {"The", "Paris"}, top


def test_embedded_second_load_reads_the_cache_quickly(embedded):
    t0 = time.perf_counter()
    again = load_model("embedded", progress=False)
    assert time.perf_counter() - t0 < 15
    assert again.path == embedded.path and os.path.exists(os.path.join(again.path, "DONE"))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_dtypes_stay_close_to_float32(dtype, tiny_checkpoints):
    d = tiny_checkpoints["qwen3"][0]
    ref = load_model(d, dtype="float32", progress=False)
    half = load_model(d, dtype=dtype, progress=False)
    leaf = half.state["layers"]["mlp"]["up_proj"]["kernel"][...]
    assert leaf.dtype == jnp.dtype(dtype)
    ids = np.arange(3, 19)[None]
    a, b = ref.logits(ids), half.logits(ids)
    assert b.dtype == np.float32
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_sharded_checkpoint_with_index_gives_the_same_logits(tiny_checkpoints, tmp_path):
    src, hf = tiny_checkpoints["llama"]
    out = tmp_path / "sharded"
    hf.save_pretrained(out, safe_serialization=True, max_shard_size="40KB")
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("*.safetensors"))) > 1
    ids = np.arange(5, 17)[None]
    np.testing.assert_allclose(load_model(str(out), progress=False).logits(ids),
                               load_model(src, progress=False).logits(ids), atol=1e-6)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelSourceError, match="not found"):
        load_model(str(tmp_path / "nope"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        load_model(str(tmp_path))


def test_no_weights(tiny_checkpoints, tmp_path):
    d = _copy(tiny_checkpoints["llama"][0], tmp_path)
    os.remove(d / "model.safetensors")
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(str(d), progress=False)


def test_truncated_safetensors_names_the_file(tiny_checkpoints, tmp_path):
    d = _copy(tiny_checkpoints["llama"][0], tmp_path)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(str(d), progress=False)


def test_shape_mismatch_names_the_tensor(tiny_checkpoints, tmp_path):
    d = _copy(tiny_checkpoints["llama"][0], tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp\.(down|gate|up)_proj\.weight.*shape"):
        load_model(str(d), progress=False)


def test_missing_tensor_is_named(tiny_checkpoints, tmp_path):
    d = _copy(tiny_checkpoints["llama"][0], tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\."):
        load_model(str(d), progress=False)


def test_unknown_dtype(tiny_checkpoints):
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_model(tiny_checkpoints["llama"][0], dtype="float8")


def test_unsupported_architecture_lists_supported(tiny_checkpoints, tmp_path):
    d = _copy(tiny_checkpoints["llama"][0], tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="LlamaForCausalLM.*Qwen3ForCausalLM"):
        load_model(str(d), progress=False)


def test_offline_hub_id_says_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="pass the local directory"):
        load_model("some-org/some-model")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"))


def test_checkpoint_without_tokenizer_has_none(tiny_llama):
    assert tiny_llama.tokenizer is None


def test_logits_input_validation(tiny_llama):
    with pytest.raises(ValueError, match="token ids must be in"):
        tiny_llama.logits([[1, 2, 10_000]])
    with pytest.raises(ValueError, match="attention_mask shape"):
        tiny_llama.logits([[1, 2, 3]], attention_mask=[[1, 1]])
