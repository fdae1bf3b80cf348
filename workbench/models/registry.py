"""Model registry keyed by the transformers `architectures` name."""

from __future__ import annotations

from typing import Callable

from flax import nnx

from workbench.models.config import ModelConfig
from workbench.models.layer_loop import check_layer_loop, default_layer_loop, unstack_layers
from workbench.models.llama import CausalLM

# architecture name -> constructor(cfg, *, dtype, rngs, layer_loop) -> nnx.Module with the
# CausalLM interface
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


def resolve_layer_loop(cfg: ModelConfig, layer_loop: str | None) -> str:
    return check_layer_loop(layer_loop or default_layer_loop(cfg.num_hidden_layers))


def build_model(cfg: ModelConfig, *, dtype, seed: int = 0, layer_loop: str | None = None
                ) -> nnx.Module:
    """A model with random weights (for tests and benchmarks): the same weights for a seed under
    either layer loop (drawn stacked, then split per layer for "unrolled")."""
    cls = get_model_class(cfg.architecture)
    model = cls(cfg, dtype=dtype, rngs=nnx.Rngs(seed), layer_loop="scan")
    if resolve_layer_loop(cfg, layer_loop) == "scan":
        return model
    graphdef, _ = nnx.split(abstract_model(cfg, dtype=dtype, layer_loop="unrolled"))
    return nnx.merge(graphdef, unstack_layers(nnx.split(model)[1]))


def abstract_model(cfg: ModelConfig, *, dtype, layer_loop: str | None = None) -> nnx.Module:
    """The model's structure with shapes only (no memory), to be filled from a checkpoint."""
    cls = get_model_class(cfg.architecture)
    loop = resolve_layer_loop(cfg, layer_loop)
    return nnx.eval_shape(lambda: cls(cfg, dtype=dtype, rngs=nnx.Rngs(0), layer_loop=loop))
