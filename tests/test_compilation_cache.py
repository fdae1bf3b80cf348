"""JAX's persistent compilation cache: on by default under the workbench cache, configurable,
off with one flag; a second process loads what the first compiled. Each case runs in a fresh
process (the setting is process-wide)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, **env) -> str:
    full = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **env)
    full.pop("WORKBENCH_COMPILATION_CACHE", None)
    full.update(env)
    r = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


CONFIGURE = ("import jax; from workbench import compilation_cache as cc; "
             "print(cc.configure({arg}), cc.configure(), jax.config.jax_compilation_cache_dir)")


def test_default_env_flag_explicit_choices_and_the_users_own_setting(tmp_path):
    cache = str(tmp_path / "wb")
    default = os.path.join(cache, "jax_compilation_cache")
    assert _run(CONFIGURE.format(arg=""), WORKBENCH_CACHE=cache) == f"{default} {default} {default}"
    assert _run(CONFIGURE.format(arg=""), WORKBENCH_CACHE=cache,
                WORKBENCH_COMPILATION_CACHE="off") == "None None None"
    other = str(tmp_path / "other")
    assert _run(CONFIGURE.format(arg=repr(other)), WORKBENCH_CACHE=cache,
                WORKBENCH_COMPILATION_CACHE="0") == f"{other} {other} {other}"
    # an explicit False turns off what an engine turned on before, and stays off
    code = ("import jax; from workbench import compilation_cache as cc; cc.configure(); "
            "print(cc.configure(False), cc.configure(), jax.config.jax_compilation_cache_dir)")
    assert _run(code, WORKBENCH_CACHE=cache) == "None None None"
    mine = str(tmp_path / "mine")
    code = (f"import jax; jax.config.update('jax_compilation_cache_dir', {mine!r}); "
            "from workbench import compilation_cache as cc; print(cc.configure(False))")
    assert _run(code, WORKBENCH_CACHE=cache) == mine


WARM = """
import time, jax, jax.numpy as jnp
import jax.monitoring
from workbench import compilation_cache as cc
hits = []
jax.monitoring.register_event_listener(lambda e, **k: hits.append(e) if "cache_hits" in e else None)
cc.MIN_COMPILE_SECONDS = 0  # cache even this small function
cc.configure()

@jax.jit
def f(x):
    for i in range(40):
        x = jnp.tanh(x @ x.T + i)
    return x

t = time.perf_counter()
f(jnp.ones((32, 32))).block_until_ready()
print(len(hits), time.perf_counter() - t)
"""


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    env = dict(WORKBENCH_CACHE=str(tmp_path))
    cold_hits, cold_s = _run(WARM, **env).split()
    warm_hits, warm_s = _run(WARM, **env).split()
    assert int(cold_hits) == 0 and int(warm_hits) >= 1
    assert os.listdir(tmp_path / "jax_compilation_cache")
