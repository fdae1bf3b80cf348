"""Model registry keyed by the transformers `architectures` name."""

from __future__ import annotations

from typing import Callable

from flax import nnx

from workbench.models.config import ModelConfig
from workbench.models.llama import CausalLM

# architecture name -> constructor(cfg, *, dtype, rngs) -> nnx.Module with the CausalLM interface
MODEL_REGISTRY: dict[str, Callable[..., nnx.Module]] = {
    "LlamaForCausalLM": CausalLM,
    "MistralForCausalLM": CausalLM,
    "Qwen2ForCausalLM": CausalLM,
    "Qwen3ForCausalLM": CausalLM,
}


class UnsupportedArchitectureError(ValueError):
    """The checkpoint's architecture has no implementation here."""


def get_model_class(architecture: str) -> Callable[..., nnx.Module]:
    try:
        return MODEL_REGISTRY[architecture]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {architecture!r}; supported: "
            f"{', '.join(sorted(MODEL_REGISTRY))}"
        ) from None


def build_model(cfg: ModelConfig, *, dtype, seed: int = 0) -> nnx.Module:
    """A model with random weights (for tests and benchmarks)."""
    return get_model_class(cfg.architecture)(cfg, dtype=dtype, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig, *, dtype) -> nnx.Module:
    """The model's structure with shapes only (no memory), to be filled from a checkpoint."""
    cls = get_model_class(cfg.architecture)
    return nnx.eval_shape(lambda: cls(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
