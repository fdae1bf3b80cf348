"""`BackgroundEngine`: the engine contract over an `EngineCore` (vSurge, eSurge).

A subclass builds its scheduler and runner and hands them to `_init_core`; this class turns the
contract (`submit`, `generate`, `stream`, async twins, `abort`, `start`/`stop`, `timeline`) into
requests for the core's driver thread. Requests are validated here, in the caller's thread, so a
bad request fails before anything is queued; `_check_request(req)` adds an engine's own limits.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Callable, Iterator

from workbench.engines.base import Engine
from workbench.engines.engine_core import EngineCore
from workbench.engines.output_stream import OutputStream
from workbench.engines.request import Request
from workbench.engines.types import Prompt, RequestFailedError, RequestOutput
from workbench.sampling_params import SamplingParams


class BackgroundEngine(Engine):
    """An engine whose requests run on one driver thread (see `engine_core.py`)."""

    core: EngineCore

    def _init_core(self, make_scheduler: Callable[[], Any], runner: Any) -> None:
        self.core = EngineCore(name=self.engine_name, make_scheduler=make_scheduler,
                               runner=runner, collector=self.collector)

    def _check_request(self, req: Request) -> None:
        """Engine-specific limits on a validated request (raise ValueError subclasses)."""

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self):
        self._check_open()
        self.core.start()
        return self

    def stop(self) -> None:
        self.core.stop()

    @property
    def running(self) -> bool:
        return self.core.running

    def health_error(self) -> str | None:
        if self.core.failure is not None:
            return self.core.failure
        return super().health_error()

    @property
    def failure(self) -> str | None:
        """Why the engine is dead (it failed and could not recover), or None."""
        return self.core.failure

    @property
    def scheduler(self):
        return self.core.scheduler

    @property
    def step_times(self):
        return self.core.step_times

    @property
    def host_times(self):
        return self.core.host_times

    def step_stats(self) -> dict:
        """Median wall and host-only milliseconds per driver iteration (host overhead probe)."""
        def median_ms(xs):
            xs = sorted(xs)
            return 1e3 * xs[len(xs) // 2] if xs else None
        return {"iterations": len(self.step_times), "wall_ms_p50": median_ms(self.step_times),
                "host_ms_p50": median_ms(self.host_times)}

    def timeline(self, request_id: str) -> list[dict]:
        """The request's events, oldest first: dicts with "event", "time" (`time.monotonic()`
        seconds) and event details. Events: "queued" (num_prompt_tokens, priority, tenant),
        "scheduled", "prefill_chunk" (start, num_tokens; eSurge), "first_token", "preempted" /
        "resumed" (eSurge), "prefix_lookup" (queries, hits; eSurge), "finished" (reason,
        num_generated_tokens). The last 1000 requests are kept; KeyError for others."""
        return self.core.timeline.get(request_id)

    def timeline_requests(self) -> list[str]:
        """Ids of the requests `timeline()` knows, oldest first."""
        return self.core.timeline.request_ids()

    # ---- submission -----------------------------------------------------------------------------
    def submit(self, prompt: Prompt, sampling_params: SamplingParams | None = None, *,
               request_id: str | None = None, priority: int = 0, prompt_text: str | None = None,
               tenant: str | None = None,
               loop: asyncio.AbstractEventLoop | None = None) -> OutputStream:
        """Validate and queue one request; returns its output stream. Raises ValueError,
        PromptTooLongError, or EngineOverloadedError when the waiting queue is full."""
        self._check_open()
        req = self.make_request(prompt, sampling_params, request_id=request_id,
                                priority=priority, prompt_text=prompt_text, tenant=tenant)
        return self._submit(req, loop)

    def _submit(self, req: Request, loop: asyncio.AbstractEventLoop | None = None) -> OutputStream:
        self._check_request(req)
        self._check_open()
        return self.core.submit(req, loop)

    def generate(self, prompts, sampling_params=None) -> list[RequestOutput]:
        self._check_open()
        prompts = self.normalize_prompts(prompts)
        params = self.normalize_params(sampling_params, len(prompts))
        reqs = [self.make_request(p, sp) for p, sp in zip(prompts, params)]  # validate all first
        for r in reqs:
            self._check_request(r)
        streams = [self._submit(r) for r in reqs]
        for s in streams:
            try:
                while not s.get().finished:
                    pass
            except RequestFailedError:  # the output says finish_reason "error"
                pass
        return [r.output() for r in reqs]

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None, *,
               request_id: str | None = None, priority: int = 0,
               prompt_text: str | None = None, tenant: str | None = None
               ) -> Iterator[RequestOutput]:
        s = self.submit(prompt, sampling_params, request_id=request_id, priority=priority,
                        prompt_text=prompt_text, tenant=tenant)
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
                      prompt_text: str | None = None, tenant: str | None = None
                      ) -> AsyncIterator[RequestOutput]:
        s = self.submit(prompt, sampling_params, request_id=request_id, priority=priority,
                        prompt_text=prompt_text, tenant=tenant, loop=asyncio.get_running_loop())
        async with contextlib.aclosing(s.aoutputs(lambda: self.abort(s.request_id))) as outs:
            async for out in outs:
                yield out

    async def agenerate(self, prompts, sampling_params=None) -> list[RequestOutput]:
        self._check_open()
        prompts = self.normalize_prompts(prompts)
        params = self.normalize_params(sampling_params, len(prompts))
        reqs = [self.make_request(p, sp) for p, sp in zip(prompts, params)]
        for r in reqs:
            self._check_request(r)
        loop = asyncio.get_running_loop()
        streams = [self._submit(r, loop) for r in reqs]
        for s in streams:
            try:
                while not (await s.aget()).finished:
                    pass
            except RequestFailedError:  # the output says finish_reason "error"
                pass
        return [r.output() for r in reqs]

    def abort(self, request_id: str) -> bool:
        return self.core.abort(request_id)
