"""The two generation endpoints: /v1/completions and /v1/chat/completions.

Each call: resolve the engine -> tokenize -> build and validate `SamplingParams` (400s happen here)
-> start a `Generation` -> either collect it into one JSON response, or wait for its first output
(an early engine error is still a plain JSON error) and stream SSE chunks from then on.

Choice `i` of prompt `p` has index `p * n + i`. Streams end with `data: [DONE]`; an error after the
stream started is sent as one `data: {"error": ...}` event before `[DONE]`. A client that goes away
cancels the generation, which aborts its engine requests.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from workbench.server import responses as fmt
from workbench.server.errors import APIError, bad_request
from workbench.server.generation import ActiveGenerations, Generation, PreparedPrompt
from workbench.server.params import (CHAT_PARAMS, COMPLETION_PARAMS, chat_params,
                                     check_priority, completion_params, tenant_of,
                                     tokenize_prompts, validate_with_engine)
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
    if body.echo and body.logprobs is not None:
        raise bad_request("echo with logprobs is not supported (prompt logprobs are not "
                          "computed)", "echo", "unsupported_parameter")
    prompts = tokenize_prompts(engine, body.prompts)
    params = completion_params(body, prompts, engine.max_model_len)
    validate_with_engine(engine, prompts, params, COMPLETION_PARAMS)
    priority = check_priority(engine, body.priority)
    if body.echo:
        for p in prompts:
            if p.text is None:
                p.text = engine.tokenizer.decode(p.ids) if engine.tokenizer is not None else ""
    gen = Generation(engine, prompts, params, fmt.new_id("cmpl"), known_params=COMPLETION_PARAMS,
                     active=_active(request), priority=priority,
                     tenant=tenant_of(body, request))
    n, want_lps = params.n, body.logprobs is not None

    def build(outs: list[Any]) -> dict[str, Any]:
        choices = []
        for p, out in enumerate(outs):
            prefix = prompts[p].text if body.echo else ""
            for o in out.outputs:
                lps = fmt.completion_logprobs(o.logprobs or [], token_text, len(prefix)) \
                    if want_lps else None
                choices.append(fmt.completion_choice(p * n + o.index, prefix + o.text, o, lps))
        choices.sort(key=lambda c: c["index"])
        done = sum(len(o.token_ids) for out in outs for o in out.outputs)
        return fmt.response("text_completion", gen.request_id, model, choices,
                            fmt.usage(_prompt_tokens(prompts), done))

    async def events() -> AsyncIterator[str]:
        chunks = fmt.ChunkMaker("completion", gen.request_id, model)
        num_choices = len(prompts) * n
        offsets, generated, finished = [0] * num_choices, [0] * num_choices, set()
        if body.echo:
            for i in range(num_choices):
                offsets[i] = len(prompts[i // n].text)
                yield sse(chunks.delta(i, prompts[i // n].text))
        async for p, out in gen:
            for o in out.outputs:
                i = p * n + o.index
                if i in finished:
                    continue
                generated[i] = len(o.token_ids)
                lps = fmt.completion_logprobs(fmt.delta_logprobs(o), token_text, offsets[i]) \
                    if want_lps and o.delta_token_ids else None
                if o.delta_text or o.finished or lps:
                    yield sse(chunks.delta(i, o.delta_text, lps, o.finish_reason, o.stop_reason))
                offsets[i] += len(o.delta_text)
                if o.finished:
                    finished.add(i)
        if body.stream_options and body.stream_options.include_usage:
            yield sse(chunks.usage(fmt.usage(_prompt_tokens(prompts), sum(generated))))

    return await _respond(request, gen, bool(body.stream),
                          lambda: _guard_stream(gen, events()), build)


# ---- /v1/chat/completions ----------------------------------------------------------------------
async def create_chat_completion(request: Request, body: ChatCompletionRequest, model: str,
                                 engine: Any, token_text: fmt.TokenText) -> Response:
    try:
        ids, text = engine.chat_prompt(body.message_dicts())
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from exc
    prompt = PreparedPrompt(list(ids), text)
    params = chat_params(body, prompt, engine.max_model_len)
    validate_with_engine(engine, [prompt], params, CHAT_PARAMS)
    priority = check_priority(engine, body.priority)
    gen = Generation(engine, [prompt], params, fmt.new_id("chatcmpl"), known_params=CHAT_PARAMS,
                     active=_active(request), priority=priority,
                     tenant=tenant_of(body, request))

    def build(outs: list[Any]) -> dict[str, Any]:
        choices = [fmt.chat_choice(o.index, o, fmt.chat_logprobs(o.logprobs or [], token_text)
                                   if body.logprobs else None) for o in outs[0].outputs]
        choices.sort(key=lambda c: c["index"])
        done = sum(len(o.token_ids) for o in outs[0].outputs)
        return fmt.response("chat.completion", gen.request_id, model, choices,
                            fmt.usage(len(prompt.ids), done))

    async def events() -> AsyncIterator[str]:
        chunks = fmt.ChunkMaker("chat", gen.request_id, model)
        generated, finished = [0] * params.n, set()
        for i in range(params.n):
            yield sse(chunks.role(i))
        async for _, out in gen:
            for o in out.outputs:
                if o.index in finished:
                    continue
                generated[o.index] = len(o.token_ids)
                lps = fmt.chat_logprobs(fmt.delta_logprobs(o), token_text) \
                    if body.logprobs and o.delta_token_ids else None
                if o.delta_text or o.finished or lps:
                    yield sse(chunks.delta(o.index, o.delta_text, lps, o.finish_reason,
                                           o.stop_reason))
                if o.finished:
                    finished.add(o.index)
        if body.stream_options and body.stream_options.include_usage:
            yield sse(chunks.usage(fmt.usage(len(prompt.ids), sum(generated))))

    return await _respond(request, gen, bool(body.stream),
                          lambda: _guard_stream(gen, events()), build)
