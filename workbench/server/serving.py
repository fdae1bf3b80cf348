"""The two generation endpoints: /v1/completions and /v1/chat/completions.

Each call: resolve the engine -> tokenize -> build and validate `SamplingParams` (400s happen here)
-> start a `Generation` -> either collect it into one JSON response, or wait for its first output
(an early engine error is still a plain JSON error) and stream SSE chunks from then on.

Choice `i` of prompt `p` has index `p * n + i`. Streams send one chunk per generated token
(`per_token.py` splits an engine output that carries several) and end with `data: [DONE]`; an
error after the stream started is sent as one `data: {"error": ...}` event before `[DONE]`. With
`stream_options: {include_usage: true, continuous_usage_stats: true}` (vLLM) every chunk carries
the usage so far of its choice. A client that goes away cancels the generation, which aborts its
engine requests.

Prompt logprobs (`echo` + `logprobs` in OpenAI's legacy shape, vLLM's `prompt_logprobs`) are
computed before the generation starts, by `engine.prompt_logprobs` in a worker thread (one extra
forward of the prompt). `echo` with `max_tokens: 0` scores the prompt and runs no engine request:
each choice is the prompt, `finish_reason` "length", no completion tokens.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from workbench.server import responses as fmt
from workbench.server.errors import APIError, bad_request
from workbench.server.generation import ActiveGenerations, Generation, PreparedPrompt
from workbench.server.params import (CHAT_PARAMS, COMPLETION_PARAMS, chat_params,
                                     check_priority, check_prompt_logprobs, completion_params,
                                     scores_only, tenant_of, tokenize_prompts,
                                     validate_with_engine)
from workbench.server.per_token import split_per_token
from workbench.server.protocol import ChatCompletionRequest, CompletionRequest
from workbench.server.streaming import (SSE_DONE, ClientDisconnected, SSEResponse,
                                        cancel_on_disconnect, sse)

logger = logging.getLogger("workbench.server")

CLIENT_CLOSED = 499  # nginx's status for "client closed request"; never seen by the client


def _active(request: Request) -> ActiveGenerations | None:
    return getattr(request.app.state, "generations", None)


def _prompt_tokens(prompts: list[PreparedPrompt]) -> int:
    return sum(len(p.ids) for p in prompts)


async def _respond(request: Request, gen: Generation, stream: bool,
                   events: Callable[[], AsyncIterator[str]],
                   build: Callable[[list[Any]], dict[str, Any]]) -> Response:
    """Stream `events()` after the first output, or return `build(final outputs)` as JSON."""
    try:
        if stream:
            await cancel_on_disconnect(request, gen.first())
            return SSEResponse(events())
        outs = await cancel_on_disconnect(request, gen.collect())
    except ClientDisconnected:
        gen.close()
        return Response(status_code=CLIENT_CLOSED)
    except BaseException:
        gen.close()
        raise
    if any(o is None for o in outs):
        raise RuntimeError("the engine ended a request without a final output")
    return JSONResponse(build(outs))


async def _score_prompts(engine: Any, prompts: list[PreparedPrompt], num_top: int,
                         param: str) -> list[list[Any]]:
    """Each prompt's prompt logprobs (see `Engine.prompt_logprobs`), off the event loop."""
    try:
        return [await asyncio.to_thread(engine.prompt_logprobs, p.ids, num_top) for p in prompts]
    except ValueError as exc:
        raise bad_request(str(exc), param) from exc


def _usage_flags(body: Any) -> tuple[bool, bool]:
    """(usage at the end, usage in every chunk): vLLM's rule, continuous needs include_usage."""
    opts = body.stream_options
    final = bool(opts and opts.include_usage)
    return final, final and bool(opts.continuous_usage_stats)


def _token_decoder(engine: Any, params: Any) -> Callable[[list[int]], str]:
    tok = engine.tokenizer
    if tok is None:
        return lambda ids: "".join(f"<{i}>" for i in ids)
    return lambda ids: tok.decode(ids, skip_special_tokens=params.skip_special_tokens)


def _per_token(o: Any, decode: Callable[[list[int]], str]) -> list[tuple[str, list[Any], bool]]:
    """(text, logprobs, is the last piece) for each token of an output's delta."""
    lps = fmt.delta_logprobs(o)
    pieces = split_per_token(o, decode)
    out = []
    for k, (_, text) in enumerate(pieces):
        out.append((text, lps[k:k + 1] if len(lps) == len(pieces) else
                    (lps if k == len(pieces) - 1 else []), k == len(pieces) - 1))
    return out


async def _guard_stream(gen: Generation, events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Add the error event and `[DONE]`; always cancel what is left of the generation."""
    try:
        async for event in events:
            yield event
        yield SSE_DONE
    except APIError as exc:
        yield sse(exc.body())
        yield SSE_DONE
    except Exception as exc:  # noqa: BLE001 - the status line is already sent
        logger.exception("error while streaming %s", gen.request_id)
        yield sse(APIError(500, f"Internal server error: {type(exc).__name__}: {exc}",
                           type="server_error", code="internal_error").body())
        yield SSE_DONE
    finally:
        gen.close()


# ---- /v1/completions ---------------------------------------------------------------------------
async def create_completion(request: Request, body: CompletionRequest, model: str, engine: Any,
                            token_text: fmt.TokenText) -> Response:
    check_prompt_logprobs(body)
    prompts = tokenize_prompts(engine, body.prompts)
    params = completion_params(body, prompts, engine.max_model_len)
    validate_with_engine(engine, prompts, params, COMPLETION_PARAMS)
    priority = check_priority(engine, body.priority)
    if body.echo:
        for p in prompts:
            if p.text is None:
                p.text = engine.tokenizer.decode(p.ids) if engine.tokenizer is not None else ""
    n, want_lps = params.n, body.logprobs is not None
    echo_lps = bool(body.echo) and want_lps
    scored = None
    if echo_lps or body.prompt_logprobs is not None:
        num_top = max(body.logprobs or 0 if echo_lps else 0, body.prompt_logprobs or 0)
        scored = await _score_prompts(engine, prompts, num_top,
                                      "echo" if echo_lps else "prompt_logprobs")

    def prompt_lps(p: int) -> dict[str, Any] | None:
        if not echo_lps:
            return None
        return fmt.completion_logprobs(scored[p], token_text, 0, body.logprobs,
                                       first_token=prompts[p].ids[0])

    def vllm_lps(p: int) -> list[Any] | None:
        if body.prompt_logprobs is None:
            return None
        return fmt.vllm_prompt_logprobs(scored[p], token_text, body.prompt_logprobs)

    request_id = fmt.new_id("cmpl")
    if scores_only(body):
        return _scores_only_response(body, request_id, model, prompts, n, prompt_lps, vllm_lps)
    gen = Generation(engine, prompts, params, request_id, known_params=COMPLETION_PARAMS,
                     active=_active(request), priority=priority,
                     tenant=tenant_of(body, request))
    decode = _token_decoder(engine, params)

    def build(outs: list[Any]) -> dict[str, Any]:
        choices = []
        for p, out in enumerate(outs):
            prefix = prompts[p].text if body.echo else ""
            for o in out.outputs:
                lps = fmt.join_logprobs(
                    prompt_lps(p),
                    fmt.completion_logprobs(o.logprobs or [], token_text, len(prefix)))\
                    if want_lps else None
                choice = fmt.completion_choice(p * n + o.index, prefix + o.text, o, lps)
                if body.prompt_logprobs is not None:
                    choice["prompt_logprobs"] = vllm_lps(p)
                choices.append(choice)
        choices.sort(key=lambda c: c["index"])
        done = sum(len(o.token_ids) for out in outs for o in out.outputs)
        return fmt.response("text_completion", gen.request_id, model, choices,
                            fmt.usage(_prompt_tokens(prompts), done))

    final_usage, every_chunk = _usage_flags(body)

    async def events() -> AsyncIterator[str]:
        chunks = fmt.ChunkMaker("completion", gen.request_id, model)
        num_choices = len(prompts) * n
        offsets, generated, finished = [0] * num_choices, [0] * num_choices, set()

        def usage(i: int) -> dict[str, int] | None:
            return fmt.usage(len(prompts[i // n].ids), generated[i]) if every_chunk else None

        if body.echo:
            for i in range(num_choices):
                offsets[i] = len(prompts[i // n].text)
                yield sse(chunks.delta(i, prompts[i // n].text, prompt_lps(i // n),
                                       usage=usage(i)))
        async for p, out in gen:
            for o in out.outputs:
                i = p * n + o.index
                if i in finished:
                    continue
                base = len(o.token_ids) - len(o.delta_token_ids)
                for k, (text, lps_k, last) in enumerate(_per_token(o, decode)):
                    generated[i] = base + min(k + 1, len(o.delta_token_ids))
                    lps = fmt.completion_logprobs(lps_k, token_text, offsets[i]) \
                        if want_lps and lps_k else None
                    fin = o.finish_reason if last else None
                    if text or fin or lps:
                        yield sse(chunks.delta(i, text, lps, fin, o.stop_reason if last else None,
                                               usage=usage(i)))
                    offsets[i] += len(text)
                if o.finished:
                    finished.add(i)
        if final_usage:
            yield sse(chunks.usage(fmt.usage(_prompt_tokens(prompts), sum(generated))))

    return await _respond(request, gen, bool(body.stream),
                          lambda: _guard_stream(gen, events()), build)


def _scores_only_response(body: CompletionRequest, request_id: str, model: str,
                          prompts: list[PreparedPrompt], n: int,
                          prompt_lps: Callable[[int], Any], vllm_lps: Callable[[int], Any]
                          ) -> Response:
    """`echo` + `max_tokens: 0`: every choice is its prompt, scored; no engine request."""
    usage = fmt.usage(_prompt_tokens(prompts), 0)
    if not body.stream:
        choices = []
        for p, prompt in enumerate(prompts):
            for i in range(n):
                choice = {"index": p * n + i, "text": prompt.text, "logprobs": prompt_lps(p),
                          "finish_reason": "length", "stop_reason": None}
                if body.prompt_logprobs is not None:
                    choice["prompt_logprobs"] = vllm_lps(p)
                choices.append(choice)
        return JSONResponse(fmt.response("text_completion", request_id, model, choices, usage))
    final_usage, every_chunk = _usage_flags(body)

    async def events() -> AsyncIterator[str]:
        chunks = fmt.ChunkMaker("completion", request_id, model)
        for p, prompt in enumerate(prompts):
            u = fmt.usage(len(prompt.ids), 0) if every_chunk else None
            for i in range(n):
                yield sse(chunks.delta(p * n + i, prompt.text, prompt_lps(p), usage=u))
                yield sse(chunks.delta(p * n + i, "", None, "length", None, usage=u))
        if final_usage:
            yield sse(chunks.usage(usage))
        yield SSE_DONE

    return SSEResponse(events())


# ---- /v1/chat/completions ----------------------------------------------------------------------
async def create_chat_completion(request: Request, body: ChatCompletionRequest, model: str,
                                 engine: Any, token_text: fmt.TokenText) -> Response:
    check_prompt_logprobs(body)
    try:
        ids, text = engine.chat_prompt(body.message_dicts())
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from exc
    prompt = PreparedPrompt(list(ids), text)
    params = chat_params(body, prompt, engine.max_model_len)
    validate_with_engine(engine, [prompt], params, CHAT_PARAMS)
    priority = check_priority(engine, body.priority)
    scored = None
    if body.prompt_logprobs is not None:
        (scored,) = await _score_prompts(engine, [prompt], body.prompt_logprobs,
                                         "prompt_logprobs")
    gen = Generation(engine, [prompt], params, fmt.new_id("chatcmpl"), known_params=CHAT_PARAMS,
                     active=_active(request), priority=priority,
                     tenant=tenant_of(body, request))
    decode = _token_decoder(engine, params)

    def build(outs: list[Any]) -> dict[str, Any]:
        choices = [fmt.chat_choice(o.index, o, fmt.chat_logprobs(o.logprobs or [], token_text)
                                   if body.logprobs else None) for o in outs[0].outputs]
        choices.sort(key=lambda c: c["index"])
        done = sum(len(o.token_ids) for o in outs[0].outputs)
        resp = fmt.response("chat.completion", gen.request_id, model, choices,
                            fmt.usage(len(prompt.ids), done))
        if scored is not None:
            resp["prompt_logprobs"] = fmt.vllm_prompt_logprobs(scored, token_text,
                                                               body.prompt_logprobs)
        return resp

    final_usage, every_chunk = _usage_flags(body)

    async def events() -> AsyncIterator[str]:
        chunks = fmt.ChunkMaker("chat", gen.request_id, model)
        generated, finished = [0] * params.n, set()

        def usage(i: int) -> dict[str, int] | None:
            return fmt.usage(len(prompt.ids), generated[i]) if every_chunk else None

        for i in range(params.n):
            yield sse(chunks.role(i, usage=usage(i)))
        async for _, out in gen:
            for o in out.outputs:
                if o.index in finished:
                    continue
                base = len(o.token_ids) - len(o.delta_token_ids)
                for k, (text, lps_k, last) in enumerate(_per_token(o, decode)):
                    generated[o.index] = base + min(k + 1, len(o.delta_token_ids))
                    lps = fmt.chat_logprobs(lps_k, token_text) if body.logprobs and lps_k \
                        else None
                    fin = o.finish_reason if last else None
                    if text or fin or lps:
                        yield sse(chunks.delta(o.index, text, lps, fin,
                                               o.stop_reason if last else None,
                                               usage=usage(o.index)))
                if o.finished:
                    finished.add(o.index)
        if final_usage:
            yield sse(chunks.usage(fmt.usage(len(prompt.ids), sum(generated))))

    return await _respond(request, gen, bool(body.stream),
                          lambda: _guard_stream(gen, events()), build)
