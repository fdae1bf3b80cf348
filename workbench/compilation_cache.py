"""JAX's persistent compilation cache, on by default under the workbench cache directory.

Compiled executables are written to disk, so a second process or a restarted notebook kernel
loads them instead of compiling again. Every engine calls `configure()` when it is built.

- default directory: `<workbench cache>/jax_compilation_cache` (`$WORKBENCH_CACHE`, else
  `~/.cache/workbench`);
- `$WORKBENCH_COMPILATION_CACHE`: a directory to use instead, or `0` / `off` / `false` to turn
  the cache off (one flag); an engine's `compilation_cache=` argument overrides it (a path, or
  False);
- a directory the user set in JAX's own config (`jax_compilation_cache_dir`) is left alone.

JAX's cache is process-wide: the latest explicit choice holds for the whole process. Executables
that compile in under `MIN_COMPILE_SECONDS` (small eager ops) are not written; beyond `MAX_BYTES`
the least recently used entries are evicted.
"""

from __future__ import annotations

import os

MIN_COMPILE_SECONDS = 0.5
MAX_BYTES = 4 << 30  # least-recently-used entries are evicted beyond this
_OFF = {"0", "off", "false", "no"}
_configured: str | None = None  # the directory this module set, or "" when turned off


def default_directory() -> str:
    from workbench.loading.sources import cache_dir

    return os.path.join(cache_dir(), "jax_compilation_cache")


def configure(directory: str | bool | None = None) -> str | None:
    """Turn the cache on (a directory, or True: the environment's or the default) or off
    (False); None keeps an earlier choice, else acts as True. Returns the directory in use, or
    None when off. ValueError for another type."""
    global _configured
    import jax

    if directory is not None and not isinstance(directory, (str, bool, os.PathLike)):
        raise ValueError(f"compilation_cache must be a directory, True, False or None, got "
                         f"{directory!r}")
    current = jax.config.jax_compilation_cache_dir
    if current and current != _configured:  # the user's own setting wins
        return current
    if directory is None and _configured is not None:  # keep an earlier choice
        return _configured or None
    if directory is None or directory is True:
        env = os.environ.get("WORKBENCH_COMPILATION_CACHE", "").strip()
        directory = False if env.lower() in _OFF else (env or default_directory())
    if directory is False:
        if _configured:
            jax.config.update("jax_compilation_cache_dir", None)
        _configured = ""
        return None
    directory = os.fspath(directory)
    if directory != current:
        os.makedirs(directory, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    _configured = directory
    return directory
