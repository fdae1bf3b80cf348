"""How the decoder's layers are stored and looped over: one switch, chosen per backend.

- `"scan"`: every per-layer parameter is one stacked array with a leading `[L]` axis and the
  forward pass runs the layer body under `lax.scan`. Compiles one layer body whatever the depth,
  but each step slices every layer's weights out of the stacked arrays: on XLA:CPU (and on GPU, as
  measured on an H200) those slices are copies, so a decode step streams every weight twice.
- `"unrolled"`: one array per layer and parameter (`layers/<i>/...`, an `nnx.List`), looped over
  in Python inside the jitted step: each matmul reads its weights in place. Compile time grows
  with depth (measured in benchmarks/README.md, "Layer loop").

`default_layer_loop(num_layers, platform)` is the per-backend choice (`WORKBENCH_LAYER_LOOP`
overrides it); `unstack_layers` / `stack_layers` convert a parameter `State` between the two
layouts (same values, so a random model is the same model under either). Checkpoint names and
partition rules work on either layout through `is_stacked(path)`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

LAYER_LOOPS = ("scan", "unrolled")
UNROLL_MAX_LAYERS = 48  # deeper models scan by default: an unrolled 80-layer step compiles long
# The default per platform, from measurements (benchmarks/README.md, "Layer loop"). CPU: the
# unrolled loop decoded +25% / -5% / +7% tok/s at batch 1 / 8 / 32 on the embedded model (same
# process, alternating) but compiled each shape ~1.8x longer: the scan stays. GPU/TPU: the floor
# on an H100 streamed per-layer arrays 1.75x faster than the scan's sliced ones, but the engines'
# unrolled step is not measured there yet (benchmarks/run_accelerator.sh measures both).
DEFAULTS = {"cpu": "scan", "gpu": "scan", "tpu": "scan"}


def check_layer_loop(layer_loop: str) -> str:
    if layer_loop not in LAYER_LOOPS:
        raise ValueError(f"layer_loop must be one of {', '.join(LAYER_LOOPS)}; got {layer_loop!r}")
    return layer_loop


def default_layer_loop(num_layers: int, platform: str | None = None) -> str:
    """The layer loop for a model of `num_layers` on `platform` (default: JAX's default backend):
    `WORKBENCH_LAYER_LOOP` if set, else the platform's default; an unrolled default falls back to
    the scan above `UNROLL_MAX_LAYERS` layers (compile time grows with depth)."""
    forced = os.environ.get("WORKBENCH_LAYER_LOOP", "").strip()
    if forced:
        return check_layer_loop(forced)
    loop = DEFAULTS.get(platform or jax.default_backend(), "scan")
    return "scan" if loop == "unrolled" and num_layers > UNROLL_MAX_LAYERS else loop


def is_stacked(path) -> bool:
    """True for a parameter path of the stacked layout (`layers/<name>...`, leading `[L]`);
    False for per-layer paths (`layers/<i>/...`) and non-layer parameters."""
    return len(path) > 1 and str(path[0]) == "layers" and not str(path[1]).isdigit()


def unstack_layers(state: nnx.State) -> nnx.State:
    """Stacked layout -> unrolled layout: `layers/x` `[L, ...]` becomes `layers/<i>/x` `[...]`
    (new arrays; the stacked ones can be freed after)."""
    out = []
    for path, var in nnx.to_flat_state(state):
        if not is_stacked(path):
            out.append((path, var))
            continue
        value = var.get_value()
        for i in range(value.shape[0]):
            out.append(((path[0], i, *path[1:]), var.copy(_take(value, i))))
    return nnx.from_flat_state(out)


def stack_layers(state: nnx.State) -> nnx.State:
    """Unrolled layout -> stacked layout (the inverse of `unstack_layers`)."""
    groups: dict[tuple, list] = {}
    out = []
    for path, var in nnx.to_flat_state(state):
        if len(path) > 1 and str(path[0]) == "layers" and str(path[1]).isdigit():
            groups.setdefault((path[0], *path[2:]), []).append((int(str(path[1])), var))
        else:
            out.append((path, var))
    for path, items in groups.items():
        items.sort(key=lambda t: t[0])
        value = jnp.stack([v.get_value() for _, v in items])
        out.append((path, items[0][1].copy(value)))
    return nnx.from_flat_state(out)


def _take(value, i: int):
    """Layer `i` of a stacked array as its own array, keeping the sharding of the rest."""
    sharding = getattr(value, "sharding", None)
    one = value[i]
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = jax.sharding.PartitionSpec(*tuple(sharding.spec)[1:])
        one = jax.device_put(one, jax.sharding.NamedSharding(sharding.mesh, spec))
    return one
