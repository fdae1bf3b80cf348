"""The proxy with mixed backends, end to end on 127.0.0.1 with real processes: two `workbench
serve` upstreams (tiny random models with SmolLM2's tokenizer: upstream A runs vSurge on a
slightly larger one, so that a long request lasts about a second, B runs vInference behind an API
key) and one local vSurge engine in this process, behind one proxy,
driven by the official `openai` client. Each backend serves a model with its own seed, so the
text tells which backend answered. Scripted faults live in test_proxy_faults.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time

import httpx
import openai
import pytest

from tests.proxy_support import Process, metric, tiny_model_dir, wait_until
from workbench.engines.vsurge import vSurge
from workbench.loading.loader import load_model
from workbench.sampling_params import SamplingParams
from workbench.server import serve_proxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

B_KEY = "sk-upstream-b-5e1d9a77c0"       # upstream B's key, known to the proxy by its variable
PROXY_KEY = "proxy-key-for-clients"
MAX_TOKENS = 8
EXTRA = {"ignore_eos": True}             # a vLLM extension field, passed through untouched
PROMPTS = ["Hello, my name is", "The capital of France is", "Once upon a time"]
CHAT = [{"role": "user", "content": "Hi there"}]
# Probed often, but patient: an upstream compiling a new batch shape under the 100-stream load
# sends nothing for seconds and is not down (CI once saw A marked down by a 1 s probe timeout).
HEALTH = {"interval": 0.2, "timeout": 10.0, "cooldown": 0.3, "max_fails": 2}


def serve_args(model_dir: str, engine: str, name: str, port: int = 0) -> list[str]:
    return ["serve", "--model", model_dir, "--engine", engine, "--max-model-len", "512",
            "--served-model-name", name, "--port", str(port)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    bigger = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4}
    return {k: tiny_model_dir(str(tmp_path_factory.mktemp(f"tiny-{k}")), seed,
                              **(bigger if k == "a" else {}))
            for k, seed in (("a", 0), ("b", 1), ("local", 2))}


@pytest.fixture(scope="module")
def upstreams(models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    procs: dict[str, Process] = {}
    try:
        procs["a"] = Process(serve_args(models["a"], "vsurge", "tiny-a"), str(logs / "a.log"))
        procs["b"] = Process(serve_args(models["b"], "vinference", "tiny-b"), str(logs / "b.log"),
                             env={"WORKBENCH_API_KEY": B_KEY})
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture(scope="module")
def local_engine(models):
    engine = vSurge(load_model(models["local"], progress=False), max_model_len=512,
                    max_concurrent_decodes=16)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def key_env():
    os.environ["WB_TEST_B_KEY"] = B_KEY
    yield "WB_TEST_B_KEY"
    os.environ.pop("WB_TEST_B_KEY", None)


def routes(upstreams, local_engine, key_env) -> dict:
    a = {"url": upstreams["a"].url + "/v1", "model": "tiny-a"}
    b = {"url": upstreams["b"].url + "/v1", "model": "tiny-b", "api_key_env": key_env}
    return {"a": [a], "b": [b], "local": [local_engine]}


@pytest.fixture(scope="module")
def proxy(upstreams, local_engine, key_env):
    with serve_proxy({"routes": routes(upstreams, local_engine, key_env), "health": HEALTH},
                     api_key=PROXY_KEY) as handle:
        yield handle


@pytest.fixture(scope="module")
def direct(upstreams, local_engine):
    """route -> what its backend answers when called directly: {("cmpl", prompt) | ("chat",):
    text}. Also compiles every shape the tests use, in every backend."""
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    out = {"local": {("chat",): local_engine.chat(CHAT, sp).outputs[0].text}}
    for p in PROMPTS:
        out["local"][("cmpl", p)] = local_engine.generate(p, sp)[0].outputs[0].text
    for route, key in (("a", "none"), ("b", B_KEY)):
        client = openai.OpenAI(base_url=upstreams[route].url + "/v1", api_key=key,
                               max_retries=0, timeout=300)
        model = f"tiny-{route}"
        out[route] = {("chat",): client.chat.completions.create(
            model=model, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0,
            extra_body=EXTRA).choices[0].message.content}
        for p in PROMPTS:
            out[route][("cmpl", p)] = client.completions.create(
                model=model, prompt=p, max_tokens=MAX_TOKENS, temperature=0,
                extra_body=EXTRA).choices[0].text
    for key in out["a"]:  # three models: the text tells which backend answered
        assert len({out[r][key] for r in out}) == 3, key
    return out


def client(proxy, cls=openai.OpenAI):
    return cls(base_url=proxy.url + "/v1", api_key=PROXY_KEY, max_retries=0, timeout=300)


def metrics_text(proxy) -> str:
    return httpx.get(proxy.url + "/metrics", headers={"Authorization": f"Bearer {PROXY_KEY}"}).text


# ---- the same text as going direct ---------------------------------------------------------------
def test_models_lists_each_public_name_once(proxy):
    assert [m.id for m in client(proxy).models.list().data] == ["a", "b", "local"]


def test_sync_completions_and_chat_equal_direct(proxy, direct):
    c = client(proxy)
    for route in ("a", "b", "local"):
        for p in PROMPTS:
            out = c.completions.create(model=route, prompt=p, max_tokens=MAX_TOKENS,
                                       temperature=0, extra_body=EXTRA)
            assert out.choices[0].text == direct[route][("cmpl", p)], (route, p)
            assert out.usage.completion_tokens == MAX_TOKENS
        chat = c.chat.completions.with_raw_response.create(
            model=route, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, extra_body=EXTRA)
        assert chat.parse().choices[0].message.content == direct[route][("chat",)]
        backend = chat.headers["x-workbench-backend"]
        assert backend == ("local:vsurge" if route == "local"
                           else proxy.app.state.proxy.routes[route].targets[0].backend.name)


def test_streaming_equals_direct_chunk_by_chunk(proxy, direct):
    c = client(proxy)
    for route in ("a", "b", "local"):
        chunks = list(c.chat.completions.create(
            model=route, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body=EXTRA))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == direct[route][("chat",)]
        # relayed as it came: several text chunks (vInference sends a few tokens per chunk)
        assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) >= 2
        assert chunks[-1].usage.completion_tokens == MAX_TOKENS  # include_usage passed through
        pieces = list(c.completions.create(model=route, prompt=PROMPTS[0], max_tokens=MAX_TOKENS,
                                           temperature=0, stream=True, extra_body=EXTRA))
        assert "".join(p.choices[0].text for p in pieces) == direct[route][("cmpl", PROMPTS[0])]


def test_async_client_equals_direct(proxy, direct):
    async def main():
        async with client(proxy, openai.AsyncOpenAI) as c:
            outs = await asyncio.gather(*(
                c.completions.create(model=r, prompt=p, max_tokens=MAX_TOKENS, temperature=0,
                                     extra_body=EXTRA)
                for r in ("a", "b", "local") for p in PROMPTS))
            stream = await c.chat.completions.create(
                model="b", messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, stream=True,
                extra_body=EXTRA)
            chat = "".join([ch.choices[0].delta.content or "" async for ch in stream])
            return [o.choices[0].text for o in outs], chat

    texts, chat = asyncio.run(main())
    assert texts == [direct[r][("cmpl", p)] for r in ("a", "b", "local") for p in PROMPTS]
    assert chat == direct["b"][("chat",)]


def test_100_concurrent_streams_equal_direct(proxy, direct):
    jobs = [(("a", "b", "local")[i % 3], PROMPTS[i % len(PROMPTS)]) for i in range(100)]

    async def one(c, route, prompt) -> str:
        stream = await c.completions.create(model=route, prompt=prompt, max_tokens=MAX_TOKENS,
                                            temperature=0, stream=True, extra_body=EXTRA)
        return "".join([ch.choices[0].text async for ch in stream])

    async def main() -> list[str]:
        async with client(proxy, openai.AsyncOpenAI) as c:
            return await asyncio.gather(*(one(c, r, p) for r, p in jobs))

    t0 = time.monotonic()
    texts = asyncio.run(main())
    assert texts == [direct[r][("cmpl", p)] for r, p in jobs]
    text = metrics_text(proxy)
    assert metric(text, "workbench:proxy_requests_in_flight") == 0
    for route in ("a", "b", "local"):
        assert metric(text, "workbench:proxy_time_to_first_token_seconds_count",
                      model_name=route) >= 33
    print(f"100 streams in {time.monotonic() - t0:.1f} s")


def test_upstream_4xx_passes_through(proxy):
    with pytest.raises(openai.BadRequestError) as e:
        client(proxy).completions.create(model="b", prompt="x", temperature=-1)
    assert e.value.body["param"] == "temperature"  # upstream B's own error, unchanged
    with pytest.raises(openai.BadRequestError) as e:
        client(proxy).completions.create(model="local", prompt="x", temperature=-1)
    assert e.value.body["param"] == "temperature"  # the local engine's, by the server's code


# ---- disconnects ---------------------------------------------------------------------------------
def _running(url: str) -> float:
    return metric(httpx.get(url + "/metrics").text, "workbench:num_requests_running")


def _aborted(url: str) -> float:
    return metric(httpx.get(url + "/metrics").text, "workbench:request_success_total",
                  finished_reason="abort")


def test_client_disconnect_aborts_the_upstream_and_local_requests(proxy, upstreams,
                                                                  local_engine):
    url = upstreams["a"].url
    aborted, local_aborted = _aborted(url), local_engine.metrics()["finished_by_reason"]["abort"]
    headers = {"Authorization": f"Bearer {PROXY_KEY}"}
    for route in ("a", "local"):
        body = {"model": route, "prompt": PROMPTS[2], "max_tokens": 480, "temperature": 0,
                "ignore_eos": True, "stream": True}
        with httpx.stream("POST", proxy.url + "/v1/completions", json=body, headers=headers,
                          timeout=60) as r:
            lines = r.iter_lines()  # held: dropping it would close the connection here
            first = next(line for line in lines if line.startswith("data: {"))
            assert json.loads(first[6:])["choices"][0]["text"]
            if route == "a":
                assert _running(url) == 1
            else:
                assert local_engine.metrics()["num_requests_running"] == 1
    # the upstream server saw the proxy's connection close and aborted, long before 480 tokens
    assert wait_until(lambda: _aborted(url) == aborted + 1, timeout=20)
    assert wait_until(lambda: _running(url) == 0, timeout=10)
    assert wait_until(lambda: local_engine.metrics()["finished_by_reason"]["abort"]
                      == local_aborted + 1, timeout=20)
    assert wait_until(lambda: local_engine.metrics()["num_requests_running"] == 0, timeout=10)
    # a client that stops waiting for a non-streamed answer
    body = {"model": "a", "prompt": PROMPTS[2], "max_tokens": 480, "temperature": 0,
            "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + "/v1/completions", json=body, headers=headers,
                   timeout=httpx.Timeout(60, read=0.3))
    assert wait_until(lambda: _aborted(url) == aborted + 2, timeout=20)
    assert wait_until(lambda: _running(url) == 0, timeout=10)


# ---- metrics: the proxy's and the local engine's -------------------------------------------------
def test_metrics_has_proxy_and_local_engine_series(proxy, local_engine):
    client(proxy).completions.create(model="local", prompt=PROMPTS[0], max_tokens=MAX_TOKENS,
                                     temperature=0, extra_body=EXTRA)
    text = metrics_text(proxy)
    assert metric(text, "workbench:generation_tokens_total", engine="vsurge") == \
        local_engine.metrics()["generation_tokens_total"] > 0
    assert metric(text, "workbench:proxy_requests_total", model_name="local",
                  backend="local:vsurge") >= 1
    assert metric(text, "workbench:proxy_request_latency_seconds_count", model_name="b") >= 1
    assert metric(text, "workbench:proxy_backend_up", backend="local:vsurge") == 1


# ---- the CLI: a config file, a local engine built from it, keys kept out of the log --------------
def test_workbench_proxy_cli(upstreams, models, direct, key_env, tmp_path):
    config = tmp_path / "routes.yaml"
    config.write_text(
        "routes:\n"
        "  b:\n"
        "    backends:\n"
        f"      - url: {upstreams['b'].url}/v1\n"
        "        model: tiny-b\n"
        f"        api_key_env: {key_env}\n"
        "  local:\n"
        f"    - local: {{model: {models['local']}, engine: vinference, max_model_len: 256}}\n"
        "health: {interval: 0.2, cooldown: 0.3}\n")
    proc = Process(["proxy", "--config", str(config), "--port", "0"], str(tmp_path / "proxy.log"),
                   env={"WORKBENCH_API_KEY": PROXY_KEY, key_env: B_KEY})
    try:
        c = openai.OpenAI(base_url=proc.url + "/v1", api_key=PROXY_KEY, max_retries=0,
                          timeout=300)
        assert [m.id for m in c.models.list().data] == ["b", "local"]
        for route in ("b", "local"):
            out = c.chat.completions.create(model=route, messages=CHAT, max_tokens=MAX_TOKENS,
                                            temperature=0, extra_body=EXTRA)
            assert out.choices[0].message.content == direct[route][("chat",)]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proc.url + "/v1", api_key="wrong", max_retries=0
                          ).models.list()
    finally:
        code = proc.stop()
    log = proc.output()
    assert code == 0, log
    assert "b -> " in log and "local -> " in log  # the routes were printed
    assert B_KEY not in log and PROXY_KEY not in log


# ---- an upstream dies, and comes back ------------------------------------------------------------
def test_killed_upstream_fails_over_then_returns(upstreams, models, local_engine, direct, key_env,
                                                 caplog):
    caplog.set_level(logging.DEBUG)
    a = {"url": upstreams["a"].url + "/v1", "model": "tiny-a"}
    b = {"url": upstreams["b"].url + "/v1", "model": "tiny-b", "api_key_env": key_env}
    # probes every 30 s while up, so the requests (not a probe) find A dead; 0.3 s while down
    health = {"interval": 30, "timeout": 1.0, "cooldown": 0.3, "max_fails": 1}
    with serve_proxy({"routes": {"ha": [a, b]}, "health": health}, api_key=PROXY_KEY) as proxy:
        c = client(proxy)
        names = [t.backend.name for t in proxy.app.state.proxy.routes["ha"].targets]
        first = c.completions.with_raw_response.create(
            model="ha", prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, extra_body=EXTRA)
        assert first.headers["x-workbench-backend"] == names[0]
        assert first.parse().choices[0].text == direct["a"][("cmpl", PROMPTS[0])]

        # six long requests are running on A when it dies: three streams that have begun, and
        # three non-streamed ones that have sent the client nothing yet
        long = dict(prompt=PROMPTS[1], max_tokens=480, temperature=0, extra_body=EXTRA)
        b_long = openai.OpenAI(base_url=upstreams["b"].url + "/v1", api_key=B_KEY,
                               max_retries=0, timeout=300).completions.create(
            model="tiny-b", **long).choices[0].text
        outcomes: list[str] = []
        begun = [threading.Event() for _ in range(3)]

        def long_stream(i: int):
            try:
                for _ in c.completions.create(model="ha", stream=True, **long):
                    begun[i].set()
                outcomes.append("completed")
            except openai.APIError as exc:
                outcomes.append(f"stream error: {exc.message}")

        def long_request(i: int):
            try:
                r = c.completions.with_raw_response.create(model="ha", **long)
                ok = (r.headers["x-workbench-backend"] == names[1]
                      and r.parse().choices[0].text == b_long)
                outcomes.append("failed over" if ok else "wrong answer")
            except openai.APIError as exc:
                outcomes.append(f"client error: {exc.message}")

        threads = [threading.Thread(target=long_stream, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        assert all(e.wait(60) for e in begun)  # the streams have begun...
        threads += [threading.Thread(target=long_request, args=(i,)) for i in range(3)]
        for t in threads[3:]:
            t.start()
        # ... and the non-streamed requests run on A too (480 tokens take A about a second)
        assert wait_until(lambda: _running(upstreams["a"].url) == 6, timeout=60, interval=0.01)
        upstreams["a"].kill()
        for t in threads:  # the cut streams end with an error event instead of hanging
            t.join(60)
            assert not t.is_alive()
        assert sorted(outcomes) == ["failed over"] * 3 + ["stream error: The upstream connection "
                                                          "broke: RemoteProtocolError"] * 3, \
            outcomes
        # new requests skip A, now marked down: no client error, B's text
        for p in PROMPTS:
            r = c.completions.with_raw_response.create(
                model="ha", prompt=p, max_tokens=MAX_TOKENS, temperature=0, extra_body=EXTRA)
            assert r.headers["x-workbench-backend"] == names[1]
            assert r.parse().choices[0].text == direct["b"][("cmpl", p)]
        chunks = list(c.chat.completions.create(model="ha", messages=CHAT, max_tokens=MAX_TOKENS,
                                                temperature=0, stream=True, extra_body=EXTRA))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == \
            direct["b"][("chat",)]
        text = metrics_text(proxy)
        assert metric(text, "workbench:proxy_failovers_total", backend=names[0]) == 3
        assert metric(text, "workbench:proxy_request_errors_total", backend=names[0],
                      kind="stream") == 6
        assert metric(text, "workbench:proxy_backend_up", backend=names[0]) == 0
        assert httpx.get(proxy.url + "/health").json()["status"] == "degraded"

        # A comes back on the same port: the health check marks it up, and it serves again
        port = int(upstreams["a"].url.rsplit(":", 1)[1])
        upstreams["a"] = Process(serve_args(models["a"], "vsurge", "tiny-a", port),
                                 upstreams["a"].log_path + ".2")
        assert wait_until(lambda: metric(metrics_text(proxy), "workbench:proxy_backend_up",
                                         backend=names[0]) == 1, timeout=20)
        r = c.completions.with_raw_response.create(
            model="ha", prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, extra_body=EXTRA)
        assert r.headers["x-workbench-backend"] == names[0]
        assert r.parse().choices[0].text == direct["a"][("cmpl", PROMPTS[0])]
    assert "marked down" in caplog.text and "is up again" in caplog.text
    assert B_KEY not in caplog.text
