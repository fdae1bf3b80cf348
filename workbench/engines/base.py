"""The engine contract shared by vInference, vSurge and eSurge.

Every engine:
- `generate(prompts, sampling_params=None) -> list[RequestOutput]`: prompts are a str, a list of
  token ids, or a list of either; one `SamplingParams` for all or one per prompt.
- `stream(prompt, sampling_params=None) -> Iterator[RequestOutput]`: outputs carry `delta_text`;
  the last one has `finished=True`.
- `stream_many(prompts, sampling_params=None) -> Iterator[tuple[int, RequestOutput]]`: every
  prompt submitted at once (one static batch where the engine batches statically), outputs with
  `delta_text` interleaved as they come, each tagged with its prompt's index; every prompt's last
  output has `finished=True`. Leaving the iterator early aborts what is left.
- `chat(messages, sampling_params=None, stream=False)`: the tokenizer's chat template with
  `add_generation_prompt=True`, then `generate` or `stream`.
- async twins `agenerate`, `astream`, `achat` for servers (the event loop is never blocked).
- `abort(request_id)`, `metrics()` (a snapshot dict from the shared `MetricsCollector`),
  `start()`/`stop()` (background engines), `close()` and use as a context manager. Closing frees
  device memory, so a notebook can build and drop engines repeatedly.

Engines must produce the same tokens for the same request: greedy always, sampled when seeded.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import queue
import threading
import uuid
from typing import AsyncIterator, Iterator

from workbench import compilation_cache
from workbench.engines.prompt_logprobs import prompt_logprobs
from workbench.engines.request import Request
from workbench.engines.types import EngineError, Prompt, PromptTooLongError, RequestOutput
from workbench.loading.loader import LoadedModel
from workbench.metrics import MetricsCollector
from workbench.sampling_params import SamplingParams
from workbench.text_input import check_text, check_texts


def _is_token_ids(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(
        isinstance(t, int) and not isinstance(t, bool) for t in x)


class Engine(abc.ABC):
    """Base class: request building and validation, chat, async twins, lifecycle."""

    engine_name: str = "engine"
    # On a multi-host mesh: the step channel to the other processes (`workbench.distributed`).
    channel = None

    def __init__(self, model: LoadedModel, *, max_model_len: int | None = None):
        if not isinstance(model, LoadedModel):
            raise TypeError(f"model must be a LoadedModel (from load_model), got {type(model).__name__}")
        limit = model.config.max_position_embeddings
        if max_model_len is not None and (isinstance(max_model_len, bool)
                                          or not isinstance(max_model_len, int)
                                          or max_model_len < 2):
            raise ValueError(f"max_model_len must be an integer >= 2 (or None for the default), "
                             f"got {max_model_len!r}")
        self.max_model_len = min(max_model_len or min(limit, 4096), limit)
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        compilation_cache.configure()  # on by default: a restarted kernel starts warm
        self.model = model
        self.tokenizer = model.tokenizer
        self.eos_token_ids = model.eos_token_ids
        self.collector = MetricsCollector(self.engine_name, model.name)
        self._counter = itertools.count()
        self._closed = False
        self._lock = threading.RLock()

    # ---- request building -------------------------------------------------------------------
    def normalize_prompts(self, prompts) -> list[Prompt]:
        """One prompt or a list of prompts -> list (token-id lists stay token ids)."""
        if isinstance(prompts, str) or _is_token_ids(prompts):
            return [prompts]
        if isinstance(prompts, (list, tuple)) and prompts:
            for i, p in enumerate(prompts):
                if not (isinstance(p, str) or _is_token_ids(p)):
                    raise ValueError(
                        f"prompt {i} must be a string or a non-empty list of token ids, "
                        f"got {type(p).__name__}")
            return list(prompts)
        raise ValueError("prompts must be a string, a list of token ids, or a non-empty list of them")

    def normalize_params(self, params, count: int) -> list[SamplingParams]:
        if params is None:
            return [SamplingParams()] * count
        if isinstance(params, SamplingParams):
            return [params] * count
        if isinstance(params, (list, tuple)) and len(params) == count and all(
                isinstance(p, SamplingParams) for p in params):
            return list(params)
        raise ValueError(
            f"sampling_params must be a SamplingParams or a list of {count} of them")

    def new_request_id(self) -> str:
        return f"{self.engine_name}-{next(self._counter)}-{uuid.uuid4().hex[:8]}"

    def make_request(self, prompt: Prompt, params: SamplingParams | None = None, *,
                     request_id: str | None = None, priority: int = 0,
                     prompt_text: str | None = None, tenant: str | None = None) -> Request:
        """Tokenize and validate one prompt; raises ValueError / PromptTooLongError."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        vocab = self.model.config.vocab_size
        params.validate_vocab(vocab)
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass token ids instead of text")
            ids = self.tokenizer.encode(check_text("prompt", prompt))
            text = prompt
        elif _is_token_ids(prompt):
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt token ids must be in [0, {vocab}), got {bad[:5]}")
            text = prompt_text
        else:
            raise ValueError("a prompt must be a string or a non-empty list of token ids")
        if not ids:
            raise ValueError("the prompt is empty after tokenization")
        if len(ids) + params.max_tokens > self.max_model_len:
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens and max_tokens is {params.max_tokens}: "
                f"{len(ids) + params.max_tokens} > max_model_len {self.max_model_len}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an int, got {priority!r}")
        if tenant is not None and not isinstance(tenant, str):
            raise ValueError(f"tenant must be a str or None, got {tenant!r}")
        return Request(request_id or self.new_request_id(), text, ids, params, self.tokenizer,
                       self.eos_token_ids, priority=priority, tenant=tenant)

    def chat_prompt(self, messages, add_generation_prompt: bool = True) -> tuple[list[int], str]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer, so no chat template")
        check_texts("messages", messages)
        text = self.tokenizer.apply_chat_template(messages,
                                                  add_generation_prompt=add_generation_prompt)
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                 tokenize=True)
        return list(ids), text

    def prompt_logprobs(self, ids: list[int], num_top: int = 0) -> list:
        """Per prompt position: None first, then `PromptLogprob` (logprob of each prompt token
        given those before it, its rank, `num_top` alternatives). One extra forward of the whole
        prompt, shared by every engine (see `prompt_logprobs.py`); thread-safe, touches no
        engine state. ValueError for a prompt longer than `max_model_len`."""
        self._check_open()
        if len(ids) > self.max_model_len:
            raise PromptTooLongError(f"prompt has {len(ids)} tokens > max_model_len "
                                     f"{self.max_model_len}")
        return prompt_logprobs(self.model, ids, num_top, self.max_model_len)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"{self.engine_name} engine is closed")

    # ---- the contract -------------------------------------------------------------------------
    @abc.abstractmethod
    def generate(self, prompts, sampling_params=None) -> list[RequestOutput]:
        """Run prompts to completion; one RequestOutput per prompt, in order."""

    @abc.abstractmethod
    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None, *,
               request_id: str | None = None, priority: int = 0,
               prompt_text: str | None = None) -> Iterator[RequestOutput]:
        """Yield outputs with `delta_text` as tokens arrive; the last has `finished=True`."""

    @abc.abstractmethod
    def abort(self, request_id: str) -> bool:
        """End a request (finish_reason "abort"); False if it is unknown or already finished."""

    def stream_many(self, prompts, sampling_params=None) -> Iterator[tuple[int, RequestOutput]]:
        """See the module docstring. This version suits background engines (their driver batches
        whatever is queued): one `stream` per prompt, read by a thread each, merged in one queue.
        Static-batching engines override it to run the prompts as one batch."""
        self._check_open()
        prompts = self.normalize_prompts(prompts)
        params = self.normalize_params(sampling_params, len(prompts))
        for p, sp in zip(prompts, params):  # validate every prompt before submitting any
            self.make_request(p, sp)
        ids = [self.new_request_id() for _ in prompts]
        iters = []
        try:
            for p, sp, rid in zip(prompts, params, ids):
                iters.append(self.stream(p, sp, request_id=rid))
        except BaseException:
            for rid in ids[:len(iters)]:
                self.abort(rid)
            raise
        return self._merge_streams(iters, ids)

    def _merge_streams(self, iters, ids) -> Iterator[tuple[int, RequestOutput]]:
        merged: queue.SimpleQueue = queue.SimpleQueue()
        done = object()

        def pump(i, it):
            try:
                for out in it:
                    merged.put((i, out))
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                merged.put((i, e))
            merged.put((i, done))

        threads = [threading.Thread(target=pump, args=(i, it), daemon=True,
                                    name=f"{self.engine_name}-stream-{i}")
                   for i, it in enumerate(iters)]
        for t in threads:
            t.start()
        pending = set(range(len(iters)))
        try:
            while pending:
                i, item = merged.get()
                if item is done:
                    pending.discard(i)
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i, item
        finally:
            for i in pending:
                self.abort(ids[i])
            for t in threads:
                t.join(timeout=5.0)

    def chat(self, messages, sampling_params: SamplingParams | None = None, stream: bool = False,
             **kwargs):
        ids, text = self.chat_prompt(messages)
        if stream:
            return self._stream_ids(ids, text, sampling_params, **kwargs)
        return self._generate_ids(ids, text, sampling_params)

    def _stream_ids(self, ids, text, params, **kwargs):
        return self.stream(ids, params, prompt_text=text, **kwargs)

    def _generate_ids(self, ids, text, params) -> RequestOutput:
        (out,) = self.generate([ids], params)
        out.prompt = text
        return out

    def health_error(self) -> str | None:
        """Why this engine cannot serve (a server's /health answers 503), or None when it can."""
        if self.channel is not None and self.channel.error is not None:
            return str(self.channel.error)
        return None

    def metrics(self) -> dict:
        return self.collector.snapshot()

    def kv_cache_bytes(self) -> int:
        """Bytes of KV cache this engine holds between requests (0 for an engine that allocates
        its cache per batch, as vInference does)."""
        return 0

    # ---- async twins (run the sync engine in a worker thread; never block the loop) ----------
    async def agenerate(self, prompts, sampling_params=None) -> list[RequestOutput]:
        return await asyncio.to_thread(self.generate, prompts, sampling_params)

    async def astream(self, prompt: Prompt, sampling_params: SamplingParams | None = None, *,
                      request_id: str | None = None, priority: int = 0,
                      prompt_text: str | None = None) -> AsyncIterator[RequestOutput]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()
        request_id = request_id or self.new_request_id()
        # Build (and validate) the request here so errors reach the caller before streaming.
        it = self.stream(prompt, sampling_params, request_id=request_id, priority=priority,
                         prompt_text=prompt_text)

        def deliver(item) -> bool:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
                return True
            except RuntimeError:  # the consumer's event loop is closed
                return False

        def pump():
            try:
                for out in it:
                    if not deliver(out):
                        self.abort(request_id)
                        return
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's task
                deliver(e)
            deliver(done)

        worker = threading.Thread(target=pump, daemon=True, name=f"{self.engine_name}-astream")
        worker.start()
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if worker.is_alive():  # the consumer went away (e.g. client disconnect)
                self.abort(request_id)

    async def achat(self, messages, sampling_params=None, stream: bool = False):
        ids, text = self.chat_prompt(messages)
        if stream:
            return self.astream(ids, sampling_params, prompt_text=text)
        out = await self.agenerate([ids], sampling_params)
        out[0].prompt = text
        return out[0]

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "Engine":
        self._check_open()
        return self

    def stop(self) -> None:
        """Stop background work (no-op for synchronous engines); safe to call twice."""

    def close(self) -> None:
        """Stop and free device memory held by the engine (not the model's params)."""
        self.stop()
        self._closed = True

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
