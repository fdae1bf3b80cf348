"""eSurge: paged KV cache, one token-budget step mixing chunked prefill and decodes, prefix caching,
preemption, full monitoring.

Lifecycle: `start()` (or the context manager, or the first request) allocates the page pool and
starts the driver thread of the shared background-engine core (`engine_core.py`). Every iteration:

    schedule (`esurge_scheduler.py`: decodes, prompt chunks and new sequences under one token
    budget; pages from the block pool, prefix-cache hits, preemption when pages run out)  ->
    run (`esurge_runner.py`: one jitted step over the flat ragged batch, compiled once per token
    bucket)  ->  update (sampled tokens to the sequences, stream deltas, free finished pages).

KV memory is spent by the page: a sequence holds the pages its tokens fill, `max_model_len` is a
limit, and the pool's size comes from a budget (`kv_budget.py`). A shared prompt prefix is
computed once and reused (prefix caching); a long prompt is split over steps while the running
streams keep decoding; when pages run out the lowest-priority, latest sequence is preempted and
later recomputed, with the same tokens (greedy, and seeded sampling: the draw at an output
position depends on the seed and the position only).

Monitoring: `metrics()` (with KV usage, prefix hit rate, preemptions), Prometheus families through
the collector, `timeline(request_id)` (events with monotonic times) and `kv_snapshot()` (the page
map). `stop()` ends the thread, aborts what is left and frees the pages; `start()` may follow.
"""

from __future__ import annotations

import time

import jax

from workbench import compilation_cache as compile_cache
from workbench.engines.background import BackgroundEngine
from workbench.engines.buckets import check_rows, is_int, token_buckets
from workbench.engines.esurge_runner import ESurgeRunner
from workbench.engines.esurge_scheduler import ESurgeScheduler
from workbench.engines.kv_budget import num_pages_for
from workbench.engines.kv_cache_manager import KVCacheManager
from workbench.engines.types import EngineError
from workbench.loading.loader import LoadedModel
from workbench.models import paged_attention_pallas
from workbench.models.paged_attention import KERNELS
from workbench.models.paged_kv_cache import PagedKVCache


def _on_accelerator() -> bool:
    return jax.default_backend() != "cpu"


class eSurge(BackgroundEngine):  # noqa: N801 - the engine's name
    """Paged, token-budget engine; see the module docstring.

    Knobs (defaults: CPU / GPU-TPU): `page_size` (16 tokens), a KV budget (`num_pages`, or
    `kv_cache_memory` bytes such as "2GiB", or `kv_cache_fraction` of the free device memory;
    see `kv_budget.py`), `max_num_seqs` (32 / 128 sequences per step; at most `MAX_ROWS`, 4096,
    as for every engine's rows: see `buckets.py`), `max_num_batched_tokens`
    (256 / 2048 tokens per step), `max_model_len`, `enable_prefix_caching`, `scheduling_policy`
    ("fcfs" or "priority"), `long_prefill_token_threshold` (a prompt chunk's cap when prompts
    compete; default a quarter of the budget), `max_num_partial_prefills` (long prompts
    prefilling at once), `max_waiting` (queued requests before 429s), `max_running_per_tenant`,
    `tenant_fair_share`, `compilation_cache` (a directory, or False; see
    `workbench.compilation_cache`), `attention_kernel` (how attention reads the cached pages:
    "xla", a loop over gathered tiles, everywhere; "pallas", a kernel that reads the pages in
    place, compiled on a GPU and interpreted (slowly, for tests) on a CPU; see
    `models/paged_attention_pallas.py`).
    """

    engine_name = "esurge"

    def __init__(self, model: LoadedModel, *, page_size: int = 16, num_pages: int | None = None,
                 kv_cache_memory: int | str | None = None, kv_cache_fraction: float | None = None,
                 max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                 max_model_len: int | None = None, enable_prefix_caching: bool = True,
                 scheduling_policy: str = "fcfs", long_prefill_token_threshold: int | None = None,
                 max_num_partial_prefills: int = 1, max_waiting: int = 1024,
                 max_running_per_tenant: int | None = None, tenant_fair_share: bool = True,
                 compilation_cache: str | bool | None = None, attention_kernel: str = "xla"):
        super().__init__(model, max_model_len=max_model_len)
        if attention_kernel not in KERNELS:
            raise ValueError(f"attention_kernel must be one of {', '.join(KERNELS)}, got "
                             f"{attention_kernel!r}")
        if attention_kernel == "pallas" and not paged_attention_pallas.supported():
            raise ValueError(f"attention_kernel 'pallas' runs on a GPU (or interpreted on a CPU), "
                             f"not on {jax.default_backend()!r}; use 'xla'")
        if attention_kernel == "pallas" and model.mesh is not None and model.mesh.size > 1:
            raise ValueError("attention_kernel 'pallas' runs on one device; this model is "
                             f"sharded over {model.mesh.size} (use 'xla')")
        self.attention_kernel = attention_kernel
        compile_cache.configure(compilation_cache)
        if not is_int(page_size) or page_size < 1:
            raise ValueError(f"page_size must be an int >= 1, got {page_size!r}")
        self.page_size = page_size = int(page_size)
        accel = _on_accelerator()
        self.max_num_seqs = ((128 if accel else 32) if max_num_seqs is None
                             else check_rows("max_num_seqs", max_num_seqs))
        self.max_num_batched_tokens = ((2048 if accel else 256) if max_num_batched_tokens is None
                                       else max_num_batched_tokens)
        self.enable_prefix_caching = bool(enable_prefix_caching)
        self.scheduling_policy = scheduling_policy
        self._scheduler_kwargs = dict(
            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
            policy=scheduling_policy, long_prefill_token_threshold=long_prefill_token_threshold,
            max_num_partial_prefills=max_num_partial_prefills, max_waiting=max_waiting,
            max_running_per_tenant=max_running_per_tenant, tenant_fair_share=tenant_fair_share)
        ESurgeScheduler(KVCacheManager(1, page_size), **self._scheduler_kwargs)  # validate knobs
        self.num_pages = num_pages_for(
            bytes_per_page=PagedKVCache.bytes_per_page(model.config, page_size, model.dtype),
            page_size=page_size, max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs, num_pages=num_pages, kv_cache_memory=kv_cache_memory,
            kv_cache_fraction=kv_cache_fraction, shards=self._kv_shards(model))
        self.token_buckets = token_buckets(self.max_num_batched_tokens)
        self.runner = ESurgeRunner(model, num_pages=self.num_pages, page_size=page_size,
                                   max_num_seqs=self.max_num_seqs,
                                   max_model_len=self.max_model_len,
                                   token_buckets=self.token_buckets,
                                   attention_kernel=attention_kernel)
        self._init_core(self._make_scheduler, self.runner)

    @staticmethod
    def _kv_shards(model: LoadedModel) -> int:
        """Devices the page pool is split over: a tensor-parallel mesh splits pages over KV
        heads when they divide (`PagedKVCache.partition_spec`)."""
        tp = model.mesh.shape["tp"] if model.mesh is not None else 1
        return tp if model.config.num_key_value_heads % tp == 0 else 1

    def _make_scheduler(self) -> ESurgeScheduler:
        kv = KVCacheManager(self.num_pages, self.page_size, self.enable_prefix_caching)
        return ESurgeScheduler(kv, **self._scheduler_kwargs)

    @property
    def supports_priority(self) -> bool:
        """Whether a request's `priority` changes its place in the queue."""
        return self.scheduling_policy == "priority"

    supports_tenants = True  # a request's tenant counts in admission and the token budget

    def kv_cache_bytes(self) -> int:
        """Bytes of the page pool (allocated at start)."""
        return self.num_pages * PagedKVCache.bytes_per_page(self.model.config, self.page_size,
                                                            self.model.dtype)

    # ---- compilation ----------------------------------------------------------------------------
    def precompile(self) -> dict:
        """Compile every shape the driver dispatches with default sampling: one step per token
        bucket and the penalty-row reset; after it, a workload compiles nothing new (requests
        asking for top logprobs, or more logit_bias / stop ids than the default widths, compile
        their sampler width when they come). Starts the engine (allocating the pages) if needed;
        needs an idle engine. Returns {"shapes": [{"function", "num_tokens", "num_seqs",
        "seconds"}, ...], "seconds": wall seconds}."""
        self._check_open()
        if self.core.num_requests:
            raise EngineError("precompile() needs an idle engine; requests are in flight")
        self.start()
        t0 = time.perf_counter()
        with self.core.lock:
            shapes = self.runner.precompile()
        return {"shapes": shapes, "seconds": time.perf_counter() - t0}

    # ---- cache control and monitoring ---------------------------------------------------------
    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix (pages in use keep their owners); returns the number of
        pages that were cached. Later requests recompute what they would have reused."""
        with self.core.lock:
            return self.core.scheduler.reset_prefix_cache()

    def kv_snapshot(self) -> dict:
        """The page map, for a UI to draw:
        {"num_pages", "page_size", "usage" (fraction of pages held by sequences), "num_used",
         "num_cached" (free pages keeping a cached block), "num_free" (free, nothing cached),
         "pages": [{"page": id, "state": "used" | "cached" | "free", "owners": [request ids],
                    "ref_cnt": int, "hash": hex prefix of the block hash or None}, ...]}
        ("used" pages may also be cached: their "hash" is set.)"""
        with self.core.lock:
            kv = self.core.scheduler.kv
            owners = kv.owners()
            pages = []
            for b in kv.pool.blocks:
                state = "used" if b.ref_cnt else ("cached" if b.block_hash else "free")
                pages.append({
                    "page": b.block_id, "state": state, "ref_cnt": b.ref_cnt,
                    "owners": sorted({s.rsplit("#", 1)[0] for s in owners.get(b.block_id, ())}),
                    "hash": b.block_hash.hex()[:16] if b.block_hash else None})
        counts = {s: sum(p["state"] == s for p in pages) for s in ("used", "cached", "free")}
        return {"num_pages": self.num_pages, "page_size": self.page_size,
                "usage": counts["used"] / self.num_pages, "num_used": counts["used"],
                "num_cached": counts["cached"], "num_free": counts["free"], "pages": pages}

    def metrics(self) -> dict:
        """The collector's snapshot (KV usage, prefix hits, preemptions included) plus the
        page counts (`kv_pages`) and the token budget."""
        snap = self.collector.snapshot()
        with self.core.lock:
            pool = self.core.scheduler.kv.pool
            snap["kv_pages"] = {"total": pool.num_pages, "used": pool.num_pages - pool.num_free,
                                "cached_free": sum(1 for b in pool.blocks
                                                   if b.ref_cnt == 0 and b.block_hash),
                                "page_size": self.page_size}
        snap["max_num_batched_tokens"] = self.max_num_batched_tokens
        return snap
