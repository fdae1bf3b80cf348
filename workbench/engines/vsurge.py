"""vSurge: continuous batching with prefill/decode separation, priorities and concurrency controls.

Lifecycle: `start()` (or the context manager, or the first `generate`) allocates a contiguous KV
cache of `max_concurrent_decodes` slots x `max_model_len` positions (as many slots as fit the KV
budget, `kv_cache_memory`, default from `kv_budget.py`) and starts the driver thread of
the shared background-engine core (`engine_core.py`). Each driver iteration reads as a sentence:

    schedule (admit waiting requests into free slots)  ->  run (prefill batches into their slots,
    then `decode_steps` batched decode steps over every live slot, in one device loop)  ->
    update (hand sampled tokens to the sequences, stream deltas, free finished slots).

JAX dispatch is asynchronous: the update of iteration k runs on the host while the device computes
iteration k+1, and the only transfer back is the sampled token ids (plus logprobs when asked).

The decode step costs what its shape costs, so the scheduler keeps the shape small: it decodes only
the power-of-two bucket of front slots that hold live requests (slots fill lowest-first, and when
the live ones would fit a smaller bucket the stragglers' cache rows and decode state move to the
front), and it reads only the cached positions the live rows can see (`decode_reads.py`). The
plan of each iteration comes from `vsurge_scheduler.py`, the device arrays and the jitted calls on
them live in `vsurge_slots.py`; this module wires them to the core. `stop()` ends the thread,
aborts what is left and frees the cache; `start()` may follow again.
"""

from __future__ import annotations

import jax

from workbench.engines.background import BackgroundEngine
from workbench.engines.buckets import check_count, check_rows, pow2_buckets, prompt_buckets
from workbench.engines.decode_reads import DecodeReads
from workbench.engines.kv_budget import kv_budget_bytes, kv_bytes_per_token
from workbench.engines.model_runner import runner_for
from workbench.engines.request import Request
from workbench.engines.types import EngineError, PromptTooLongError
from workbench.engines.vsurge_scheduler import VSurgeScheduler
from workbench.engines.vsurge_slots import SlotDevice
from workbench.loading.loader import LoadedModel


def default_decode_steps(backend: str | None = None) -> int:
    """Decode steps per driver iteration, in one device loop. The host's per-iteration work
    (scheduling, dispatch, reading tokens back, streaming) is paid once per chunk, while a slot
    that finishes inside a chunk idles until its end and a waiting request, a stop string or an
    abort takes effect at the next iteration. On a CPU a step takes 20-200 ms against ~1-3 ms of
    host work, so one step per iteration (a burst of 64 requests on 2 cores: 101.5 tok/s with 1
    step, 93.5 with 4). On an accelerator a step takes a few ms, about the host's work per
    iteration (H200, 1B model, batch 1: 4.1 ms per 1-step iteration against 2.9 ms per token
    in vInference's device loop), so 8 steps."""
    return 1 if (backend or jax.default_backend()) == "cpu" else 8


class vSurge(BackgroundEngine):  # noqa: N801 - the engine's name
    """Continuous-batching engine; see the module docstring."""

    engine_name = "vsurge"

    def __init__(self, model: LoadedModel, *, max_concurrent_decodes: int = 32,
                 max_concurrent_prefill: int = 4, max_prefill_length: int | None = None,
                 prefill_buckets: tuple[int, ...] | None = None, max_model_len: int | None = 2048,
                 interleaved_mode: bool = False, scheduling_policy: str = "fcfs",
                 max_waiting: int = 1024, decode_read: str | None = None, block_size: int = 64,
                 block_buckets: tuple[int, ...] | None = None,
                 read_buckets: tuple[int, ...] | None = None, decode_steps: int | None = None,
                 kv_cache_memory: int | str | None = None):
        super().__init__(model, max_model_len=max_model_len)
        # The slots' cache fits the KV budget (kv_budget.py): fewer slots than asked if need be.
        self.kv_budget = kv_budget_bytes(kv_cache_memory)
        slot_bytes = self.max_model_len * kv_bytes_per_token(model.config, model.dtype)
        if self.kv_budget < slot_bytes:
            raise ValueError(f"the KV budget of {self.kv_budget} bytes holds no slot of "
                             f"max_model_len {self.max_model_len} ({slot_bytes} bytes): raise "
                             "kv_cache_memory or lower max_model_len")
        max_concurrent_decodes = min(check_rows("max_concurrent_decodes", max_concurrent_decodes),
                                     self.kv_budget // slot_bytes)
        max_concurrent_prefill = min(check_rows("max_concurrent_prefill", max_concurrent_prefill),
                                     max_concurrent_decodes)
        # a loop longer than max_model_len steps could never run to its end (and sizes [B, steps])
        self.decode_steps = (min(default_decode_steps(), self.max_model_len) if decode_steps is None
                             else check_count("decode_steps", decode_steps, self.max_model_len,
                                              "max_model_len"))
        self.max_concurrent_decodes = max_concurrent_decodes
        self.max_concurrent_prefill = max_concurrent_prefill
        if max_prefill_length is not None and max_prefill_length < 1:
            raise ValueError(f"max_prefill_length must be >= 1, got {max_prefill_length}")
        self.max_prefill_length = min(max_prefill_length or self.max_model_len - 1,
                                      self.max_model_len - 1)
        self.prefill_buckets = tuple(sorted(prefill_buckets
                                            or prompt_buckets(self.max_prefill_length)))
        if self.prefill_buckets[-1] < self.max_prefill_length:
            raise ValueError(f"largest prefill bucket {self.prefill_buckets[-1]} is below "
                             f"max_prefill_length {self.max_prefill_length}")
        # What a decode step reads of the cache: see decode_reads.py.
        self.reads = DecodeReads(decode_read, max_model_len=self.max_model_len,
                                 attention_backend=model.attention_backend,
                                 block_size=block_size, read_buckets=read_buckets,
                                 block_buckets=block_buckets)
        self.batch_buckets = pow2_buckets(1, max_concurrent_prefill)
        self.row_buckets = pow2_buckets(1, max_concurrent_decodes)  # decode batch sizes
        self.interleaved_mode = interleaved_mode
        self.scheduling_policy = scheduling_policy
        self._scheduler_kwargs = dict(
            num_slots=max_concurrent_decodes, max_concurrent_prefill=max_concurrent_prefill,
            interleaved=interleaved_mode, policy=scheduling_policy, max_waiting=max_waiting,
            decode_steps=self.decode_steps, row_buckets=self.row_buckets,
            cache_len=self.max_model_len)
        VSurgeScheduler(**self._scheduler_kwargs)  # validate the knobs now
        self.runner = runner_for(model.graphdef, model.attention_backend)
        # the slots' device arrays and the jitted calls on them (vsurge_slots.py)
        self.device = SlotDevice(
            model, self.runner, self.reads, num_slots=max_concurrent_decodes,
            max_model_len=self.max_model_len, decode_steps=self.decode_steps,
            row_buckets=self.row_buckets, batch_buckets=self.batch_buckets,
            prefill_buckets=self.prefill_buckets, eos_token_ids=self.eos_token_ids)
        self._init_core(lambda: VSurgeScheduler(**self._scheduler_kwargs), self.device)

    @property
    def supports_priority(self) -> bool:
        """Whether a request's `priority` changes its place in the queue."""
        return self.scheduling_policy == "priority"

    def kv_cache_bytes(self) -> int:
        cache = self.device.cache
        return 0 if cache is None else sum(x.nbytes for x in jax.tree.leaves(cache))

    def _check_request(self, req: Request) -> None:
        if len(req.prompt_ids) > self.max_prefill_length:
            raise PromptTooLongError(f"prompt has {len(req.prompt_ids)} tokens; this engine's "
                                     f"max_prefill_length is {self.max_prefill_length}")

    def precompile(self, max_prompt_len: int | None = None) -> dict:
        """Compile every shape the driver can dispatch, so that no request pays for compilation:
        a prefill per (prefill batch bucket, prompt bucket) up to `max_prompt_len` (default
        `max_prefill_length`), a decode chunk per (live-row bucket, read size) and a slot move
        per move-list bucket. Call it on an idle engine, e.g. right after construction: it runs
        the jitted functions on a scratch cache of the engine's size, freed at the end. Requests
        that ask for top logprobs compile their own sampler width when they come.
        Returns {"prefill": count, "decode": count, "shapes": every program compiled (dicts),
        "seconds": wall seconds}; `compile_bound()` counts the same set without compiling."""
        self._check_open()
        if self.core.num_requests:
            raise EngineError("precompile() needs an idle engine; requests are in flight")
        return self.device.precompile(min(max_prompt_len or self.max_prefill_length,
                                          self.max_prefill_length))

    def compile_bound(self) -> dict[str, int]:
        """How many programs requests with default sampling can make this engine compile (what
        `precompile()` compiles): {"prefill", "decode", "move", "total"}."""
        shapes = self.device.shapes(self.max_prefill_length)
        count = {k: sum(s["function"] == k for s in shapes) for k in ("prefill", "decode", "move")}
        return {**count, "total": len(shapes)}
