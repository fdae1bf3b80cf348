"""The proxy against scripted faulty upstreams (tests/proxy_support.FakeUpstream, real servers on
127.0.0.1): failover before the first byte, 4xx passed through, errors after the stream began,
timeouts, health checks, disconnects, shutdown, least_busy, the proxy's own API key, and keys
that never leak. No model is loaded."""

from __future__ import annotations

import json
import logging
import threading

import httpx
import openai
import pytest

from tests.proxy_support import FAST_HEALTH, FakeUpstream, metric, sse_events, wait_until
from workbench.server import ServerHandle, serve_proxy
from workbench.server.proxy.app import create_proxy_app

pytestmark = pytest.mark.timeout(120)

UPSTREAM_KEY = "sk-upstream-3b9f0c2d71"
FAST = {"connect": 2, "first_byte": 2, "total": 4}  # generous: the machine is shared


@pytest.fixture
def fakes():
    made: list[FakeUpstream] = []

    def make() -> FakeUpstream:
        made.append(FakeUpstream())
        return made[-1]

    yield make
    for f in made:
        f.stop()


@pytest.fixture
def proxies():
    started: list[ServerHandle] = []

    def start(routes: dict, health: dict | None = None, **kw) -> ServerHandle:
        config = {"routes": routes, "health": {**FAST_HEALTH, **(health or {})}}
        started.append(serve_proxy(config, **kw))
        return started[-1]

    yield start
    for h in started:
        h.stop()


def upstream(fake: FakeUpstream, mode: str, **kw) -> dict:
    return {"url": fake.url, "model": mode, "timeouts": FAST, **kw}


def post(proxy: ServerHandle, body: dict, path: str = "/v1/completions", **kw) -> httpx.Response:
    return httpx.post(proxy.url + path, json=body, timeout=30, **kw)


def stream_text(proxy: ServerHandle, body: dict, path: str = "/v1/completions"
                ) -> tuple[httpx.Response, list[str]]:
    with httpx.stream("POST", proxy.url + path, json={**body, "stream": True}, timeout=30) as r:
        text = r.read().decode()
    return r, sse_events(text)


def metrics(proxy: ServerHandle, **headers) -> str:
    return httpx.get(proxy.url + "/metrics", headers=headers).text


# ---- forwarding ---------------------------------------------------------------------------------
def test_body_forwarded_with_only_the_model_rewritten(fakes, proxies, monkeypatch):
    monkeypatch.setenv("WB_PROXY_TEST_KEY", UPSTREAM_KEY)
    fake = fakes()
    proxy = proxies({"public": [upstream(fake, "ok", api_key_env="WB_PROXY_TEST_KEY")]},
                    api_key="proxy-key")
    body = {"model": "public", "prompt": "hi", "temperature": 0.7, "max_tokens": 5,
            "extra": {"nested": [1, 2.5, None, "ü"]}, "logit_bias": {"42": -100}}
    r = post(proxy, body, headers={"Authorization": "Bearer proxy-key"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "fake answer"
    assert r.headers["x-workbench-backend"] == fake.url.split("//")[1].removesuffix("/v1")
    assert fake.bodies == [{**body, "model": "ok"}]
    # the upstream got its own key, never the client's
    assert fake.auth == [f"Bearer {UPSTREAM_KEY}"]
    # the chat endpoint goes to the upstream's chat endpoint
    chat = {"model": "public", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=chat,
                      headers={"Authorization": "Bearer proxy-key"}, timeout=30) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = sse_events(s.read().decode())
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == \
        ["t0 ", "t1 ", "t2 "]
    assert events[-1] == "[DONE]"


def test_upstream_connections_are_reused(fakes, proxies):
    fake = fakes()
    proxy = proxies({"m": [upstream(fake, "ok")]}, health={"interval": 60})
    health = next(iter(proxy.app.state.proxy.backends.values())).health
    assert wait_until(lambda: health.last_probe is not None)  # probes share the pool: no more
    for i in range(6):
        r, events = stream_text(proxy, {"model": "m", "prompt": "x"}) if i % 2 else \
            (post(proxy, {"model": "m", "prompt": "x"}), None)
        assert r.status_code == 200
    assert len(fake.ports) == 6 and len(set(fake.ports)) == 1, fake.ports  # one kept-alive


def test_models_health_and_request_errors(fakes, proxies):
    fake = fakes()
    proxy = proxies({"a": [upstream(fake, "ok")], "b": [upstream(fake, "ok")]})
    models = httpx.get(proxy.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["a", "b"]
    health = httpx.get(proxy.url + "/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "models": {"a": {"backends_up": 1, "backends": 1},
                                                        "b": {"backends_up": 1, "backends": 1}}}
    cases = [
        (b"{not json", 400, None, "invalid_json"),
        (b"[1, 2]", 400, None, "invalid_json"),
        (b"", 400, None, "missing_body"),
        (json.dumps({"model": "a", "prompt": "x", "stream": "yes"}).encode(), 400, "stream",
         "invalid_value"),
        (json.dumps({"prompt": "x"}).encode(), 400, "model", "missing_required_parameter"),
        (json.dumps({"model": 7, "prompt": "x"}).encode(), 400, "model", "invalid_value"),
        (json.dumps({"model": "zzz", "prompt": "x"}).encode(), 404, "model", "model_not_found"),
        (b'{"model": "a", "prompt": "' + b"x" * 2_000_000 + b'"}', 413, None,
         "request_too_large"),
    ]
    for raw, status, param, code in cases:
        r = httpx.post(proxy.url + "/v1/completions", content=raw,
                       headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == status, (raw[:40], r.text)
        error = r.json()["error"]
        assert (error["param"], error["code"]) == (param, code), error
        assert set(error) == {"message", "type", "param", "code"}
    assert fake.bodies == []  # none of them reached the upstream


def test_the_proxy_key_guards_every_route_but_health(fakes, proxies):
    fake = fakes()
    proxy = proxies({"m": [upstream(fake, "ok")]}, api_key="proxy-key")
    assert httpx.get(proxy.url + "/health").status_code == 200
    for method, path in [("GET", "/v1/models"), ("GET", "/metrics"),
                         ("POST", "/v1/completions"), ("POST", "/v1/chat/completions")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.request(method, proxy.url + path, headers=headers,
                              json={"model": "m", "prompt": "x"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    ok = openai.OpenAI(base_url=proxy.url + "/v1", api_key="proxy-key", max_retries=0)
    assert [m.id for m in ok.models.list().data] == ["m"]
    assert fake.bodies == []


# ---- failover before the first byte -------------------------------------------------------------
BEFORE_FIRST_BYTE = [(mode, kind, stream) for mode, kind in [
    ("500", "http_5xx"), ("429", "http_429"), ("hang", "timeout"), ("connect", "connect")]
    for stream in (False, True)] + [("malformed-first", "malformed", True),
                                    ("json-for-stream", "malformed", True),
                                    ("error-first", "stream", True)]


@pytest.mark.parametrize("mode, kind, stream", BEFORE_FIRST_BYTE)
def test_failover_before_the_first_byte(fakes, proxies, mode, kind, stream):
    bad, good = fakes(), fakes()
    # slow health checks: the request, not a probe, meets the fault, and no probe (the fake's
    # /v1/models answers) marks the backend up again before the metrics are read
    proxy = proxies({"m": [upstream(bad, mode), upstream(good, "ok")]},
                    health={"interval": 60, "cooldown": 60})
    good_name = good.url.split("//")[1].removesuffix("/v1")
    bad_name = bad.url.split("//")[1].removesuffix("/v1")
    if mode == "connect":  # a server that went away after its first health check
        health = proxy.app.state.proxy.backends[bad_name].health
        assert wait_until(lambda: health.last_probe is not None, timeout=5) and health.up
        bad.stop()
    if stream:
        r, events = stream_text(proxy, {"model": "m", "prompt": "x"})
        assert r.status_code == 200
        assert [json.loads(e)["choices"][0]["text"] for e in events[:-1]] == ["t0 ", "t1 ", "t2 "]
        assert events[-1] == "[DONE]"
    else:
        r = post(proxy, {"model": "m", "prompt": "x"})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "fake answer"
    assert r.headers["x-workbench-backend"] == good_name
    text = metrics(proxy)
    assert metric(text, "workbench:proxy_request_errors_total", backend=bad_name, kind=kind) == 1
    assert metric(text, "workbench:proxy_failovers_total", backend=bad_name) == 1
    assert metric(text, "workbench:proxy_requests_total", backend=good_name) == 1
    assert metric(text, "workbench:proxy_requests_in_flight", backend=bad_name) == 0
    # a 429 means busy, not dead: the backend stays up; the others count toward marking it down
    assert metric(text, "workbench:proxy_backend_up", backend=bad_name) == (mode == "429")


def test_all_backends_failing_is_a_503_naming_the_model(fakes, proxies):
    a, b = fakes(), fakes()
    # a long cooldown: no probe brings them back during the test
    proxy = proxies({"m": [upstream(a, "500"), upstream(b, "hang")]}, health={"cooldown": 60})
    r = post(proxy, {"model": "m", "prompt": "x"})
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "no_backend" and "'m'" in error["message"]
    assert "http_5xx" in error["message"] and "timeout" in error["message"]
    # both are now marked down: the next request is refused at once, without trying them
    r = post(proxy, {"model": "m", "prompt": "x"})
    assert r.status_code == 503 and "marked down" in r.json()["error"]["message"]
    assert len(a.bodies) == 1 and len(b.bodies) == 1
    assert metric(metrics(proxy), "workbench:proxy_unavailable_total", model_name="m") == 2
    assert httpx.get(proxy.url + "/health").status_code == 503


def test_every_backend_busy_is_a_429(fakes, proxies):
    a, b = fakes(), fakes()
    proxy = proxies({"m": [upstream(a, "429"), upstream(b, "429")]})
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model="m", prompt="x")
    assert e.value.response.headers["retry-after"] == "7"
    assert "'m'" in e.value.message


def test_4xx_passes_through_unchanged(fakes, proxies):
    bad, good = fakes(), fakes()
    proxy = proxies({"m": [upstream(bad, "404"), upstream(good, "ok")]})
    for stream in (False, True):
        r = post(proxy, {"model": "m", "prompt": "x", "stream": stream})
        assert r.status_code == 404
        assert r.json() == {"error": {"message": "no such thing here",
                                      "type": "invalid_request_error", "param": None,
                                      "code": "scripted_404"}}
    assert good.bodies == []  # not a failure of the backend: no failover
    bad_name = bad.url.split("//")[1].removesuffix("/v1")
    assert metric(metrics(proxy), "workbench:proxy_backend_up", backend=bad_name) == 1


# ---- failure after the stream began -------------------------------------------------------------
@pytest.mark.parametrize("mode, received, code", [
    ("end-early", 2, "upstream_stream_ended"), ("crash-mid", 2, "upstream_stream_broken"),
    ("malformed-mid", 1, "upstream_malformed_stream"), ("slow", None, "upstream_timeout")])
def test_failure_after_the_stream_began_ends_with_an_error_event(fakes, proxies, mode, received,
                                                                  code):
    bad, good = fakes(), fakes()
    proxy = proxies({"m": [upstream(bad, mode), upstream(good, "ok")]}, health={"max_fails": 9})
    r, events = stream_text(proxy, {"model": "m", "prompt": "x"})
    assert r.status_code == 200
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == code and error["type"] == "server_error"
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-2]]
    assert texts == [f"t{i} " for i in range(len(texts))]
    if received is not None:
        assert len(texts) == received
    else:  # `slow` ran into the 4 s total timeout after ~80 events
        assert 5 < len(texts) < 200
    assert good.bodies == []  # too late to fail over: the client already has part of the answer
    # the official client raises instead of hanging
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.completions.create(model="m", prompt="x", stream=True):
            pass


# ---- health -------------------------------------------------------------------------------------
def test_health_check_marks_down_and_up(fakes, proxies):
    a, b = fakes(), fakes()
    proxy = proxies({"m": [upstream(a, "ok"), upstream(b, "ok")]})
    a_name = a.url.split("//")[1].removesuffix("/v1")
    b_name = b.url.split("//")[1].removesuffix("/v1")
    assert post(proxy, {"model": "m", "prompt": "x"}).headers["x-workbench-backend"] == a_name
    a.healthy = False
    assert wait_until(lambda: metric(metrics(proxy), "workbench:proxy_backend_up",
                                     backend=a_name) == 0, timeout=5)
    assert httpx.get(proxy.url + "/health").json()["models"]["m"]["backends_up"] == 1
    # skipped while down: no failover needed, the request goes straight to b
    r = post(proxy, {"model": "m", "prompt": "x"})
    assert r.headers["x-workbench-backend"] == b_name and len(a.bodies) == 1
    assert metric(metrics(proxy), "workbench:proxy_failovers_total", backend=a_name) == 0
    a.healthy = True
    assert wait_until(lambda: metric(metrics(proxy), "workbench:proxy_backend_up",
                                     backend=a_name) == 1, timeout=5)
    assert post(proxy, {"model": "m", "prompt": "x"}).headers["x-workbench-backend"] == a_name


def test_a_busy_backend_that_streams_is_not_marked_down_by_a_slow_probe(fakes, proxies):
    """Probes time out (0.5 s) while the backend streams to a client: busy, not down. Once
    nothing flows, the same slow probe marks it down."""
    a = fakes()
    proxy = proxies({"m": [upstream(a, "slow", timeouts={"connect": 2, "first_byte": 2,
                                                          "total": 30})]})
    a_name = a.url.split("//")[1].removesuffix("/v1")
    up = lambda: metric(metrics(proxy), "workbench:proxy_backend_up", backend=a_name)  # noqa: E731
    a.models_delay = 2.0
    body = {"model": "m", "prompt": "x", "stream": True}
    with httpx.stream("POST", proxy.url + "/v1/completions", json=body, timeout=30) as r:
        events: list[str] = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line)
            if len(events) == 60:  # 3 s in: several probes have timed out meanwhile
                assert up() == 1
    assert r.status_code == 200 and len(events) == 201 and events[-1] == "data: [DONE]"
    assert wait_until(lambda: up() == 0, timeout=10)  # nothing flows now: down
    a.models_delay = 0.0


def test_least_busy_spreads_by_weight(fakes, proxies):
    a, b = fakes(), fakes()
    proxy = proxies({"m": {"strategy": "least_busy", "backends": [
        upstream(a, "slow", weight=3), upstream(b, "slow")]}})
    with httpx.Client(timeout=30) as http:
        streams, chosen = [], []
        try:
            for _ in range(4):  # each stays in flight while the next one is routed
                s = http.stream("POST", proxy.url + "/v1/completions",
                                json={"model": "m", "prompt": "x", "stream": True})
                r = s.__enter__()
                streams.append(s)
                chosen.append(r.headers["x-workbench-backend"])
        finally:
            for s in streams:
                s.__exit__(None, None, None)
    a_name = a.url.split("//")[1].removesuffix("/v1")
    b_name = b.url.split("//")[1].removesuffix("/v1")
    # in flight per weight: a 0/3 -> b 0/1 -> a 1/3 -> a 2/3 (b has 1/1)
    assert chosen == [a_name, b_name, a_name, a_name]


# ---- disconnects and shutdown -------------------------------------------------------------------
def test_client_disconnect_closes_the_upstream_request(fakes, proxies):
    fake = fakes()
    proxy = proxies({"m": [{"url": fake.url, "model": "slow"}],
                     "h": [{"url": fake.url, "model": "hang"}]})
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", proxy.url + "/v1/completions",
                         json={"model": "m", "prompt": "x", "stream": True}) as r:
            first = next(line for line in r.iter_lines() if line.startswith("data: {"))
            assert json.loads(first[6:])["choices"][0]["text"] == "t0 "
    assert wait_until(lambda: fake.closed == 1, timeout=5)  # long before its 200 events
    assert fake.finished == 0
    # a client that gives up waiting for a non-streamed answer closes the upstream request too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + "/v1/completions", json={"model": "h", "prompt": "x"},
                   timeout=httpx.Timeout(30, read=0.5))
    assert wait_until(lambda: fake.closed == 2, timeout=5)
    text = metrics(proxy)
    assert metric(text, "workbench:proxy_request_errors_total", kind="cancelled",
                  model_name="m") == 1
    assert metric(text, "workbench:proxy_request_errors_total", kind="cancelled",
                  model_name="h") == 1
    assert metric(text, "workbench:proxy_requests_in_flight", model_name="m") == 0
    assert metric(text, "workbench:proxy_backend_up") == 1  # a client leaving is no failure


def test_stopping_the_proxy_ends_streams_with_an_error_event(fakes):
    fake = fakes()
    proxy = serve_proxy({"m": [{"url": fake.url, "model": "slow"}]})
    try:
        with httpx.stream("POST", proxy.url + "/v1/completions",
                          json={"model": "m", "prompt": "x", "stream": True}, timeout=30) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            proxy.stop()
            rest = [line for line in lines if line.startswith("data: ")]
    finally:
        proxy.stop()
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["error"]["code"] == "server_shutdown"
    assert wait_until(lambda: fake.closed == 1, timeout=5)


def test_serve_proxy_restarts_and_leaks_nothing(fakes):
    import workbench as wb

    assert wb.serve_proxy is serve_proxy  # exported lazily, like wb.serve
    fake = fakes()
    before = {t for t in threading.enumerate() if t.is_alive()}
    port = 0
    config = {"m": [{"url": fake.url, "model": "ok"}]}
    for _ in range(5):
        h = serve_proxy(config, port=port)
        port = h.port  # the next round reuses the port just released
        assert h.running and h.url == f"http://127.0.0.1:{port}"
        assert post(h, {"model": "m", "prompt": "x"}).status_code == 200
        h.stop()
        h.stop()  # idempotent
        assert not h.running
    assert wait_until(lambda: {t for t in threading.enumerate() if t.is_alive()} <= before,
                      timeout=5)


def test_create_proxy_app_rejects_an_unset_key_variable(monkeypatch):
    monkeypatch.delenv("WB_PROXY_TEST_UNSET", raising=False)
    with pytest.raises(ValueError, match=r"routes\.m\.backends\[0\]\.api_key_env: the "
                                         r"environment variable WB_PROXY_TEST_UNSET is not set"):
        create_proxy_app({"m": [{"url": "http://127.0.0.1:9/v1", "api_key_env":
                                 "WB_PROXY_TEST_UNSET"}]})


# ---- keys never leak ----------------------------------------------------------------------------
def test_upstream_key_never_leaks(fakes, proxies, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("WB_PROXY_TEST_KEY", UPSTREAM_KEY)
    fake, dead = fakes(), fakes()
    dead.stop()
    keyed = {"api_key_env": "WB_PROXY_TEST_KEY"}
    proxy = proxies({"echo": [upstream(fake, "echo-key", **keyed)],
                     "fail": [upstream(dead, "ok", **keyed), upstream(fake, "500", **keyed),
                              upstream(fake, "429", **keyed)],
                     "ok": [upstream(fake, "ok", **keyed)]})
    seen = []
    r = post(proxy, {"model": "echo", "prompt": "x"})
    assert r.status_code == 400 and "Bearer ***" in r.json()["error"]["message"]
    seen.append(r.text)
    r = post(proxy, {"model": "fail", "prompt": "x"})
    assert r.status_code == 503
    seen.append(r.text)
    for stream in (False, True):
        seen.append(post(proxy, {"model": "ok", "prompt": "x", "stream": stream}).text)
    for path in ("/v1/models", "/metrics", "/health"):
        seen.append(httpx.get(proxy.url + path).text)
    assert fake.auth and all(a == f"Bearer {UPSTREAM_KEY}" for a in fake.auth)
    for text in seen + [caplog.text, repr(proxy.app.state.proxy.backends)]:
        assert UPSTREAM_KEY not in text
    assert "failed before the first byte" in caplog.text  # the log was captured
