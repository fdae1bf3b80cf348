"""XLA flags the workbench sets for itself, at `import workbench` (XLA reads `XLA_FLAGS` once,
when JAX first starts a backend: a process that ran JAX work before importing workbench keeps its
own flags).

- `--xla_cpu_copy_insertion_use_region_analysis=true`: without it XLA:CPU copied the whole KV
  cache (keys and values, twice each) in every decode step of the unrolled layer loop
  (`models/layer_loop.py`): its copy insertion could not prove the 30 per-layer reads of the
  cache end before the step's write. With it the cache is updated in place as under the scan.
  Measured neutral for the scan (benchmarks/README.md, "Layer loop").

A flag the user already set in `XLA_FLAGS` (either value) is left alone, and so is a flag the
installed jaxlib does not know (XLA aborts the process on an unknown flag; the name is looked up in
jaxlib's library, ~30 ms); `WORKBENCH_XLA_FLAGS=0` sets nothing.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import mmap
import os

DEFAULT_FLAGS = ("--xla_cpu_copy_insertion_use_region_analysis=true",)


def apply_xla_flags(env=os.environ) -> list[str]:
    """Add the default flags the user has not set to `XLA_FLAGS`; returns the ones added."""
    if env.get("WORKBENCH_XLA_FLAGS", "").strip().lower() in ("0", "off", "false", "no"):
        return []
    current = env.get("XLA_FLAGS", "")
    names = {f.split("=", 1)[0] for f in current.split()}
    added = [f for f in DEFAULT_FLAGS
             if f.split("=", 1)[0] not in names and xla_knows(f.split("=", 1)[0])]
    if added:
        env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


@functools.lru_cache(maxsize=None)
def xla_knows(flag: str) -> bool:
    """True if the installed jaxlib's XLA has the flag `--name` (its name is in the library)."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or spec.origin is None:
        return False
    libs = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "*.so")),
                  key=lambda f: "jax_common" not in f)  # where XLA lives in current jaxlibs
    needle = flag.lstrip("-").encode()
    for lib in libs:
        try:
            with open(lib, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(needle) >= 0:
                    return True
        except (OSError, ValueError):  # unreadable or empty file
            continue
    return False
