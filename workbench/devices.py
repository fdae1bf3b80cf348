"""What the machine has: JAX devices with their memory, the process's memory, live device arrays.

- `device_info() -> list[dict]`: one dict per JAX device: `id`, `platform` ("cpu" | "gpu" |
  "tpu"), `kind` (e.g. "NVIDIA H200", "TPU v5 lite", "cpu"), `process_index`, and
  `bytes_in_use` / `bytes_limit` where the platform reports them (GPU, TPU), else None.
- `live_array_bytes() -> int`: bytes of every live `jax.Array` in this process (on a CPU, where
  devices report no memory, this is the device memory the workbench holds).
- `process_rss_bytes()`, `host_memory_bytes()`: the process's resident memory and the machine's.
- `memory_summary() -> dict`: the above in one dict, what the UI shows.
"""

from __future__ import annotations

from typing import Any

import jax
import psutil


def device_info() -> list[dict[str, Any]]:
    out = []
    for d in jax.devices():
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = {}
        out.append({
            "id": d.id, "platform": d.platform, "kind": d.device_kind,
            "process_index": d.process_index,
            "bytes_in_use": stats.get("bytes_in_use"),
            "bytes_limit": stats.get("bytes_limit"),
        })
    return out


def live_array_bytes() -> int:
    total = 0
    for x in jax.live_arrays():
        try:
            if not x.is_deleted():
                total += x.nbytes
        except Exception:  # noqa: BLE001 - an array deleted meanwhile by another thread
            pass
    return total


def process_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def host_memory_bytes() -> int:
    return psutil.virtual_memory().total


def memory_summary() -> dict[str, Any]:
    devices = device_info()
    in_use = [d["bytes_in_use"] for d in devices if d["bytes_in_use"] is not None]
    limits = [d["bytes_limit"] for d in devices if d["bytes_limit"] is not None]
    return {
        "platform": devices[0]["platform"] if devices else None,
        "kind": devices[0]["kind"] if devices else None,
        "num_devices": len(devices),
        "device_bytes_in_use": sum(in_use) if in_use else None,
        "device_bytes_limit": sum(limits) if limits else None,
        "live_array_bytes": live_array_bytes(),
        "process_rss_bytes": process_rss_bytes(),
        "host_memory_bytes": host_memory_bytes(),
    }


def format_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'; None -> 'n/a'."""
    if n is None:
        return "n/a"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
