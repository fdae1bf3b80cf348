"""Mixed-workload serving throughput and latency: eSurge (paged, token budget) and vSurge
(continuous batching) against vInference and transformers (static batches), measured in the same
run; then eSurge's scenarios (`esurge_scenarios.py`: shared prefix, long-prompt interference, KV
memory, compile cold/warm).

Workload: `--num-requests` (64) requests; prompt lengths and output lengths uniform in 16..256
(fixed seed); prompts are token ids cut from real English text (standard-library docstrings, via
the model's tokenizer); greedy, ignore_eos, max_tokens = the request's output length.

Arrival patterns:
- burst: every request arrives at t=0;
- poisson: exponential gaps at `--rate` requests/s (default 0.5: on the reference 2-core box a
  32-slot vSurge decodes ~130 tok/s, and with 136 output tokens per request on average it saturates
  near 1 req/s; 0.5 keeps it loaded, not saturated. Pass a higher rate on faster machines, or
  several, `--rate 0.5,1,2`: one Poisson run per rate).

Before the runs, for the burst: the work each schedule needs, counted from the workload
(`work_bound`: vInference's static batches decode to their longest output; vSurge at best decodes
each output token once), and the largest vSurge / vInference ratio that work allows.

How each engine receives requests:
- esurge: like vsurge (`submit()` at arrival time), `max_num_seqs` = the slots, default token
  budget, page pool from its default budget; esurge-pallas: the same with
  `attention_kernel="pallas"` (a GPU's kernel; interpreted, slowly, on a CPU);
- vsurge / vsurge-interleaved: `submit()` at arrival time (32 decode slots, max_concurrent_prefill
  4); outputs are consumed by one asyncio loop that timestamps every delta;
- vinference: static batches in arrival order, up to 32 per batch: whatever has arrived when the
  previous batch finishes (burst: 2 batches of 32); token times are taken after every step of
  device work the engine yields (prefill, then chunks of `streaming_chunk`=16 tokens);
- transformers: the same batching; `generate` of a batch pads left and runs max_new_tokens = the
  batch's longest output; a streamer timestamps every step; only each request's own tokens count.

Metrics: output tok/s = useful tokens / (last token time - first arrival); TTFT = first token
time - arrival; ITL = gap between two deliveries to the client divided by the tokens in the later
one (a 16-token chunk counts 16 intervals of gap/16); percentiles over all requests / intervals.

Then: vSurge vs vInference at 1 and at 32 equal-length requests, and vSurge's per-iteration host
overhead, derived as median(engine.step_times) during that decode-only run minus the device time
of one decode step at the same shape (the engines' jitted `decode_loop`, timed alone).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_throughput.py            # full (~20-25 min here)
    PYTHONPATH=. .venv/bin/python benchmarks/bench_throughput.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402

ALL_ENGINES = ("esurge", "esurge-pallas", "vsurge", "vsurge-interleaved", "vinference",
               "transformers")
SCENARIOS = ("shared-prefix", "interference", "memory", "compile")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--rate", default="0.5",
                   help="Poisson arrival rate(s), requests/s, comma-separated: one Poisson run per "
                        "rate (default 0.5)")
    p.add_argument("--min-len", type=int, default=16, help="min prompt and output length")
    p.add_argument("--max-len", type=int, default=256, help="max prompt and output length")
    p.add_argument("--patterns", default="burst,poisson")
    p.add_argument("--engines", default=",".join(ALL_ENGINES),
                   help=f"comma-separated subset of {','.join(ALL_ENGINES)}")
    p.add_argument("--slots", type=int, default=32, help="vSurge decode slots / static batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads for transformers")
    p.add_argument("--random-config", default=None, choices=sorted(C.RANDOM_CONFIGS))
    p.add_argument("--dtype", default=None)
    p.add_argument("--no-overhead", action="store_true",
                   help="skip the equal-length comparison and the host-overhead probe")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"eSurge scenarios after the runs, a subset of {','.join(SCENARIOS)} "
                        "('' for none)")
    p.add_argument("--small-budget", type=int, default=32,
                   help="interference: eSurge's second, small token budget (default 32)")
    p.add_argument("--prefix-requests", type=int, default=64,
                   help="shared-prefix: requests (default 64)")
    p.add_argument("--system-len", type=int, default=384,
                   help="shared-prefix: shared system prompt tokens (default 384)")
    p.add_argument("--long-prompt", type=int, default=2000,
                   help="interference: the long prompt's tokens (default 2000)")
    p.add_argument("--stream-tokens", type=int, default=160,
                   help="interference: tokens each of the 8 streams decodes (default 160)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 8 requests, lengths 16..48, rate 2 req/s, 8 slots; "
                        "scenarios: 8 shared-prefix requests on a 64-token system prompt, a "
                        "256-token long prompt")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.num_requests, a.min_len, a.max_len, a.rate, a.slots = 8, 16, 48, "2.0", 8
        a.prefix_requests, a.system_len, a.long_prompt = 8, 64, 256
    a.rates = [float(r) for r in str(a.rate).split(",") if r]
    if not a.rates or min(a.rates) <= 0:
        p.error(f"--rate must list positive rates, got {a.rate!r}")
    a.patterns = [x for x in a.patterns.split(",") if x]
    a.engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    a.scenarios = [x for x in a.scenarios.split(",") if x]
    bad = set(a.engines) - set(ALL_ENGINES)
    if bad or set(a.patterns) - {"burst", "poisson"} or set(a.scenarios) - set(SCENARIOS):
        p.error(f"unknown engines {sorted(bad)}, patterns {a.patterns} or scenarios "
                f"{a.scenarios}")
    # one run per (pattern, rate): "burst", "poisson@0.5", ...
    a.runs = [("burst", None)] * ("burst" in a.patterns) + [
        (f"poisson@{r:g}", r) for r in a.rates if "poisson" in a.patterns]
    return a


# ---------------------------------------------------------------------------------------------
# workload and records
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Workload:
    prompts: list[list[int]]
    out_lens: list[int]
    offsets: list[float]  # arrival time of each request, seconds from the start


def make_workload(lm, n, lo, hi, seed) -> tuple[list[list[int]], list[int], np.random.Generator]:
    rng = np.random.default_rng(seed)
    prompt_lens = rng.integers(lo, hi + 1, n).tolist()
    out_lens = rng.integers(lo, hi + 1, n).tolist()
    prompts = C.text_token_prompts(lm.tokenizer, prompt_lens, seed, lm.config.vocab_size)
    return prompts, out_lens, rng


def arrival_offsets(pattern: str, n: int, rate: float | None, seed: int) -> list[float]:
    if pattern == "burst":
        return [0.0] * n
    gaps = np.random.default_rng(seed + 1).exponential(1.0 / rate, n)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


@dataclasses.dataclass
class Record:
    arrival: float
    deliveries: list[tuple[float, int]]  # (host time, tokens delivered)

    @property
    def tokens(self) -> int:
        return sum(n for _, n in self.deliveries)

    @property
    def first(self) -> float:
        return self.deliveries[0][0]

    @property
    def last(self) -> float:
        return self.deliveries[-1][0]

    def itls(self) -> list[float]:
        out = []
        for (t0, _), (t1, n) in zip(self.deliveries, self.deliveries[1:]):
            out += [(t1 - t0) / n] * n
        # tokens that arrived together with the first one (none for these engines) add no gap
        return out


def summarize(records: list[Record], expected: list[int]) -> dict:
    tokens = sum(r.tokens for r in records)
    if tokens != sum(expected):
        C.log(f"  warning: {tokens} tokens delivered, expected {sum(expected)}")
    span = max(r.last for r in records) - min(r.arrival for r in records)
    ttft = [r.first - r.arrival for r in records]
    itl = [x for r in records for x in r.itls()]
    e2e = [r.last - r.arrival for r in records]
    return dict(tok_s=tokens / span, span_s=span, tokens=tokens,
                ttft_p50=C.percentile(ttft, 50), ttft_p99=C.percentile(ttft, 99),
                itl_p50=C.percentile(itl, 50), itl_p99=C.percentile(itl, 99),
                e2e_p50=C.percentile(e2e, 50))


# ---------------------------------------------------------------------------------------------
# engine drivers
# ---------------------------------------------------------------------------------------------


def run_vsurge(eng, w: Workload, params) -> list[Record]:
    async def main():
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter() + 0.05

        async def one(i):
            await asyncio.sleep(max(0.0, t0 + w.offsets[i] - time.perf_counter()))
            arrival = time.perf_counter()
            s = eng.submit(w.prompts[i], params[i], loop=loop)
            rec = Record(arrival, [])
            while True:
                out = await s.aget()
                n = len(out.outputs[0].delta_token_ids)
                if n:
                    rec.deliveries.append((time.perf_counter(), n))
                if out.finished:
                    return rec

        return await asyncio.gather(*(one(i) for i in range(len(w.prompts))))

    return asyncio.run(main())


def arrived_batches(w: Workload, max_batch: int, run_batch) -> None:
    """Static batching in arrival order: each batch is whatever has arrived (at most `max_batch`)
    when the previous one finishes; `run_batch(indices, t0)` runs one batch to completion."""
    t0 = time.perf_counter()
    i, n = 0, len(w.prompts)
    while i < n:
        wait = t0 + w.offsets[i] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        now = time.perf_counter() - t0
        j = i
        while j < n and j - i < max_batch and w.offsets[j] <= now:
            j += 1
        run_batch(list(range(i, j)), t0)
        i = j


def run_vinference(eng, w: Workload, params, max_batch: int) -> list[Record]:
    records: dict[int, Record] = {}

    def run_batch(idx, t0):
        reqs = [eng.make_request(w.prompts[k], params[k]) for k in idx]
        for k in idx:
            records[k] = Record(t0 + w.offsets[k], [])
        seen = [0] * len(idx)
        # `_run` yields after every step of device work (prefill, then each decode chunk), which
        # is when a streaming client would receive tokens; `generate` hides those times.
        for _ in eng._run(reqs):
            now = time.perf_counter()
            for m, (k, req) in enumerate(zip(idx, reqs)):
                c = len(req.sequences[0].output_ids)
                if c > seen[m]:
                    records[k].deliveries.append((now, c - seen[m]))
                    seen[m] = c

    arrived_batches(w, max_batch, run_batch)
    return [records[k] for k in range(len(w.prompts))]


def run_transformers(model, w: Workload, max_batch: int, pad_id: int) -> list[Record]:
    records: dict[int, Record] = {}

    def run_batch(idx, t0):
        streamer = C.make_timestamp_streamer()
        C.hf_generate(model, [w.prompts[k] for k in idx], max(w.out_lens[k] for k in idx), pad_id,
                      streamer=streamer)
        for k in idx:
            records[k] = Record(t0 + w.offsets[k],
                                [(t, 1) for t in streamer.times[:w.out_lens[k]]])

    arrived_batches(w, max_batch, run_batch)
    return [records[k] for k in range(len(w.prompts))]


# ---------------------------------------------------------------------------------------------
# warm-ups (compile every shape the measured runs can hit, so they measure steady state)
# ---------------------------------------------------------------------------------------------


def warm_vinference(eng, w: Workload, max_batch: int) -> None:
    """Compile vInference's prefill and decode chunk for the shapes static batches of this
    workload can take (batch bucket x prompt bucket x cache length), calling the engine's jitted
    functions once per shape with the same argument structure the engine uses: one chunk each
    instead of whole generations."""
    import jax
    import jax.numpy as jnp

    from workbench.engines.buckets import pick_bucket
    from workbench.engines.model_runner import DecodeState
    from workbench.sampling_params import SamplingParams
    from workbench.sampling_tensors import PenaltyState, SamplingTensors

    lm = eng.model
    lens = [len(p) for p in w.prompts]
    totals = [n + o for n, o in zip(lens, w.out_lens)]
    Bs = [b for b in eng.batch_buckets if b <= pick_bucket(max_batch, eng.batch_buckets)]
    eos = sorted(eng.eos_token_ids)
    # A batch's prompt bucket is that of its longest prompt and its cache length that of its
    # longest prompt + output: with more rows, only the top buckets stay likely. Keep the shapes
    # a batch of B rows hits with probability >= ~3% under this workload's lengths (estimated by
    # sampling), rather than the whole grid (306 compilations, 5+ minutes on 2 cores).
    rng = np.random.default_rng(0)
    shapes = []
    for B in Bs:
        counts: dict = {}
        for _ in range(400):
            k = rng.choice(len(lens), size=min(B, len(lens)), replace=False)
            key = (pick_bucket(max(lens[i] for i in k), eng.prefill_buckets),
                   C.vinference_cache_len(eng, max(totals[i] for i in k)))
            counts[key] = counts.get(key, 0) + 1
        shapes += [(B, T, S) for (T, S), c in counts.items() if c >= 12 and T < S]
    for i in range(0, len(lens), max_batch):  # the burst pattern's batches, exactly
        idx = range(i, min(i + max_batch, len(lens)))
        shapes.append((pick_bucket(len(idx), eng.batch_buckets),
                       pick_bucket(max(lens[k] for k in idx), eng.prefill_buckets),
                       C.vinference_cache_len(eng, max(totals[k] for k in idx))))
    for B, T, S in sorted(set(shapes)):
        sp = SamplingParams(max_tokens=max(1, S - T - 1), temperature=0.0,
                            ignore_eos=True)
        sampling = SamplingTensors.from_params([sp] * B, eos_token_ids=eos,
                                               seeds=[0] * B, pad_to=B)
        ids = np.ones((B, T), np.int32)
        pos = np.tile(np.arange(T, dtype=np.int32), (B, 1))
        penalties = PenaltyState.init(ids.tolist(), lm.config.vocab_size, pad_to=B)
        out, cache = eng.runner.prefill(lm.state, lm.new_cache(B, S), ids, pos,
                                        np.full(B, T - 1, np.int32), sampling,
                                        penalties, num_top=0)
        state = DecodeState(tokens=out.tokens,
                            positions=jnp.asarray([T] * B, jnp.int32),
                            output_pos=jnp.ones(B, jnp.int32),
                            done=jnp.asarray(np.zeros(B, bool)),
                            max_tokens=jnp.asarray([2] * B, jnp.int32),
                            penalties=penalties.update(out.tokens))
        # every read size a chunk of this batch can pick (rows finish at different steps, so
        # late chunks read little)
        for size in eng.reads.sizes(B, S):
            state, cache, chunk = eng.runner.decode_loop(
                lm.state, eng.reads.with_size(cache, size), state, sampling,
                num_steps=eng.streaming_chunk, num_top=0)
            cache = eng.reads.reset(cache)
            jax.block_until_ready(chunk.tokens)


# ---------------------------------------------------------------------------------------------
# equal-length comparison and vSurge host overhead
# ---------------------------------------------------------------------------------------------


def equal_length(lm, vs, vi, prompt_len: int, out_len: int, batch_sizes, runs: int = 2):
    """vSurge (the serving engine, all its slots) vs vInference on B identical-length requests;
    vSurge's median iteration time during the run vs one decode step's device time."""
    from workbench.engines.buckets import pick_bucket
    from workbench.sampling_params import SamplingParams

    sp = SamplingParams(max_tokens=out_len, temperature=0.0, ignore_eos=True)
    prompts = C.text_token_prompts(lm.tokenizer, [prompt_len] * max(batch_sizes), 7,
                                   lm.config.vocab_size)
    rows = []
    k = getattr(vs, "decode_steps", 1)
    for B in batch_sizes:
        batch = prompts[:B]
        vs.generate(batch, sp), vi.generate(batch, sp)  # warm-up (compile)
        t_vs, t_vi, steps, host = [], [], [], []
        for _ in range(runs):
            # the engine's probes (idle between runs, so clearing them is race-free): wall seconds
            # per driver iteration and, where the engine has it, host-only seconds (wall minus
            # time blocked in `jax.device_get` waiting for sampled tokens)
            vs.step_times.clear()
            if hasattr(vs, "host_times"):
                vs.host_times.clear()
            t_vs.append(C.timed(lambda: vs.generate(batch, sp))[0])
            steps += list(vs.step_times)
            host += list(getattr(vs, "host_times", []))
            t_vi.append(C.timed(lambda: vi.generate(batch, sp))[0])
        # rows a decode step computes: the bucket of live slots where the engine has row
        # buckets, else every slot
        n_rows = (pick_bucket(B, vs.row_buckets) if getattr(vs, "row_buckets", None)
                  else vs.max_concurrent_decodes)
        bd = C.step_breakdown(lm, n_rows, prompt_len, vs.max_model_len, runs=3,
                              reads=lambda c: vs.reads.apply(c, [prompt_len + out_len] * B,
                                                             n_rows))
        bd_vi = C.step_breakdown(lm, B, prompt_len,
                                 C.vinference_cache_len(vi, prompt_len + out_len), runs=3)
        tok = B * out_len
        rows.append(dict(
            batch=B, vsurge_tok_s=tok / C.median(t_vs), vinference_tok_s=tok / C.median(t_vi),
            # per token: a driver iteration runs `decode_steps` decode steps
            vsurge_step_ms=C.median(steps) * 1e3 / k,
            vsurge_host_ms=C.median(host) * 1e3 / k if host else None,
            device_step_ms=bd.decode_chunk_step_s * 1e3, device_rows=n_rows,
            device_single_call_ms=bd.decode_single_step_s * 1e3,
            vinference_device_step_ms=bd_vi.decode_chunk_step_s * 1e3,
            vinference_step_ms=C.median(t_vi) / out_len * 1e3,
        ))
        C.log(f"equal-length B={B}: {rows[-1]}")
    return rows


# ---------------------------------------------------------------------------------------------


def work_bound(cfg, prompt_lens, out_lens, slots, vi_buckets, vs_prefill_buckets) -> dict:
    """The work each schedule needs for a burst, counted from the workload alone, and the
    throughput ratios it allows: vSurge / vInference, eSurge / vInference (`_unpadded`), and
    eSurge / vSurge (`esurge_vs_vsurge`: both decode each output token once, so in the
    compute-bound regime eSurge wins only the prefill padding vSurge pays).

    vInference (static batches of `slots` in arrival order): every batch decodes until its
    longest output, all rows (finished rows keep their batch row), and prefills rows x the longest
    prompt, both padded to its buckets. vSurge at best: one decode row-step per output token after
    the first (full slots, no drain) and each prompt prefilled alone at its bucket.
    Two regimes bound the ratio: compute-bound (a CPU; cost per token in matmul FLOPs: decode rows
    pay the layers and the LM head, prefill tokens the layers, one LM head row per request) and
    memory-bound (an accelerator at small batch; a decode step costs the same for 1 or `slots`
    rows, so steps count). Attention and host work are left out.
    """
    from workbench.engines.buckets import pick_bucket

    batch_b, prefill_b = vi_buckets
    D, L, V, I = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.intermediate_size
    H, Hkv, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    layer_flops = 2 * L * (D * (H + 2 * Hkv) * Dh + H * Dh * D + 3 * D * I)  # per token
    head_flops = 2 * D * V
    n = len(out_lens)
    vi_rows = vi_steps = vi_prefill = 0
    for lo in range(0, n, slots):
        outs, lens = out_lens[lo:lo + slots], prompt_lens[lo:lo + slots]
        rows = pick_bucket(len(outs), batch_b)
        vi_steps += max(outs) - 1
        vi_rows += rows * (max(outs) - 1)
        vi_prefill += rows * pick_bucket(max(lens), prefill_b)
    vs_rows = sum(o - 1 for o in out_lens)
    vs_steps = -(-vs_rows // slots)
    vs_prefill = sum(pick_bucket(p, vs_prefill_buckets) for p in prompt_lens)

    def flops(decode_rows, prefill_tokens):
        return (decode_rows * (layer_flops + head_flops) + prefill_tokens * layer_flops
                + n * head_flops)

    vi_flops = flops(vi_rows, vi_prefill)
    return dict(vinference_decode_row_steps=vi_rows, vinference_decode_steps=vi_steps,
                vinference_prefill_tokens=vi_prefill, vsurge_decode_row_steps=vs_rows,
                vsurge_decode_steps=vs_steps, vsurge_prefill_tokens=vs_prefill,
                compute_bound=vi_flops / flops(vs_rows, vs_prefill),
                compute_bound_unpadded=vi_flops / flops(vs_rows, sum(prompt_lens)),
                esurge_vs_vsurge=flops(vs_rows, vs_prefill) / flops(vs_rows, sum(prompt_lens)),
                step_bound=vi_steps / vs_steps)


def print_work_bound(cfg, prompt_lens, out_lens, slots, vi, vs) -> dict:
    b = work_bound(cfg, prompt_lens, out_lens, slots, (vi.batch_buckets, vi.prefill_buckets),
                   vs.prefill_buckets)
    C.print_table(
        ["schedule", "decode row-steps", "decode steps", "prefill tokens (padded)"],
        [["vinference (static batches)", b["vinference_decode_row_steps"],
          b["vinference_decode_steps"], b["vinference_prefill_tokens"]],
         ["vsurge (at best)", b["vsurge_decode_row_steps"], b["vsurge_decode_steps"],
          b["vsurge_prefill_tokens"]]],
        title="burst: the work each schedule needs (counted from the workload)")
    print(f"largest vsurge / vinference ratio this work allows: {b['compute_bound']:.2f}x "
          f"compute-bound ({b['compute_bound_unpadded']:.2f}x with unpadded prefills), "
          f"{b['step_bound']:.2f}x memory-bound (decode steps)")
    print(f"largest esurge / vsurge ratio it allows: {b['esurge_vs_vsurge']:.2f}x compute-bound "
          "(both decode each output token once; eSurge saves vSurge's prefill padding)\n")
    return b


def main(argv=None):
    args = parse_args(argv)

    import jax

    from benchmarks import esurge_scenarios as S
    from workbench.engines.esurge import eSurge
    from workbench.engines.vinference import vInference
    from workbench.engines.vsurge import vSurge
    from workbench.sampling_params import SamplingParams

    dtype, tdev = C.run_setup(args)
    C.print_environment({"dtype": dtype, "model": args.random_config or "embedded SmolLM2-135M",
                         "rates": args.rates, "num_requests": args.num_requests})
    lm = C.load_lm(args.random_config, dtype)
    prompts, out_lens, _ = make_workload(lm, args.num_requests, args.min_len, args.max_len,
                                         args.seed)
    params = [SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True) for o in out_lens]
    model_len = C.round_up(max(len(p) + o for p, o in zip(prompts, out_lens)), 128)
    model_len = max(model_len, C.round_up(2 * args.max_len, 128))
    pad_id = (lm.tokenizer.pad_token_id if lm.tokenizer is not None
              and lm.tokenizer.pad_token_id is not None else 0)
    C.log(f"{args.num_requests} requests: prompt tokens {sum(map(len, prompts))}, output tokens "
          f"{sum(out_lens)} (mean {np.mean(out_lens):.0f}); max_model_len {model_len}")

    # Every compiled executable keeps ~400 memory mappings and the kernel allows 65,530 per
    # process (vSurge's 77 precompiled shapes at max_model_len 512 take 31k), so the engines do
    # not hold their executables all at once: each warms up right before its runs (compiling, or
    # loading from the persistent compilation cache) and JAX's in-memory caches are dropped
    # after them.
    engines = {}
    for name in ("vsurge", "vsurge-interleaved"):
        if name in args.engines:
            engines[name] = vSurge(lm, max_concurrent_decodes=args.slots,
                                   max_concurrent_prefill=4, max_model_len=model_len,
                                   interleaved_mode=name.endswith("interleaved")).start()
    for name in ("esurge", "esurge-pallas"):
        if name in args.engines:
            engines[name] = eSurge(lm, max_num_seqs=args.slots, max_model_len=model_len,
                                   attention_kernel="pallas" if name.endswith("pallas")
                                   else "xla").start()
    if "vinference" in args.engines:
        engines["vinference"] = vInference(lm, max_batch_size=args.slots, max_model_len=model_len)
    warm_s: dict[str, float] = {}

    def warm(name: str) -> None:
        """Compile (or load) the shapes `name`'s runs dispatch; seconds of the first warm-up."""
        t0 = time.perf_counter()
        with C.CompileProbe() as probe:
            if name.startswith("vsurge"):
                info = engines[name].precompile(max_prompt_len=args.max_len)
                info = f"{len(info['shapes'])} shapes ({info['prefill']} prefill, " \
                       f"{info['decode']} decode)"
            elif name.startswith("esurge"):
                info = engines[name].precompile()
                info = f"{len(info['shapes'])} shapes"
            else:
                warm_vinference(engines[name], Workload(prompts, out_lens, []), args.slots)
                info = "the burst's shapes"
        warm_s.setdefault(name, time.perf_counter() - t0)
        C.log(f"warm-up {name}: {info}, {time.perf_counter() - t0:.0f}s (backend compile "
              f"{probe.seconds:.0f}s in {probe.count} compilations)")

    hf = None
    if tdev is not None:
        hf = C.load_hf_model(lm, dtype, tdev, args.threads)
        C.hf_generate(hf, prompts[:2], 4, pad_id)

    bound = None
    if "burst" in args.patterns and {"vsurge", "vinference"} <= set(engines):
        bound = print_work_bound(lm.config, [len(p) for p in prompts], out_lens, args.slots,
                                 engines["vinference"], engines["vsurge"])
        print(f"eSurge at best computes each prompt token once and decodes each output token "
              f"once (no padding): at most {bound['compute_bound_unpadded']:.2f}x vinference "
              "compute-bound\n")
    page_peak = None

    results = {}
    for pattern, rate in args.runs:
        w = Workload(prompts, out_lens, arrival_offsets("poisson" if rate else "burst",
                                                        args.num_requests, rate, args.seed))
        for name in [e for e in ALL_ENGINES if e in args.engines]:
            if name == "transformers" and hf is None:
                continue
            if name != "transformers":
                warm(name)
            C.log(f"{pattern}: {name} ...")
            with C.gc_paused(), C.CompileProbe() as probe:
                if name.startswith("esurge"):
                    engines[name].reset_prefix_cache()  # no reuse across runs
                    with S.PagePeak(engines[name]) as peak:
                        recs = run_vsurge(engines[name], w, params)
                    page_peak = max(page_peak or 0, peak.peak)
                elif name.startswith("vsurge"):
                    recs = run_vsurge(engines[name], w, params)
                elif name == "vinference":
                    recs = run_vinference(engines[name], w, params, args.slots)
                else:
                    recs = run_transformers(hf, w, args.slots, pad_id)
            s = summarize(recs, out_lens)
            s["compile_in_run_s"] = probe.seconds
            results[(pattern, name)] = s
            if name != "transformers":
                jax.clear_caches()  # this engine's executables: see the warm-ups above
            C.log(f"{pattern}: {name}: {s['tok_s']:.1f} tok/s over {s['span_s']:.0f}s; TTFT p50 "
                  f"{s['ttft_p50']:.2f}s p99 {s['ttft_p99']:.2f}s; ITL p50 "
                  f"{s['itl_p50'] * 1e3:.0f}ms p99 {s['itl_p99'] * 1e3:.0f}ms; "
                  f"compile in run {probe.seconds:.1f}s")

    for pattern, rate in args.runs:
        rows = []
        for name in ALL_ENGINES:
            s = results.get((pattern, name))
            if s is None:
                continue
            rows.append([name, s["tok_s"], s["span_s"], s["ttft_p50"], s["ttft_p99"],
                         s["itl_p50"] * 1e3, s["itl_p99"] * 1e3, s["e2e_p50"],
                         C.fmt(s["compile_in_run_s"])])
        title = (f"{pattern}: {args.num_requests} requests, prompt/output {args.min_len}..{args.max_len}"
                 + (f", Poisson {rate:g} req/s" if rate else ", all at t=0"))
        C.print_table(["engine", "out tok/s", "span s", "TTFT p50 s", "TTFT p99 s",
                       "ITL p50 ms", "ITL p99 ms", "E2E p50 s", "compile in run s"], rows,
                      title=title)
    rows = []
    for pattern, _ in args.runs:
        for mine, peers in (("esurge", ("vsurge", "vinference", "transformers")),
                            ("esurge-pallas", ("esurge", "vinference")),
                            ("vsurge", ("vinference", "transformers", "vsurge-interleaved"))):
            me = results.get((pattern, mine))
            for peer in peers:
                other = results.get((pattern, peer))
                if me and other:
                    rows.append([pattern, f"{mine} / {peer}",
                                 f"{me['tok_s'] / other['tok_s']:.2f}x",
                                 f"{me['ttft_p50'] / other['ttft_p50']:.2f}x",
                                 f"{me['itl_p50'] / other['itl_p50']:.2f}x"])
    if rows:
        C.print_table(["pattern", "ratio", "out tok/s", "TTFT p50", "ITL p50"], rows,
                      title="ratios (targets: esurge >= 1.1x vsurge in out tok/s on the burst)")
    # each engine against its peer, as a share of the ratio the burst's work allows
    for mine, peer, key, note in (
            ("esurge", "vinference", "compute_bound_unpadded", " (target: >= 85%)"),
            ("esurge", "vsurge", "esurge_vs_vsurge", " (both at their compute bound)"),
            ("vsurge", "vinference", "compute_bound", "")):
        me, other = results.get(("burst", mine)), results.get(("burst", peer))
        if bound and me and other:
            got = me["tok_s"] / other["tok_s"]
            print(f"burst: {mine} / {peer} {got:.2f}x of the {bound[key]:.2f}x its work allows: "
                  f"{100 * got / bound[key]:.0f}%{note}")
    print()

    eq = []
    if not args.no_overhead and "vsurge" in engines and "vinference" in engines:
        plen, olen = (128, 128) if not args.quick else (32, 16)
        eq = equal_length(lm, engines["vsurge"], engines["vinference"], plen, olen,
                          [1, args.slots])
        rows = [[r["batch"], r["vsurge_tok_s"], r["vinference_tok_s"],
                 f"{r['vsurge_tok_s'] / r['vinference_tok_s']:.2f}x",
                 r["vsurge_step_ms"], f"{r['device_step_ms']:.1f} ({r['device_rows']})",
                 r["device_single_call_ms"],
                 r["vsurge_step_ms"] - r["device_step_ms"], r["vsurge_host_ms"],
                 r["vinference_step_ms"], r["vinference_device_step_ms"]] for r in eq]
        C.print_table(["requests", "vsurge tok/s", "vinference tok/s", "vsurge/vinference",
                       "vsurge ms/token (iteration / decode_steps)",
                       "device step ms (rows decoded)",
                       "1-step call ms", "overhead ms/token (iter - device)",
                       "host ms/token (host_times / decode_steps)",
                       "vinference ms/step", "vinference device step ms"], rows,
                      title=f"equal-length requests ({plen} prompt + {olen} output tokens); "
                            f"vSurge with {args.slots} slots (target: within 10%)")
    scen = S.run(args, lm, engines, model_len, page_peak, dtype)
    for e in engines.values():
        e.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=C.environment(), args=vars(args),
                           results={f"{p}/{n}": v for (p, n), v in results.items()},
                           equal_length=eq, warmup_s=warm_s, burst_work_bound=bound,
                           scenarios=scen), f, indent=1)


if __name__ == "__main__":
    main()
