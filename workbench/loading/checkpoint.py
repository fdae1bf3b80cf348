"""Read tensors from a safetensors checkpoint (single file or sharded with an index); no torch."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack

import jax
import numpy as np
from safetensors import SafetensorError, safe_open


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match its config."""


class SafetensorsCheckpoint:
    """Lazy access to every tensor of an HF checkpoint directory, by name."""

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f).get("weight_map") or {}
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
            weight_map = None
        if not files:
            raise CheckpointError(
                f"no weights in {directory!r}: expected model.safetensors or a "
                "model.safetensors.index.json with its shards"
            )
        self.bytes_read = 0  # bytes of tensor data read so far (whole tensors and slices)
        self._stack = ExitStack()
        self._handles = {}
        self._where: dict[str, str] = {}
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.exists(path):
                raise CheckpointError(f"missing weight shard {path!r} listed in the index")
            try:
                # framework="flax": numpy cannot represent bfloat16 tensors.
                handle = self._stack.enter_context(safe_open(path, framework="flax"))
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"cannot read {path!r} (truncated or corrupt?): {e}") from e
            self._handles[name] = handle
            for key in handle.keys():
                self._where[key] = name
        if weight_map is not None:
            missing = [k for k, f in weight_map.items() if k not in self._where]
            if missing:
                raise CheckpointError(f"index lists tensors that no shard holds: {missing[:5]}")

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        """The tensor as a host array (bfloat16 stays bfloat16 via ml_dtypes)."""
        if name not in self._where:
            raise CheckpointError(f"tensor {name!r} not found in {self.directory!r}")
        file = self._where[name]
        try:
            with jax.default_device(jax.local_devices(backend="cpu")[0]):
                t = np.asarray(self._handles[file].get_tensor(name))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"cannot read tensor {name!r} from {os.path.join(self.directory, file)!r} "
                f"(truncated or corrupt?): {e}"
            ) from e
        self.bytes_read += t.nbytes
        return t

    def get_slice(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """A range of the tensor (one slice per dimension) as a host array; only that range is
        read from the file."""
        if name not in self._where:
            raise CheckpointError(f"tensor {name!r} not found in {self.directory!r}")
        file = self._where[name]
        try:
            with jax.default_device(jax.local_devices(backend="cpu")[0]):
                t = np.asarray(self._handles[file].get_slice(name)[tuple(index)])
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"cannot read tensor {name!r} from {os.path.join(self.directory, file)!r} "
                f"(truncated or corrupt?): {e}"
            ) from e
        self.bytes_read += t.nbytes
        return t

    def close(self):
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
