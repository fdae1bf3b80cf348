"""vSurge: continuous batching with prefill/decode separation, priorities and concurrency controls.

Lifecycle: `start()` (or the context manager, or the first `generate`) allocates a contiguous KV
cache of `max_concurrent_decodes` slots x `max_model_len` positions and starts one driver thread.
Requests enter through a thread-safe inbox; each driver iteration reads as a sentence:

    schedule (admit waiting requests into free slots)  ->  run (prefill batches into their slots,
    then `decode_steps` batched decode steps over every live slot, in one device loop)  ->
    update (hand sampled tokens to the sequences, stream deltas, free finished slots).

JAX dispatch is asynchronous: the update of iteration k runs on the host while the device computes
iteration k+1, and the only transfer back is the sampled token ids (plus logprobs when asked).

The decode step costs what its shape costs, so the driver keeps the shape small: it decodes only
the power-of-two bucket of front slots that hold live requests (slots fill lowest-first, and when
the live ones would fit a smaller bucket the stragglers' cache rows and decode state move to the
front), and it reads only the cached positions the live rows can see (`decode_reads.py`). The
device arrays and the jitted calls on them live in `vsurge_slots.py`; this module is the host:
submission, the driver loop, streaming. `stop()` ends the thread, aborts what is left and frees
the cache; `start()` may follow again.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from typing import AsyncIterator, Iterator

import jax
import numpy as np

from workbench.engines.base import Engine
from workbench.engines.batching import to_logprob
from workbench.engines.buckets import pick_bucket, pow2_buckets, prompt_buckets
from workbench.engines.decode_reads import DecodeReads
from workbench.engines.model_runner import ChunkOutput, runner_for
from workbench.engines.output_stream import OutputStream
from workbench.engines.request import Request
from workbench.engines.types import (EngineError, EngineOverloadedError, Prompt,
                                     PromptTooLongError, RequestOutput)
from workbench.engines.vsurge_scheduler import Assignment, VSurgeScheduler
from workbench.engines.vsurge_slots import SlotDevice
from workbench.loading.loader import LoadedModel
from workbench.sampling_params import SamplingParams


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


class vSurge(Engine):  # noqa: N801 - the engine's name
    """Continuous-batching engine; see the module docstring."""

    engine_name = "vsurge"

    def __init__(self, model: LoadedModel, *, max_concurrent_decodes: int = 32,
                 max_concurrent_prefill: int = 4, max_prefill_length: int | None = None,
                 prefill_buckets: tuple[int, ...] | None = None, max_model_len: int | None = 2048,
                 interleaved_mode: bool = False, scheduling_policy: str = "fcfs",
                 max_waiting: int = 1024, decode_read: str | None = None, block_size: int = 64,
                 block_buckets: tuple[int, ...] | None = None,
                 read_buckets: tuple[int, ...] | None = None, decode_steps: int | None = None):
        super().__init__(model, max_model_len=max_model_len)
        self.decode_steps = default_decode_steps() if decode_steps is None else decode_steps
        if not isinstance(self.decode_steps, int) or self.decode_steps < 1:
            raise ValueError(f"decode_steps must be an integer >= 1, got {decode_steps!r}")
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
        self._scheduler_kwargs = dict(
            num_slots=max_concurrent_decodes, max_concurrent_prefill=max_concurrent_prefill,
            interleaved=interleaved_mode, policy=scheduling_policy, max_waiting=max_waiting)
        self.scheduler = VSurgeScheduler(**self._scheduler_kwargs)
        self.runner = runner_for(model.graphdef, model.attention_backend)
        # the slots' device arrays and the jitted calls on them (vsurge_slots.py)
        self.device = SlotDevice(
            model, self.runner, self.reads, num_slots=max_concurrent_decodes,
            max_model_len=self.max_model_len, decode_steps=self.decode_steps,
            row_buckets=self.row_buckets, batch_buckets=self.batch_buckets,
            prefill_buckets=self.prefill_buckets, eos_token_ids=self.eos_token_ids)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, OutputStream] = {}
        self._requests: dict[str, Request] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._inflight: list = []
        self._freed = False
        # Per driver iteration: wall seconds, and host seconds (wall minus the time blocked
        # waiting for the device's sampled tokens): the host overhead of one step.
        self.step_times: collections.deque = collections.deque(maxlen=4096)
        self.host_times: collections.deque = collections.deque(maxlen=4096)
        self._blocked = 0.0

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "vSurge":
        self._check_open()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self.device.allocate()
            self._stopping.clear()
            self._thread = threading.Thread(target=self._driver, name="vsurge-driver", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._stopping.set()
            self._wake.set()
            thread.join()
            for rid in list(self._requests):
                self._finish_aborted(rid)
            self._drain_inbox(abort_new=True)
            self.device.free()
            self._inflight = []
            self.scheduler = VSurgeScheduler(**self._scheduler_kwargs)
            self.collector.set_running(0)
            self.collector.set_waiting(0)

    def precompile(self, max_prompt_len: int | None = None) -> dict:
        """Compile every shape the driver can dispatch, so that no request pays for compilation:
        a prefill per (prefill batch bucket, prompt bucket) up to `max_prompt_len` (default
        `max_prefill_length`), a decode chunk per (live-row bucket, read size) and a slot move
        per move-list bucket. Call it on an idle engine, e.g. right after construction: it runs
        the jitted functions on a scratch cache of the engine's size, freed at the end. Requests
        that ask for top logprobs compile their own sampler width when they come.
        Returns {"prefill": shapes, "decode": shapes, "seconds": wall seconds}."""
        self._check_open()
        if self._requests:
            raise EngineError("precompile() needs an idle engine; requests are in flight")
        return self.device.precompile(min(max_prompt_len or self.max_prefill_length,
                                          self.max_prefill_length))

    def step_stats(self) -> dict:
        """Median wall and host-only milliseconds per driver iteration (host overhead probe)."""
        def median_ms(xs):
            xs = sorted(xs)
            return 1e3 * xs[len(xs) // 2] if xs else None
        return {"iterations": len(self.step_times), "wall_ms_p50": median_ms(self.step_times),
                "host_ms_p50": median_ms(self.host_times)}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def kv_cache_bytes(self) -> int:
        cache = self.device.cache
        return 0 if cache is None else sum(x.nbytes for x in jax.tree.leaves(cache))

    # ---- submission -----------------------------------------------------------------------------
    def submit(self, prompt: Prompt, sampling_params: SamplingParams | None = None, *,
               request_id: str | None = None, priority: int = 0, prompt_text: str | None = None,
               loop: asyncio.AbstractEventLoop | None = None) -> OutputStream:
        """Validate and queue one request; returns its output stream. Raises ValueError,
        PromptTooLongError, or EngineOverloadedError when the waiting queue is full."""
        self._check_open()
        req = self.make_request(prompt, sampling_params, request_id=request_id,
                                priority=priority, prompt_text=prompt_text)
        return self._submit(req, loop)

    def _submit(self, req: Request, loop: asyncio.AbstractEventLoop | None = None) -> OutputStream:
        if len(req.prompt_ids) > self.max_prefill_length:
            raise PromptTooLongError(f"prompt has {len(req.prompt_ids)} tokens; this engine's "
                                     f"max_prefill_length is {self.max_prefill_length}")
        if req.request_id in self._requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        try:
            # submitted but not admitted yet: queued in the scheduler or still in the inbox
            waiting = len(self._requests) - self.scheduler.num_running
            self.scheduler.check_capacity(len(req.sequences), waiting)
        except EngineOverloadedError:
            self.collector.on_rejected()
            raise
        if not self.running:
            self.start()
        stream = OutputStream(req.request_id, loop)
        self._streams[req.request_id] = stream
        self._requests[req.request_id] = req
        self.collector.on_arrival(req.request_id, len(req.prompt_ids))
        self._inbox.put(("add", req))
        self._wake.set()
        return stream

    def generate(self, prompts, sampling_params=None) -> list[RequestOutput]:
        prompts = self.normalize_prompts(prompts)
        params = self.normalize_params(sampling_params, len(prompts))
        reqs = [self.make_request(p, sp) for p, sp in zip(prompts, params)]  # validate all first
        streams = [self._submit(r) for r in reqs]
        for s in streams:
            while not s.get().finished:
                pass
        return [r.output() for r in reqs]

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None, *,
               request_id: str | None = None, priority: int = 0,
               prompt_text: str | None = None) -> Iterator[RequestOutput]:
        s = self.submit(prompt, sampling_params, request_id=request_id, priority=priority,
                        prompt_text=prompt_text)
        return self._iter_stream(s)

    def _iter_stream(self, s: OutputStream) -> Iterator[RequestOutput]:
        try:
            while True:
                out = s.get()
                yield out
                if out.finished:
                    return
        finally:
            if not s.closed:  # the consumer stopped early
                self.abort(s.request_id)

    async def astream(self, prompt: Prompt, sampling_params: SamplingParams | None = None, *,
                      request_id: str | None = None, priority: int = 0,
                      prompt_text: str | None = None) -> AsyncIterator[RequestOutput]:
        s = self.submit(prompt, sampling_params, request_id=request_id, priority=priority,
                        prompt_text=prompt_text, loop=asyncio.get_running_loop())
        try:
            while True:
                out = await s.aget()
                yield out
                if out.finished:
                    return
        finally:
            if not s.closed:  # the consumer went away (e.g. a client disconnect)
                self.abort(s.request_id)

    async def agenerate(self, prompts, sampling_params=None) -> list[RequestOutput]:
        prompts = self.normalize_prompts(prompts)
        params = self.normalize_params(sampling_params, len(prompts))
        reqs = [self.make_request(p, sp) for p, sp in zip(prompts, params)]
        loop = asyncio.get_running_loop()
        streams = [self._submit(r, loop) for r in reqs]
        for s in streams:
            while not (await s.aget()).finished:
                pass
        return [r.output() for r in reqs]

    def abort(self, request_id: str) -> bool:
        if request_id not in self._requests:
            return False
        self._inbox.put(("abort", request_id))
        self._wake.set()
        return True

    # ---- the driver -----------------------------------------------------------------------------
    def _driver(self) -> None:
        try:
            while not self._stopping.is_set():
                self._drain_inbox()
                if not self._inflight and not self.scheduler.num_running and \
                        not self.scheduler.num_waiting:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                t0 = time.perf_counter()
                plan = self.scheduler.schedule()
                work = [("prefill", batch, self._dispatch_prefill(batch))
                        for batch in plan.prefill_batches]
                if plan.decode:
                    work.append(("decode", *self._dispatch_decode()))
                previous, self._inflight = self._inflight, work
                self._update(previous)  # overlaps with the device running `work`
                wall = time.perf_counter() - t0
                self.step_times.append(wall)
                self.host_times.append(wall - self._blocked)
                self._blocked = 0.0
                self._update_gauges()
            self._update(self._inflight)
            self._inflight = []
        except BaseException as e:  # noqa: BLE001 - fail every request, keep the process alive
            err = EngineError(f"vSurge driver failed: {type(e).__name__}: {e}")
            for rid, stream in list(self._streams.items()):
                stream.put(err)
            self._streams.clear()
            self._requests.clear()
            raise

    def _compact(self, owners: list) -> list:
        """When the live slots fit a smaller decode batch than the one their positions span
        (slots free up anywhere), move the stragglers to free slots at the front: a few live
        requests then decode as a small batch instead of paying for all slots."""
        live = [i for i, o in enumerate(owners) if o is not None]
        size = pick_bucket(len(live), self.row_buckets)
        if not live or live[-1] < size:
            return owners
        self.device.move(self.scheduler.slots.compact(size))
        return self.scheduler.slots.snapshot()

    def _update_gauges(self) -> None:
        self.collector.set_running(self.scheduler.num_running)
        self.collector.set_waiting(self.scheduler.num_waiting)
        self.collector.set_slots(self.scheduler.slots.num_used, self.max_concurrent_decodes)

    def _drain_inbox(self, abort_new: bool = False) -> None:
        while True:
            try:
                kind, arg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                if abort_new:
                    self._finish_aborted(arg.request_id)
                else:
                    self.scheduler.add(arg)
            elif kind == "abort":
                self._abort_now(arg)

    def _abort_now(self, request_id: str) -> None:
        req = self.scheduler.abort(request_id)  # frees its slots
        if req is not None:
            for seq in req.sequences:
                seq.abort()
            self._freed = True
        self._finish_aborted(request_id)

    def _finish_aborted(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is None:
            return
        req.abort()
        self._emit(req)

    def _emit(self, req: Request) -> None:
        """Stream the request's new output; on finish, record it and forget the request."""
        stream = self._streams.get(req.request_id)
        if req.finished:
            self.scheduler.finish_request(req.request_id)
            self._requests.pop(req.request_id, None)
            self._streams.pop(req.request_id, None)
            self.collector.on_finish(req.request_id, req.finish_reason)
            self._update_gauges()
        if stream is not None:
            stream.put(req.output(delta=True))

    def _update(self, work: list) -> None:
        """Hand the sampled tokens of dispatched work to their sequences (host side)."""
        touched: dict[int, tuple[Request, int]] = {}
        for kind, owners, out in work:
            t0 = time.perf_counter()
            host = jax.device_get(out)
            self._blocked += time.perf_counter() - t0
            if kind == "prefill":
                rows = list(enumerate(owners))
                tokens = host.tokens[:, None]
                lps, top_ids, top_lps = (host.logprobs[:, None], host.top_ids[:, None],
                                         host.top_logprobs[:, None])
            else:
                # row i of the chunk is the slot the owner held when it was dispatched
                rows = [(i, a) for i, a in enumerate(owners) if a is not None]
                tokens, lps, top_ids, top_lps = (host.tokens, host.logprobs, host.top_ids,
                                                 host.top_logprobs)
            for i, a in rows:
                seq, n = a.sequence, 0
                for j in range(tokens.shape[1]):  # -1: the row was done at that step
                    tok = int(tokens[i, j])
                    if tok < 0 or seq.finished:
                        break
                    lp = (to_logprob(tok, lps[i, j], top_ids[i, j], top_lps[i, j],
                                     seq.params.top_logprobs) if seq.params.logprobs else None)
                    n += 1
                    if seq.append(tok, lp) and self.scheduler.free_sequence(a):
                        self._freed = True
                if n:
                    _, m = touched.get(id(a.request), (a.request, 0))
                    touched[id(a.request)] = (a.request, m + n)
        for req, n in touched.values():
            self.record_tokens(req, n)
            self._emit(req)

    def _dispatch_prefill(self, batch: list[Assignment]):
        for a in {id(a.request): a for a in batch}.values():
            self.collector.on_scheduled(a.request.request_id)
        return self.device.prefill(batch)

    def _dispatch_decode(self) -> tuple[list, ChunkOutput]:
        """Dispatch one decode chunk; returns (the slot owners its rows belong to, the chunk)."""
        owners = self.scheduler.slots.snapshot()
        if self._freed:  # rows freed on the host (stop strings, aborts) stop computing
            self.device.stop_rows(np.array([o is None for o in owners]))
            self._freed = False
        owners = self._compact(owners)
        # Read only the cached positions the live rows can see this iteration. Past the host's
        # count, the device holds up to decode_steps + 1 unread tokens (a prefill's first token
        # and the chunk in flight), and this chunk caches decode_steps - 1 more before its last
        # step (each step's own token is attended fresh, not read from the cache).
        ahead = 2 * self.decode_steps - 1
        seen = [len(o.request.prompt_ids) + len(o.sequence.output_ids) + ahead
                for o in owners if o is not None]
        return owners, self.device.decode(owners, seen)
