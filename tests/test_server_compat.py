"""Compatibility with the clients people already use (issue 18), driven by the official `openai`
client: prompt logprobs and echo as lm-evaluation-harness scores with them, OpenAI's logprobs and
seed semantics, one chunk per token, vLLM's extensions. One server over the embedded model with a
vInference ("vi") and a vSurge that decodes 4 tokens per driver iteration ("vs")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_server_support import embedded_model, wait_until
from workbench.engines.prompt_logprobs import prompt_logprobs
from workbench.engines.types import CompletionOutput
from workbench.engines.vinference import vInference
from workbench.engines.vsurge import vSurge
from workbench.sampling_params import SamplingParams
from workbench.server import serve
from workbench.server.per_token import split_per_token

pytestmark = pytest.mark.slow

PAIRS = [("The capital of France is", " Paris"),
         ("Water boils at a temperature of", " 100 degrees Celsius"),
         ("The opposite of hot is", " cold"),
         ("One, two, three,", " four, five")]


@pytest.fixture(scope="module")
def engines():
    lm = embedded_model()
    vi = vInference(lm, max_model_len=256, prefill_buckets=(32, 256))
    vs = vSurge(lm, max_model_len=256, max_concurrent_decodes=4, prefill_buckets=(32, 255),
                decode_steps=4)
    yield {"vi": vi, "vs": vs}
    vs.close()
    vi.close()


@pytest.fixture(scope="module")
def server(engines):
    with serve(engines) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ---- prompt logprobs ---------------------------------------------------------------------------
def test_prompt_logprobs_equal_lm_logits():
    lm = embedded_model()
    ids = lm.tokenizer.encode("The quick brown fox jumps over the lazy dog, twice.")
    ref = _log_softmax(lm.logits([ids])[0].astype(np.float64))
    out = prompt_logprobs(lm, ids, num_top=3, max_len=256)
    assert out[0] is None and len(out) == len(ids)
    for t in range(1, len(ids)):
        assert out[t].token_id == ids[t]
        assert abs(out[t].logprob - ref[t - 1, ids[t]]) < 1e-4
        assert out[t].rank == 1 + int((ref[t - 1] > ref[t - 1, ids[t]] + 1e-6).sum())
        assert [i for i, _ in out[t].top] == list(np.argsort(-ref[t - 1])[:3])


@pytest.mark.parametrize("model", ["vi", "vs"])
def test_echo_logprobs_scoring_only_legacy_shape(client, model):
    lm = embedded_model()
    prompt = "The capital of France is Paris."
    ids = lm.tokenizer.encode(prompt)
    ref = _log_softmax(lm.logits([ids])[0].astype(np.float64))
    out = client.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True,
                                    logprobs=1)
    c = out.choices[0]
    assert c.text == prompt and c.finish_reason == "length"
    assert out.usage.completion_tokens == 0 and out.usage.prompt_tokens == len(ids)
    lp = c.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.tokens) == len(ids) and "".join(lp.tokens) == prompt
    assert lp.text_offset[0] == 0 and lp.text_offset[-1] == len(prompt) - len(lp.tokens[-1])
    for t in range(1, len(ids)):
        assert abs(lp.token_logprobs[t] - ref[t - 1, ids[t]]) < 1e-4
        assert lp.tokens[t] in lp.top_logprobs[t] and 1 <= len(lp.top_logprobs[t]) <= 2


def test_echo_with_generation_appends_completion_logprobs(engines, client):
    out = client.completions.create(model="vi", prompt="Hello, my name is", max_tokens=4,
                                    temperature=0, echo=True, logprobs=0)
    c = out.choices[0]
    greedy = engines["vi"].generate("Hello, my name is",
                                    SamplingParams(max_tokens=4, temperature=0))[0].outputs[0]
    assert c.text == "Hello, my name is" + greedy.text
    n_prompt = out.usage.prompt_tokens
    assert len(c.logprobs.tokens) == n_prompt + 4
    assert c.logprobs.text_offset[n_prompt] == len("Hello, my name is")
    # logprobs: 0 -> one entry per position: the sampled (or prompt) token
    assert all(len(d) == 1 for d in c.logprobs.top_logprobs[1:])


def test_lm_eval_loglikelihood_equals_transformers(client):
    """What lm-eval's `local-completions` does: echo the context + continuation with
    max_tokens 0 and logprobs, sum the logprobs of the continuation's tokens (those at text
    offsets past the context), compare with transformers on the same checkpoint."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    lm = embedded_model()
    hf = transformers.AutoModelForCausalLM.from_pretrained(lm.path, torch_dtype=torch.float32)
    hf.eval()
    out = client.completions.create(model="vi", prompt=[c + x for c, x in PAIRS], max_tokens=0,
                                    echo=True, logprobs=1, temperature=0)
    for (context, continuation), choice in zip(PAIRS, out.choices):
        lp = choice.logprobs
        served = sum(v for v, off in zip(lp.token_logprobs, lp.text_offset)
                     if off >= len(context))
        ctx_ids = lm.tokenizer.encode(context)
        all_ids = lm.tokenizer.encode(context + continuation)
        assert all_ids[:len(ctx_ids)] == ctx_ids  # the split lm-eval relies on
        with torch.no_grad():
            logits = hf(torch.tensor([all_ids])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        expected = sum(float(logp[t - 1, all_ids[t]]) for t in range(len(ctx_ids), len(all_ids)))
        assert abs(served - expected) < 1e-3, (context, served, expected)


def test_vllm_prompt_logprobs_field(client, server):
    lm = embedded_model()
    body = {"model": "vi", "prompt": "One, two, three", "max_tokens": 1, "prompt_logprobs": 2}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    plp = r["choices"][0]["prompt_logprobs"]
    ids = lm.tokenizer.encode("One, two, three")
    assert plp[0] is None and len(plp) == len(ids)
    for t in range(1, len(ids)):
        entry = plp[t][str(ids[t])]
        assert entry["decoded_token"] == lm.tokenizer.decode([ids[t]]) and entry["rank"] >= 1
        assert 2 <= len(plp[t]) <= 3
    chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": "vi", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
        "prompt_logprobs": 0}).json()
    assert chat["prompt_logprobs"][0] is None and len(chat["prompt_logprobs"]) > 3
    bad = httpx.post(f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt_logprobs"


def test_streamed_echo_scoring_only(server):
    body = {"model": "vs", "prompt": "Hello there", "max_tokens": 0, "echo": True, "logprobs": 0,
            "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    first = json.loads(events[0])["choices"][0]
    assert first["text"] == "Hello there" and first["logprobs"]["token_logprobs"][0] is None
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


# ---- logprobs 0, chunks, seeds -----------------------------------------------------------------
def test_logprobs_zero_has_the_sampled_token(client):
    out = client.completions.create(model="vi", prompt="Hello", max_tokens=5, logprobs=0,
                                    temperature=0)
    lp = out.choices[0].logprobs
    assert [list(d) for d in lp.top_logprobs] == [[t] for t in lp.tokens]
    assert [d[t] for d, t in zip(lp.top_logprobs, lp.tokens)] == lp.token_logprobs


@pytest.mark.parametrize("model", ["vi", "vs"])
def test_one_chunk_per_token(engines, client, model):
    """vSurge here decodes 4 tokens per iteration: the server still sends one chunk per token."""
    sp = SamplingParams(max_tokens=9, temperature=0, ignore_eos=True)
    expected = engines[model].generate("Once upon a time", sp)[0].outputs[0]
    chunks = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=9,
                                            temperature=0, logprobs=0, extra_body={"ignore_eos": True},
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert [len(c.choices[0].logprobs.tokens) for c in chunks] == [1] * 9
    chat = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count to ten."}], max_tokens=9,
        temperature=0, stream=True, extra_body={"ignore_eos": True}))
    assert len([c for c in chat if c.choices and c.choices[0].delta.content]) == 9


def test_split_per_token_keeps_characters_whole():
    tok = embedded_model().tokenizer
    text = "naïve café 😀 ok"
    ids = tok.encode(text)
    out = CompletionOutput(index=0, text=text, token_ids=ids, delta_text=text,
                           delta_token_ids=ids)
    pieces = split_per_token(out, tok.decode)
    assert [t for t, _ in pieces] == ids and "".join(p for _, p in pieces) == text
    assert all("\ufffd" not in p for _, p in pieces)
    emoji = [p for _, p in pieces if "😀" in p]
    assert len(emoji) == 1  # the emoji's bytes span several tokens; one piece carries it
    held = CompletionOutput(index=0, text=text[:5], token_ids=ids[:4], delta_text=text[:2],
                            delta_token_ids=ids[2:4])
    assert "".join(p for _, p in split_per_token(held, tok.decode)) == text[:2]


def test_signed_64_bit_seeds(client):
    def run(seed):
        return client.completions.create(model="vi", prompt="Once", max_tokens=6,
                                         temperature=1.0, seed=seed).choices[0].text
    assert run(-1) == run(2**63 - 1)  # the documented mapping: seed mod 2**63
    assert run(-(2**63)) == run(0)
    assert isinstance(run(-12345), str)


# ---- vLLM's extensions and loose inputs --------------------------------------------------------
def test_empty_model_is_the_default(engines):
    with serve(engines["vi"]) as h:
        c = openai.OpenAI(base_url=f"{h.url}/v1", api_key="none", max_retries=0)
        out = c.completions.create(model="", prompt="Hi", max_tokens=2)
        assert out.choices[0].text is not None
        r = httpx.post(f"{h.url}/tokenize", json={"model": "", "prompt": "Hi"})
        assert r.status_code == 200


def test_continuous_usage_stats(client):
    chunks = list(client.completions.create(
        model="vs", prompt="Hello", max_tokens=5, stream=True,
        extra_body={"ignore_eos": True},
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    with_choices = [c for c in chunks if c.choices]
    assert [c.usage.completion_tokens for c in with_choices] == [1, 2, 3, 4, 5]
    assert chunks[-1].usage.completion_tokens == 5 and not chunks[-1].choices
    chat = list(client.chat.completions.create(
        model="vi", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True,
        extra_body={"ignore_eos": True},
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    assert all(c.usage is not None for c in chat)


def test_tokenize_vllm_fields(server):
    messages = [{"role": "user", "content": "Hi"}]
    url = f"{server.url}/tokenize"
    with_gen = httpx.post(url, json={"model": "vi", "messages": messages}).json()
    without = httpx.post(url, json={"model": "vi", "messages": messages,
                                    "add_generation_prompt": False,
                                    "return_token_strs": True}).json()
    assert without["tokens"] == with_gen["tokens"][:len(without["tokens"])]
    assert len(without["tokens"]) < len(with_gen["tokens"])
    assert len(without["token_strs"]) == without["count"] and "token_strs" not in with_gen
    strs = httpx.post(url, json={"model": "vi", "prompt": "Hello world",
                                 "return_token_strs": True}).json()["token_strs"]
    assert strs == ["Hello", "Ġworld"]


def test_chat_message_name_unknown_keys_and_custom_role(client):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi", "name": "bob", "x-trace": 7},
                {"role": "assistant", "content": "Hello!", "refusal": None, "tool_calls": []},
                {"role": "narrator", "content": "Later that day."},
                {"role": "user", "content": "Bye"}]
    out = client.chat.completions.create(model="vi", messages=messages, max_tokens=3)
    assert out.choices[0].message.content is not None


# ---- metrics -----------------------------------------------------------------------------------
DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "workbench-dashboard.json"


def _metrics(server) -> dict[str, list]:
    """{sample name: [(labels, value)]} of the server's /metrics."""
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples, engine: str) -> float:
    (v,) = [v for labels, v in samples if labels["engine"] == engine]
    return v


@pytest.mark.parametrize("model, engine", [("vi", "vinference"), ("vs", "vsurge")])
def test_vllm_metric_families_and_kv_usage_while_running(server, client, model, engine):
    before = _metrics(server)
    n_before = _value(before["workbench:request_params_n_count"], engine)
    client.completions.create(model=model, prompt="Hi", max_tokens=3, n=2, temperature=1.0,
                              seed=1)
    m = _metrics(server)
    assert _value(m["workbench:request_params_n_count"], engine) == n_before + 1
    assert _value(m["workbench:request_params_n_sum"], engine) - \
        _value(before["workbench:request_params_n_sum"], engine) == 2
    assert _value(m["workbench:request_params_max_tokens_sum"], engine) - \
        _value(before["workbench:request_params_max_tokens_sum"], engine) == 3
    assert _value(m["workbench:request_inference_time_seconds_count"], engine) > 0
    assert _value(m["workbench:iteration_tokens_total_count"], engine) > 0
    # kv_cache_usage_perc reads the cache's real occupancy while a request runs, 0 when idle
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(line for line in lines if line.startswith("data: {"))
        usage = _value(_metrics(server)["workbench:kv_cache_usage_perc"], engine)
    # vSurge: 4 slots x 256 positions; vInference: a batch of 1 x its cache bucket
    assert 0.0 < usage < 1.0
    assert wait_until(lambda: _value(_metrics(server)["workbench:kv_cache_usage_perc"],
                                     engine) == 0.0)


def test_grafana_dashboard_queries_only_served_metrics(server, client):
    client.completions.create(model="vi", prompt="Hi", max_tokens=2)
    names = set(_metrics(server))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"workbench:[a-zA-Z0-9_:]+", e)}
    queried |= {m for v in dashboard["templating"]["list"]
                for m in re.findall(r"workbench:[a-zA-Z0-9_:]+", v.get("query", ""))}
    assert len(queried) >= 20
    assert queried <= names, sorted(queried - names)
    for family in ("iteration_tokens_total", "request_inference_time_seconds",
                   "request_params_n", "request_params_max_tokens", "kv_cache_usage_perc"):
        assert any(f"workbench:{family}" in e for e in exprs), family
