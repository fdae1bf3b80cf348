"""eSurge's engine surface: compile budget and precompile, page map, timeline, metrics,
prefix-cache controls, priorities, knobs, lifecycle (tiny random model)."""

import dataclasses
import threading
import types

import jax.monitoring
import pytest

from workbench.engines.buckets import token_buckets
from workbench.engines.esurge import eSurge
from workbench.engines.types import EngineError
from workbench.sampling_params import SamplingParams

_compiles: list[str] = []
_listening = threading.Event()


def _listener(event: str, duration: float, **kwargs):
    # a new executable is compiled, or loaded from the persistent compilation cache
    if _listening.is_set() and ("backend_compile" in event or "cache_retrieval" in event):
        _compiles.append(event)


jax.monitoring.register_event_duration_secs_listener(_listener)


@pytest.fixture(scope="module")
def lm(tiny_random_lm):
    return tiny_random_lm


def test_default_compile_budget_and_no_compilation_after_precompile(lm):
    # the default budgets (CPU 256 tokens, accelerators 2048) stay within 16 shapes in all
    assert len(token_buckets(256)) + 1 <= 16 and len(token_buckets(2048)) + 1 <= 16
    eng = eSurge(lm, max_model_len=128)
    with eng:
        info = eng.precompile()
        shapes = info["shapes"]
        assert len(shapes) == len(eng.token_buckets) + 1 <= 16
        assert [s["num_tokens"] for s in shapes[:-1]] == list(eng.token_buckets)
        assert shapes[-1]["function"] == "set_penalty_row"
        sizes = (eng.runner.step_fn._cache_size(), eng.runner.set_row_fn._cache_size())
        _compiles.clear()
        _listening.set()
        try:  # prompts across every bucket, chunked, decodes, penalties, seeds, n=2, logprobs
            prompts = [list(range(2, 2 + n)) for n in (3, 17, 40, 9, 90, 5, 60, 1, 120)]
            sps = [SamplingParams(max_tokens=m, temperature=t, seed=s, ignore_eos=True,
                                  repetition_penalty=r, n=n, logprobs=True)
                   for m, t, s, r, n in [(2, 0, None, 1.0, 1), (30, 0.8, 1, 1.0, 1),
                                         (8, 0, None, 1.2, 1), (9, 0.5, 3, 1.0, 2),
                                         (3, 0, None, 1.0, 1), (7, 1.0, 4, 1.3, 1),
                                         (4, 0, None, 1.0, 1), (20, 0, None, 1.0, 1),
                                         (5, 0.7, 9, 1.0, 1)]]
            outs = eng.generate(prompts, sps)
            eng.generate([[5, 6]] * 40, SamplingParams(max_tokens=3, temperature=0))
        finally:
            _listening.clear()
        assert [len(o.outputs[0].token_ids) for o in outs] == [2, 30, 8, 9, 3, 7, 4, 20, 5]
        assert _compiles == []
        assert (eng.runner.step_fn._cache_size(), eng.runner.set_row_fn._cache_size()) == sizes
    with pytest.raises(EngineError, match="closed"):
        eng.precompile()


def test_page_map_timeline_and_metrics_while_running(lm):
    with eSurge(lm, max_model_len=128, num_pages=32, page_size=8,
                max_num_batched_tokens=16) as eng:
        stream = eng.stream(list(range(2, 42)), SamplingParams(max_tokens=60, temperature=0,
                                                              ignore_eos=True),
                            request_id="long")
        next(stream)
        snap = eng.kv_snapshot()
        assert (snap["num_pages"], snap["page_size"]) == (32, 8)
        used = [p for p in snap["pages"] if p["state"] == "used"]
        assert used and all(p["owners"] == ["long"] and p["ref_cnt"] == 1 for p in used)
        assert snap["num_used"] + snap["num_cached"] + snap["num_free"] == 32
        assert snap["usage"] == pytest.approx(len(used) / 32)
        m = eng.metrics()
        assert m["kv_cache_usage_perc"] > 0 and m["kv_pages"]["used"] == len(used)
        for _ in stream:
            pass
        events = eng.timeline("long")
        names = [e["event"] for e in events]
        # 40 prompt tokens in chunks of at most 16, then the first token, then the end
        assert names[:3] == ["queued", "scheduled", "prefix_lookup"]
        chunks = [e for e in events if e["event"] == "prefill_chunk"]
        assert [(c["start"], c["num_tokens"]) for c in chunks] == [(0, 16), (16, 16), (24, 16)] \
            or sum(c["num_tokens"] for c in chunks) == 40
        assert names.index("first_token") > names.index("prefill_chunk")
        assert events[-1]["event"] == "finished" and events[-1]["reason"] == "length"
        assert [e["time"] for e in events] == sorted(e["time"] for e in events)
        text = eng.collector.render().decode()
        for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
                     "prefix_cache_queries_total", "prefix_cache_hits_total",
                     "num_preemptions_total", "prompt_tokens_total", "generation_tokens_total",
                     "request_success_total", "iteration_tokens_total_bucket",
                     "time_to_first_token_seconds_bucket", "inter_token_latency_seconds_bucket",
                     "e2e_request_latency_seconds_bucket", "request_queue_time_seconds_bucket",
                     "request_prefill_time_seconds_bucket", "request_decode_time_seconds_bucket"):
            assert f"workbench:{name}" in text, name
        after = eng.kv_snapshot()
        assert after["num_used"] == 0 and after["num_cached"] > 0


def test_prefix_cache_hits_reset_and_off(lm):
    prompt = list(range(3, 70))
    sp = SamplingParams(max_tokens=2, temperature=0)
    with eSurge(lm, max_model_len=128, num_pages=40) as eng:
        first = eng.generate([prompt], sp)[0]
        again = eng.generate([prompt], sp)[0]
        m = eng.metrics()
        assert m["prefix_cache_hits_total"] == 64 and m["prefix_cache_hit_rate"] == 64 / (2 * 67)
        assert again.outputs[0].token_ids == first.outputs[0].token_ids
        assert eng.reset_prefix_cache() > 0 and eng.kv_snapshot()["num_cached"] == 0
        eng.generate([prompt], sp)
        assert eng.metrics()["prefix_cache_hits_total"] == 64  # nothing cached to hit
    with eSurge(lm, max_model_len=128, num_pages=40, enable_prefix_caching=False) as eng:
        eng.generate([prompt, prompt], sp)
        assert eng.metrics()["prefix_cache_queries_total"] == 0
        assert eng.kv_snapshot()["num_cached"] == 0 and eng.reset_prefix_cache() == 0


def test_priority_policy_runs_the_lowest_value_first(lm):
    order = []  # (finish time, request id)
    with eSurge(lm, max_model_len=128, max_num_seqs=1, scheduling_policy="priority") as eng:
        assert eng.supports_priority
        blocker = eng.submit([1, 2, 3], SamplingParams(max_tokens=40, temperature=0,
                                                       ignore_eos=True), priority=9)
        blocker.get()  # running now; the rest queue behind it
        streams = [eng.submit([4, 5], SamplingParams(max_tokens=2, temperature=0,
                                                     ignore_eos=True),
                              request_id=f"p{p}", priority=p) for p in (3, 1, 2, 0)]

        for s in streams:
            while not s.get(timeout=60).finished:
                pass
            # when the driver finished it (a consumer thread's clock would race)
            order.append((eng.timeline(s.request_id)[-1]["time"], s.request_id))
    assert [rid for _, rid in sorted(order)] == ["p0", "p1", "p2", "p3"]
    assert not eSurge(lm, max_model_len=64).supports_priority


def test_knobs_are_validated_with_clear_errors(lm):
    for kw, match in [(dict(page_size=0), "page_size"), (dict(max_num_seqs=0), "max_num_seqs"),
                      (dict(max_num_batched_tokens=0), "max_num_batched_tokens"),
                      (dict(scheduling_policy="lifo"), "scheduling_policy"),
                      (dict(num_pages=3), "one sequence of max_model_len 128 needs 8"),
                      (dict(num_pages=40, kv_cache_memory="1GiB"), "at most one of"),
                      (dict(kv_cache_fraction=0.5), "needs a GPU or TPU"),
                      (dict(kv_cache_memory="lots"), "not a size"),
                      (dict(long_prefill_token_threshold=0), "long_prefill_token_threshold"),
                      (dict(compilation_cache=3), "compilation_cache"),
                      (dict(attention_kernel="triton"),
                       "attention_kernel must be one of xla, pallas, got 'triton'")]:
        with pytest.raises(ValueError, match=match):
            eSurge(lm, max_model_len=128, **kw)
    sharded = dataclasses.replace(lm, mesh=types.SimpleNamespace(size=2))
    with pytest.raises(ValueError, match="'pallas' runs on one device; this model is sharded"):
        eSurge(sharded, max_model_len=128, attention_kernel="pallas")
    eng = eSurge(lm, max_model_len=128, kv_cache_memory="1MiB", page_size=8)
    per_page = 2 * 2 * 8 * 2 * 16 * 4  # k and v, layers, positions, heads, dim, float32
    assert eng.num_pages == (1 << 20) // per_page and eng.kv_cache_bytes() <= 1 << 20


def test_the_pallas_kernel_gives_the_xla_kernels_tokens(lm):
    """The same mixed workload (greedy and seeded; 8-token steps, so prompts are chunked and
    read their own earlier pages; decodes over several pages) through both ways of reading the
    cached pages. On the CPU the kernel is interpreted: slow, so the workload is small."""
    prompts = [[5 + i] * n for i, n in enumerate((3, 13, 21))]
    params = [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
              SamplingParams(max_tokens=10, temperature=0.9, seed=7, ignore_eos=True),
              SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)]
    outs = {}
    for kernel in ("xla", "pallas"):
        with eSurge(lm, max_model_len=64, page_size=4, max_num_seqs=4,
                    max_num_batched_tokens=8, attention_kernel=kernel) as eng:
            assert eng.attention_kernel == kernel
            outs[kernel] = [o.outputs[0].token_ids for o in eng.generate(prompts, params)]
    assert [len(t) for t in outs["xla"]] == [12, 10, 6]
    assert outs["pallas"] == outs["xla"]


def test_lifecycle_frees_the_pool_and_restarts(lm):
    eng = eSurge(lm, max_model_len=64, num_pages=16)
    assert eng.runner.cache is None  # nothing allocated before start
    out = eng.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0))
    assert len(out[0].outputs[0].token_ids) == 3 and eng.runner.cache is not None
    eng.stop()
    eng.stop()
    assert eng.runner.cache is None and not eng.running
    assert not any(t.name == "esurge-driver" for t in threading.enumerate())
    again = eng.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0))
    assert again[0].outputs[0].token_ids == out[0].outputs[0].token_ids
    eng.close()
    assert eng.runner.cache is None
    with pytest.raises(EngineError, match="closed"):
        eng.generate("hi")
