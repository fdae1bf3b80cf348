"""vInference: the baseline engine. Static batching.

Lifecycle of a call: requests are validated and tokenized up front (a bad prompt fails before any
work); their sequences (n per request) are cut into batches of at most `max_batch_size` whose
KV cache fits the KV budget (`kv_cache_memory`, default from `kv_budget.py`). Each batch
runs to completion: pad to a (batch, prefill length) bucket -> one prefill that samples the first
token -> a jitted `lax.while_loop` decode over a donated contiguous KV cache, `streaming_chunk`
steps per dispatch (16 by default, at most `max_model_len`) -> the host detokenizes each chunk,
applies stop strings and streams deltas.
The next chunk is dispatched before the host reads the current one (JAX dispatch is asynchronous),
unless a stop string may end a row early. Each chunk reads only the cached positions its rows can
see by its last step (`decode_reads.py`: ragged blocks per row by default, or a common prefix).

Behind a server (`astream`), requests wait in a bounded `BatchQueue` (`max_waiting`, then
`EngineOverloadedError`, HTTP 429) and one worker thread runs whatever waits as the next static
batch; `stop()` ends that thread (a later request starts it again).

Faults stay with their request: a request whose inputs cannot be prepared (`prepare_request`)
fails alone, before batching; an exception while a batch runs fails that batch's requests and the
next batches run (each batch builds its own cache, so there is no state to rebuild). A failed
request ends with finish_reason "error": `generate` returns it so, `stream` raises
`RequestFailedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from workbench import distributed
from workbench.engines.base import Engine
from workbench.engines.batch_queue import BatchQueue
from workbench.engines.batching import build_prefill_batch, prepare_request
from workbench.engines.buckets import (check_count, check_rows, pick_bucket, pow2_buckets,
                                       prompt_buckets)
from workbench.engines.decode_reads import DecodeReads
from workbench.engines.engine_core import mark_running
from workbench.engines.kv_budget import kv_budget_bytes, kv_bytes_per_token
from workbench.engines.model_runner import DecodeState, runner_for
from workbench.engines.request import Request, Sequence
from workbench.engines.sampled_tokens import append_sampled, record_tokens
from workbench.engines.types import (
    EngineError,
    EngineOverloadedError,
    Prompt,
    RequestFailedError,
    RequestOutput,
)
from workbench.engines.vinference_shapes import Shape, ShapeLedger, shape_bound
from workbench.loading.loader import LoadedModel
from workbench.sampling_params import SamplingParams

Row = tuple[Request, Sequence]

logger = logging.getLogger("workbench.engines")


class vInference(Engine):
    """Static-batching engine; see the module docstring."""

    engine_name = "vinference"

    def __init__(self, model: LoadedModel, *, max_batch_size: int = 32,
                 max_model_len: int | None = None, prefill_buckets: tuple[int, ...] | None = None,
                 batch_buckets: tuple[int, ...] | None = None, streaming_chunk: int | None = None,
                 cache_buckets: tuple[int, ...] | None = None, decode_read: str | None = None,
                 block_size: int = 64, block_buckets: tuple[int, ...] | None = None,
                 read_buckets: tuple[int, ...] | None = None, max_waiting: int = 1024,
                 kv_cache_memory: int | str | None = None):
        super().__init__(model, max_model_len=max_model_len)
        # Each batch's cache fits the KV budget (kv_budget.py): fewer rows per batch if need be.
        self.kv_budget = kv_budget_bytes(kv_cache_memory)
        self._token_bytes = kv_bytes_per_token(model.config, model.dtype)
        max_batch_size = check_rows("max_batch_size", max_batch_size)
        self.max_batch_size = max_batch_size
        # decode steps per dispatch (default 16): a chunk longer than max_model_len could never
        # run to its end (and its outputs are sized [B, streaming_chunk])
        self.streaming_chunk = (min(16, self.max_model_len) if streaming_chunk is None else
                                check_count("streaming_chunk", streaming_chunk,
                                            self.max_model_len, "max_model_len"))
        # Cache lengths are powers of two (few shapes, so few compilations) up to max_model_len.
        self.cache_buckets = tuple(sorted(cache_buckets or pow2_buckets(
            min(128, self.max_model_len), self.max_model_len)))
        # What a decode chunk reads of the cache: see decode_reads.py.
        self.reads = DecodeReads(decode_read, max_model_len=self.max_model_len,
                                 attention_backend=model.attention_backend,
                                 block_size=block_size, read_buckets=read_buckets,
                                 block_buckets=block_buckets)
        # compiled lazily: a prefill per (batch, prompt) bucket pair used, a cache grow per
        # (batch, prompt, cache) triple, a decode chunk per (batch, cache, read size);
        # `compile_bound()` counts what the buckets allow
        self.prefill_buckets = tuple(sorted(prefill_buckets or prompt_buckets(self.max_model_len)))
        self.batch_buckets = tuple(sorted(batch_buckets or pow2_buckets(1, max_batch_size)))
        if self.prefill_buckets[-1] < self.max_model_len - 1:
            raise ValueError(f"largest prefill bucket {self.prefill_buckets[-1]} is below "
                             f"max_model_len {self.max_model_len}")
        self.runner = runner_for(model.graphdef, model.attention_backend)
        self.shapes = ShapeLedger()  # what has been dispatched (so compiled), for precompile()
        self._active: dict[str, Request] = {}
        self._queue = BatchQueue(self._run, name=self.engine_name, max_batch_size=max_batch_size,
                                 max_waiting=max_waiting, on_change=self._set_gauges)
        self._channel_lock = threading.Lock()  # one batch at a time on a multi-host mesh

    def _set_gauges(self, num_running: int, num_waiting: int) -> None:
        self.collector.set_running(num_running)
        self.collector.set_waiting(num_waiting)

    # ---- public API ---------------------------------------------------------------------------
    def generate(self, prompts, sampling_params=None) -> list[RequestOutput]:
        self._check_open()
        prompts = self.normalize_prompts(prompts)
        params = self.normalize_params(sampling_params, len(prompts))
        requests = [self.make_request(p, sp) for p, sp in zip(prompts, params)]
        for _ in self._run(requests):
            pass
        return [r.output() for r in requests]

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None, *,
               request_id: str | None = None, priority: int = 0,
               prompt_text: str | None = None) -> Iterator[RequestOutput]:
        self._check_open()
        req = self.make_request(prompt, sampling_params, request_id=request_id,
                                priority=priority, prompt_text=prompt_text)
        return self._stream(req)

    def stream_many(self, prompts, sampling_params=None) -> Iterator[tuple[int, RequestOutput]]:
        """All prompts as one static batch (or several of `max_batch_size`), streamed."""
        self._check_open()
        prompts = self.normalize_prompts(prompts)
        params = self.normalize_params(sampling_params, len(prompts))
        requests = [self.make_request(p, sp) for p, sp in zip(prompts, params)]
        return self._stream_many(requests)

    def _stream_many(self, requests: list[Request]) -> Iterator[tuple[int, RequestOutput]]:
        ended = [False] * len(requests)
        try:
            for _ in self._run(requests):
                for i, req in enumerate(requests):
                    if ended[i]:
                        continue
                    out = req.output(delta=True)
                    if out.finished or any(o.delta_text or o.delta_token_ids
                                           for o in out.outputs):
                        ended[i] = out.finished
                        yield i, out
            for i, req in enumerate(requests):
                if not ended[i]:  # finished without new tokens (e.g. aborted)
                    yield i, req.output(delta=True)
        finally:
            for req in requests:
                if not req.finished:  # the consumer stopped early
                    self._abort_request(req)

    def _stream(self, req: Request) -> Iterator[RequestOutput]:
        try:
            for _ in self._run([req]):
                if req.error is not None:
                    break
                out = req.output(delta=True)
                if out.finished or any(o.delta_text or o.delta_token_ids for o in out.outputs):
                    yield out
                    if out.finished:
                        return
            if req.error is not None:
                raise RequestFailedError(f"request {req.request_id} failed in the vinference "
                                         f"engine: {req.error}")
            yield req.output(delta=True)  # finished without new tokens (e.g. aborted)
        finally:
            if not req.finished:  # the consumer stopped early
                self._abort_request(req)

    async def astream(self, prompt: Prompt, sampling_params: SamplingParams | None = None, *,
                      request_id: str | None = None, priority: int = 0,
                      prompt_text: str | None = None) -> AsyncIterator[RequestOutput]:
        """Through the batch queue: waits for the next static batch (see the module docstring)."""
        self._check_open()
        req = self.make_request(prompt, sampling_params, request_id=request_id,
                                priority=priority, prompt_text=prompt_text)
        try:
            s = self._queue.submit(req, asyncio.get_running_loop())
        except EngineOverloadedError:
            self.collector.on_rejected()
            raise
        async with contextlib.aclosing(s.aoutputs(lambda: self.abort(req.request_id))) as outs:
            async for out in outs:
                yield out

    @property
    def running(self) -> bool:
        """Whether the batch queue's worker thread runs."""
        return self._queue.running

    def stop(self) -> None:
        """End the batch queue's worker after its batch; abort what waits."""
        self._queue.stop()

    def abort(self, request_id: str) -> bool:
        if self._queue.abort(request_id):
            self.collector.on_finish(request_id, "abort")
            return True
        req = self._active.get(request_id)
        if req is None or req.finished:
            return False
        self._abort_request(req)
        return True

    def _abort_request(self, req: Request) -> None:
        req.abort()
        self.collector.on_finish(req.request_id, "abort")

    def precompile(self, batch_sizes=None, prompt_lens=(32,), max_tokens: int = 128) -> dict:
        """Compile what batches of `batch_sizes` rows (default: every batch bucket) with prompts
        of `prompt_lens` tokens asking `max_tokens` new ones dispatch: their prefill, cache grow
        and every decode read size their lengths pass through (vInference compiles lazily;
        this moves it ahead of the first request). Compile-only: one prefill runs per shape,
        the decode chunks start with every row done and exit at once. Call it on an idle engine.
        Returns {"shapes": the shapes dispatched that had not been before (dicts of
        `vinference_shapes.Shape`), "seconds": wall seconds, "bound": `compile_bound()`}."""
        self._check_open()
        if self.channel is not None:
            raise EngineError("precompile() is not supported on a multi-host mesh: the other "
                              "processes would not dispatch the same programs")
        if self._active or self._queue.num_waiting:
            raise EngineError("precompile() needs an idle engine; requests are in flight")
        before = self.shapes.snapshot()
        t0 = time.perf_counter()
        for rows in batch_sizes or self.batch_buckets:
            for n in prompt_lens:
                self._compile_batch(int(rows), int(n), min(max_tokens, self.max_model_len - n))
        new = sorted(self.shapes.snapshot() - before)
        return {"shapes": [dataclasses.asdict(x) for x in new],
                "seconds": time.perf_counter() - t0, "bound": self.compile_bound()}

    def _compile_batch(self, rows: int, n: int, max_tokens: int) -> None:
        """Dispatch the shapes of one batch of `rows` prompts of `n` tokens asking `max_tokens`
        (default sampling): as `_run_batch` would, without decoding."""
        if not (1 <= rows <= self.max_batch_size and 1 <= n < self.max_model_len
                and max_tokens >= 1):
            raise ValueError(f"precompile: {rows} rows of {n} prompt tokens and {max_tokens} new "
                             f"ones do not fit max_batch_size {self.max_batch_size} and "
                             f"max_model_len {self.max_model_len}")
        sp = SamplingParams(max_tokens=max_tokens)
        B, T, S = self._buckets([n] * rows, [sp] * rows)
        batch = build_prefill_batch([[1] * n] * rows, [sp] * rows, [0] * rows, batch_size=B,
                                    length=T, eos_token_ids=self.eos_token_ids,
                                    vocab_size=self.model.config.vocab_size)
        out, cache = self._prefill(batch, S)
        state = self._decode_state(out, batch.penalties, [n] * B, [max_tokens] * B,
                                   np.ones(B, bool))
        # `_run_batch`'s dispatches: chunk k (k = 0, 1, ...) is sent before the host reads chunk
        # k - 1 (it has 1 + (k - 1) * chunk tokens per row then), while a row is unfinished, and
        # reads n + (k + 1) * chunk - 1 positions per row by its last step
        c = self.streaming_chunk
        last = (max_tokens - 2) // c + 1 if max_tokens > 1 else -1  # one token: no decode
        sizes = {self.reads.size_for([n + (k + 1) * c - 1] * rows, B, S) for k in range(last + 1)}
        for size in sorted(sizes):
            state, cache, chunk = self._decode(cache, state, batch.sampling, size, batch.num_top)
        jax.block_until_ready(out.tokens if not sizes else chunk.tokens)
        del cache, state

    def compile_bound(self) -> dict[str, int]:
        """How many programs this configuration's buckets allow with default sampling
        (`vinference_shapes.shape_bound`): {"prefill", "grow", "decode", "total"}."""
        return shape_bound(self.batch_buckets, self.prefill_buckets, self.cache_buckets,
                           self.reads.sizes)

    # ---- running batches ---------------------------------------------------------------------
    def _run(self, requests: list[Request]) -> Iterator[None]:
        """Run every sequence of `requests`; yields after each step of device work."""
        if self.channel is not None and self.channel.leader:
            # one batch at a time on a multi-host mesh: the followers run the same batch
            self._channel_lock.acquire()
            try:
                self.channel.send(distributed.Op.RUN, distributed.requests_to_wire(requests))
            except BaseException:
                self._channel_lock.release()
                raise
        for req in requests:
            self._active[req.request_id] = req
            self.collector.on_arrival(req.request_id, len(req.prompt_ids), n=req.params.n,
                                      max_tokens=req.params.max_tokens)

        def steps() -> Iterator[None]:
            rows = [(r, s) for r in requests if self._prepare(r) for s in r.sequences]
            for batch in self._batches(rows):
                try:
                    yield from self._run_batch(batch)
                except Exception as e:  # this batch's requests fail, not others
                    logger.error("vinference: a batch failed (%s: %s)", type(e).__name__, e,
                                 exc_info=e)
                    for req in {id(r): r for r, _ in batch}.values():
                        self._fail(req, f"a device step failed: {type(e).__name__}: {e}")
                    yield

        batches = steps()
        completed = False
        try:
            for _ in batches:
                yield
            completed = True
        finally:
            if not completed and self.channel is not None:
                # The consumer left early: abort the rest and run the batches out (every row
                # finished, so they end at their next step), as the followers do.
                for req in requests:
                    if not req.finished:
                        self._abort_request(req)
                for _ in batches:
                    pass
            batches.close()
            for req in requests:
                self._active.pop(req.request_id, None)
            if self.channel is not None and self.channel.leader:
                self._channel_lock.release()
            self.collector.set_kv_cache_usage(0.0)  # the batch's cache is dropped

    def prepare(self, req: Request) -> None:
        """Check one request's inputs on the host before it joins a batch."""
        prepare_request(req, self.eos_token_ids)

    def _cache_bytes(self, rows: list[Row]) -> int:
        """Bytes of the cache `_run_batch` allocates for `rows` (padded to its buckets)."""
        B = pick_bucket(len(rows), self.batch_buckets)
        S = pick_bucket(max(len(r.prompt_ids) + s.params.max_tokens for r, s in rows),
                        self.cache_buckets)
        return B * S * self._token_bytes

    def _batches(self, rows: list[Row]) -> Iterator[list[Row]]:
        """`rows` cut into batches of at most `max_batch_size` whose cache fits the KV budget
        (a single row always runs: `max_model_len` bounds it)."""
        batch: list[Row] = []
        for row in rows:
            if batch and (len(batch) == self.max_batch_size
                          or self._cache_bytes(batch + [row]) > self.kv_budget):
                yield batch
                batch = []
            batch.append(row)
        if batch:
            yield batch

    def _prepare(self, req: Request) -> bool:
        """`prepare(req)`; False (and the request failed) if it raises."""
        try:
            self.prepare(req)
        except Exception as e:  # noqa: BLE001 - this request's fault only
            self._fail(req, f"preparing its inputs failed: {type(e).__name__}: {e}")
            return False
        return True

    def _fail(self, req: Request, reason: str) -> None:
        if not req.finished:
            req.fail(reason)
            self.collector.on_finish(req.request_id, "error")

    def _run_batch(self, rows: list[Row]) -> Iterator[None]:
        live = [row for row, done in zip(rows, self._finished(rows)) if not done]
        if not live:
            return
        for req in {id(r): r for r, _ in live}.values():
            self.collector.on_scheduled(req.request_id)
            mark_running(req)
        params = [s.params for _, s in live]
        lens = [len(r.prompt_ids) for r, _ in live]
        B, T, S = self._buckets(lens, params)
        batch = build_prefill_batch(
            [r.prompt_ids for r, _ in live], params, [s.seed for _, s in live], batch_size=B,
            length=T, eos_token_ids=self.eos_token_ids, vocab_size=self.model.config.vocab_size)
        K, sampling, penalties = batch.num_top, batch.sampling, batch.penalties
        self._kv_capacity = B * S  # the batch's cache, for kv_cache_usage_perc
        self.collector.on_iteration(sum(lens))
        out, cache = self._prefill(batch, S)
        first = distributed.to_host(out)
        self._append(live, first.tokens[:, None], first.logprobs[:, None],
                     first.top_ids[:, None], first.top_logprobs[:, None], K)
        yield

        done = np.ones(B, bool)
        done[: len(live)] = self._finished(live)
        pad = [0] * (B - len(live))
        state = self._decode_state(out, penalties, lens + pad,
                                   [p.max_tokens for p in params] + [1] * len(pad), done)
        # Overlap host and device work unless a stop string can end a row between chunks.
        pipelined = not any(p.stop for p in params)
        pending = None
        steps = 0  # decode steps dispatched so far
        last_size: int | None = None  # the read size dispatched last

        def dispatch(cache, state):
            nonlocal steps, last_size
            # Step j (0-based over the whole decode) writes row i's token at lens[i] + j and
            # attends to the cached positions before it: by the chunk's last step row i sees
            # lens[i] + steps + chunk - 1 cached positions (rows finished on the host are done on
            # the device too, and read nothing).
            seen = [n + steps + self.streaming_chunk - 1
                    for n, (_, s) in zip(lens, live) if not s.finished]
            steps += self.streaming_chunk
            state = self._merge_host_done(state, live, B)  # aborts, stop strings
            # no row left (aborted meanwhile): every row is done and the chunk exits at once,
            # so any read size does; the last one is compiled already
            if seen or last_size is None:
                last_size = self.reads.size_for(seen, B, S)
            return self._decode(cache, state, sampling, last_size, K)

        while not self._finished(live).all():
            if pending is None:
                pending = dispatch(cache, state)
            state, cache, chunk = pending
            pending = None
            if pipelined:  # dispatch the next chunk before reading this one
                pending = dispatch(cache, state)
                cache = None  # donated to the pending call
            host = distributed.to_host(chunk)
            if (host.tokens[: len(live)] < 0).all():
                # every row is done on device (the host already knows it too)
                for _, s in live:
                    assert s.finished, "device finished a row the host did not"
                break
            for j in range(host.tokens.shape[1]):  # one engine iteration per decode step
                rows = int((host.tokens[: len(live), j] >= 0).sum())
                if rows:
                    self.collector.on_iteration(rows)
            self._append(live, host.tokens, host.logprobs, host.top_ids, host.top_logprobs, K)
            yield
        if pending is not None:
            jax.block_until_ready(pending[2].tokens)
        del cache, pending

    def _buckets(self, lens: list[int], params: list[SamplingParams]) -> tuple[int, int, int]:
        """(batch bucket B, prompt bucket T, cache bucket S) of rows with prompts of `lens`."""
        B = pick_bucket(len(lens), self.batch_buckets)
        T = pick_bucket(max(lens), self.prefill_buckets)
        S = pick_bucket(max(n + p.max_tokens for n, p in zip(lens, params)), self.cache_buckets)
        return B, T, S

    def _prefill(self, batch, S: int):
        """Prefill `batch` ([B, T]) into a cache of its prompt bucket T, grown to S after: the
        model's prefill compiles per (B, T), only the cheap grow per (B, T, S)."""
        B, T = batch.ids.shape
        K = batch.num_top
        self.shapes.note(Shape("prefill", B, T, T, K))
        out, cache = self.runner.prefill(self.model.state, self.model.new_cache(B, T), batch.ids,
                                         batch.positions, batch.last_idx, batch.sampling,
                                         batch.penalties, num_top=K)
        if S != T:
            self.shapes.note(Shape("grow", B, T, S))
            cache = self.runner.grow_cache(cache, max_len=S)
        return out, cache

    @staticmethod
    def _decode_state(out, penalties, positions: list[int], max_tokens: list[int],
                      done: np.ndarray) -> DecodeState:
        """The decode loop's state after a prefill that sampled `out.tokens` (one output token
        per row so far); `positions`, `max_tokens` and `done` give every row of the bucket."""
        B = len(positions)
        return DecodeState(tokens=out.tokens, positions=jnp.asarray(positions, jnp.int32),
                           output_pos=jnp.ones(B, jnp.int32), done=jnp.asarray(done),
                           max_tokens=jnp.asarray(max_tokens, jnp.int32),
                           penalties=penalties.update(out.tokens))

    def _decode(self, cache, state: DecodeState, sampling, size: int, K: int):
        """One decode chunk reading `size` (`decode_reads`); returns (state, cache, chunk)."""
        B, S = state.tokens.shape[0], cache.max_len
        self.shapes.note(Shape("decode", B, size, S, K))
        state, cache, chunk = self.runner.decode_loop(
            self.model.state, self.reads.with_size(cache, size), state, sampling,
            num_steps=self.streaming_chunk, num_top=K)
        return state, self.reads.reset(cache), chunk

    def _finished(self, live: list[Row]) -> np.ndarray:
        """[len(live)] bool: rows the host has finished. On a multi-host mesh the leader's view
        is sent to the followers here, so every process dispatches the same steps."""
        if self.channel is not None:
            return distributed.sync_finished(self.channel, live)
        return np.array([s.finished for _, s in live], bool)

    def _merge_host_done(self, state: DecodeState, live: list[Row], B: int) -> DecodeState:
        host_done = np.ones(B, bool)
        host_done[: len(live)] = self._finished(live)
        return DecodeState(state.tokens, state.positions, state.output_pos,
                           state.done | host_done, state.max_tokens, state.penalties)

    def _append(self, live: list[Row], tokens, logprobs, top_ids, top_lps, K: int) -> None:
        """Feed a chunk of sampled tokens `[B, N]` to the host-side sequences; then set the KV
        usage of the batch's cache (cached positions of its unfinished rows / B * S)."""
        touched = {}
        for i, (req, seq) in enumerate(live):
            n = append_sampled(seq, tokens[i], logprobs[i], top_ids[i], top_lps[i])
            if n:
                _, m = touched.get(id(req), (req, 0))
                touched[id(req)] = (req, m + n)
        for req, n in touched.values():
            record_tokens(self.collector, req, n)
            if req.finished:
                self.collector.on_finish(req.request_id, req.finish_reason)
        cached = sum(len(r.prompt_ids) + len(s.output_ids) for r, s in live if not s.finished)
        self.collector.set_kv_cache_usage(cached / self._kv_capacity)
