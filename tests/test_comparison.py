"""workbench.comparison on scripted engines (no model): timing, agreement, errors, cancel."""

from __future__ import annotations

import threading
import time

import pytest

from workbench.comparison import run_comparison
from workbench.engines.types import CompletionOutput, RequestOutput
from workbench.sampling_params import SamplingParams


def _out(rid, ids, text, finish=None):
    c = CompletionOutput(0, delta_text=text, delta_token_ids=list(ids), finish_reason=finish)
    return RequestOutput(rid, None, [1], [c], finished=finish is not None)


class ScriptedEngine:
    """stream_many yields, per prompt, chunks of the token ids in `script[prompt]`."""

    engine_name = "scripted"

    def __init__(self, script, chunk=2, delay=0.0, fail=None):
        self.script, self.chunk, self.delay, self.fail = script, chunk, delay, fail
        self.aborted = []

    def stream_many(self, prompts, params):
        if self.fail:
            raise self.fail
        return self._gen(prompts)

    def _gen(self, prompts):
        done = set()
        try:
            pos = 0
            while len(done) < len(prompts):
                for i, p in enumerate(prompts):
                    if i in done:
                        continue
                    ids = self.script[p]
                    piece = ids[pos:pos + self.chunk]
                    last = pos + self.chunk >= len(ids)
                    if self.delay:
                        time.sleep(self.delay)
                    yield i, _out(str(i), piece, "".join(f"<{t}>" for t in piece),
                                  "length" if last else None)
                    if last:
                        done.add(i)
                pos += self.chunk
        finally:
            self.aborted = [i for i in range(len(prompts)) if i not in done]


SCRIPT = {"a": [1, 2, 3, 4, 5], "b": [7, 8, 9]}


def test_identical_engines_agree_and_text_accumulates():
    cmp = run_comparison({"x": ScriptedEngine(SCRIPT), "y": ScriptedEngine(SCRIPT, chunk=3)},
                         ["a", "b"], SamplingParams(max_tokens=5))
    assert cmp.all_identical
    for name in ("x", "y"):
        r = cmp.runs[name].requests[0]
        assert r.token_ids == [1, 2, 3, 4, 5] and r.text == "<1><2><3><4><5>"
        assert r.finish_reason == "length" and r.ttft_s is not None
    # x streams 2 tokens a chunk: 5 tokens in 3 chunks, the first gives no gap -> 3 gaps
    assert len(cmp.runs["x"].requests[0].itl_s) == 3
    assert [row["identical"] for row in cmp.summary()] == ["2/2", "2/2"]


def test_first_difference_is_reported():
    other = dict(SCRIPT, a=[1, 2, 30, 4, 5])
    cmp = run_comparison({"x": ScriptedEngine(SCRIPT), "y": ScriptedEngine(other)}, ["a", "b"])
    assert cmp.agreement(0) == {"identical": False, "first_difference": 2, "engine": "y",
                                "reference": "x"}
    assert cmp.agreement(1)["identical"] and not cmp.all_identical
    shorter = dict(SCRIPT, b=[7, 8])
    cmp = run_comparison({"x": ScriptedEngine(SCRIPT), "y": ScriptedEngine(shorter)}, ["b"])
    assert cmp.agreement(0)["first_difference"] == 2


def test_a_failing_engine_is_reported_and_the_others_run():
    cmp = run_comparison({"bad": ScriptedEngine(SCRIPT, fail=ValueError("closed")),
                          "good": ScriptedEngine(SCRIPT)}, ["a"])
    assert cmp.runs["bad"].error == "ValueError: closed"
    assert cmp.runs["good"].requests[0].token_ids == [1, 2, 3, 4, 5]
    assert not cmp.agreement(0)["identical"] and cmp.agreement(0)["engine"] == "bad"


def test_on_delta_streams_and_timing_fields():
    seen = []
    cmp = run_comparison({"x": ScriptedEngine(SCRIPT, delay=0.01)}, ["a"],
                         on_delta=lambda e, i, r: seen.append((e, i, r.text)))
    assert [s[2] for s in seen] == ["<1><2>", "<1><2><3><4>", "<1><2><3><4><5>"]
    r = cmp.runs["x"].requests[0]
    assert 0 < r.ttft_s < r.latency_s <= cmp.runs["x"].wall_s
    assert r.decode_tok_s == pytest.approx(4 / (r.last_token_at - r.first_token_at))
    assert cmp.runs["x"].output_tok_s == pytest.approx(5 / cmp.runs["x"].wall_s)
    assert cmp.table()[0]["tokens"] == 5


def test_concurrent_mode_runs_engines_at_once():
    engines = {n: ScriptedEngine(SCRIPT, delay=0.05) for n in ("x", "y", "z")}
    t0 = time.perf_counter()
    cmp = run_comparison(engines, ["a"], concurrent=True)
    assert time.perf_counter() - t0 < 3 * 0.15 * 0.9  # each engine sleeps 3 x 0.05 s
    assert cmp.all_identical and cmp.concurrent


def test_cancel_aborts_what_is_left():
    cancel = threading.Event()
    eng = ScriptedEngine({"a": list(range(50))}, chunk=1, delay=0.001)

    def stop_after_three(e, i, r):
        if r.num_tokens == 3:
            cancel.set()

    cmp = run_comparison({"x": eng, "y": ScriptedEngine(SCRIPT)}, ["a"], cancel=cancel,
                         on_delta=stop_after_three)
    assert cmp.runs["x"].requests[0].num_tokens == 3
    assert cmp.runs["x"].requests[0].finish_reason == "abort" and eng.aborted == [0]
    assert cmp.runs["y"].error == "cancelled"


@pytest.mark.parametrize("kwargs, match", [
    (dict(engines={}, prompts=["a"]), "at least one engine"),
    (dict(prompts=[]), "at least one prompt"),
    (dict(prompts=["a"], sampling_params=SamplingParams(n=2)), "n=1"),
])
def test_bad_arguments(kwargs, match):
    kwargs.setdefault("engines", {"x": ScriptedEngine(SCRIPT)})
    with pytest.raises(ValueError, match=match):
        run_comparison(**kwargs)


class CompilingEngine(ScriptedEngine):
    """Compiles a new shape when asked to stream, as a cold engine does."""

    def stream_many(self, prompts, params):
        import jax
        import jax.numpy as jnp

        f = jax.jit(lambda x: jnp.cumsum(jnp.sin(x) @ x.T, axis=0))  # a new function: compiled
        jax.block_until_ready(f(jnp.ones((37, 41))))
        return super().stream_many(prompts, params)


def test_compile_watch_counts_compiles_not_cached_calls():
    import jax
    import jax.numpy as jnp

    from workbench import compile_watch

    compile_watch.install()
    compile_watch.install()  # idempotent: one listener
    f = jax.jit(lambda x: jnp.tanh(x) * 3)
    x, y = jnp.ones(23), jnp.zeros(23)  # made (and their ops compiled) before counting
    n0, s0 = compile_watch.totals()
    f(x).block_until_ready()
    n1, s1 = compile_watch.totals()
    assert n1 == n0 + 1 and s1 > s0
    f(y).block_until_ready()  # the same shape: no compile
    assert compile_watch.totals() == (n1, s1)


def test_each_engine_reports_the_compiling_inside_its_run():
    cmp = run_comparison({"cold": CompilingEngine(SCRIPT), "warm": ScriptedEngine(SCRIPT)},
                         ["a", "b"])
    cold, warm = cmp.runs["cold"], cmp.runs["warm"]
    # process-wide seconds: "warm" compiles nothing itself (anything else compiling meanwhile
    # would count, so it is compared, not required to be 0)
    assert 0 < cold.compile_s <= cold.wall_s and 0 <= warm.compile_s < cold.compile_s
    assert cmp.compile_s >= cold.compile_s + warm.compile_s
    assert "cold" in cmp.compiled(at_least_s=1e-6)
    assert cmp.compiled(at_least_s=cold.compile_s * 1.01) == {}
    assert [row["compile_s"] for row in cmp.summary()] == [cold.compile_s, warm.compile_s]
    # concurrent: the windows overlap, so only the whole run's seconds are given
    cmp = run_comparison({"cold": CompilingEngine(SCRIPT), "warm": ScriptedEngine(SCRIPT)},
                         ["a"], concurrent=True)
    assert cmp.runs["cold"].compile_s is None and cmp.runs["warm"].compile_s is None
    assert cmp.compile_s > 0 and cmp.compiled(at_least_s=1e-6) == {"all engines": cmp.compile_s}


def test_compile_watch_survives_a_reload():
    """A notebook's autoreload re-executes the module: still one listener, not two."""
    import importlib

    import jax
    import jax.numpy as jnp

    from workbench import compile_watch

    compile_watch.install()
    importlib.reload(compile_watch)
    compile_watch.install()
    x = jnp.ones(29)
    n0, s0 = compile_watch.totals()
    jax.jit(lambda v: jnp.cos(v) + 1)(x).block_until_ready()
    assert compile_watch.totals()[0] == n0 + 1  # counted once
