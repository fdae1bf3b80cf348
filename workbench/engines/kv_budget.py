"""The KV cache budget of every engine, and how many KV pages eSurge allocates from it: from a page
count, a memory size, or a fraction of the free device memory. `max_model_len` is a limit on one
sequence, never a reservation. vSurge fits its slots in `kv_budget_bytes(...)` (fewer slots than
asked when they would not fit) and vInference its static batches (fewer rows per batch).

Exactly one of:
- `num_pages`: that many pages;
- `kv_cache_memory`: bytes (an int, or a string such as "2GiB", "512MB");
- `kv_cache_fraction`: a fraction of the device memory still free (GPU/TPU: from
  `device.memory_stats()`, after the params are loaded);
and by default: on GPU/TPU 0.8 of the free memory, on the CPU (no such statistics)
`min(512 MiB, enough for max_num_seqs sequences of max_model_len)`. The pool must hold at least
one sequence of `max_model_len` tokens, so no request can wait forever for pages, and a pool
given by count or size must fit the memory there is (`memory_limit`): `num_pages=10**9` is a
ValueError naming both sizes, not an allocation that runs the machine out of memory.
"""

from __future__ import annotations

import re

from workbench.engines.buckets import is_int

DEFAULT_CPU_BYTES = 512 << 20
DEFAULT_FRACTION = 0.8
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(value: int | str) -> int:
    """An int, or a string like "1.5GiB" / "512MB" / "1000000", -> bytes (ValueError if bad)."""
    if isinstance(value, bool):
        raise ValueError(f"kv_cache_memory must be bytes or a size string, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        if not m or m.group(2).upper() not in _UNITS:
            raise ValueError(f"kv_cache_memory {value!r} is not a size (e.g. '2GiB', '512MB')")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    else:
        raise ValueError(f"kv_cache_memory must be bytes or a size string, got {value!r}")
    if n <= 0:
        raise ValueError(f"kv_cache_memory must be > 0 bytes, got {value!r}")
    return n


def free_device_bytes(device=None) -> int | None:
    """Free memory of the device (bytes_limit - bytes_in_use), or None where the backend keeps
    no statistics (the CPU)."""
    import jax

    stats = (device or jax.local_devices()[0]).memory_stats()
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def memory_limit(device=None) -> tuple[int, str, bool]:
    """The most bytes a KV cache can take here, what they are, and whether that is per device:
    the free memory of one device on GPU/TPU, the machine's physical memory (every CPU device
    shares it) on the CPU."""
    from workbench.devices import host_memory_bytes  # imports JAX: this module does not

    free = free_device_bytes(device)
    if free is not None:
        return free, "the free device memory", True
    return host_memory_bytes(), "this machine's memory", False


def kv_budget_bytes(kv_cache_memory: int | str | None = None, device=None) -> int:
    """Bytes an engine may spend on KV cache: `kv_cache_memory` when given, else on GPU/TPU 0.8
    of the free device memory, on the CPU `DEFAULT_CPU_BYTES`."""
    if kv_cache_memory is not None:
        return parse_bytes(kv_cache_memory)
    free = free_device_bytes(device)
    return DEFAULT_CPU_BYTES if free is None else int(free * DEFAULT_FRACTION)


def kv_bytes_per_token(cfg, dtype) -> int:
    """Keys and values of one token over all layers."""
    import jax.numpy as jnp

    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim \
        * jnp.dtype(dtype).itemsize


def num_pages_for(*, bytes_per_page: int, page_size: int, max_model_len: int, max_num_seqs: int,
                  num_pages: int | None = None, kv_cache_memory: int | str | None = None,
                  kv_cache_fraction: float | None = None, device=None, shards: int = 1) -> int:
    """The page count for one of the budgets above (see the module docstring). `shards`: the
    devices the pool is split over (a tensor-parallel mesh splits pages over KV heads), each
    holding `1/shards` of it."""
    given = [x is not None for x in (num_pages, kv_cache_memory, kv_cache_fraction)]
    if sum(given) > 1:
        raise ValueError("give at most one of num_pages, kv_cache_memory, kv_cache_fraction")
    one_seq = -(-max_model_len // page_size)
    if num_pages is not None:
        if not is_int(num_pages) or num_pages < 1:
            raise ValueError(f"num_pages must be an int >= 1, got {num_pages!r}")
        pages = int(num_pages)
        _check_fits(pages * bytes_per_page, f"num_pages={pages}", device, shards)
    elif kv_cache_memory is not None:
        pages = parse_bytes(kv_cache_memory) // bytes_per_page
        _check_fits(pages * bytes_per_page, f"kv_cache_memory={kv_cache_memory!r}", device, shards)
    else:
        free = free_device_bytes(device)
        if kv_cache_fraction is not None:
            if not isinstance(kv_cache_fraction, (int, float)) or not 0 < kv_cache_fraction <= 1:
                raise ValueError(f"kv_cache_fraction must be in (0, 1], got {kv_cache_fraction!r}")
            if free is None:
                raise ValueError("kv_cache_fraction needs a GPU or TPU (this device reports no "
                                 "memory statistics): give num_pages or kv_cache_memory")
            pages = int(free * kv_cache_fraction) // bytes_per_page
        elif free is not None:
            pages = int(free * DEFAULT_FRACTION) // bytes_per_page
        else:
            pages = min(DEFAULT_CPU_BYTES // bytes_per_page, max_num_seqs * one_seq)
    if pages < one_seq:
        raise ValueError(
            f"the KV budget holds {pages} pages of {page_size} tokens; one sequence of "
            f"max_model_len {max_model_len} needs {one_seq}: raise the budget or lower "
            "max_model_len")
    return pages


def _check_fits(nbytes: int, given: str, device, shards: int = 1) -> None:
    from workbench.devices import format_bytes  # imports JAX: this module does not

    available, what, per_device = memory_limit(device)
    need = -(-nbytes // shards) if per_device else nbytes
    if need > available:
        each = (f" ({format_bytes(need)} per device over {shards})" if per_device and shards > 1
                else "")
        raise ValueError(f"{given} is a KV cache of {format_bytes(nbytes)}{each}, more than "
                         f"{what} ({format_bytes(available)}): give a smaller budget")
