"""vSurge: same tokens as vInference under concurrency, priorities, aborts, lifecycle."""

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from workbench.engines.types import EngineError, EngineOverloadedError, PromptTooLongError
from workbench.engines.vinference import vInference
from workbench.engines.vsurge import vSurge
from workbench.sampling_params import SamplingParams

TOPICS = ["the sea", "a cat", "Paris", "jazz", "rain", "mountains", "coffee", "robots", "trees",
          "the moon", "bread", "chess", "winter", "a river", "music", "friendship", "stars",
          "a garden", "the city", "books"]


def _workload(engine):
    rng = random.Random(0)
    reqs = []
    for i, topic in enumerate(TOPICS):
        ids = engine.chat_prompt([{"role": "user", "content": f"Write about {topic}."}])[0]
        ids = ids + [28] * rng.randint(0, 40)  # mixed prompt lengths
        kw = dict(max_tokens=rng.randint(4, 24))
        if i % 3 == 1:
            kw.update(temperature=0.9, top_p=0.9, seed=i)
        else:
            kw.update(temperature=0.0)
        if i % 5 == 2:
            kw.update(stop=[" the", "."])
        reqs.append((f"req-{i}", ids, SamplingParams(**kw), rng.randint(0, 3)))
    return reqs


@pytest.fixture(scope="module")
def reference(embedded):
    vi = vInference(embedded, max_batch_size=8, max_model_len=512)
    reqs = _workload(vi)
    outs = vi.generate([ids for _, ids, _, _ in reqs], [sp for _, _, sp, _ in reqs])
    return reqs, {rid: o.outputs[0] for (rid, *_), o in zip(reqs, outs)}


def test_concurrent_threads_with_priorities_aborts_and_stops_match_vinference(embedded, reference):
    reqs, expected = reference
    to_abort = {"req-4", "req-13"}
    results = {}
    with vSurge(embedded, max_concurrent_decodes=6, max_concurrent_prefill=3, max_model_len=512,
                scheduling_policy="priority") as eng:
        def run(item):
            rid, ids, sp, prio = item
            if rid in to_abort:
                sp = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
            chunks = []
            for out in eng.stream(ids, sp, request_id=rid, priority=prio):
                chunks.append(out)
                if rid in to_abort and len(chunks) == 2:
                    assert eng.abort(rid)
            results[rid] = chunks

        with ThreadPoolExecutor(max_workers=20) as pool:
            list(pool.map(run, reqs))
        snap = eng.metrics()
    for rid, *_ in reqs:
        chunks = results[rid]
        final = chunks[-1].outputs[0]
        assert chunks[-1].finished
        streamed = "".join(c.outputs[0].delta_text for c in chunks)
        assert streamed == final.text
        if rid in to_abort:
            assert final.finish_reason == "abort" and len(final.token_ids) < 400
            continue
        assert final.token_ids == expected[rid].token_ids, rid
        assert final.text == expected[rid].text and final.finish_reason == expected[rid].finish_reason
    assert snap["finished_by_reason"]["abort"] == 2
    assert snap["num_requests_finished"] == 20
    assert snap["ttft_s"]["count"] >= 18 and snap["num_requests_running"] == 0


def test_asyncio_streams_and_agenerate(embedded, reference):
    reqs, expected = reference

    async def main(eng):
        async def one(rid, ids, sp):
            text = ""
            async for out in eng.astream(ids, sp):
                text += out.outputs[0].delta_text
            return rid, text, out.outputs[0].token_ids

        res = await asyncio.gather(*(one(rid, ids, sp) for rid, ids, sp, _ in reqs[:8]))
        gen = await eng.agenerate([ids for _, ids, _, _ in reqs[:3]], [sp for _, _, sp, _ in reqs[:3]])
        return res, gen

    with vSurge(embedded, max_concurrent_decodes=4, max_model_len=512) as eng:
        res, gen = asyncio.run(main(eng))
    for rid, text, toks in res:
        assert toks == expected[rid].token_ids and text == expected[rid].text
    assert [g.outputs[0].token_ids for g in gen] == [expected[r[0]].token_ids for r in reqs[:3]]


def test_priority_order_with_one_slot(embedded):
    order = []
    with vSurge(embedded, max_concurrent_decodes=1, max_model_len=256,
                scheduling_policy="priority") as eng:
        blocker = eng.submit([1, 2, 3], SamplingParams(max_tokens=30, ignore_eos=True, temperature=0),
                             request_id="blocker", priority=9)
        blocker.get()  # running now; the rest queue behind it
        streams = [eng.submit([1, 2, 3], SamplingParams(max_tokens=2, temperature=0),
                              request_id=f"p{p}", priority=p) for p in (3, 1, 2, 0)]

        def wait(s):
            while not s.get().finished:
                pass
            order.append((time.monotonic(), s.request_id))

        threads = [threading.Thread(target=wait, args=(s,)) for s in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [rid for _, rid in sorted(order)] == ["p0", "p1", "p2", "p3"]


def test_overload_validation_and_restart(embedded):
    eng = vSurge(embedded, max_concurrent_decodes=1, max_model_len=256, max_waiting=2,
                 max_prefill_length=64)
    with pytest.raises(PromptTooLongError, match="max_prefill_length is 64"):
        eng.submit([1] * 100, SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="exceeds the engine's 1 decode slots"):
        eng.submit([1, 2], SamplingParams(n=2))
    eng.start()
    long = SamplingParams(max_tokens=200, ignore_eos=True, temperature=0)
    first = eng.submit([1, 2, 3], long)
    first.get()
    eng.submit([1, 2, 3], long)
    eng.submit([1, 2, 3], long)
    with pytest.raises(EngineOverloadedError):
        eng.submit([1, 2, 3], long)
    assert eng.metrics()["num_requests_rejected"] == 1
    eng.stop()
    eng.stop()  # idempotent
    assert not any(t.name == "vsurge-driver" for t in threading.enumerate())
    while not (out := first.get()).finished:
        pass
    assert out.outputs[0].finish_reason == "abort"
    # the engine can start again and serve
    out = eng.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0))
    assert len(out[0].outputs[0].token_ids) == 3
    eng.close()
    with pytest.raises(EngineError, match="closed"):
        eng.generate("hi")
    assert not any(t.name == "vsurge-driver" for t in threading.enumerate())


@pytest.mark.parametrize("interleaved, decode_steps", [(True, 1), (False, 3)])
def test_interleaved_mode_and_multi_step_decode_give_the_same_tokens(embedded, reference,
                                                                    interleaved, decode_steps):
    """Among the six: greedy and seeded rows and a stop string, which a multi-step chunk can run
    past on the device (the host cuts the text and frees the slot)."""
    reqs, expected = reference
    assert any(sp.stop for _, _, sp, _ in reqs[:6]) and any(sp.seed for _, _, sp, _ in reqs[:6])
    with vSurge(embedded, max_concurrent_decodes=4, max_concurrent_prefill=1, max_model_len=512,
                interleaved_mode=interleaved, decode_steps=decode_steps) as eng:
        outs = eng.generate([ids for _, ids, _, _ in reqs[:6]], [sp for _, _, sp, _ in reqs[:6]])
    assert [o.outputs[0].token_ids for o in outs] == [expected[r[0]].token_ids for r in reqs[:6]]


PREFIX_READS = dict(decode_read="prefix", read_buckets=tuple(range(4, 129)))
RAGGED_READS = dict(decode_read="ragged", block_size=8, block_buckets=tuple(range(1, 33)))


@pytest.mark.parametrize("reads, decode_steps", [(PREFIX_READS, 1), (RAGGED_READS, 1),
                                                 (RAGGED_READS, 3)],
                         ids=["prefix", "ragged", "ragged-3-steps"])
def test_reading_only_what_live_rows_can_see_keeps_logprobs(tiny_llama, reads, decode_steps):
    """Each decode iteration reads only the cached positions the live rows can see: a common
    prefix (`read_buckets`) or each row's own blocks (ragged); with every size a bucket, reading
    one position (or block) too few would change the logprobs. With several decode steps per
    iteration the rows run further ahead of the host's count (prefix reads with several steps:
    the next test, at the tightest bound)."""
    import numpy as np

    prompts = [[5, 9, 14, 3, 77], list(range(10, 31)), [100, 101]]
    sps = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, logprobs=True)
           for n in (30, 12, 40)]
    whole = vInference(tiny_llama, max_batch_size=4, max_model_len=128, decode_read="prefix",
                       read_buckets=(128,)).generate(prompts, sps)
    with vSurge(tiny_llama, max_concurrent_decodes=2, max_concurrent_prefill=1,
                max_model_len=128, decode_steps=decode_steps, **reads) as eng:
        outs = eng.generate(prompts, sps)
    for a, b in zip(outs, whole):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        np.testing.assert_allclose([lp.logprob for lp in a.outputs[0].logprobs],
                                   [lp.logprob for lp in b.outputs[0].logprobs], atol=1e-5)


def test_decode_steps_default_and_validation(tiny_llama):
    from workbench.engines.vsurge import default_decode_steps

    assert default_decode_steps("cpu") == 1 and default_decode_steps("gpu") == 8
    with pytest.raises(ValueError, match="decode_steps"):
        vSurge(tiny_llama, decode_steps=0)
    eng = vSurge(tiny_llama, max_model_len=64, decode_steps=5)
    assert eng.decode_steps == 5
    eng.close()


@pytest.mark.parametrize("decode_steps", [1, 3])
def test_a_fresh_row_reads_its_whole_past_while_its_prefill_is_unread(tiny_llama, decode_steps):
    """The tightest case of the read bound: one request, so every decode iteration reads exactly
    its row; in the iteration after its prefill the host has read none of its tokens while the
    device is 1 + decode_steps tokens ahead, and this iteration caches decode_steps - 1 more
    before its last step. With a read size per position, a bound one position short changes the
    logprobs (checked: 2 * decode_steps - 2 fails)."""
    import numpy as np

    prompt = list(range(3, 20))
    sp = SamplingParams(max_tokens=9, temperature=0, ignore_eos=True, logprobs=True)
    whole = vInference(tiny_llama, max_batch_size=1, max_model_len=64, decode_read="prefix",
                       read_buckets=(64,)).generate([prompt], sp)[0].outputs[0]
    with vSurge(tiny_llama, max_concurrent_decodes=1, max_model_len=64, decode_read="prefix",
                read_buckets=tuple(range(1, 65)), decode_steps=decode_steps) as eng:
        out = eng.generate([prompt], sp)[0].outputs[0]
    assert out.token_ids == whole.token_ids
    np.testing.assert_allclose([lp.logprob for lp in out.logprobs],
                               [lp.logprob for lp in whole.logprobs], atol=1e-5)


@pytest.mark.parametrize("decode_steps", [1, 4])
def test_straggler_in_a_high_slot_moves_to_the_front_and_keeps_its_tokens(tiny_llama,
                                                                         monkeypatch,
                                                                         decode_steps):
    """Slots free up anywhere; when the live ones fit a smaller decode batch, they move to the
    front (cache rows and decode state). The moved requests must continue exactly as before,
    penalties and seeded sampling included, also when rows finish inside a multi-step chunk."""
    import numpy as np

    prompts = [[5, 9, 14], [7, 8], list(range(10, 31)), [100, 101, 102, 103],
               [3, 1, 4, 1, 5, 9, 2, 6]]
    sps = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, logprobs=True)
           for n in (3, 4, 5, 30)]
    sps.append(SamplingParams(max_tokens=25, temperature=0.8, seed=7, ignore_eos=True,
                              logprobs=True, frequency_penalty=0.5, repetition_penalty=1.3))
    expected = vInference(tiny_llama, max_batch_size=8, max_model_len=128).generate(prompts, sps)
    with vSurge(tiny_llama, max_concurrent_decodes=8, max_concurrent_prefill=8,
                max_model_len=128, decode_steps=decode_steps) as eng:
        moves = []
        move_rows = eng.runner.move_rows

        def counting(cache, state, src, dst):
            moves.append([(int(a), int(b)) for a, b in zip(src, dst) if b < 8])
            return move_rows(cache, state, src, dst)

        monkeypatch.setattr(eng.runner, "move_rows", counting)
        outs = eng.generate(prompts, sps)
    moved = [m for step in moves for m in step]
    if decode_steps == 1:
        # 0-2 finish first: 4 moves to 0 (4 live fit 4 rows), 3 to 1 (2 live), then 1 to 0
        assert moved == [(4, 0), (3, 1), (1, 0)]
    else:  # 0-2 finish inside the first chunk: 3 and 4 move to the front together
        assert moved == [(3, 0), (4, 1)]
    for a, b in zip(outs, expected):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        np.testing.assert_allclose([lp.logprob for lp in a.outputs[0].logprobs],
                                   [lp.logprob for lp in b.outputs[0].logprobs], atol=1e-5)


def test_precompile_compiles_every_shape_the_driver_dispatches(tiny_llama):
    """After `precompile()`, a mixed workload (prompt lengths across the buckets, 1..4 live rows,
    finishing at different steps, slot moves) compiles nothing new in the engine's functions."""
    eng = vSurge(tiny_llama, max_concurrent_decodes=4, max_concurrent_prefill=2, max_model_len=64,
                 block_size=32)
    fns = [eng.runner.prefill_into_slots, eng.runner.decode_loop, eng.runner.move_rows]
    with eng:
        info = eng.precompile()
        assert info["prefill"] == len(eng.prefill_buckets) * len(eng.batch_buckets)
        assert info["decode"] == sum(len(eng.reads.sizes(r, 64)) for r in eng.row_buckets)
        bound = eng.compile_bound()
        assert len(info["shapes"]) == bound["total"] == (
            bound["prefill"] + bound["decode"] + len(eng.row_buckets))
        assert (bound["prefill"], bound["decode"]) == (info["prefill"], info["decode"])
        compiled = [f._cache_size() for f in fns]
        prompts = [list(range(1, n + 1)) for n in (3, 17, 40, 9, 33, 5, 60)]
        sps = [SamplingParams(max_tokens=m, temperature=0, ignore_eos=True)
               for m in (2, 30, 20, 9, 3, 50, 4)]
        outs = eng.generate(prompts, sps)
        assert [len(o.outputs[0].token_ids) for o in outs] == [2, 30, 20, 9, 3, 50, 4]
        # a straggler in the last slot moves to the front when the others finish
        eng.generate([[5, 6]] * 4, [SamplingParams(max_tokens=m, temperature=0, ignore_eos=True)
                                    for m in (2, 3, 4, 40)])
        assert [f._cache_size() for f in fns] == compiled
        eng.generate([[1, 2, 3]], SamplingParams(max_tokens=2))  # still serves
    with pytest.raises(EngineError, match="closed"):
        eng.precompile()


def test_requests_with_a_queued_abort_are_not_prefilled_or_decoded(tiny_llama):
    """After a flood of cancelled streams: a sequence whose abort is queued when its prefill
    batch is dispatched is left out, and a decode chunk whose rows are all cancelled is not run."""
    from workbench.engines.vsurge_scheduler import VSurgeScheduler

    eng = vSurge(tiny_llama, max_model_len=64, max_concurrent_decodes=4, prefill_buckets=(16, 63),
                 decode_steps=1)
    device, sched = eng.device, VSurgeScheduler(**eng._scheduler_kwargs)
    reqs = [eng.make_request([1, 2, 3 + i], SamplingParams(max_tokens=4, temperature=0))
            for i in range(3)]
    for r in reqs:
        sched.add(r)
    plan = sched.schedule()
    reqs[0].abort_requested = reqs[2].abort_requested = True  # their clients left meanwhile
    prefilled = []
    prefill = device.prefill
    device.prefill = lambda batch: prefilled.append([a.request for a in batch]) or prefill(batch)
    device.allocate()
    try:
        out = device.fetch(device.execute(plan))
        assert prefilled == [[reqs[1]]]
        assert [[a.request for a in b] for b in plan.prefill_batches] == [[reqs[1]]]
        assert plan.decode is not None
        assert [r for r, _ in sched.update(plan, out)] == [reqs[1]]
        assert len(reqs[1].sequences[0].output_ids) == 2  # prefill's token + one decode step
        reqs[1].abort_requested = True
        plan = sched.schedule()
        assert plan.decode is not None
        out = device.fetch(device.execute(plan))
        assert plan.decode is None and out.decode is None  # every row's client is gone
        assert sched.update(plan, out) == []
    finally:
        device.free()
        eng.close()
