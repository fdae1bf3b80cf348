"""eSurge behind the OpenAI-compatible server: `priority` honoured or refused, tenants from `user`
or a named API key, `POST /reset_prefix_cache`, metrics, `workbench serve --engine esurge`."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.test_server import cli_serve
from tests.test_server_support import embedded_model
from workbench.engines.esurge import eSurge
from workbench.engines.vinference import vInference
from workbench.sampling_params import SamplingParams
from workbench.server import serve

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "Say hi."}]
KEYS = {"team-a": "key-a", "team-b": "key-b"}


@pytest.fixture(scope="module")
def engines():
    lm = embedded_model()
    es = eSurge(lm, max_model_len=256, num_pages=64, max_num_batched_tokens=64,
                scheduling_policy="priority")
    vi = vInference(lm, max_model_len=256, prefill_buckets=(64, 256))
    yield {"es": es, "vi": vi}
    es.close()


@pytest.fixture(scope="module")
def server(engines):
    with serve(engines, api_key=KEYS) as handle:
        yield handle


def _client(server, key="key-a"):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_chat_and_priority_on_esurge_equal_the_engine(server, engines):
    client = _client(server)
    r = client.chat.completions.create(model="es", messages=CHAT, max_tokens=8, temperature=0,
                                       extra_body={"priority": 3})
    direct = engines["es"].chat(CHAT, SamplingParams(max_tokens=8, temperature=0))
    assert r.choices[0].message.content == direct.outputs[0].text
    events = engines["es"].timeline(r.id)
    assert events[0]["event"] == "queued" and events[0]["priority"] == 3
    stream = client.completions.create(model="es", prompt="Once upon a time", max_tokens=6,
                                       temperature=0, stream=True, extra_body={"priority": -2})
    assert "".join(c.choices[0].text for c in stream)


def test_priority_on_an_engine_without_a_priority_policy_is_a_400(server):
    client = _client(server)
    ok = client.completions.create(model="vi", prompt="Hi", max_tokens=2, extra_body={
        "priority": 0})
    assert ok.choices[0].text is not None
    for route, body in (("completions", {"prompt": "Hi"}), ("chat/completions",
                                                             {"messages": CHAT})):
        r = httpx.post(f"{server.url}/v1/{route}", headers={"Authorization": "Bearer key-b"},
                       json={"model": "vi", "max_tokens": 2, "priority": 1, **body})
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "priority", r.text
        assert err["code"] == "unsupported_parameter" and "vinference" in err["message"]
    r = httpx.post(f"{server.url}/v1/completions", headers={"Authorization": "Bearer key-a"},
                   json={"model": "es", "prompt": "Hi", "priority": "high"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "priority"


def test_tenant_is_the_user_field_or_the_api_keys_name(server, engines):
    es = engines["es"]
    by_key = _client(server, "key-b").completions.create(model="es", prompt="Hi", max_tokens=2)
    by_user = _client(server, "key-b").completions.create(model="es", prompt="Hi", max_tokens=2,
                                                          user="alice")
    assert es.timeline(by_key.id)[0]["tenant"] == "team-b"
    assert es.timeline(by_user.id)[0]["tenant"] == "alice"
    with pytest.raises(openai.AuthenticationError):
        _client(server, "key-c").models.list()


def test_reset_prefix_cache_route_and_metrics(server, engines):
    headers = {"Authorization": "Bearer key-a"}
    prompt = "The history of the printing press, told in five short sentences:"
    for _ in range(2):
        httpx.post(f"{server.url}/v1/completions", headers=headers, timeout=120,
                   json={"model": "es", "prompt": prompt, "max_tokens": 2})
    assert engines["es"].metrics()["prefix_cache_hits_total"] > 0
    assert httpx.post(f"{server.url}/reset_prefix_cache").status_code == 401  # guarded
    r = httpx.post(f"{server.url}/reset_prefix_cache", headers=headers)
    assert r.status_code == 200 and r.json()["reset"]["es"] > 0
    assert engines["es"].kv_snapshot()["num_cached"] == 0
    r = httpx.post(f"{server.url}/reset_prefix_cache?model=vi", headers=headers)
    assert r.status_code == 400 and "no prefix cache" in r.json()["error"]["message"]
    text = httpx.get(f"{server.url}/metrics", headers=headers).text
    assert re.search(r'workbench:iteration_tokens_total_count\{engine="esurge"', text)
    assert re.search(r'workbench:kv_cache_usage_perc\{engine="esurge"', text)


def test_cli_serve_esurge(monkeypatch):
    with cli_serve(monkeypatch, "--engine", "esurge", "--max-model-len", "256") as out:
        assert "(esurge," in out.getvalue()
        url = re.search(r"http://127\.0\.0\.1:\d+", out.getvalue()).group()
        r = httpx.post(f"{url}/v1/completions", timeout=120,
                       json={"prompt": "Hello", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        assert httpx.post(f"{url}/reset_prefix_cache").json()["reset"]


def test_prompt_logprobs_and_one_chunk_per_token_on_esurge(server, engines):
    """eSurge scores prompts with the same helper as the other engines (issue 18)."""
    client = _client(server)
    scored = {m: client.completions.create(model=m, prompt="The capital of France is Paris",
                                           max_tokens=0, echo=True, logprobs=2).choices[0]
              for m in ("es", "vi")}
    es, vi = scored["es"].logprobs, scored["vi"].logprobs
    assert es.tokens == vi.tokens and es.token_logprobs[0] is None
    assert max(abs(a - b) for a, b in zip(es.token_logprobs[1:], vi.token_logprobs[1:])) < 1e-5
    chunks = list(client.completions.create(model="es", prompt="Once upon a time", max_tokens=6,
                                            temperature=0, logprobs=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert [len(c.choices[0].logprobs.tokens) for c in chunks] == [1] * 6
