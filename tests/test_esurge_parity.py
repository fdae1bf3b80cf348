"""eSurge gives vInference's tokens, greedy and seeded, on a 30-request mixed workload in four
scheduling situations; aborts free pages; after every workload each page is free or cached."""

import random
import threading

import numpy as np
import pytest

from workbench.engines.esurge import eSurge
from workbench.engines.vinference import vInference
from workbench.loading.loader import random_model
from workbench.models.config import ModelConfig
from workbench.sampling_params import SamplingParams

MAX_LEN = 160


@pytest.fixture(scope="module")
def lm(tiny_random_lm):
    return tiny_random_lm


def workload(shared_prefix: bool, seed: int = 0):
    """30 requests: mixed prompt lengths (half behind a shared 48-token prefix when asked),
    greedy and seeded sampling, penalties, stop ids, logprobs, n=2, EOS allowed or not."""
    rng = random.Random(seed)
    prefix = [rng.randrange(2, 256) for _ in range(48)]
    reqs = []
    for i in range(30):
        ids = [rng.randrange(2, 256) for _ in range(rng.randint(1, 60))]
        if shared_prefix and i % 2 == 0:
            ids = prefix + ids[:20]
        kw = dict(max_tokens=rng.randint(1, 28), ignore_eos=i % 4 != 0)
        kind = i % 6
        if kind in (0, 3):
            kw.update(temperature=0.0)
        elif kind == 1:
            kw.update(temperature=0.9, top_p=0.9, seed=i)
        elif kind == 2:
            kw.update(temperature=0.7, top_k=20, seed=1000 + i, repetition_penalty=1.3,
                      frequency_penalty=0.3, presence_penalty=0.2)
        elif kind == 4:
            kw.update(temperature=0.0, logprobs=True, top_logprobs=3, stop_token_ids=[7, 9])
        else:
            kw.update(temperature=1.0, seed=i, n=2, min_p=0.05)
        reqs.append((ids, SamplingParams(**kw)))
    return reqs


@pytest.fixture(scope="module")
def references(lm):
    vi = vInference(lm, max_batch_size=16, max_model_len=MAX_LEN)
    out = {}
    for shared in (False, True):
        reqs = workload(shared)
        out[shared] = (reqs, vi.generate([p for p, _ in reqs], [sp for _, sp in reqs]))
    return out


def _check_same(outs, refs):
    for got, want in zip(outs, refs):
        assert [o.token_ids for o in got.outputs] == [o.token_ids for o in want.outputs]
        assert [o.finish_reason for o in got.outputs] == [o.finish_reason for o in want.outputs]
        for o, w in zip(got.outputs, want.outputs):
            if w.logprobs:
                np.testing.assert_allclose([x.logprob for x in o.logprobs],
                                           [x.logprob for x in w.logprobs], atol=1e-4)
                assert [x.top[0][0] for x in o.logprobs] == [x.top[0][0] for x in w.logprobs]


def _check_pages_released(eng):
    snap = eng.kv_snapshot()
    assert snap["num_used"] == 0 and all(p["state"] in ("free", "cached") for p in snap["pages"])
    assert all(p["ref_cnt"] == 0 and not p["owners"] for p in snap["pages"])
    assert eng.scheduler.kv.num_held == 0 and not eng.scheduler.running


# 10 pages hold one sequence of MAX_LEN; 14 cannot hold the workload's running sequences
FEW_PAGES = dict(num_pages=14, max_num_seqs=8, max_num_batched_tokens=64)
# Configurations share compiled step shapes where they can (same pool, rows and buckets): a
# small budget's buckets are the defaults' smallest ones.
CONFIGS = {
    "defaults": (False, dict()),
    "small_budget": (False, dict(max_num_batched_tokens=16)),  # chunked prefill
    "few_pages": (False, FEW_PAGES),
    "shared_prefix": (True, dict()),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_tokens_as_vinference(lm, references, name):
    shared, knobs = CONFIGS[name]
    reqs, refs = references[shared]
    with eSurge(lm, max_model_len=MAX_LEN, **knobs) as eng:
        outs = eng.generate([p for p, _ in reqs], [sp for _, sp in reqs])
        snap = eng.metrics()
        _check_same(outs, refs)
        _check_pages_released(eng)
    assert snap["num_requests_finished"] == 30
    if name == "few_pages":
        assert snap["num_preemptions"] > 0  # too few pages: sequences were preempted, resumed
    else:
        assert snap["num_preemptions"] == 0
    if name == "small_budget":
        assert snap["iteration_tokens_total"] / snap["iterations_total"] <= 16
    if shared:
        # the prefix (3 pages of 16) is computed once; every later holder of it hits
        assert snap["prefix_cache_hits_total"] >= 14 * 48
    assert snap["prefix_cache_queries_total"] == sum(len(p) * sp.n for p, sp in reqs)


def test_streams_from_threads_with_aborts_free_their_pages(lm, references):
    reqs, refs = references[False]
    aborted = {3, 11, 20}
    results = {}
    with eSurge(lm, max_model_len=MAX_LEN, **FEW_PAGES) as eng:  # preemptions too
        def run(i):
            ids, sp = reqs[i]
            if i in aborted:
                sp = SamplingParams(max_tokens=MAX_LEN - len(ids), temperature=0,
                                    ignore_eos=True)
            chunks = []
            for out in eng.stream(ids, sp, request_id=f"r{i}"):
                chunks.append(out)
                if i in aborted and len(chunks) == 2:
                    assert eng.abort(f"r{i}")
            results[i] = chunks

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _check_pages_released(eng)
        events = [e["event"] for e in eng.timeline("r3")]
        assert eng.metrics()["num_preemptions"] > 0
    for i, chunks in results.items():
        final = chunks[-1]
        assert final.finished
        if i in aborted:
            assert final.outputs[0].finish_reason == "abort"
            continue
        _check_same([final], [refs[i]])
        streamed = [sum((c.outputs[k].delta_token_ids for c in chunks), [])
                    for k in range(len(final.outputs))]
        assert streamed == [o.token_ids for o in final.outputs]
    assert events[0] == "queued" and events[-1] == "finished"


def test_sliding_window_model_matches(lm):
    """Mistral-style sliding-window attention through the paged cache."""
    cfg = ModelConfig(architecture="MistralForCausalLM", vocab_size=256, hidden_size=64,
                      intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      eos_token_ids=(1,), sliding_window=12)
    sw = random_model(cfg, seed=1)
    reqs = workload(False, seed=3)[:12]
    want = vInference(sw, max_model_len=MAX_LEN).generate([p for p, _ in reqs],
                                                          [sp for _, sp in reqs])
    with eSurge(sw, max_model_len=MAX_LEN, max_num_batched_tokens=16) as eng:
        got = eng.generate([p for p, _ in reqs], [sp for _, sp in reqs])
    _check_same(got, want)
