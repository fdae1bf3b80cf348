"""The C heap of a long-lived notebook or server process: fewer malloc arenas, free pages given back.

Contract:
- `limit_malloc_arenas()`: cap glibc's malloc arenas at `WORKBENCH_MALLOC_ARENA_MAX` (default 2;
  "0" leaves glibc's default, 8 per core), as `MALLOC_ARENA_MAX=2` in the environment would.
  `import workbench` calls it once, before JAX's threads exist (arenas made earlier stay).
- `release_free_heap()`: give the heap's free pages back to the OS (`malloc_trim(0)`);
  `ServerHandle.stop()` calls it.
Both are no-ops off Linux/glibc (musl, macOS, Windows).

Why: every thread that allocates gets an arena of its own, and a server's threads come and go with
each start/stop (uvicorn's loop, thread pools, engine drivers); what they freed stays in their
arenas. Not a leak, but on the embedded model each server start/stop cycle grew RSS by 2.4-6.7 MB
in glibc's default setting and by 0.0 with 2 arenas, and idle RSS fell ~80 MB
(benchmarks/README.md, "Memory of the default server").
"""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def limit_malloc_arenas() -> None:
    want = os.environ.get("WORKBENCH_MALLOC_ARENA_MAX", "2")
    libc = _libc()
    if libc is None or want == "0":
        return
    try:
        libc.mallopt(M_ARENA_MAX, int(want))
    except ValueError:
        pass


def release_free_heap() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
