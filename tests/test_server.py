"""The OpenAI-compatible server against a real uvicorn server on 127.0.0.1, driven by the official
`openai` client (and raw httpx where the client hides what is checked). Error cases live in
`test_server_errors.py`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import re
import socket
import sys
import threading
import time
import types

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_server_support import (SecondEngine, embedded_model, live_threads, make_engine,
                                       wait_until)
from workbench.sampling_params import SamplingParams
from workbench.server import ServerHandle, create_app, serve
from workbench.server import cli as server_cli

pytestmark = pytest.mark.slow

PROMPTS = ["Hello, my name is", "The capital of France is", "def fibonacci(n):",
           "Once upon a time"]
CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def engine():
    return make_engine()


@pytest.fixture(scope="module")
def server(engine):
    with serve(engine) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(engine):
    return engine.model.name


_GREEDY: dict[tuple, str] = {}


def greedy(engine, prompt: str, max_tokens: int = 8) -> str:
    """The engine's own greedy text for `prompt` (cached: the engine is deterministic)."""
    key = (id(engine), prompt, max_tokens)
    if key not in _GREEDY:
        sp = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        _GREEDY[key] = engine.generate(prompt, sp)[0].outputs[0].text
    return _GREEDY[key]


# ---- basic endpoints ---------------------------------------------------------------------------
def test_health_and_models(server, client, model):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    models = client.models.list().data
    assert [m.id for m in models] == [model]
    assert models[0].model_extra["max_model_len"] == 1024


def test_greedy_completion_equals_engine(engine, client, model):
    out = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert out.choices[0].text == greedy(engine, PROMPTS[0])
    assert out.choices[0].finish_reason == "length"
    n_prompt = len(engine.tokenizer.encode(PROMPTS[0]))
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (n_prompt, 8)
    assert out.usage.total_tokens == n_prompt + 8


def test_chat_equals_engine_chat(engine, client, model):
    out = client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, temperature=0)
    expected = engine.chat(CHAT, SamplingParams(max_tokens=8, temperature=0.0))
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected.outputs[0].text
    assert out.usage.prompt_tokens == len(engine.chat_prompt(CHAT)[0])


def test_chat_text_parts_and_model_optional(server, engine):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "max_completion_tokens": 8, "temperature": 0}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    expected = engine.chat(CHAT, SamplingParams(max_tokens=8, temperature=0.0)).outputs[0].text
    assert r.json()["choices"][0]["message"]["content"] == expected


def test_prompt_lists_token_ids_and_choice_order(engine, client, model):
    ids = engine.tokenizer.encode(PROMPTS[1])
    out = client.completions.create(model=model, prompt=[PROMPTS[0], PROMPTS[1]], max_tokens=8,
                                    temperature=0)
    assert [c.index for c in out.choices] == [0, 1]
    assert [c.text for c in out.choices] == [greedy(engine, PROMPTS[0]), greedy(engine, PROMPTS[1])]
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == out.choices[1].text
    by_lists = client.completions.create(model=model, prompt=[ids, ids], max_tokens=8,
                                         temperature=0)
    assert [c.text for c in by_lists.choices] == [out.choices[1].text] * 2
    assert by_lists.usage.prompt_tokens == 2 * len(ids)


def test_n_with_seed(engine, client, model):
    kw = dict(max_tokens=8, temperature=1.0, seed=1234)
    out = client.completions.create(model=model, prompt=[PROMPTS[0], PROMPTS[3]], n=2, **kw)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.usage.completion_tokens == 4 * 8
    # seeded sampling is reproducible: the engine called directly gives the same choices
    direct = engine.generate(PROMPTS[3], SamplingParams(n=2, **kw))[0]
    assert [o.text for o in direct.outputs] == [c.text for c in out.choices[2:]]
    assert out.choices[0].text != out.choices[1].text  # two different samples of one prompt


# ---- logprobs, echo, stop ----------------------------------------------------------------------
def test_completion_logprobs_legacy_shape(client, model):
    out = client.completions.create(model=model, prompt=PROMPTS[1], max_tokens=6, temperature=0,
                                    logprobs=2)
    lp = out.choices[0].logprobs
    n = out.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert len(lp.text_offset) == n and lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset)
    assert "".join(lp.tokens).startswith(out.choices[0].text)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 2 and chosen <= 0.0
        assert chosen == pytest.approx(max(top.values()), abs=1e-5)  # greedy takes the top token


def test_chat_logprobs_shape(client, model):
    out = client.chat.completions.create(model=model, messages=CHAT, max_tokens=6, temperature=0,
                                         logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert "".join(c.token for c in content) == out.choices[0].message.content
    for c in content:
        assert c.bytes == list(c.token.encode("utf-8"))
        assert len(c.top_logprobs) == 2
        assert c.logprob == pytest.approx(c.top_logprobs[0].logprob, abs=1e-5)
        assert c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob


def test_echo(engine, client, model):
    out = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=8, temperature=0,
                                    echo=True)
    assert out.choices[0].text == PROMPTS[0] + greedy(engine, PROMPTS[0])
    chunks = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=8,
                                       temperature=0, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text


def test_stop_strings(engine, client, model):
    full = greedy(engine, PROMPTS[0], max_tokens=12)
    stop = full[6:9]
    assert stop and full.index(stop) > 0
    expected = full[:full.index(stop)]
    out = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=12, temperature=0,
                                    stop=[stop, "never-seen-stop"])
    assert out.choices[0].text == expected
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].model_extra["stop_reason"] == stop
    chunks = list(client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=12,
                                            temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


# ---- streaming ---------------------------------------------------------------------------------
def test_stream_completion_with_usage(engine, client, model):
    chunks = list(client.completions.create(
        model=model, prompt=PROMPTS[2], max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text_chunks, last = chunks[:-1], chunks[-1]
    assert "".join(c.choices[0].text for c in text_chunks) == greedy(engine, PROMPTS[2])
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert last.choices == [] and last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens == len(engine.tokenizer.encode(PROMPTS[2]))


def test_stream_chat_raw_sse(server, engine, model):
    body = {"model": model, "messages": CHAT, "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == engine.chat(CHAT, SamplingParams(max_tokens=8, temperature=0.0)).outputs[0].text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_32_concurrent_streams(engine, server, model):
    # vInference runs each stream as its own batch of one (on 2 CPU cores): 4 tokens keep it fast
    expected = {p: greedy(engine, p, max_tokens=4) for p in PROMPTS}
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(32)]

    async def one(client, prompt) -> str:
        stream = await client.completions.create(model=model, prompt=prompt, max_tokens=4,
                                                 temperature=0, stream=True)
        return "".join([c.choices[0].text async for c in stream])

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none",
                                      max_retries=0, timeout=300) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    texts = asyncio.run(main())
    assert texts == [expected[p] for p in prompts]


def test_client_disconnect_aborts_request(engine, server, model):
    aborted = engine.metrics()["finished_by_reason"]["abort"]
    body = {"model": model, "prompt": PROMPTS[3], "max_tokens": 100, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{server.url}/v1/completions", json=body) as r:
            assert r.status_code == 200
            first = next(line for line in r.iter_lines() if line.startswith("data: {"))
            assert json.loads(first[6:])["choices"][0]["text"]
            assert len(engine._active) == 1
    # the connection is closed: the engine must drop the request long before its 100 tokens
    assert wait_until(lambda: not engine._active, timeout=10)
    assert wait_until(lambda: engine.metrics()["finished_by_reason"]["abort"] == aborted + 1)
    # the same without streaming: a client that gives up waiting aborts the request too
    body["stream"] = False
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    assert wait_until(lambda: engine.metrics()["finished_by_reason"]["abort"] == aborted + 2)
    assert wait_until(lambda: not engine._active, timeout=10)


# ---- tokenizer endpoints, metrics --------------------------------------------------------------
def test_tokenize_detokenize_round_trip(server, engine):
    text = "Hello world, this is a round trip. ünïcödé ✓"
    r = httpx.post(f"{server.url}/tokenize", json={"prompt": text}).json()
    assert r["tokens"] == engine.tokenizer.encode(text)
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == 1024
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": r["tokens"]}).json()
    assert back == {"prompt": text}
    chat = httpx.post(f"{server.url}/tokenize", json={"messages": CHAT}).json()
    assert chat["tokens"] == engine.chat_prompt(CHAT)[0]


def _generation_tokens(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "workbench:generation_tokens":
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[s.labels["engine"]] = s.value
    return out


def test_metrics_endpoint(server, client, model):
    client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert _generation_tokens(r.text)["vinference"] >= 8


def test_two_engines_selected_by_model_name(engine):
    second = make_engine(SecondEngine)
    with serve({"alpha": engine, "beta": second}) as h:
        client = openai.OpenAI(base_url=f"{h.url}/v1", api_key="none", max_retries=0)
        assert sorted(m.id for m in client.models.list().data) == ["alpha", "beta"]
        outs = {name: client.completions.create(model=name, prompt=PROMPTS[0], max_tokens=8,
                                                temperature=0) for name in ("alpha", "beta")}
        assert outs["alpha"].model == "alpha" and outs["beta"].model == "beta"
        assert outs["alpha"].choices[0].text == outs["beta"].choices[0].text
        # the request for "beta" ran on the second engine, and /metrics shows both engines
        assert second.metrics()["num_requests_finished"] == 1
        tokens = _generation_tokens(httpx.get(f"{h.url}/metrics").text)
        assert tokens["vinference-b"] == second.metrics()["generation_tokens_total"] > 0
        assert tokens["vinference"] == engine.metrics()["generation_tokens_total"] > 0
        with pytest.raises(openai.NotFoundError) as e:
            client.completions.create(model="gamma", prompt="x", max_tokens=1)
        assert e.value.code == "model_not_found"
        r = httpx.post(f"{h.url}/v1/completions", json={"prompt": "x"})  # which model?
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"


# ---- the background server handle -------------------------------------------------------------
def test_api_key(engine, model):
    with serve(engine, api_key="s3cret") as h:
        ok = openai.OpenAI(base_url=f"{h.url}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in ok.models.list().data] == [model]
        assert httpx.get(f"{h.url}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.get(f"{h.url}/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(f"{h.url}/v1/completions", json={"prompt": "x"})
        assert r.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{h.url}/v1", api_key="bad", max_retries=0).models.list()


def test_start_stop_ten_times_leaks_nothing(engine):
    before = live_threads()
    port = None
    for _ in range(10):
        h = serve(engine, port=port or 0)
        port = h.port  # the next round reuses the port just released
        assert isinstance(h, ServerHandle) and h.running and h.url == f"http://127.0.0.1:{port}"
        assert h.public_url == h.url
        assert httpx.get(f"{h.url}/health").status_code == 200
        h.stop()
        h.stop()  # idempotent
        assert not h.running
    assert wait_until(lambda: live_threads() <= before, timeout=5), live_threads() - before
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", port))


def test_taken_port_is_a_clear_error(engine):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port}"):
            serve(engine, port=port)


def test_colab_public_url(engine, monkeypatch):
    output = types.ModuleType("google.colab.output")
    output.eval_js = lambda js: "https://colab.example/" + re.search(r"\d+", js).group()
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    with serve(engine) as h:
        assert h.public_url == f"https://colab.example/{h.port}"
        assert h.url.startswith("http://127.0.0.1:")


def test_create_app_is_a_fastapi_app(engine):
    from fastapi.testclient import TestClient

    with TestClient(create_app({"m": engine})) as tc:
        assert tc.get("/v1/models").json()["data"][0]["id"] == "m"


@contextlib.contextmanager
def cli_serve(monkeypatch, *argv):
    """`workbench serve --port 0 ARGV...` on the embedded model in a thread; yields its output
    (a StringIO) once the server says it is ready, then stops it and checks it exited with 0."""
    parser = argparse.ArgumentParser()
    server_cli.add_serve_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["serve", "--port", "0", *argv])
    assert args.func is server_cli.run_serve
    monkeypatch.setattr(server_cli, "load_model", lambda source, dtype=None: embedded_model())
    stop, out, codes = threading.Event(), io.StringIO(), []
    t = threading.Thread(target=lambda: codes.append(server_cli.run_serve(args, stop=stop,
                                                                          out=out)))
    t.start()
    try:
        assert wait_until(lambda: "Ctrl-C" in out.getvalue(), timeout=30), out.getvalue()
        yield out
    finally:
        stop.set()
        t.join(30)
    assert codes == [0]


def test_cli_serve(monkeypatch):
    with cli_serve(monkeypatch, "--max-model-len", "256") as out:
        assert "(vinference," in out.getvalue()  # the default engine
        url = re.search(r"http://127\.0\.0\.1:\d+", out.getvalue()).group()
        assert "curl " + url + "/v1/chat/completions" in out.getvalue()
        data = httpx.get(f"{url}/v1/models").json()["data"]
        assert data[0]["max_model_len"] == 256


def test_cli_serve_precompiles_before_serving(monkeypatch):
    """`--precompile` compiles the engine's shapes before the server accepts requests."""
    from workbench.engines.vinference import vInference

    calls = []

    class Recorded(vInference):
        def precompile(self, *a, **kw):
            calls.append(time.perf_counter())
            return {}

    monkeypatch.setattr(server_cli, "engine_class", lambda name: Recorded)
    with cli_serve(monkeypatch, "--max-model-len", "256", "--precompile") as out:
        text = out.getvalue()
    assert len(calls) == 1
    assert text.index("Compiled in") < text.index("Serving ")


def test_cli_serve_engine_args_reach_the_engine(monkeypatch):
    """`--engine-arg` sets eSurge's knobs: with the priority policy a request's `priority` is
    honoured (fcfs answers 400 for a non-default one)."""
    with cli_serve(monkeypatch, "--engine", "esurge", "--max-model-len", "256",
                   "--engine-arg", "scheduling_policy=priority",
                   "--engine-arg", "max-num-seqs=4", "--engine-arg", "num_pages=64") as out:
        assert "(esurge, scheduling_policy='priority', max_num_seqs=4, num_pages=64," \
            in out.getvalue()
        url = re.search(r"http://127\.0\.0\.1:\d+", out.getvalue()).group()
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        r = httpx.post(f"{url}/v1/completions", json={
            "model": model, "prompt": "Hi", "max_tokens": 2, "priority": 3}, timeout=120)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("arg, message", [
    ("max_batch=4", "esurge has no knob 'max_batch'; its knobs are"),
    ("max_num_seqs=many", "esurge knob 'max_num_seqs' must be an integer, got 'many'"),
    ("max_model_len=64", "set max_model_len with --max-model-len"),
    ("page_size=0", "page_size must be an int >= 1"),
    ("max_num_seqs=99999999999999999999999",
     "max_num_seqs must be an integer in [1, 4096], got 99999999999999999999999"),
])
def test_cli_serve_bad_engine_args_exit_2_naming_them(monkeypatch, capsys, arg, message):
    loads = []
    monkeypatch.setattr(server_cli, "load_model",
                        lambda source, dtype=None: loads.append(source) or embedded_model())
    parser = argparse.ArgumentParser()
    server_cli.add_serve_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["serve", "--port", "0", "--engine", "esurge", "--engine-arg", arg])
    assert server_cli.run_serve(args) == 2
    assert message in capsys.readouterr().err
    ranges = ("page_size", "max_num_seqs=9")  # ranges are the constructor's, after the load
    assert loads == (["embedded"] if arg.startswith(ranges) else [])  # parsed before the load


def test_cli_unavailable_engine(monkeypatch, capsys):
    def missing(name):
        raise ImportError("the vsurge engine is not available in this install")

    monkeypatch.setattr(server_cli, "engine_class", missing)
    args = argparse.Namespace(engine="vsurge", model="embedded", dtype=None)
    assert server_cli.run_serve(args) == 2
    assert "vsurge" in capsys.readouterr().err


# ---- a background engine (vSurge): started by the server, streamed token by token -------------
def test_vsurge_engine(model):
    vsurge = pytest.importorskip("workbench.engines.vsurge")
    eng = vsurge.vSurge(embedded_model(), max_model_len=256, max_concurrent_decodes=4,
                        prefill_buckets=(32, 255))
    assert not eng.running
    with serve(eng) as h:
        assert eng.running  # the server started it
        client = openai.OpenAI(base_url=f"{h.url}/v1", api_key="none", max_retries=0)
        chunks = list(client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=8,
                                                temperature=0, stream=True))
        expected = eng.generate(PROMPTS[0], SamplingParams(max_tokens=8, temperature=0.0))
        assert "".join(c.choices[0].text for c in chunks) == expected[0].outputs[0].text
        assert len(chunks) > 2  # token by token, not one blob
        aborted = eng.metrics()["finished_by_reason"]["abort"]
        body = {"prompt": PROMPTS[3], "max_tokens": 200, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{h.url}/v1/completions", json=body, timeout=60) as r:
            next(line for line in r.iter_lines() if line.startswith("data: {"))
        assert wait_until(lambda: eng.metrics()["finished_by_reason"]["abort"] == aborted + 1)
    assert not eng.running  # ... and stopped it
    eng.start()
    try:
        h = serve(eng)
        aborted = eng.metrics()["finished_by_reason"]["abort"]
        with httpx.stream("POST", f"{h.url}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            t0 = time.monotonic()
            h.stop()  # with a stream in flight: the client is told, the engine aborts
            rest = [line for line in lines if line.startswith("data: ")]
        assert time.monotonic() - t0 < 5
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["error"]["code"] == "server_shutdown"
        assert wait_until(lambda: eng.metrics()["finished_by_reason"]["abort"] == aborted + 1)
        assert eng.running  # an engine the server did not start is left running
    finally:
        eng.close()
