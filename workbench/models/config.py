"""`ModelConfig`: the one place where Hugging Face config names are translated.

Field names follow transformers (`hidden_size`, `num_key_value_heads`, ...), so `from_hf` is close
to an identity. Both the transformers 4 layout (`rope_theta` + `rope_scaling`) and the transformers
5 layout (`rope_parameters`) are read.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

DTYPES = {
    "float32": jnp.float32,
    "fp32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "fp16": jnp.float16,
    "half": jnp.float16,
}


def resolve_dtype(dtype: Any) -> jnp.dtype:
    """Map a dtype name or object to a JAX dtype; unknown names raise ValueError."""
    if dtype is None:
        return jnp.dtype(jnp.float32)
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.").removeprefix("jnp.")
        if key not in DTYPES:
            raise ValueError(
                f"unknown dtype {dtype!r}; supported: float32, bfloat16, float16"
            )
        return jnp.dtype(DTYPES[key])
    try:
        dt = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unknown dtype {dtype!r}; supported: float32, bfloat16, float16") from e
    if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"unsupported dtype {dt}; supported: float32, bfloat16, float16")
    return dt


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rope scaling; only `llama3` (and none) are implemented."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer hyper-parameters (Llama, Mistral, Qwen2, Qwen3)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q, k, v
    qk_norm: bool = False  # Qwen3: RMSNorm on q and k per head
    sliding_window: int | None = None  # Mistral
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.hidden_act not in ("silu", "swish"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (only silu)")
        if self.rope_scaling.rope_type not in ("default", "llama3"):
            raise ValueError(
                f"rope scaling {self.rope_scaling.rope_type!r} is not supported (default, llama3)"
            )

    @property
    def num_groups(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf(cls, hf: Any) -> "ModelConfig":
        """Build from a transformers `PretrainedConfig` or its dict."""
        d: Mapping[str, Any] = hf if isinstance(hf, Mapping) else hf.to_dict()
        archs = d.get("architectures") or []
        arch = archs[0] if archs else _ARCH_BY_MODEL_TYPE.get(d.get("model_type", ""), "")
        rope_params = d.get("rope_parameters") or {}
        if isinstance(rope_params, Mapping) and "rope_type" not in rope_params and rope_params:
            # Per-layer-type rope parameters (transformers 5, e.g. {"full_attention": {...}}).
            rope_params = next(iter(rope_params.values()))
        rope_theta = d.get("rope_theta") or rope_params.get("rope_theta") or 10000.0
        scaling = d.get("rope_scaling") or rope_params or {}
        rtype = scaling.get("rope_type", scaling.get("type", "default")) or "default"
        rope_scaling = RopeScaling(
            rope_type=rtype,
            factor=float(scaling.get("factor", 1.0) or 1.0),
            low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
            high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(
                scaling.get("original_max_position_embeddings", 8192)
            ),
        )
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        heads = d["num_attention_heads"]
        model_type = d.get("model_type", "")
        use_sliding = d.get("use_sliding_window", model_type == "mistral")
        return cls(
            architecture=arch,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", model_type == "qwen2")),
            qk_norm=model_type == "qwen3" or "Qwen3" in arch,
            sliding_window=(d.get("sliding_window") if use_sliding else None),
            hidden_act=d.get("hidden_act", "silu"),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=d.get("pad_token_id"),
        )


_ARCH_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
