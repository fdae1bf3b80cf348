"""workbench.Workbench: load, engines (knobs, memory), compare, serve, bench, metrics history."""

from __future__ import annotations

import gc
import socket
import time

import httpx
import pytest

from tests.test_server_support import wait_until
from workbench.devices import live_array_bytes
from workbench.facade import Workbench
from workbench.loading.loader import load_model
from workbench.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

# small engines: few compiled shapes, little memory
VI = dict(max_batch_size=4, max_model_len=256, prefill_buckets=(32, 64, 256))
VS = dict(max_concurrent_decodes=4, max_model_len=256, prefill_buckets=(32, 64, 256))
PROMPTS = ["Hello, my name is", "The capital of France is", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def wb(embedded):
    bench = Workbench(history_interval=0.1)
    bench.load(embedded)
    bench.add_engine("vi", "vinference", **VI)
    bench.add_engine("vs", "vsurge", **VS)
    yield bench
    bench.close()
    assert embedded.state is not None  # an adopted model stays the caller's


def test_model_and_device_info(wb, embedded):
    info = wb.model_info()
    assert info["name"] == embedded.name and info["num_hidden_layers"] == 30
    assert info["parameters"] == embedded.num_params and info["mesh"] is None
    (dev,) = wb.devices()
    assert dev["platform"] == "cpu" and dev["kind"]
    mem = wb.memory()
    assert mem["live_array_bytes"] >= 4 * embedded.num_params  # float32 weights
    assert mem["process_rss_bytes"] > 0 and mem["host_memory_bytes"] > mem["process_rss_bytes"]


def test_compare_gives_identical_greedy_tokens(wb):
    deltas = []
    cmp = wb.compare(PROMPTS + ["Why is the sky blue?"], SamplingParams(max_tokens=12,
                                                                       temperature=0.0,
                                                                       ignore_eos=True),
                     on_delta=lambda e, i, r: deltas.append((e, i, r.num_tokens)))
    assert cmp.engines == ["vi", "vs"] and cmp.all_identical
    for name in ("vi", "vs"):
        run = cmp.runs[name]
        assert run.error is None and all(r.num_tokens == 12 for r in run.requests)
        assert run.output_tok_s > 0 and run.ttft_p50_s > 0 and run.itl_p50_s > 0
    assert cmp.runs["vi"].requests[1].text == cmp.runs["vs"].requests[1].text
    assert "Paris" in cmp.runs["vi"].requests[1].text
    assert {e for e, _, _ in deltas} == {"vi", "vs"}
    # token counts only grow, per engine and prompt
    for key in {(e, i) for e, i, _ in deltas}:
        counts = [n for e, i, n in deltas if (e, i) == key]
        assert counts == sorted(counts) and counts[-1] == 12
    assert [row["identical"] for row in cmp.summary()] == ["4/4", "4/4"]


def test_compare_chat_and_concurrent(wb):
    greedy = SamplingParams(max_tokens=8, temperature=0.0)
    cmp = wb.compare(["Name a color."], greedy, chat=True, concurrent=True)
    assert cmp.all_identical and cmp.concurrent and cmp.prompts == ["Name a color."]
    text = cmp.runs["vs"].requests[0].text
    ids = wb.prompt_ids("Name a color.", chat=True)
    assert ids[-3:] == wb.model.tokenizer.encode("<|im_start|>assistant\n",
                                                 add_special_tokens=False)[-3:]
    assert text and text == wb.engine("vi").generate([ids], greedy)[0].outputs[0].text
    seeded = wb.compare(PROMPTS[:2], SamplingParams(max_tokens=8, temperature=0.9, seed=7))
    assert seeded.all_identical


def test_playground_stream_and_abort(wb):
    outs = list(wb.stream("vs", [{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=6)))
    assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 6
    it = wb.stream("vi", "Once upon a time", SamplingParams(max_tokens=200), request_id="play-1")
    first = next(it)
    assert not first.finished
    assert wb.abort("vi", "play-1")
    rest = list(it)
    assert rest[-1].outputs[0].finish_reason == "abort"
    assert not wb.abort("nope", "x")


def test_metrics_history_fills_while_a_workload_runs(wb):
    wb.history.forget("vs")
    wb.engine("vs").generate(PROMPTS, SamplingParams(max_tokens=24))
    time.sleep(0.3)
    cols = wb.history.series("vs")
    assert len(cols["seq"]) >= 3
    assert max(r for r in cols["output_tok_s"] if r is not None) > 0
    assert max(cols["running"]) >= 1 and cols["finished"][-1] >= 3
    assert any(t is not None for t in cols["ttft_ms"])


def test_serve_stop_serve_and_remove_a_served_engine(wb):
    handle = wb.serve()
    ids = {m["id"] for m in httpx.get(f"{handle.url}/v1/models").json()["data"]}
    assert ids == {"vi", "vs"} and wb.served_engines == ["vi", "vs"]
    r = httpx.post(f"{handle.url}/v1/completions",
                   json={"model": "vs", "prompt": "Hi", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert any(e["path"] == "/v1/completions" and e["status"] == 200 for e in wb.request_log)
    port = handle.port
    wb.stop_server()
    assert wb.server is None and not handle.running
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    handle = wb.serve(["vi"], port=port)
    assert handle.port == port and wb.served_engines == ["vi"]
    assert [m["id"] for m in httpx.get(f"{handle.url}/v1/models").json()["data"]] == ["vi"]
    wb.add_engine("extra", "vinference", **VI)
    wb.serve(["vi", "extra"], port=port)
    wb.remove_engine("extra")  # restarts the server on the same port without it
    assert wb.server.port == port and wb.served_engines == ["vi"]
    assert [m["id"] for m in httpx.get(f"{wb.server.url}/v1/models").json()["data"]] == ["vi"]
    wb.stop_server()


def test_bench_direct_and_http(wb):
    progress = []
    direct = wb.bench(["vs"], num_requests=4, max_concurrency=2, max_tokens=4, warmup=False,
                      on_result=lambda n, d, t: progress.append((n, d, t)))
    http = wb.bench(["vs"], via="http", num_requests=4, max_concurrency=2, max_tokens=4,
                    warmup=False)
    for (res,) in (direct, http):
        assert res.target == "vs" and res.metrics["failed"] == 0
        assert res.metrics["output tok/s"] > 0 and all(r.output_tokens == 4 for r in res.results)
    assert direct[0].via == "direct" and http[0].via == "http"
    assert progress[-1] == ("vs", 4, 4)
    assert wb.server is None  # the temporary server is gone


@pytest.mark.parametrize("args, kwargs, match", [
    (("x", "nosuch"), {}, "unknown engine kind"),
    (("x", "vsurge"), {"max_slots": 4}, "no knob 'max_slots'"),
    (("x", "vsurge"), {"max_concurrent_decodes": "8"}, "must be an integer, got '8'"),
    (("x", "vsurge"), {"max_concurrent_decodes": 0},
     r"max_concurrent_decodes must be an integer in \[1, 4096\], got 0"),
    (("x", "vinference"), {"max_model_len": 0}, "max_model_len must be an integer >= 2"),
    (("x", "vinference"), {"streaming_chunk": True}, "streaming_chunk"),
    (("bad name", "vinference"), {}, "engine name"),
    (("", "vinference"), {}, "engine name"),
    (("vi", "vinference"), {}, "exists"),
])
def test_bad_engines_raise_clear_errors(wb, args, kwargs, match):
    before = list(wb.engines)
    with pytest.raises(ValueError, match=match):
        wb.add_engine(*args, **kwargs)
    assert list(wb.engines) == before


def test_bad_calls(wb):
    with pytest.raises(ValueError, match="no engine named 'zzz'"):
        wb.compare(["a"], engines=["zzz"])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        wb.compare(["  "])
    with pytest.raises(ValueError, match="via"):
        wb.bench(via="carrier pigeon")
    with pytest.raises(KeyError, match="no engine named"):
        wb.engine("zzz")
    with pytest.raises(ValueError, match="load a model"):
        Workbench().add_engine("a", "vinference")


def test_a_failed_load_keeps_the_model_and_engines(wb, tmp_path):
    model, engines = wb.model, wb.engines
    with pytest.raises(ValueError):
        wb.load(str(tmp_path / "missing"))
    assert wb.model is model and wb.engines == engines


def test_removed_engines_return_their_memory(tiny_checkpoints):
    bench = Workbench()
    bench.load(tiny_checkpoints["llama"][0], dtype="float32")
    sp = SamplingParams(max_tokens=4, temperature=0.0)
    gc.collect()
    baseline = live_array_bytes()
    for i in range(10):
        bench.add_engine("s", "vsurge", max_concurrent_decodes=2, max_model_len=128)
        bench.add_engine("i", "vinference", max_batch_size=2, max_model_len=128)
        held = bench.engine_info("s")["kv_cache_bytes"]
        assert held > 0 and live_array_bytes() >= baseline + held
        assert bench.compare([[5, 6, 7]], sp).all_identical
        bench.remove_engine("s")
        bench.remove_engine("i")
        gc.collect()
        assert live_array_bytes() == baseline, f"cycle {i}"
    assert bench.history.running
    bench.close()
    assert not bench.history.running and bench.model is None
    assert wait_until(lambda: live_array_bytes() < baseline)  # the model it loaded is freed
    with pytest.raises(ValueError, match="closed"):
        bench.load("embedded")


def test_loading_a_new_model_replaces_engines(tiny_checkpoints):
    bench = Workbench()
    first = bench.load(tiny_checkpoints["llama"][0])
    engine = bench.add_engine("s", "vsurge", max_concurrent_decodes=2, max_model_len=64)
    second = bench.load(load_model(tiny_checkpoints["qwen2"][0], progress=False))
    assert bench.model is second and bench.engines == {} and not engine.running
    assert first.state is None  # loaded by the workbench: closed with it
    bench.close()
    assert second.state is not None  # adopted: the caller's


def test_several_devices_offer_tensor_parallel_loading(tiny_checkpoints):
    """With 4 (fake CPU) devices the Model tab offers tp 1, 2, 4 and the facade loads sharded."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"""
import workbench as wb
from widgets.jupyter.model_view import ModelView
from workbench.sampling_params import SamplingParams
bench = wb.Workbench()
view = ModelView(bench)
assert list(view.tp.options) == [1, 2, 4] and view.tp.layout.display == "", view.tp.options
view.tp.value = 2
view.state._load({tiny_checkpoints["llama"][0]!r}, "float32", view.tp.value)
assert bench.model_info()["mesh"] == {{"dp": 1, "tp": 2}}, bench.model_info()["mesh"]
assert len(bench.devices()) == 4
bench.add_engine("vs", "vsurge", max_concurrent_decodes=2, max_model_len=64)
bench.add_engine("vi", "vinference", max_batch_size=2, max_model_len=64)
assert bench.compare([[5, 6, 7]], SamplingParams(max_tokens=4, temperature=0)).all_identical
bench.close()
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
