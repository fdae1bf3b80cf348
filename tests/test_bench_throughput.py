"""bench_throughput's arithmetic: the burst work bound and the arrival patterns (host only)."""

import types

import pytest

from benchmarks.bench_throughput import arrival_offsets, parse_args, work_bound


def _cfg(L=2, D=4, I=8, V=10, H=2, Hkv=1, Dh=2):
    return types.SimpleNamespace(hidden_size=D, num_hidden_layers=L, vocab_size=V,
                                 intermediate_size=I, num_attention_heads=H,
                                 num_key_value_heads=Hkv, head_dim=Dh)


def test_work_bound_counts_static_batches_and_best_continuous_batching():
    # two static batches of 2: outputs (10, 2) and (4, 4); prompts padded to buckets of 8/16
    b = work_bound(_cfg(), prompt_lens=[5, 8, 9, 16], out_lens=[10, 2, 4, 4], slots=2,
                   vi_buckets=((1, 2), (8, 16)), vs_prefill_buckets=(8, 16))
    assert b["vinference_decode_steps"] == (10 - 1) + (4 - 1)
    assert b["vinference_decode_row_steps"] == 2 * 9 + 2 * 3
    assert b["vinference_prefill_tokens"] == 2 * 8 + 2 * 16
    assert b["vsurge_decode_row_steps"] == 9 + 1 + 3 + 3
    assert b["vsurge_decode_steps"] == 8  # ceil(16 / 2)
    assert b["vsurge_prefill_tokens"] == 8 + 8 + 16 + 16
    assert b["step_bound"] == pytest.approx(12 / 8)
    # per token: layers 2*L*(D*(H+2Hkv)*Dh + H*Dh*D + 3*D*I) = 4*(32+16+96) = 576, LM head 80
    layer, head = 576, 80
    vi = 24 * (layer + head) + 48 * layer + 4 * head
    vs = 16 * (layer + head) + 48 * layer + 4 * head
    assert b["compute_bound"] == pytest.approx(vi / vs)
    exact = 16 * (layer + head) + 38 * layer + 4 * head
    assert b["compute_bound_unpadded"] == pytest.approx(vi / exact)
    # eSurge against vSurge: the same decode work, prefills unpadded against padded
    assert b["esurge_vs_vsurge"] == pytest.approx(vs / exact)
    assert b["esurge_vs_vsurge"] == pytest.approx(b["compute_bound_unpadded"] / b["compute_bound"])


def test_equal_outputs_leave_continuous_batching_nothing_to_win_in_decode():
    b = work_bound(_cfg(), [8] * 4, [6] * 4, 2, ((2,), (8,)), (8,))
    assert b["step_bound"] == 1 and b["compute_bound"] == pytest.approx(1)


def test_rates_give_one_poisson_run_each_and_bad_rates_are_refused():
    a = parse_args(["--rate", "0.5,2", "--patterns", "burst,poisson"])
    assert a.runs == [("burst", None), ("poisson@0.5", 0.5), ("poisson@2", 2.0)]
    gaps = arrival_offsets("poisson", 200, 2.0, 0)
    assert gaps[0] == 0 and 60 < gaps[-1] < 140  # 199 gaps of mean 0.5 s
    with pytest.raises(SystemExit):
        parse_args(["--rate", "0"])


def test_scenarios_are_parsed_and_quick_shrinks_them():
    a = parse_args([])
    assert a.scenarios == ["shared-prefix", "interference", "memory", "compile"]
    assert (a.prefix_requests, a.system_len, a.long_prompt) == (64, 384, 2000)
    q = parse_args(["--quick", "--scenarios", "memory,shared-prefix"])
    assert q.scenarios == ["memory", "shared-prefix"]
    assert (q.prefix_requests, q.system_len, q.long_prompt) == (8, 64, 256)
    assert parse_args(["--scenarios", ""]).scenarios == []
    with pytest.raises(SystemExit):
        parse_args(["--scenarios", "nope"])


def test_kv_bytes_per_engine_at_the_same_model_len():
    from benchmarks.esurge_scenarios import kv_bytes

    cfg = types.SimpleNamespace(num_hidden_layers=2, num_key_value_heads=3, head_dim=4)
    model = types.SimpleNamespace(config=cfg, dtype="float32")
    per_token = 2 * 2 * 3 * 4 * 4  # K and V, layers, kv heads, head dim, bytes
    vs = types.SimpleNamespace(model=model, max_concurrent_decodes=8, max_model_len=256)
    es = types.SimpleNamespace(model=model, page_size=16, num_pages=100)
    out = kv_bytes({"vsurge": vs, "esurge": es}, 256, 8, page_peak=10)
    assert out["vsurge"]["reserved"] == 8 * 256 * per_token
    assert out["esurge"] == {"reserved": 100 * 16 * per_token, "in_use_peak": 10 * 16 * per_token}
