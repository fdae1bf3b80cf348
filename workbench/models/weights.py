"""Checkpoint-name mapping: transformers tensor names <-> our NNX parameter paths.

Pure helpers: `hf_tensor_names(path, L)` lists the checkpoint tensors behind one of our parameters,
`to_param(path, tensors)` turns them into its value (linear weights are transposed, per-layer tensors
stacked on a leading `[L]` axis).
"""

from __future__ import annotations

import numpy as np

Path = tuple[str, ...]


def hf_tensor_names(path: Path, num_layers: int) -> list[str]:
    """Checkpoint names for parameter `path`; several (one per layer) for stacked parameters."""
    *module, leaf = path
    suffix = {"kernel": "weight", "embedding": "weight"}.get(leaf, leaf)
    if module and module[0] == "layers":
        sub = ".".join(module[1:])
        return [f"model.layers.{i}.{sub}.{suffix}" for i in range(num_layers)]
    if module == ["lm_head"]:
        return [f"lm_head.{suffix}"]
    return [f"model.{'.'.join(module)}.{suffix}"]


def to_param(path: Path, tensors: list[np.ndarray]) -> np.ndarray:
    """Checkpoint tensors -> our layout (`kernel`s are `[in, out]`; stacked layers on axis 0)."""
    if path[-1] == "kernel":
        tensors = [t.T for t in tensors]
    if path[0] == "layers":
        return np.stack(tensors)
    (t,) = tensors
    return t
