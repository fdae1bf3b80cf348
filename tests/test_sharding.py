"""Tensor-parallel sharding on 8 fake CPU devices gives the same logits as unsharded.

Runs in a subprocess: the device count must be set before JAX starts.
"""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax
    from jax.sharding import PartitionSpec as P
    from tests.hf_models import save_tiny_model
    from workbench.loading.loader import load_model
    from workbench.loading.sharding import describe_fallbacks
    assert len(jax.devices()) == 8, jax.devices()
    out = sys.argv[1]
    save_tiny_model("llama", out + "/even", num_attention_heads=8, num_key_value_heads=8,
                    intermediate_size=128)
    save_tiny_model("qwen2", out + "/odd", num_attention_heads=6, num_key_value_heads=3,
                    hidden_size=48, intermediate_size=96)
    ids = np.random.default_rng(0).integers(3, 150, (3, 9))
    mask = np.ones_like(ids); mask[1, :4] = 0
    for name in ("even", "odd"):
        ref = load_model(out + "/" + name, progress=False)
        want = ref.logits(ids, mask)
        for tp in (2, 4, 8):
            lm = load_model(out + "/" + name, mesh=tp, progress=False)
            got = lm.logits(ids, mask)
            diff = np.abs(got - want)[mask.astype(bool)].max()
            assert diff < 1e-4, (name, tp, diff)
            q = lm.state["layers"]["self_attn"]["q_proj"]["kernel"][...]
            up = lm.state["layers"]["mlp"]["up_proj"]["kernel"][...]
            heads_ok = ref.config.num_key_value_heads % tp == 0
            assert q.sharding.spec == (P(None, None, "tp") if heads_ok else P(None, None, None)), q.sharding.spec
            assert up.sharding.spec == P(None, None, "tp"), up.sharding.spec
            assert len(q.sharding.device_set) == tp
            print(name, tp, "diff", diff, describe_fallbacks(lm.config, tp))
            cache = lm.new_cache(2, 16)
            assert cache.k.sharding.spec[2] == ("tp" if heads_ok else None)
            paged = lm.new_paged_cache(4, 8)  # eSurge's pages shard over KV heads
            assert paged.k.sharding.spec[3] == ("tp" if heads_ok else None)
    print("OK")
""")


def test_tensor_parallel_logits_match_unsharded(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "OK" in r.stdout
    assert "odd 4 diff" in r.stdout and "heads not divisible by tp=4" in r.stdout
