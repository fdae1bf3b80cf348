"""Shared helpers for the benchmark scripts (not a test module).

Prompt building (chat prompts trimmed/padded to an exact token count, token-id prompts cut from real
text), percentiles and medians, a plain-text table printer, timing utilities, a JAX compile-time
probe, the "weights-only floor" reference, random-weight model configs for accelerator runs, and the
transformers peer (model loading, a timestamping streamer).

Every script measures its peer in the same run and reports medians and ratios: numbers from a shared
2-core box are noisy, ratios measured side by side much less so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import random
import statistics
import sys
import threading
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

# torch's OpenMP workers spin while they wait; on a shared 2-core box that collapses transformers'
# speed (measured: 1.3 tok/s instead of 7 at batch 1 with 2 threads under load). Passive waiting
# keeps the peer honest. Must be set before torch is imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ---------------------------------------------------------------------------------------------
# statistics and timing
# ---------------------------------------------------------------------------------------------


def run_per_engine(script: str, engines: Sequence[str], args: Sequence[str]) -> list[dict]:
    """Run `script --child ENGINE *args` in a fresh process per engine (memory figures need a
    process of their own); each child prints one JSON line last. Returns the rows that came
    back, printing each as it comes and a failed child's stderr."""
    import json
    import subprocess

    rows = []
    for name in engines:
        out = subprocess.run([sys.executable, script, "--child", name, *args],
                             capture_output=True, text=True, check=False)
        lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
        if not lines:
            print(out.stderr[-3000:], file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def percentile(values: Iterable[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation; nan for no values."""
    vals = list(values)
    if not vals:
        return float("nan")
    return float(np.percentile(np.asarray(vals, dtype=np.float64), q))


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call; the callable must block until its work is done."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@dataclasses.dataclass
class Measurement:
    """A warm-up (compile + one run) and `runs` timed runs of the same work."""

    warmup_s: float
    times: list[float]

    @property
    def median_s(self) -> float:
        return median(self.times)

    @property
    def compile_s(self) -> float:
        """Warm-up minus a steady run: an estimate of the compile time in the warm-up."""
        return max(0.0, self.warmup_s - self.median_s)


def measure(fn: Callable[[], Any], runs: int, warmup: Callable[[], Any] | None = None) -> Measurement:
    """Run `warmup` (default: `fn`) once, then `fn` `runs` times; every call must block."""
    w, _ = timed(warmup or fn)
    return Measurement(w, [timed(fn)[0] for _ in range(runs)])


class CompileProbe:
    """Sums JAX backend compile time while active (via `jax.monitoring`), so a timed run can
    report how much of it was compilation (ideally zero after a warm-up)."""

    _installed = False
    _active: list["CompileProbe"] = []
    _lock = threading.Lock()

    def __init__(self):
        self.seconds = 0.0
        self.count = 0

    @classmethod
    def _install(cls):
        if cls._installed:
            return
        import jax.monitoring

        def listener(event: str, duration: float, **kwargs):
            if "backend_compile" in event:
                with cls._lock:
                    for p in cls._active:
                        p.seconds += duration
                        p.count += 1

        jax.monitoring.register_event_duration_secs_listener(listener)
        cls._installed = True

    def __enter__(self):
        self._install()
        with self._lock:
            self._active.append(self)
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._active.remove(self)


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:  # nan
            return "-"
        return f"{x:.{digits}f}"
    return str(x)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
                file=None) -> str:
    """Print a Markdown table (readable as plain text, pastes into README.md); returns it."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    if title:
        lines.append(f"\n### {title}\n")
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |")
    text = "\n".join(lines)
    print(text, file=file or sys.stdout, flush=True)
    return text


def environment() -> dict:
    """What a reader needs to judge the numbers."""
    import jax

    info = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": ", ".join(sorted({d.device_kind for d in jax.devices()})),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        import transformers
        import torch

        info["transformers"] = transformers.__version__
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def print_environment(extra: dict | None = None) -> None:
    info = {**environment(), **(extra or {})}
    print("environment: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

RANDOM_CONFIGS = {
    # Llama-3.2-1B shapes (random weights): for accelerator runs without a checkpoint.
    "llama-1b": dict(
        architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=2048,
        intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        bos_token_id=128000, eos_token_ids=(128001,),
    ),
    # a few MB: smoke-tests the random-weight code path on a CPU in seconds
    "llama-tiny": dict(
        architecture="LlamaForCausalLM", vocab_size=4096, hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        tie_word_embeddings=True, max_position_embeddings=4096, rope_theta=10000.0,
        eos_token_ids=(2,),
    ),
}


def load_lm(random_config: str | None, dtype: str):
    """The embedded SmolLM2-135M-Instruct, or a random-weight model of a named shape."""
    import jax.numpy as jnp

    from workbench.loading.loader import load_model, random_model
    from workbench.models.config import ModelConfig, resolve_dtype

    if random_config is None:
        return load_model("embedded", dtype=dtype, progress=False)
    if random_config not in RANDOM_CONFIGS:
        raise SystemExit(f"unknown --random-config {random_config!r}; known: {sorted(RANDOM_CONFIGS)}")
    t0 = time.perf_counter()
    cfg = ModelConfig(**RANDOM_CONFIGS[random_config])
    lm = random_model(cfg, dtype=resolve_dtype(dtype or jnp.bfloat16), name=random_config)
    lm.load_seconds = time.perf_counter() - t0
    return lm


def hf_config_from(lm) -> Any:
    """A transformers LlamaConfig with the shapes of `lm` (for a random-weight torch peer)."""
    from transformers import LlamaConfig

    c = lm.config
    return LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
        tie_word_embeddings=c.tie_word_embeddings, rope_theta=c.rope_theta,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        bos_token_id=c.bos_token_id, eos_token_id=list(c.eos_token_ids) or None, pad_token_id=0,
    )


def torch_device() -> str | None:
    """"cuda" or "cpu" if a usable torch is installed for the current JAX backend, else None."""
    import jax

    try:
        import torch
    except ImportError:
        return None
    if jax.default_backend() == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def run_setup(args) -> tuple[str, str | None]:
    """(dtype, torch device or None) for a benchmark run: float32 on CPU, bfloat16 on an
    accelerator unless `--dtype` says otherwise; the transformers peer runs only where torch can
    (logged when it is skipped)."""
    import jax

    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    tdev = torch_device() if "transformers" in args.engines else None
    if "transformers" in args.engines and tdev is None:
        log("transformers skipped: no torch for this backend (needs torch+cuda on GPU)")
    return dtype, tdev


def load_hf_model(lm, dtype: str, device: str, threads: int | None = None):
    """The transformers peer: the same converted checkpoint (`lm.path`), or, for a random-weight
    model, a random torch model of the same shapes (same cost, different weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
              "float16": torch.float16}[str(np.dtype(lm.dtype)) if dtype is None else dtype]
    if lm.path:
        model = AutoModelForCausalLM.from_pretrained(lm.path, dtype=tdtype)
    else:
        with torch.device(device):  # random init on the device: seconds, not a minute on CPU
            model = AutoModelForCausalLM.from_config(hf_config_from(lm), dtype=tdtype)
    return model.to(device).eval()


def make_timestamp_streamer():
    """A `transformers` streamer that timestamps every generated token step of a static
    `generate` (the first `put` is the prompt and is skipped): `times[k]` is when step k's tokens
    (one per row) existed on the host."""
    from transformers.generation.streamers import BaseStreamer

    class TimestampStreamer(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []
            self._prompt_seen = False

        def put(self, value):
            if not self._prompt_seen:
                self._prompt_seen = True
                return
            self.times.append(time.perf_counter())

        def end(self):
            pass

    return TimestampStreamer()


def hf_generate(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int,
                streamer=None, static_cache: bool = False) -> np.ndarray:
    """Greedy static-batch `generate` of left-padded token-id prompts; exactly `max_new_tokens`
    tokens per row (min_new_tokens = max_new_tokens, the `ignore_eos` equivalent). Returns the
    generated ids `[B, max_new_tokens]`. `static_cache`: transformers' static KV cache (what a
    `torch.compile`d forward needs to avoid recompiling every step)."""
    import torch

    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    dev = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
            max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=pad_id,
            streamer=streamer, temperature=None, top_p=None, top_k=None,
            **({"cache_implementation": "static"} if static_cache else {}),
        )
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return out[:, T:].cpu().numpy()


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------

_TOPICS = [
    "the water cycle", "how a compiler works", "photosynthesis", "the French revolution",
    "black holes", "sourdough bread", "the stock market", "plate tectonics", "jazz music",
    "machine learning", "the immune system", "medieval castles", "solar panels", "chess openings",
    "the Roman empire", "coral reefs", "electric cars", "the printing press", "volcanoes",
    "honey bees", "quantum computing", "the Silk Road", "climate change", "origami",
    "the human heart", "rainforests", "cryptography", "the Moon landing", "wind turbines",
    "ancient Egypt", "coffee roasting", "the internet",
]
_ASKS = [
    "Explain {} to a curious ten-year-old.", "Write a short poem about {}.",
    "Give me three surprising facts about {}.", "Summarize the history of {} in a paragraph.",
    "What are the main open questions about {}?", "Describe {} as if you were a tour guide.",
]
_FILLER = (" Please be detailed, use simple words, and give concrete examples so that the answer is"
           " easy to follow for a reader who is new to the subject.")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def chat_prompts(tokenizer, n: int, length: int, seed: int = 0) -> list[list[int]]:
    """`n` varied chat prompts (system + one user turn + the generation prompt, via the chat
    template), each exactly `length` token ids: the user content is cut, or padded with filler
    tokens, at the token level, so the template's head and tail stay intact and every engine and
    peer sees identical ids."""
    rng = random.Random(seed)

    def template(content: str) -> list[int]:
        return list(tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=True))

    a, b = template("alpha"), template("omega zeta")
    head = _common_prefix(a, b)
    tail = _common_prefix(a[::-1], b[::-1])
    if head + tail >= length:
        raise ValueError(f"the chat template alone takes {head + tail} tokens >= {length}")
    filler = tokenizer.encode(_FILLER * 8, add_special_tokens=False)
    out = []
    for i in range(n):
        text = rng.choice(_ASKS).format(_TOPICS[(i + seed) % len(_TOPICS)])
        ids = template(text)
        content = ids[head:len(ids) - tail]
        budget = length - head - tail
        content = (content + filler)[:budget]
        prompt = ids[:head] + content + ids[len(ids) - tail:]
        assert len(prompt) == length
        out.append(prompt)
    return out


# The workload text lives in the library's load generator (one copy): re-exported for the scripts.
from workbench.loadgen import corpus_text, text_token_prompts  # noqa: E402, F401


def random_token_prompts(n: int, length: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, vocab_size, size=length).tolist() for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# the weights-only floor
# ---------------------------------------------------------------------------------------------


def weights_floor_fn(lm, steps: int, layer_loop: str = "unrolled"):
    """A jitted function that, for each of `steps` tokens, streams every weight matrix of `lm` once:
    one matmul per matrix against a `[B, in]` activation, chained through the layers (q, k, v, o,
    gate, up, down per layer, then the LM head), with no attention, norms or sampling. Its
    tokens/s is the memory-bandwidth bound a decode step cannot beat; an engine's share of it says
    how much time goes elsewhere (attention over the KV cache, sampling, dispatch, host work).

    `layer_loop="unrolled"` (the floor): one array per layer, a Python loop, each weight read in
    place. `"scan"`: stacked arrays under `lax.scan`, as the scan layer loop runs them; on XLA:CPU
    and GPU every step then copies each layer's weights out of the stack (the gap between the two
    is what those copies cost).

    Returns `run(params, x0) -> [B]` where `params` is from `floor_params(lm, layer_loop)` and `x0`
    is `[B, D]`.
    """
    import jax
    import jax.numpy as jnp

    tied = lm.config.tie_word_embeddings

    def layer(h, w):
        q = h @ w["q"]
        k = h @ w["k"]
        v = h @ w["v"]
        h = h + (q @ w["o"]) + (k.sum(-1, keepdims=True) + v.sum(-1, keepdims=True)) * 1e-3
        g = h @ w["gate"]
        u = h @ w["up"]
        h = h + (jax.nn.silu(g) * u) @ w["down"]
        return h * jax.lax.rsqrt(jnp.mean(jnp.square(h.astype(jnp.float32)), -1, keepdims=True)
                                 + 1e-6).astype(h.dtype), None

    @jax.jit
    def run(params, x0):
        def token(_, h):
            if layer_loop == "scan":
                h, _ = jax.lax.scan(layer, h, params["layers"])
            else:
                for w in params["layers"]:
                    h, _ = layer(h, w)
            if tied:  # [B, V]: streams the LM head (the tied embedding) once per token
                logits = jnp.einsum("bd,vd->bv", h, params["head"])
            else:
                logits = h @ params["head"]
            # feed the result back so no step can be skipped or hoisted
            return h + (jnp.max(logits, -1, keepdims=True) * 1e-3).astype(h.dtype)

        return jax.lax.fori_loop(0, steps, token, x0).sum(-1)

    return run


def floor_params(lm, layer_loop: str = "unrolled") -> dict:
    """The matrices `weights_floor_fn` streams, from `lm.state` in the layout `layer_loop` wants:
    the model's own arrays when it is stored that way, else converted once (outside the timed
    function)."""
    from flax import nnx

    from workbench.models.layer_loop import stack_layers, unstack_layers

    state = lm.state
    if layer_loop == "scan" and lm.layer_loop != "scan":
        state = stack_layers(state)
    elif layer_loop == "unrolled" and lm.layer_loop == "scan":
        state = unstack_layers(state)
    d = nnx.to_pure_dict(state)
    names = {"q": ("self_attn", "q_proj"), "k": ("self_attn", "k_proj"),
             "v": ("self_attn", "v_proj"), "o": ("self_attn", "o_proj"),
             "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"), "down": ("mlp", "down_proj")}

    def pick(layer):
        return {k: layer[a][b]["kernel"] for k, (a, b) in names.items()}

    if layer_loop == "scan":
        layers = pick(d["layers"])
    else:
        layers = [pick(d["layers"][i]) for i in range(lm.config.num_hidden_layers)]
    if lm.config.tie_word_embeddings:
        head = d["embed_tokens"]["embedding"]  # [V, D], read as the model's `attend` reads it
    else:
        head = d["lm_head"]["kernel"]
    return {"layers": layers, "head": head}


def weights_bytes(lm) -> int:
    import jax

    from flax import nnx

    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.to_pure_dict(lm.state)))


def measure_floor(lm, batch_size: int, steps: int, runs: int, layer_loop: str = "unrolled"
                  ) -> tuple[float, Measurement]:
    """tokens/s of the weights-only floor at `batch_size` (median of `runs`)."""
    import jax
    import jax.numpy as jnp

    run = weights_floor_fn(lm, steps, layer_loop)
    params = floor_params(lm, layer_loop)
    x0 = jnp.ones((batch_size, lm.config.hidden_size), lm.dtype) * 0.01
    m = measure(lambda: jax.block_until_ready(run(params, x0)), runs)
    return batch_size * steps / m.median_s, m


@contextlib.contextmanager
def gc_paused():
    """No garbage collection pauses inside a timed region."""
    import gc

    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---------------------------------------------------------------------------------------------
# device-time breakdown (the engines' own jitted functions, driven directly)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StepBreakdown:
    batch_size: int
    prefill_s: float  # one prefill of [B, T] (dispatch + device, synchronous)
    decode_chunk_step_s: float  # per step, inside a 16-step `lax.while_loop` (device only)
    decode_single_step_s: float  # one 1-step decode call, dispatched and waited for (vSurge-like)


def step_breakdown(lm, batch_size: int, prompt_len: int, cache_len: int,
                   reads=None, runs: int = 5, chunk: int = 16) -> StepBreakdown:
    """Time the engines' jitted prefill and decode functions (`ModelRunner`) without any engine
    host code: what the device needs per prefill and per decode step at this shape.

    `cache_len` is the KV-cache length (vInference: round_up(prompt + max_tokens, 128); vSurge:
    max_model_len) and `reads` sets what a decode step reads (`cache -> cache`, e.g. an engine's
    `reads.apply`; None: the whole cache).
    """
    import jax
    import jax.numpy as jnp

    from workbench.engines.model_runner import DecodeState, runner_for
    from workbench.sampling_params import SamplingParams
    from workbench.sampling_tensors import PenaltyState, SamplingTensors

    B, T, V = batch_size, prompt_len, lm.config.vocab_size
    runner = runner_for(lm.graphdef, lm.attention_backend)
    sp = SamplingParams(max_tokens=cache_len - T, temperature=0.0,
                        ignore_eos=True)
    sampling = SamplingTensors.from_params([sp] * B, eos_token_ids=sorted(lm.eos_token_ids),
                                           seeds=[0] * B)
    rng = np.random.default_rng(0)
    ids = rng.integers(10, V, size=(B, T)).astype(np.int32)
    positions = np.tile(np.arange(T, dtype=np.int32), (B, 1))
    last_idx = np.full(B, T - 1, np.int32)
    penalties = PenaltyState.init(ids.tolist(), V)

    def prefill():
        cache = lm.new_cache(B, cache_len)
        out, cache = runner.prefill(lm.state, cache, ids, positions, last_idx, sampling,
                                    penalties, num_top=0)
        jax.block_until_ready(out.tokens)
        return out, cache

    prefill()  # compile
    prefill_times = [timed(prefill)[0] for _ in range(runs)]
    out, cache = prefill()

    tokens0 = np.asarray(out.tokens)
    counts0 = np.asarray(penalties.update(out.tokens).counts)
    mask0 = np.asarray(penalties.prompt_mask)

    def fresh_state():  # decode donates its state: build a new one (outside the timed region)
        return DecodeState(tokens=jnp.asarray(tokens0), positions=jnp.full(B, T, jnp.int32),
                           output_pos=jnp.ones(B, jnp.int32), done=jnp.zeros(B, bool),
                           max_tokens=jnp.full(B, cache_len - T, jnp.int32),
                           penalties=PenaltyState(jnp.asarray(counts0), jnp.asarray(mask0)))

    set_reads = reads or (lambda c: c)
    holder = {"cache": set_reads(cache)}

    def decode(n):
        state = jax.block_until_ready(fresh_state())
        t0 = time.perf_counter()
        _, c, chunk_out = runner.decode_loop(lm.state, holder["cache"], state, sampling,
                                             num_steps=n, num_top=0)
        jax.block_until_ready(chunk_out.tokens)
        dt = time.perf_counter() - t0
        holder["cache"] = set_reads(c)  # the donated cache comes back
        return dt

    decode(chunk), decode(1)  # compile both
    chunk_times = [decode(chunk) / chunk for _ in range(runs)]
    single_times = [decode(1) for _ in range(runs * 4)]
    return StepBreakdown(B, median(prefill_times), median(chunk_times), median(single_times))


def vinference_cache_len(eng, total: int) -> int:
    """The KV-cache length vInference allocates for a batch whose longest prompt + max_tokens is
    `total` (power-of-two `cache_buckets` in current versions, a multiple of `cache_multiple` in
    older ones)."""
    from workbench.engines.buckets import pick_bucket

    if hasattr(eng, "cache_buckets"):
        return pick_bucket(total, eng.cache_buckets)
    return round_up(total, eng.cache_multiple)
