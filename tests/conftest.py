import os

# Tests run on the CPU with deterministic float32 math, 2 threads like the CI machine.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tests.hf_models import ARCHS, save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """{arch: (directory, torch model)} for every supported architecture."""
    out = {}
    for arch in ARCHS:
        d = str(tmp_path_factory.mktemp(f"tiny-{arch}"))
        out[arch] = (d, save_tiny_model(arch, d))
    return out


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct model, float32 (converted once, then cached)."""
    from workbench.loading.loader import load_model

    return load_model("embedded", dtype="float32", progress=False)


@pytest.fixture(scope="session")
def tiny_llama(tiny_checkpoints):
    from workbench.loading.loader import load_model

    return load_model(tiny_checkpoints["llama"][0], dtype="float32", progress=False)


@pytest.fixture(scope="session")
def tiny_random_lm():
    """A tiny random Llama built from a config, no checkpoint (text does not matter; tokens do).
    Its weights keep the logits apart, so float rounding cannot flip a greedy choice."""
    from workbench.loading.loader import random_model
    from workbench.models.config import ModelConfig

    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=256, hidden_size=64,
                      intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      eos_token_ids=(1,))
    return random_model(cfg, seed=0)


@pytest.fixture(scope="module", autouse=True)
def _free_compiled_executables():
    """Drop JAX's compiled executables after each test module. Every compiled shape keeps ~100
    memory mappings; the engine tests compile hundreds of shapes (one per read bucket), and a
    whole-suite process near the kernel's vm.max_map_count (65530) crashes inside the XLA
    compiler (observed: a segfault in `backend_compile_and_load` during tests/test_vsurge.py)."""
    yield
    import jax

    jax.clear_caches()
