"""Tiny random transformers checkpoints, one per supported architecture (test-only; needs torch)."""

from __future__ import annotations

import os

ARCHS = ["llama", "llama3_tied", "mistral", "qwen2", "qwen3"]

_COMMON = dict(
    vocab_size=160, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)


def hf_config(arch: str, **overrides):
    import transformers as tf

    if arch == "llama":
        cfg = tf.LlamaConfig(**_COMMON, tie_word_embeddings=False, rope_theta=10000.0)
    elif arch == "llama3_tied":
        cfg = tf.LlamaConfig(
            **_COMMON, tie_word_embeddings=True, rope_theta=500000.0,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=64),
        )
    elif arch == "mistral":
        cfg = tf.MistralConfig(**_COMMON, sliding_window=5, tie_word_embeddings=False)
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(**_COMMON, tie_word_embeddings=False)
    elif arch == "qwen3":
        cfg = tf.Qwen3Config(**_COMMON, head_dim=24, tie_word_embeddings=True)
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def save_tiny_model(arch: str, directory: str, seed: int = 0, **overrides):
    """Build a random HF model, save it as safetensors into `directory`; return the torch model."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = hf_config(arch, **overrides)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # larger-than-default weights make differences visible
        for p in model.parameters():
            p.normal_(0.0, 0.08)
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    return model
