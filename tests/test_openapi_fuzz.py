"""Schemathesis against the server's own OpenAPI document, on a loopback server (issue 16, sec. 4).

Every operation of `/openapi.json` gets schema-valid requests (positive mode) and schema-breaking
ones (negative mode), a bounded number with a fixed seed. Positive bodies are steered half the time
to the served model with small `max_tokens`/`n`, so they reach the engine instead of stopping at
404 or the context limit. Checked on every response: no 5xx, the status code and media type are
ones the document declares, the body matches the declared schema (every 4xx is the error
envelope, asserted again here by hand), and a schema-breaking request is rejected. Not checked:
that every schema-valid request succeeds (schemathesis's positive_data_acceptance): the context
limit, the vocabulary and the served model names are not in a static document; those answers are
400/404 with the envelope, which the checks above cover. After the run the engine holds no
request and still answers a plain request with the same tokens as before.
"""

from __future__ import annotations

import collections

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability_support import build, tiny_chat_lm
from workbench.server import serve

pytestmark = pytest.mark.slow

MODEL = "tiny"
EXAMPLES = {GenerationMode.POSITIVE: 80, GenerationMode.NEGATIVE: 40}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
VOCAB = 400  # the tiny tokenizer's
PLAIN = {"model": MODEL, "prompt": "hello there", "max_tokens": 6, "temperature": 0,
         "ignore_eos": True}


def _ids_in_vocab(ids):
    return [int(t) % VOCAB for t in ids] if isinstance(ids, list) else ids


def _steer(case, aim: bool):
    """Half of the positive bodies are steered past what a static document cannot say: the
    served model, a few tokens (the context is 64), token ids inside the vocabulary, no
    priority (this engine has no priority policy), min_tokens <= max_tokens."""
    body = case.body
    if aim and isinstance(body, dict):
        body["model"] = MODEL
        for key, most in (("max_tokens", 4), ("max_completion_tokens", 4), ("n", 2),
                          ("prompt_logprobs", 2), ("min_tokens", 1)):
            if isinstance(body.get(key), (int, float)) and body[key] > most:
                body[key] = most
        body.pop("priority", None)
        for key in ("stop_token_ids", "tokens"):
            if key in body:
                body[key] = _ids_in_vocab(body[key])
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
            body["prompt"] = [_ids_in_vocab(p) for p in prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            body["prompt"] = _ids_in_vocab(prompt)
        if isinstance(body.get("logit_bias"), dict):
            body["logit_bias"] = {str(int(k) % VOCAB): v for k, v in body["logit_bias"].items()}
    return case


def _assert_envelope(response) -> None:
    if 400 <= response.status_code < 500:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert set(error) >= {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def server():
    engine = build("vsurge", tiny_chat_lm())  # a chat template: chat bodies reach the engine
    handle = serve({MODEL: engine}, stop_engines=True)
    try:
        yield handle, engine
    finally:
        handle.stop()
        engine.close()


def _fuzz(op, mode, url: str, seen: collections.Counter) -> None:
    strategy = op.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        strategy = st.tuples(strategy, st.booleans()).map(lambda t: _steer(*t))

    @settings(max_examples=EXAMPLES[mode], derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case=strategy)
    def run(case):
        response = case.call_and_validate(base_url=url, checks=CHECKS, timeout=120)
        _assert_envelope(response)
        seen[(op.label, mode.value, response.status_code)] += 1

    run()


def test_every_operation_survives_generated_requests(server):
    handle, engine = server
    before = httpx.post(f"{handle.url}/v1/completions", json=PLAIN, timeout=120)
    assert before.status_code == 200
    schema = schemathesis.openapi.from_dict(handle.app.openapi())
    seen: collections.Counter = collections.Counter()
    labels = []
    for result in schema.get_all_operations():
        op = result.ok()
        labels.append(op.label)
        _fuzz(op, GenerationMode.POSITIVE, handle.url, seen)
        if op.method.upper() == "POST":  # a GET without parameters has no invalid request
            _fuzz(op, GenerationMode.NEGATIVE, handle.url, seen)

    assert {"POST /v1/completions", "POST /v1/chat/completions", "POST /tokenize",
            "POST /detokenize", "GET /metrics", "GET /health"} <= set(labels)
    total = sum(seen.values())
    assert total >= 250, seen
    # the steered bodies reached the engine: generations succeeded on both generation routes
    for label in ("POST /v1/completions", "POST /v1/chat/completions"):
        assert seen[(label, "positive", 200)] > 0, seen
        assert seen[(label, "negative", 400)] > 0, seen
    after = httpx.post(f"{handle.url}/v1/completions", json=PLAIN, timeout=120)
    assert after.status_code == 200
    assert after.json()["choices"][0]["text"] == before.json()["choices"][0]["text"], (before.json(), after.json())
    m = engine.metrics()
    assert m["num_requests_running"] == 0 and m["num_requests_waiting"] == 0, m
    assert httpx.get(f"{handle.url}/health", timeout=30).status_code == 200
