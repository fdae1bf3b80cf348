"""Every error case of the server, over raw HTTP: the status, the OpenAI envelope and its `param`
and `code`; and that no bad request disturbs the server or the requests around it."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.test_server_support import (BuggyEngine, ClosedEngine, OverloadedEngine,
                                       make_engine)
from workbench.server import serve

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def engine():
    return make_engine()


@pytest.fixture(scope="module")
def url(engine):
    stubs = {"ok": engine, "overloaded": make_engine(OverloadedEngine),
             "closed": make_engine(ClosedEngine), "buggy": make_engine(BuggyEngine)}
    with serve(stubs, max_body_bytes=10_000) as handle:
        yield handle.url


def post(url: str, path: str, body=None, **kw) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60, **kw)


def assert_error(r: httpx.Response, status: int, param=None, code=None,
                 type_: str = "invalid_request_error") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == type_
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def completion(**fields) -> dict:
    return {"model": "ok", "prompt": "Hello", "max_tokens": 4, **fields}


def chat(**fields) -> dict:
    return {"model": "ok", "messages": CHAT, "max_tokens": 4, **fields}


# ---- 400: fields ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, param, code", [
    ("/v1/completions", completion(foo=1), "foo", "unknown_parameter"),
    ("/v1/chat/completions", chat(bar=[1]), "bar", "unknown_parameter"),
    ("/v1/chat/completions", chat(tools=[{"type": "function", "function": {"name": "f"}}]),
     "tools", "unsupported_parameter"),
    ("/v1/chat/completions", chat(response_format={"type": "json_object"}), "response_format",
     "unsupported_parameter"),
    ("/v1/chat/completions", chat(tool_choice="auto"), "tool_choice", "unsupported_parameter"),
    ("/v1/chat/completions", chat(reasoning_effort="low"), "reasoning_effort",
     "unsupported_parameter"),
    ("/v1/completions", completion(best_of=3), "best_of", "unsupported_parameter"),
    ("/v1/completions", completion(suffix="end"), "suffix", "unsupported_parameter"),
    ("/v1/chat/completions",
     chat(messages=[{"role": "assistant", "content": "x", "tool_calls": [{"id": "c"}]}]),
     "messages[0]", "invalid_value"),
])
def test_unknown_and_unsupported_fields(url, path, body, param, code):
    err = assert_error(post(url, path, body), 400, param, code)
    assert param in err["message"]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", completion(temperature=-1), "temperature"),
    ("/v1/completions", completion(temperature="hot"), "temperature"),
    ("/v1/completions", completion(top_p=0), "top_p"),
    ("/v1/completions", completion(max_tokens=0), "max_tokens"),
    ("/v1/completions", completion(n=0), "n"),
    ("/v1/completions", completion(logprobs=21), "logprobs"),
    ("/v1/completions", completion(stop=[1, 2]), "stop"),
    ("/v1/completions", completion(seed=2**63), "seed"),
    ("/v1/completions", completion(seed=-(2**63) - 1), "seed"),
    ("/v1/completions", completion(logit_bias={"abc": 1}), "logit_bias"),
    ("/v1/completions", completion(logit_bias={"999999": 1}), "logit_bias"),
    ("/v1/completions", completion(prompt=[1, 2, 10**7]), "prompt"),
    ("/v1/completions", completion(prompt=[]), "prompt"),
    ("/v1/completions", completion(prompt=None), "prompt"),
    ("/v1/completions", completion(stream_options={"include_usage": True}), "stream_options"),
    ("/v1/completions", completion(max_tokens=0, logprobs=1), "max_tokens"),
    ("/v1/completions", completion(prompt_logprobs=21), "prompt_logprobs"),
    ("/v1/completions", completion(echo=True, logprobs=1, stream=True,
                                   stream_options={"continuous_usage_stats": 1}),
     "stream_options.continuous_usage_stats"),
    ("/v1/completions", {"prompt": "x"}, "model"),  # several models: `model` is required
    ("/v1/chat/completions", chat(top_logprobs=2), "top_logprobs"),
    ("/v1/chat/completions", chat(max_tokens=4, max_completion_tokens=5), "max_completion_tokens"),
    ("/v1/chat/completions", chat(messages=[]), "messages"),
    ("/v1/chat/completions", chat(messages=[{"role": "tool", "content": "x"}]),
     "messages[0].role"),
    ("/v1/chat/completions",
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content"),
    ("/tokenize", {"model": "ok"}, None),
    ("/detokenize", {"model": "ok", "tokens": [-1]}, "tokens"),
])
def test_bad_values(url, path, body, param):
    assert_error(post(url, path, body), 400, param)


def test_malformed_json_and_wrong_body_type(url):
    r = httpx.post(f"{url}/v1/completions", content=b'{"prompt": "x",',
                   headers={"content-type": "application/json"})
    assert_error(r, 400, code="invalid_json")
    assert_error(post(url, "/v1/completions", ["not", "an", "object"]), 400)
    assert_error(httpx.post(f"{url}/v1/completions"), 400)  # no body at all


def test_prompt_too_long(url, engine):
    long_prompt = "hello " * 1100
    err = assert_error(post(url, "/v1/completions", completion(prompt=long_prompt)), 400,
                       "prompt", "context_length_exceeded")
    assert "1024" in err["message"] and str(len(engine.tokenizer.encode(long_prompt))) in \
        err["message"]
    err = assert_error(post(url, "/v1/completions", completion(max_tokens=2000)), 400,
                       "prompt", "context_length_exceeded")
    assert "2000" in err["message"]
    messages = [{"role": "user", "content": long_prompt}]
    assert_error(post(url, "/v1/chat/completions", chat(messages=messages, max_tokens=None)),
                 400, "messages", "context_length_exceeded")


def test_errors_before_a_stream_are_plain_json(url):
    r = post(url, "/v1/chat/completions", chat(temperature=-1, stream=True))
    assert_error(r, 400, "temperature")
    r = post(url, "/v1/completions", completion(prompt="hello " * 1100, stream=True))
    assert_error(r, 400, "prompt", "context_length_exceeded")


# ---- 404, 405, 413 -----------------------------------------------------------------------------
def test_unknown_model_and_route(url):
    assert_error(post(url, "/v1/completions", completion(model="gpt-9")), 404, "model",
                 "model_not_found")
    assert_error(post(url, "/tokenize", {"model": "gpt-9", "prompt": "x"}), 404, "model")
    assert_error(httpx.get(f"{url}/v1/nothing"), 404, code="not_found")
    assert_error(httpx.get(f"{url}/v1/completions"), 405)


def test_body_too_large(url):
    body = json.dumps(completion(prompt="x" * 20_000)).encode()
    r = httpx.post(f"{url}/v1/completions", content=body,
                   headers={"content-type": "application/json"})
    assert_error(r, 413, code="request_too_large")

    def chunked():  # no Content-Length: the limit applies to the bytes actually received
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    r = httpx.post(f"{url}/v1/completions", content=chunked(),
                   headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, code="request_too_large")


# ---- 429, 503, 500: engine failures ------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_overloaded_engine_is_429(url, stream):
    r = post(url, "/v1/completions", completion(model="overloaded", stream=stream))
    assert_error(r, 429, code="rate_limit_exceeded", type_="rate_limit_error")
    assert r.headers["retry-after"] == "1"
    r = post(url, "/v1/chat/completions", chat(model="overloaded", stream=stream))
    assert_error(r, 429, type_="rate_limit_error")


def test_closed_engine_is_503(url):
    assert_error(post(url, "/v1/completions", completion(model="closed")), 503,
                 code="engine_unavailable", type_="server_error")


def test_unexpected_error_is_500_and_server_survives(url):
    for stream in (False, True):
        r = post(url, "/v1/completions", completion(model="buggy", stream=stream))
        err = assert_error(r, 500, code="internal_error", type_="server_error")
        assert "ZeroDivisionError" in err["message"]
    ok = post(url, "/v1/completions", completion(temperature=0))
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"]


def test_bad_requests_do_not_disturb_a_running_stream(url, engine):
    body = completion(prompt="Once upon a time", max_tokens=24, temperature=0, stream=True,
                      ignore_eos=True)
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: {"))
        for bad in (completion(temperature=-1), completion(model="overloaded"),
                    completion(model="buggy"), completion(foo=1)):
            assert post(url, "/v1/completions", bad).status_code >= 400
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in [first] + rest[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "error" not in chunks[-1]
