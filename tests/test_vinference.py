"""vInference: greedy parity with transformers, sampling controls, streaming, errors."""

import asyncio

import numpy as np
import pytest
import torch

from tests.hf_models import ARCHS
from workbench.engines.types import PromptTooLongError
from workbench.engines.vinference import vInference
from workbench.loading.loader import load_model
from workbench.sampling_params import SamplingParams

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain gravity in one sentence.",
    "List three fruits.",
    "How do I reverse a list in Python?",
    "Tell me a joke about cats.",
    "What is 12 times 7?",
    "Translate 'good morning' to Spanish.",
]


@pytest.fixture(scope="module")
def engine(embedded):
    with vInference(embedded, max_batch_size=8, max_model_len=512) as eng:
        yield eng


@pytest.fixture(scope="module")
def hf_embedded(embedded):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded.path, dtype=torch.float32).eval()


def _chat_ids(engine, text):
    return engine.chat_prompt([{"role": "user", "content": text}])[0]


def test_greedy_matches_transformers_on_embedded_model(engine, hf_embedded):
    prompts = [_chat_ids(engine, p) for p in CHAT_PROMPTS]
    params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
    outs = engine.generate(prompts, params)
    for ids, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf_embedded.generate(torch.tensor([ids]), max_new_tokens=64, min_new_tokens=64,
                                       do_sample=False)[0, len(ids):].tolist()
        assert out.outputs[0].token_ids == ref, CHAT_PROMPTS[prompts.index(ids)]
        assert len(ref) == 64


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_transformers_on_tiny_models(arch, tiny_checkpoints):
    directory, hf = tiny_checkpoints[arch]
    lm = load_model(directory, progress=False)
    prompts = [[5, 9, 14, 3, 77], list(range(10, 31)), [100]]
    outs = vInference(lm, max_batch_size=4, max_model_len=128).generate(
        prompts, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    for p, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=12, min_new_tokens=12,
                              do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        assert out.outputs[0].token_ids == ref, arch


@pytest.mark.parametrize("reads", [
    dict(decode_read="prefix", read_buckets=tuple(range(8, 129))),
    dict(decode_read="ragged", block_size=8, block_buckets=tuple(range(1, 33))),
], ids=["prefix", "ragged"])
def test_reading_only_what_each_chunk_can_see_keeps_parity(tiny_checkpoints, reads):
    """Each decode chunk reads only the cached positions its rows can see by its last step: a
    common prefix (`read_buckets`) or each row's own blocks (ragged). With every size a bucket
    and tiny chunks the read size changes at every chunk; reading one position (or block) too
    few changes the logprobs against an engine that reads the whole cache."""
    lm = load_model(tiny_checkpoints["llama"][0], progress=False)
    prompts = [[5, 9, 14, 3, 77], list(range(10, 31))]
    sp = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, logprobs=True)
    outs = {}
    for name, kw in (("reads", reads), ("whole", dict(decode_read="prefix", read_buckets=(128,)))):
        eng = vInference(lm, max_batch_size=2, max_model_len=128, streaming_chunk=3, **kw)
        outs[name] = eng.generate(prompts, sp)
    for a, b in zip(outs["reads"], outs["whole"]):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        lp_a = [lp.logprob for lp in a.outputs[0].logprobs]
        lp_b = [lp.logprob for lp in b.outputs[0].logprobs]
        np.testing.assert_allclose(lp_a, lp_b, atol=1e-5)


def test_stream_deltas_add_up_to_generate(engine):
    ids = _chat_ids(engine, "Write a haiku about the sea.")
    params = SamplingParams(max_tokens=40, temperature=0)
    chunks = list(engine.stream(ids, params))
    full = engine.generate([ids], params)[0].outputs[0]
    assert "".join(c.outputs[0].delta_text for c in chunks) == full.text
    assert chunks[-1].finished and not any(c.finished for c in chunks[:-1])
    assert chunks[-1].outputs[0].token_ids == full.token_ids
    assert len(chunks) >= 2  # really streamed, in streaming_chunk pieces


def test_stop_string_truncates_and_is_not_streamed(engine):
    ids = _chat_ids(engine, "What is the capital of France?")
    base = engine.generate([ids], SamplingParams(max_tokens=20, temperature=0))[0].outputs[0].text
    assert "Paris" in base
    chunks = list(engine.stream(ids, SamplingParams(max_tokens=20, temperature=0, stop=["Paris"])))
    text = "".join(c.outputs[0].delta_text for c in chunks)
    assert text == base[: base.index("Paris")]
    assert chunks[-1].outputs[0].finish_reason == "stop"
    assert chunks[-1].outputs[0].stop_reason == "Paris"


def test_seed_reproduces_and_differs(engine):
    ids = _chat_ids(engine, "Tell me a story.")
    sp = dict(max_tokens=24, temperature=1.2, top_p=0.95, ignore_eos=True)
    a = engine.generate([ids], SamplingParams(seed=1, **sp))[0].outputs[0].token_ids
    b = engine.generate([ids, _chat_ids(engine, "Hi")], SamplingParams(seed=1, **sp))
    c = engine.generate([ids], SamplingParams(seed=2, **sp))[0].outputs[0].token_ids
    assert a == b[0].outputs[0].token_ids  # same seed, other batch composition
    assert a != c


def test_n_completions_logprobs_and_finish_reasons(engine, embedded):
    ids = _chat_ids(engine, "Name a color.")
    out = engine.generate([ids], SamplingParams(max_tokens=6, temperature=1.0, seed=3, n=3,
                                                logprobs=True, top_logprobs=3,
                                                ignore_eos=True))[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    first = out.outputs[0]
    assert len(first.logprobs) == 6 and all(len(lp.top) == 3 for lp in first.logprobs)
    # logprobs are log-softmax of the raw logits at each position
    full = embedded.logits([ids + first.token_ids])[0]
    for j, lp in enumerate(first.logprobs):
        row = full[len(ids) - 1 + j]
        ref = row - np.log(np.exp(row - row.max()).sum()) - row.max()
        assert lp.token_id == first.token_ids[j]
        assert lp.logprob == pytest.approx(ref[lp.token_id], abs=1e-3)
        assert [t for t, _ in lp.top] == list(np.argsort(-ref)[:3])
    assert all(o.finish_reason == "length" for o in out.outputs)


def test_stop_token_ids_min_tokens_and_logit_bias(engine):
    ids = _chat_ids(engine, "Count to ten.")
    greedy = engine.generate([ids], SamplingParams(max_tokens=8, temperature=0))[0]
    stop_tok = greedy.outputs[0].token_ids[2]
    out = engine.generate([ids], SamplingParams(max_tokens=8, temperature=0,
                                                stop_token_ids=[stop_tok]))[0].outputs[0]
    assert out.token_ids[-1] == stop_tok and out.finish_reason == "stop"
    forced = engine.generate([ids], SamplingParams(max_tokens=3, temperature=0.5, seed=0,
                                                   logit_bias={42: 100}))[0].outputs[0]
    assert forced.token_ids == [42, 42, 42]
    short = engine.generate([ids], SamplingParams(max_tokens=12, temperature=0, min_tokens=10,
                                                  logit_bias={2: 100}))[0].outputs[0]
    assert short.token_ids[:10].count(2) == 0 and short.token_ids[10] == 2


def test_errors_are_clear_and_engine_survives(engine):
    with pytest.raises(PromptTooLongError, match="max_model_len 512"):
        engine.generate([[1] * 500], SamplingParams(max_tokens=20))
    with pytest.raises(ValueError, match="prompt 1 must be"):
        engine.generate(["ok", 3])
    with pytest.raises(ValueError, match="token ids must be in"):
        engine.generate([[1, 2, 10**9]])
    with pytest.raises(ValueError, match="logit_bias"):
        engine.generate(["x"], SamplingParams(logit_bias={10**9: 1.0}))
    assert engine.generate("Hi", SamplingParams(max_tokens=2))[0].outputs[0].token_ids


def test_chat_async_twins_and_abort(engine):
    msgs = [{"role": "user", "content": "Say hello."}]
    sync = engine.chat(msgs, SamplingParams(max_tokens=8, temperature=0))
    assert sync.prompt.endswith("<|im_start|>assistant\n")

    async def run():
        agen = await engine.agenerate([sync.prompt_token_ids], SamplingParams(max_tokens=8, temperature=0))
        chunks = [c async for c in engine.astream(sync.prompt_token_ids,
                                                  SamplingParams(max_tokens=8, temperature=0))]
        return agen, chunks

    agen, chunks = asyncio.run(run())
    assert agen[0].outputs[0].text == sync.outputs[0].text
    assert "".join(c.outputs[0].delta_text for c in chunks) == sync.outputs[0].text
    it = engine.stream(sync.prompt_token_ids, SamplingParams(max_tokens=200, ignore_eos=True),
                       request_id="to-abort")
    next(it)
    assert engine.abort("to-abort")
    last = list(it)[-1]
    assert last.outputs[0].finish_reason == "abort" and len(last.outputs[0].token_ids) < 200
    assert not engine.abort("to-abort")
    snap = engine.metrics()
    assert snap["finished_by_reason"]["abort"] >= 1 and snap["generation_tokens_total"] > 0


def test_metrics_count_generated_tokens_exactly(embedded):
    eng = vInference(embedded, max_batch_size=2, max_model_len=256)
    eng.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=7, ignore_eos=True))
    snap = eng.metrics()
    assert snap["generation_tokens_total"] == 14 and snap["prompt_tokens_total"] == 5
    assert snap["finished_by_reason"]["length"] == 2 and snap["e2e_s"]["count"] == 2
