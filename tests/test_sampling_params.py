"""SamplingParams: defaults, normalisation and every validation error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from workbench.sampling_params import SamplingParams


def test_defaults() -> None:
    p = SamplingParams()
    assert (p.max_tokens, p.min_tokens, p.temperature, p.top_k, p.top_p) == (16, 0, 1.0, -1, 1.0)
    assert (p.min_p, p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (
        0.0,
        0.0,
        0.0,
        1.0,
    )
    assert p.logit_bias is None and p.seed is None
    assert p.stop == () and p.stop_token_ids == ()
    assert not p.ignore_eos and p.n == 1 and not p.logprobs and p.top_logprobs == 0
    assert p.skip_special_tokens
    assert not p.is_greedy


def test_normalisation() -> None:
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(stop=["a", "bc"]).stop == ("a", "bc")
    assert SamplingParams(stop=[]).stop == ()
    assert SamplingParams(stop_token_ids=[3, 4]).stop_token_ids == (3, 4)
    p = SamplingParams(temperature=1, top_p=1, max_tokens=np.int64(5), seed=np.int32(7))
    assert isinstance(p.temperature, float) and isinstance(p.top_p, float)
    assert type(p.max_tokens) is int and p.max_tokens == 5 and type(p.seed) is int


def test_logit_bias_str_keys_converted() -> None:
    p = SamplingParams(logit_bias={"50256": -100, "7": 2.5, 3: 1})
    assert p.logit_bias == {50256: -100.0, 7: 2.5, 3: 1.0}
    assert all(type(k) is int for k in p.logit_bias)


def test_is_greedy() -> None:
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(temperature=0.7, top_k=1).is_greedy
    assert not SamplingParams(temperature=0.7, top_k=2).is_greedy
    # n > 1 with greedy sampling is allowed (the copies are identical)
    assert SamplingParams(temperature=0, n=3).n == 3


def test_with_seed_returns_validated_copy() -> None:
    p = SamplingParams(temperature=0.5, stop="x", logit_bias={"1": 1})
    q = p.with_seed(42)
    assert q.seed == 42 and p.seed is None
    assert dataclasses.replace(q, seed=None) == p
    with pytest.raises(ValueError, match="seed"):
        p.with_seed(-1)


def test_frozen_and_hashable() -> None:
    p = SamplingParams(logit_bias={1: 1.0}, stop=["a"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 0.0  # type: ignore[misc]
    assert hash(p) == hash(SamplingParams(logit_bias={2: 1.0}, stop=["a"]))


def test_validate_vocab() -> None:
    SamplingParams(logit_bias={9: 1}, stop_token_ids=[9]).validate_vocab(10)
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={10: 1}).validate_vocab(10)
    with pytest.raises(ValueError, match="stop_token_ids"):
        SamplingParams(stop_token_ids=[3, 10]).validate_vocab(10)


INVALID = [
    # (kwargs, field named in the message, fragment of the allowed range)
    (dict(temperature=-1.0), "temperature", ">= 0"),
    (dict(temperature="hot"), "temperature", "number"),
    (dict(temperature=True), "temperature", "number"),
    (dict(temperature=float("nan")), "temperature", "finite"),
    (dict(top_p=0.0), "top_p", "(0, 1]"),
    (dict(top_p=1.5), "top_p", "(0, 1]"),
    (dict(top_p=-0.1), "top_p", "(0, 1]"),
    (dict(top_k=-2), "top_k", ">= -1"),
    (dict(top_k=2.0), "top_k", "int"),
    (dict(top_k=False), "top_k", "int"),
    (dict(min_p=-0.1), "min_p", "[0, 1]"),
    (dict(min_p=1.1), "min_p", "[0, 1]"),
    (dict(max_tokens=0), "max_tokens", ">= 1"),
    (dict(max_tokens=1.5), "max_tokens", "int"),
    (dict(max_tokens=True), "max_tokens", "int"),
    (dict(max_tokens="16"), "max_tokens", "int"),
    (dict(min_tokens=-1), "min_tokens", "[0, max_tokens=16]"),
    (dict(min_tokens=17), "min_tokens", "[0, max_tokens=16]"),
    (dict(max_tokens=4, min_tokens=5), "min_tokens", "[0, max_tokens=4]"),
    (dict(n=0), "n", ">= 1"),
    (dict(n=None), "n", "int"),
    (dict(presence_penalty=2.5), "presence_penalty", "[-2, 2]"),
    (dict(presence_penalty=-2.5), "presence_penalty", "[-2, 2]"),
    (dict(frequency_penalty=3), "frequency_penalty", "[-2, 2]"),
    (dict(frequency_penalty=-2.01), "frequency_penalty", "[-2, 2]"),
    (dict(frequency_penalty="x"), "frequency_penalty", "number"),
    (dict(repetition_penalty=0.0), "repetition_penalty", "> 0"),
    (dict(repetition_penalty=-1.0), "repetition_penalty", "> 0"),
    (dict(logit_bias={1: 101}), "logit_bias", "[-100, 100]"),
    (dict(logit_bias={1: -100.5}), "logit_bias", "[-100, 100]"),
    (dict(logit_bias={-1: 1}), "logit_bias", "non-negative"),
    (dict(logit_bias={"abc": 1}), "logit_bias", "non-negative"),
    (dict(logit_bias={"-3": 1}), "logit_bias", "non-negative"),
    (dict(logit_bias={1.5: 1}), "logit_bias", "non-negative"),
    (dict(logit_bias={True: 1}), "logit_bias", "non-negative"),
    (dict(logit_bias={1: "big"}), "logit_bias", "number"),
    (dict(logit_bias=[1, 2]), "logit_bias", "dict"),
    ({"seed": -1}, "seed", "[0, 2**64)"),
    ({"seed": 2**64}, "seed", "[0, 2**64)"),
    ({"top_k": 10**12}, "top_k", "at most 2**31-1"),
    ({"max_tokens": 2**31}, "max_tokens", "at most 2**31-1"),
    ({"n": 129}, "n", "at most 128"),
    ({"stop": ["x" * 257]}, "stop", "at most 256 characters"),
    ({"stop": ["\ud800 hi"]}, "stop", "lone UTF-16 surrogate"),
    ({"stop_token_ids": [2**31]}, "stop_token_ids", "at most 2**31-1"),
    ({"stop_token_ids": list(range(65))}, "stop_token_ids", "at most 64 entries"),
    ({"logit_bias": {2**40: 1}}, "logit_bias", "at most 2**31-1"),
    ({"logit_bias": {i: 1 for i in range(301)}}, "logit_bias", "at most 300 entries"),
    (dict(seed=1.0), "seed", "int"),
    (dict(seed=True), "seed", "int"),
    (dict(stop=[""]), "stop", "non-empty"),
    (dict(stop=""), "stop", "non-empty"),
    (dict(stop=["a", 3]), "stop", "non-empty strings"),
    (dict(stop=[f"s{i}" for i in range(17)]), "stop", "at most 16"),
    (dict(stop=5), "stop", "string"),
    (dict(stop_token_ids=[-1]), "stop_token_ids", "non-negative"),
    (dict(stop_token_ids=[1.0]), "stop_token_ids", "non-negative"),
    (dict(stop_token_ids=[True]), "stop_token_ids", "non-negative"),
    (dict(stop_token_ids=5), "stop_token_ids", "list"),
    (dict(top_logprobs=21, logprobs=True), "top_logprobs", "[0, 20]"),
    (dict(top_logprobs=-1, logprobs=True), "top_logprobs", "[0, 20]"),
    (dict(top_logprobs=3), "top_logprobs", "logprobs=True"),
    (dict(logprobs=1), "logprobs", "bool"),
    (dict(ignore_eos="yes"), "ignore_eos", "bool"),
    (dict(skip_special_tokens=None), "skip_special_tokens", "bool"),
]


@pytest.mark.parametrize(
    "kwargs, field, allowed", INVALID, ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(INVALID)]
)
def test_invalid(kwargs: dict, field: str, allowed: str) -> None:
    with pytest.raises(ValueError) as info:
        SamplingParams(**kwargs)
    message = str(info.value)
    assert message.startswith(field), message
    assert allowed in message, message


def test_boundaries_are_valid() -> None:
    SamplingParams(
        temperature=0,
        top_p=1,
        top_k=0,
        min_p=1,
        presence_penalty=-2,
        frequency_penalty=2,
        repetition_penalty=1e-3,
        logit_bias={0: -100, 1: 100},
        seed=2**64 - 1,
        n=128,
        stop=[f"s{i}" for i in range(16)],
        stop_token_ids=[0],
        top_logprobs=20,
        logprobs=True,
        min_tokens=16,
        max_tokens=16,
    )
    SamplingParams(seed=0, top_p=1e-9, min_tokens=0, max_tokens=1)
    SamplingParams(top_k=2**31 - 1, max_tokens=2**31 - 1, stop=["x" * 256],
                   stop_token_ids=list(range(64)), logit_bias={i: 1 for i in range(300)})
