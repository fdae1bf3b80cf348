"""Host-side Sequence: finish rules and stop strings with hold-back (no JAX, no model)."""

import pytest

from tests.fixtures_tokenizer import smol_tokenizer  # noqa: F401 - fixture
from workbench.engines.request import Request, Sequence, completion_seed
from workbench.engines.types import RequestStatus
from workbench.sampling_params import SamplingParams

EOS = frozenset({2})


def _seq(tok, **kw):
    return Sequence(0, SamplingParams(**kw), tok, EOS, prompt_ids=[1])


def _feed(seq, ids):
    deltas = []
    for t in ids:
        seq.append(t)
        deltas.append(seq.completion(delta=True).delta_text)
    return deltas


def test_stop_string_is_never_streamed_then_retracted(smol_tokenizer):
    text = "The answer is 42. Then more text follows."
    ids = smol_tokenizer.encode(text, add_special_tokens=False)
    seq = _seq(smol_tokenizer, max_tokens=100, stop=["42. Then"])
    deltas = _feed(seq, ids)
    streamed = "".join(deltas)
    assert streamed == "The answer is "
    assert seq.text == streamed and seq.status == RequestStatus.FINISHED_STOPPED
    assert seq.stop_reason == "42. Then"
    # every prefix streamed was a prefix of the final text (nothing retracted)
    acc = ""
    for d in deltas:
        acc += d
        assert "The answer is ".startswith(acc)


def test_text_that_only_looks_like_a_stop_prefix_is_released(smol_tokenizer):
    ids = smol_tokenizer.encode("abc abd abe", add_special_tokens=False)
    seq = _seq(smol_tokenizer, max_tokens=len(ids), stop=["abx"])
    assert "".join(_feed(seq, ids)) == "abc abd abe"
    assert seq.status == RequestStatus.FINISHED_LENGTH


def test_eos_and_stop_token_ids_finish_without_text(smol_tokenizer):
    hello = smol_tokenizer.encode("Hello", add_special_tokens=False)
    seq = _seq(smol_tokenizer, max_tokens=10)
    _feed(seq, hello + [2, 5])
    assert seq.text == "Hello" and seq.output_ids == hello + [2]
    assert seq.completion(False).finish_reason == "stop" and seq.stop_reason is None
    seq = _seq(smol_tokenizer, max_tokens=10, stop_token_ids=[7])
    _feed(seq, hello + [7])
    assert seq.stop_reason == 7 and seq.text == "Hello"


def test_ignore_eos_and_min_tokens(smol_tokenizer):
    seq = _seq(smol_tokenizer, max_tokens=3, ignore_eos=True)
    _feed(seq, [2, 2])
    assert not seq.finished
    seq = _seq(smol_tokenizer, max_tokens=5, min_tokens=2)
    _feed(seq, [2])
    assert not seq.finished  # EOS as the first token is below min_tokens
    _feed(seq, [3, 2])
    assert seq.finished and seq.output_ids == [2, 3, 2]


def test_max_tokens_gives_length(smol_tokenizer):
    seq = _seq(smol_tokenizer, max_tokens=2)
    assert not seq.append(100)
    assert seq.append(101)
    assert seq.completion(False).finish_reason == "length"
    assert seq.append(102) and seq.output_ids == [100, 101]  # ignored after finishing


def test_abort_and_request_output(smol_tokenizer):
    req = Request("r1", "hi", [1, 2], SamplingParams(n=2, seed=5, max_tokens=4), smol_tokenizer,
                  EOS)
    assert [s.seed for s in req.sequences] == [5, completion_seed(5, 1)]
    assert req.sequences[1].params.seed == completion_seed(5, 1) != 5
    req.sequences[0].append(100)
    req.abort()
    out = req.output()
    assert out.finished and [o.finish_reason for o in out.outputs] == ["abort", "abort"]
    assert out.outputs[0].token_ids == [100]


@pytest.mark.parametrize("seed", [None])
def test_unseeded_requests_draw_fresh_seeds(seed):
    assert completion_seed(seed, 0) != completion_seed(seed, 0)
