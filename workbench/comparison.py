"""Side-by-side runs: the same requests on several engines, timed per request, tokens compared.

`run_comparison(engines, prompts, sampling_params, *, concurrent=False, on_delta=None,
cancel=None) -> Comparison`:
- `engines` is {name: engine}; each engine gets every prompt at once through
  `engine.stream_many` (vInference as one static batch, background engines as queued requests).
- Sequentially by default: one engine after another, so their timings do not share the machine;
  `concurrent=True` runs all engines at the same time (one thread each).
- `on_delta(engine_name, prompt_index, request_run)` is called from the worker thread each time
  text arrives (the `RequestRun` holds the text so far); a view throttles what it draws.
- `cancel` (a `threading.Event`): when set, every engine's requests are aborted and the run
  returns what it has (finish reason "abort").
- An engine that fails (closed, a bad request) records the error in its `EngineRun.error`; the
  other engines still run.

Timings are taken where the caller sees them (the output iterator), from the moment the engine's
requests are submitted: TTFT is the first token-bearing output, ITL the gap between token-bearing
outputs spread evenly over the tokens they carry (an engine that streams 16 tokens per chunk shows
its per-token latency, not one long gap; the first chunk gives no gap, however many tokens it
carries), decode tok/s = (tokens - 1) / (last - first token).

`Comparison.agreement(i)` says whether every engine produced the same token ids for prompt `i`
and, if not, the first position where an engine differs from the first engine.

Compiling: an engine compiles a shape the first time it meets it, inside the run. Each
`EngineRun.compile_s` is the seconds this process spent compiling during that engine's run
(`compile_watch`; process-wide: another engine's `precompile()` meanwhile would count too), so a
cold engine's timings say they include compiling; in a concurrent run the engines' windows
overlap, so only `Comparison.compile_s` (the whole run) is given.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from workbench import compile_watch
from workbench.sampling_params import SamplingParams


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


@dataclasses.dataclass
class RequestRun:
    """One prompt on one engine (completion 0; comparisons run with n=1)."""

    index: int
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    itl_s: list[float] = dataclasses.field(default_factory=list)  # per token after the 1st chunk
    first_token_at: float | None = None  # seconds since the engine's run began
    last_token_at: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def decode_tok_s(self) -> float | None:
        if self.num_tokens < 2 or self.last_token_at is None or self.first_token_at is None:
            return None
        span = self.last_token_at - self.first_token_at
        return (self.num_tokens - 1) / span if span > 0 else None

    @property
    def itl_p50_s(self) -> float | None:
        return _percentile(self.itl_s, 50)

    @property
    def itl_p99_s(self) -> float | None:
        return _percentile(self.itl_s, 99)


@dataclasses.dataclass
class EngineRun:
    """Every prompt on one engine."""

    name: str
    kind: str
    requests: list[RequestRun]
    wall_s: float = 0.0
    error: str | None = None
    compile_s: float | None = None  # the process's compiling during this run (None: overlapped)

    @property
    def num_tokens(self) -> int:
        return sum(r.num_tokens for r in self.requests)

    @property
    def output_tok_s(self) -> float | None:
        """Every request's tokens over the wall time of the engine's whole run."""
        return self.num_tokens / self.wall_s if self.wall_s > 0 else None

    @property
    def ttft_p50_s(self) -> float | None:
        return _percentile([r.ttft_s for r in self.requests if r.ttft_s is not None], 50)

    @property
    def itl_p50_s(self) -> float | None:
        return _percentile([x for r in self.requests for x in r.itl_s], 50)

    @property
    def itl_p99_s(self) -> float | None:
        return _percentile([x for r in self.requests for x in r.itl_s], 99)


@dataclasses.dataclass
class Comparison:
    """The result of `run_comparison`; see the module docstring."""

    prompts: list[Any]
    engines: list[str]
    runs: dict[str, EngineRun]
    concurrent: bool = False
    compile_s: float = 0.0  # compiling during the whole run, every engine

    def compiled(self, at_least_s: float = 0.5) -> dict[str, float]:
        """{engine: compile seconds} of the engines whose timings include at least
        `at_least_s` of compiling (a concurrent run: {"all engines": seconds})."""
        if self.concurrent:
            return {"all engines": self.compile_s} if self.compile_s >= at_least_s else {}
        return {n: r.compile_s for n, r in self.runs.items()
                if r.compile_s is not None and r.compile_s >= at_least_s}

    def agreement(self, index: int) -> dict[str, Any]:
        """{"identical": bool, "first_difference": position or None, "engine": the first engine
        that differs from the reference (the first engine) or None, "reference": its name}."""
        ok = [n for n in self.engines if self.runs[n].error is None]
        if not ok:
            return {"identical": False, "first_difference": None, "engine": None,
                    "reference": None}
        ref_name = ok[0]
        ref = self.runs[ref_name].requests[index].token_ids
        for name in self.engines:
            if name == ref_name:
                continue
            run = self.runs[name]
            if run.error is not None:
                return {"identical": False, "first_difference": None, "engine": name,
                        "reference": ref_name}
            ids = run.requests[index].token_ids
            if ids != ref:
                pos = next((k for k, (a, b) in enumerate(zip(ids, ref)) if a != b),
                           min(len(ids), len(ref)))
                return {"identical": False, "first_difference": pos, "engine": name,
                        "reference": ref_name}
        return {"identical": True, "first_difference": None, "engine": None,
                "reference": ref_name}

    @property
    def all_identical(self) -> bool:
        return all(self.agreement(i)["identical"] for i in range(len(self.prompts)))

    def summary(self) -> list[dict[str, Any]]:
        """One row per engine: tokens, wall seconds, output tok/s, TTFT p50, ITL p50/p99 (ms),
        seconds of compiling inside the run, how many requests agree with every engine, and the
        error if the engine failed."""
        same = sum(self.agreement(i)["identical"] for i in range(len(self.prompts)))
        rows = []
        for name in self.engines:
            run = self.runs[name]
            rows.append({
                "engine": name, "kind": run.kind, "requests": len(run.requests),
                "tokens": run.num_tokens, "wall_s": run.wall_s,
                "output_tok_s": run.output_tok_s,
                "ttft_p50_ms": _ms(run.ttft_p50_s), "itl_p50_ms": _ms(run.itl_p50_s),
                "itl_p99_ms": _ms(run.itl_p99_s), "compile_s": run.compile_s,
                "identical": f"{same}/{len(self.prompts)}", "error": run.error,
            })
        return rows

    def table(self) -> list[dict[str, Any]]:
        """One row per (prompt, engine): text, tokens, TTFT, decode tok/s, ITL p50/p99 (ms),
        finish reason, and whether the prompt's outputs agree."""
        rows = []
        for i in range(len(self.prompts)):
            agree = self.agreement(i)
            for name in self.engines:
                r = self.runs[name].requests[i]
                rows.append({
                    "prompt": i, "engine": name, "text": r.text, "tokens": r.num_tokens,
                    "ttft_ms": _ms(r.ttft_s), "decode_tok_s": r.decode_tok_s,
                    "itl_p50_ms": _ms(r.itl_p50_s), "itl_p99_ms": _ms(r.itl_p99_s),
                    "finish_reason": r.finish_reason, "identical": agree["identical"],
                    "first_difference": agree["first_difference"],
                })
        return rows


def _ms(s: float | None) -> float | None:
    return None if s is None else 1e3 * s


DeltaCallback = Callable[[str, int, RequestRun], None]


def run_engine(name: str, kind: str, engine: Any, prompts: list[Any],
               params: SamplingParams, *, on_delta: DeltaCallback | None = None,
               cancel: threading.Event | None = None) -> EngineRun:
    """Every prompt on one engine through `stream_many`, timed as the module docstring says."""
    runs = [RequestRun(i) for i in range(len(prompts))]
    result = EngineRun(name, kind, runs)
    compile_watch.install()
    compiled_before = compile_watch.totals()[1]
    t0 = time.perf_counter()
    try:
        it = engine.stream_many(prompts, params)
        try:
            for i, out in it:
                now = time.perf_counter() - t0
                _record(runs[i], out, now)
                if on_delta is not None:
                    on_delta(name, i, runs[i])
                if cancel is not None and cancel.is_set():
                    break
        finally:
            it.close()  # aborts whatever is left
    except Exception as e:  # noqa: BLE001 - reported per engine; the others still run
        result.error = f"{type(e).__name__}: {e}"
    for r in runs:
        if not r.finished:
            r.finish_reason = "abort"
    result.wall_s = time.perf_counter() - t0
    result.compile_s = compile_watch.totals()[1] - compiled_before
    return result


def _record(run: RequestRun, out, now: float) -> None:
    c = out.outputs[0]
    new = len(c.delta_token_ids)
    if new:
        if run.first_token_at is None:  # the first chunk gives no gaps, however many tokens
            run.first_token_at = run.ttft_s = now
        else:
            gap = (now - run.last_token_at) / new
            run.itl_s.extend([gap] * new)
        run.last_token_at = now
    run.text += c.delta_text
    run.token_ids.extend(c.delta_token_ids)
    if out.finished:
        run.finish_reason = c.finish_reason or "abort"
        run.latency_s = now


def run_comparison(engines: Mapping[str, Any], prompts: Sequence[Any],
                   sampling_params: SamplingParams | None = None, *,
                   kinds: Mapping[str, str] | None = None, concurrent: bool = False,
                   on_delta: DeltaCallback | None = None,
                   cancel: threading.Event | None = None) -> Comparison:
    """See the module docstring."""
    if not engines:
        raise ValueError("compare needs at least one engine")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("compare needs at least one prompt")
    params = sampling_params or SamplingParams()
    if not isinstance(params, SamplingParams):
        raise ValueError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
    if params.n != 1:
        raise ValueError(f"compare runs one completion per prompt (n=1), got n={params.n}")
    kinds = kinds or {}
    names = list(engines)
    compile_watch.install()
    compiled_before = compile_watch.totals()[1]

    def one(name: str) -> EngineRun:
        return run_engine(name, kinds.get(name, getattr(engines[name], "engine_name", "?")),
                          engines[name], prompts, params, on_delta=on_delta, cancel=cancel)

    if concurrent:
        results: dict[str, EngineRun] = {}
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, one(n)),
                                    daemon=True, name=f"compare-{n}") for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for run in results.values():
            run.compile_s = None  # the engines' windows overlap: see Comparison.compile_s
    else:
        results = {}
        for n in names:
            if cancel is not None and cancel.is_set():
                results[n] = EngineRun(n, kinds.get(n, "?"),
                                       [RequestRun(i, finish_reason="abort")
                                        for i in range(len(prompts))], error="cancelled")
                continue
            results[n] = one(n)
    return Comparison(prompts, names, {n: results[n] for n in names}, concurrent,
                      compile_s=compile_watch.totals()[1] - compiled_before)

