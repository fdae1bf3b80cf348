"""Validation at the edge: any keyword set and prompt either fails with a ValueError before
anything runs, or makes a request that completes, in every engine; never an exception inside an
engine (hypothesis property test). Plus the two reported crashes: a huge `top_k` and lone UTF-16
surrogates in text."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability_support import ENGINES, every_engine, tiny_lm
from workbench.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

VOCAB = 400
_int = st.one_of(st.integers(-3, 70), st.sampled_from([2**31 - 1, 2**31, 2**63, 10**12, -2**63]))
_edges = st.sampled_from([5e-324, 1e-45, 1e-40, 1e-6, 3.4e38, 1e300])  # float32's edges
_num = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-3, 3), _int, _edges)
_anything = st.one_of(st.none(), st.booleans(), _int, _num, st.text(max_size=3))
_text = st.one_of(st.text(max_size=12), st.sampled_from(["\ud800 hi", "a\udfff", "Hello"]))



def mix(valid, wild=_anything):
    """Mostly `valid` values, one time in ten `wild` ones, so that many requests run."""
    return st.integers(0, 9).flatmap(lambda i: wild if i == 0 else valid)


_unit = st.floats(0.01, 1.0)
_pen = st.floats(-2, 2)
FIELDS = {
    "max_tokens": mix(st.integers(1, 6), _int), "min_tokens": mix(st.integers(0, 1), _int),
    "temperature": mix(st.floats(0, 2), _num), "top_k": mix(st.integers(-1, VOCAB + 5), _int),
    "top_p": mix(_unit, _num), "min_p": mix(st.floats(0, 1), _num),
    "presence_penalty": mix(_pen, _num), "frequency_penalty": mix(_pen, _num),
    "repetition_penalty": mix(st.floats(0.5, 2), _num),
    "logit_bias": mix(st.dictionaries(st.integers(0, VOCAB - 1), st.floats(-100, 100),
                                      max_size=3),
                      st.dictionaries(st.one_of(_int, st.text(max_size=3)), _num, max_size=3)),
    "seed": mix(st.integers(0, 2**64 - 1), _int),
    "stop": mix(st.lists(st.text(min_size=1, max_size=3), max_size=2),
                st.one_of(_text, st.lists(_text, max_size=3))),
    "stop_token_ids": mix(st.lists(st.integers(0, VOCAB - 1), max_size=2),
                          st.lists(_int, max_size=3)),
    "ignore_eos": mix(st.booleans()), "n": mix(st.integers(1, 2), _int),
    "logprobs": mix(st.booleans()), "top_logprobs": mix(st.just(0), _int),
    "skip_special_tokens": mix(st.booleans()),
}
kwargs_st = st.fixed_dictionaries({}, optional=FIELDS)
prompt_st = mix(st.one_of(st.text(min_size=1, max_size=12),
                          st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8)),
                st.one_of(_text, st.lists(st.integers(-2, VOCAB + 2), max_size=8),
                          st.lists(_int, min_size=1, max_size=3)))


@pytest.fixture(scope="module")
def engines():
    assert tiny_lm().config.vocab_size == VOCAB
    yield from every_engine()


@pytest.mark.parametrize("kind", ENGINES)
def test_any_request_is_refused_up_front_or_completes(engines, kind):
    engine = engines[kind]
    completed = []
    plain = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    (before,) = engine.generate(["hello there"], plain)

    @settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(kwargs=kwargs_st, prompt=prompt_st)
    def check(kwargs, prompt):
        try:
            params = SamplingParams(**kwargs)
            engine.make_request(prompt, params)
        except ValueError:
            return  # refused at the edge, with a message (checked elsewhere)
        (out,) = engine.generate([prompt], params)
        assert out.finished and len(out.outputs) == params.n
        for o in out.outputs:
            assert o.finish_reason in ("stop", "length") and len(o.token_ids) <= params.max_tokens
            assert all(0 <= t < VOCAB for t in o.token_ids), o.token_ids
        completed.append(params)

    check()
    # nothing a request asked for changed the engine: the same greedy request, the same tokens
    (after,) = engine.generate(["hello there"], plain)
    assert after.outputs[0].token_ids == before.outputs[0].token_ids
    assert len(completed) >= 5, "the strategies should make some valid requests"


@pytest.mark.parametrize("kind", ENGINES)
def test_top_k_above_the_vocabulary_keeps_every_token(engines, kind):
    engine = engines[kind]
    prompt = "hello world"
    outs = engine.generate([prompt] * 3, [SamplingParams(max_tokens=5, temperature=1.0, seed=7,
                                                         top_k=k, ignore_eos=True)
                                          for k in (-1, VOCAB, 2**31 - 1)])
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids \
        == outs[2].outputs[0].token_ids
    with pytest.raises(ValueError, match="top_k must be"):
        SamplingParams(top_k=10**12)


@pytest.mark.parametrize("kind", ENGINES)
def test_lone_surrogates_are_a_value_error_naming_the_field(engines, kind):
    engine = engines[kind]
    with pytest.raises(ValueError, match=r"^prompt must be valid Unicode text"):
        engine.generate("\ud800 hi", SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match=r"^messages\[0\]\.content must be valid Unicode"):
        engine.chat([{"role": "user", "content": "\ud800 hi"}])
    with pytest.raises(ValueError, match=r"^stop must be valid Unicode"):
        SamplingParams(stop=["\udfff"])
    (out,) = engine.generate(["hi"], SamplingParams(max_tokens=2, temperature=0))
    assert out.finished  # the engine is unharmed


# ---- the server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(engines):
    from fastapi.testclient import TestClient

    from workbench.server.app import create_app

    app = create_app({"vi": engines["vinference"], "vs": engines["vsurge"]}, stop_engines=False)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"model": "vs", "prompt": "\ud800 hi", "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"model": "vi", "prompt": ["ok", "\ud800 hi"], "max_tokens": 2}, "prompt"),
    ("/v1/chat/completions", {"model": "vs", "max_tokens": 2,
                              "messages": [{"role": "user", "content": "\ud800 hi"}]}, "messages"),
    ("/tokenize", {"model": "vs", "prompt": "\ud800 hi"}, "prompt"),
    ("/v1/completions", {"model": "vs", "prompt": "Hello", "max_tokens": 4,
                         "top_k": 1000000000000}, "top_k"),
    ("/v1/completions", {"model": "vs", "prompt": "Hello", "max_tokens": 2, "stop": ["\udc00"]},
     "stop"),
    ("/v1/completions", {"model": "vs", "prompt": [5, 10**12], "max_tokens": 2}, "prompt"),
])
def test_bad_input_is_a_400_naming_the_field_and_the_server_goes_on(client, path, body, param):
    raw = json.dumps(body)  # ASCII escapes, as a client sends a lone surrogate ("\\ud800")
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    ok = client.post("/v1/completions", json={"model": "vs", "prompt": "Hello", "max_tokens": 2})
    assert ok.status_code == 200, ok.text
    assert client.get("/health").status_code == 200


EDGE_PARAMS = [dict(top_p=5e-324), dict(temperature=1e-40), dict(repetition_penalty=5e-324),
               dict(temperature=1e-44, top_p=0.5), dict(temperature=3.4e38),
               dict(presence_penalty=2.0, repetition_penalty=1e-30, temperature=1e-7)]


@pytest.mark.parametrize("kind", ENGINES)
def test_float32_edge_parameters_give_tokens_in_the_vocabulary_and_poison_nothing(engines, kind):
    """top_p 5e-324 is > 0 (valid) but 0 in float32: it once dropped every token, the draw
    returned id 768 of a 400-token vocabulary, and vSurge's cache then answered every later
    request with garbage. Each edge value: tokens inside the vocabulary; the engine unchanged."""
    engine = engines[kind]
    plain = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    (before,) = engine.generate(["hello there"], plain)
    outs = engine.generate(["(h C"] * len(EDGE_PARAMS),
                           [SamplingParams(max_tokens=8, seed=3, ignore_eos=True, **kw)
                            for kw in EDGE_PARAMS])
    for kw, out in zip(EDGE_PARAMS, outs):
        assert all(0 <= t < VOCAB for t in out.outputs[0].token_ids), (kw, out.outputs[0].token_ids)
    (after,) = engine.generate(["hello there"], plain)
    assert after.outputs[0].token_ids == before.outputs[0].token_ids


def test_a_temperature_below_1e_5_is_greedy():
    assert SamplingParams(temperature=1e-6).is_greedy and not SamplingParams(temperature=1e-5).is_greedy
