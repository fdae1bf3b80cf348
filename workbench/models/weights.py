"""Checkpoint-name mapping: transformers tensor names <-> our NNX parameter paths.

Pure helpers: `hf_tensor_names(path, L)` lists the checkpoint tensors behind one of our parameters,
`to_param(path, tensors)` turns them into its value (linear weights are transposed; in the stacked
layout per-layer tensors are stacked on a leading `[L]` axis, in the unrolled one `layers/<i>/...`
is layer i's own tensor; see `layer_loop.py`).
"""

from __future__ import annotations

import numpy as np

from workbench.models.layer_loop import is_stacked

Path = tuple[str, ...]


def hf_tensor_names(path: Path, num_layers: int) -> list[str]:
    """Checkpoint names for parameter `path`; several (one per layer) for stacked parameters."""
    *module, leaf = path
    suffix = {"kernel": "weight", "embedding": "weight"}.get(leaf, leaf)
    if module and module[0] == "layers":
        if is_stacked(path):
            sub = ".".join(module[1:])
            return [f"model.layers.{i}.{sub}.{suffix}" for i in range(num_layers)]
        return [f"model.layers.{module[1]}.{'.'.join(module[2:])}.{suffix}"]
    if module == ["lm_head"]:
        return [f"lm_head.{suffix}"]
    return [f"model.{'.'.join(module)}.{suffix}"]


def to_param(path: Path, tensors: list[np.ndarray]) -> np.ndarray:
    """Checkpoint tensors -> our layout (`kernel`s are `[in, out]`; stacked layers on axis 0)."""
    if path[-1] == "kernel":
        tensors = [t.T for t in tensors]
    if is_stacked(path):
        return np.stack(tensors)
    (t,) = tensors
    return t
