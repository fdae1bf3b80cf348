"""The two layer loops (models/layer_loop.py): same weights, same logits, same tokens; checkpoint
names, partition rules and layout conversion on both; the XLA flags the library sets."""

import numpy as np
import pytest
from flax import nnx

from tests.hf_models import save_tiny_model
from workbench.loading.loader import load_model, random_model
from workbench.loading.sharding import param_spec
from workbench.models.config import ModelConfig
from workbench.models.layer_loop import (
    default_layer_loop,
    is_stacked,
    stack_layers,
    unstack_layers,
)
from workbench.models.weights import hf_tensor_names, to_param
from workbench.sampling_params import SamplingParams
from workbench.xla_flags import DEFAULT_FLAGS, apply_xla_flags, xla_knows

LOOPS = ("scan", "unrolled")


def _cfg(num_layers=12):  # more than 10 layers: a string sort of "10" < "2" would show
    return ModelConfig(architecture="LlamaForCausalLM", vocab_size=256, hidden_size=64,
                       intermediate_size=128, num_hidden_layers=num_layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=512, eos_token_ids=(1,))


def _flat(state):
    return {tuple(str(p) for p in path): np.asarray(v.get_value())
            for path, v in nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def models():
    return {loop: random_model(_cfg(), seed=3, layer_loop=loop) for loop in LOOPS}


def test_random_models_have_the_same_weights_in_both_layouts(models):
    stacked, unrolled = _flat(models["scan"].state), _flat(models["unrolled"].state)
    assert len(unrolled) > len(stacked)
    for path, value in unrolled.items():
        if path[0] == "layers":
            np.testing.assert_array_equal(value, stacked[(path[0], *path[2:])][int(path[1])])
        else:
            np.testing.assert_array_equal(value, stacked[path])


def test_unstack_and_stack_are_inverse(models):
    state = models["scan"].state
    back = stack_layers(unstack_layers(state))
    a, b = _flat(state), _flat(back)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # and the unrolled model's own state stacks to the scan model's
    c = _flat(stack_layers(models["unrolled"].state))
    for k in a:
        np.testing.assert_array_equal(a[k], c[k])


def test_both_loops_give_the_same_logits(models):
    ids = np.random.default_rng(0).integers(2, 256, size=(3, 17))
    a, b = models["scan"].logits(ids), models["unrolled"].logits(ids)
    assert models["scan"].layer_loop == "scan" and models["unrolled"].layer_loop == "unrolled"
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("engine_name", ["vinference", "vsurge", "esurge"])
def test_every_engine_gives_the_same_tokens_under_both_loops(models, engine_name):
    import workbench

    cls = {"vinference": workbench.vInference, "vsurge": workbench.vSurge,
           "esurge": workbench.eSurge}[engine_name]
    rng = np.random.default_rng(1)
    prompts = [rng.integers(2, 256, size=n).tolist() for n in (5, 23, 40)]
    params = [SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
              SamplingParams(max_tokens=9, temperature=0.8, seed=7, ignore_eos=True),
              SamplingParams(max_tokens=15, temperature=0.0, repetition_penalty=1.3,
                             ignore_eos=True)]
    out = {}
    for loop, lm in models.items():
        kw = {"max_model_len": 128}
        with cls(lm, **kw) as engine:
            out[loop] = [r.outputs[0].token_ids for r in engine.generate(prompts, params)]
    assert out["scan"] == out["unrolled"]
    assert all(len(t) == p.max_tokens for t, p in zip(out["scan"], params))


def test_a_checkpoint_loads_into_either_layout_with_the_same_logits(tmp_path):
    d = str(tmp_path / "deep")
    save_tiny_model("llama", d, num_hidden_layers=12)
    lms = {loop: load_model(d, dtype="float32", layer_loop=loop, progress=False)
           for loop in LOOPS}
    ids = np.arange(2, 30)[None]
    np.testing.assert_allclose(lms["scan"].logits(ids), lms["unrolled"].logits(ids),
                               atol=2e-5, rtol=2e-5)
    keys = [tuple(path) for path, _ in nnx.to_flat_state(lms["unrolled"].state)]
    assert ("layers", 11, "mlp", "up_proj", "kernel") in keys  # int indices, in order


def test_checkpoint_names_and_partition_specs_per_layout():
    stacked = ("layers", "mlp", "up_proj", "kernel")
    one = ("layers", "7", "mlp", "up_proj", "kernel")
    assert is_stacked(stacked) and not is_stacked(one)
    assert not is_stacked(("embed_tokens", "embedding")) and not is_stacked(("layers",))
    assert hf_tensor_names(stacked, 3) == [f"model.layers.{i}.mlp.up_proj.weight"
                                           for i in range(3)]
    assert hf_tensor_names(one, 3) == ["model.layers.7.mlp.up_proj.weight"]
    t = np.arange(6.0).reshape(2, 3)
    assert to_param(stacked, [t, t]).shape == (2, 3, 2)
    assert to_param(one, [t]).shape == (3, 2)
    cfg = _cfg()
    assert tuple(param_spec(stacked, 3, cfg, 2)) == (None, None, "tp")
    assert tuple(param_spec(one, 2, cfg, 2)) == (None, "tp")


def test_layer_loop_choice_and_bad_values(monkeypatch):
    monkeypatch.delenv("WORKBENCH_LAYER_LOOP", raising=False)
    assert default_layer_loop(30, "cpu") == "scan"
    monkeypatch.setenv("WORKBENCH_LAYER_LOOP", "unrolled")
    assert default_layer_loop(30, "cpu") == "unrolled"
    monkeypatch.setenv("WORKBENCH_LAYER_LOOP", "loop")
    with pytest.raises(ValueError, match="layer_loop must be one of scan, unrolled"):
        default_layer_loop(30)
    monkeypatch.delenv("WORKBENCH_LAYER_LOOP")
    with pytest.raises(ValueError, match="layer_loop"):
        random_model(_cfg(2), layer_loop="vmap")


def test_xla_flags_are_added_once_and_never_override_the_user():
    for flag in DEFAULT_FLAGS:
        assert xla_knows(flag.split("=")[0])  # the pinned jaxlib has them
    assert not xla_knows("--xla_cpu_no_such_flag_anywhere")
    env = {}
    assert apply_xla_flags(env) == list(DEFAULT_FLAGS)
    assert env["XLA_FLAGS"] == " ".join(DEFAULT_FLAGS)
    assert apply_xla_flags(env) == []  # already there
    name = DEFAULT_FLAGS[0].split("=")[0]
    env = {"XLA_FLAGS": f"--xla_dump_to=/tmp/x {name}=false"}
    assert apply_xla_flags(env) == [] and env["XLA_FLAGS"].endswith("=false")
    env = {"WORKBENCH_XLA_FLAGS": "0"}
    assert apply_xla_flags(env) == [] and "XLA_FLAGS" not in env
