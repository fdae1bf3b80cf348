"""The limits of one request, in one place. Each is answered with a 400 (413 for the body) whose
message names the limit; the values live where they are enforced and are gathered here.

| limit                          | value                                 | answer                  |
|--------------------------------|---------------------------------------|-------------------------|
| request body                   | `create_app(max_body_bytes=1_000_000)` | 413 request_too_large   |
| prompt tokens + max_tokens     | the engine's `max_model_len`          | 400 context_length_exceeded |
| max_tokens                     | >= 1, <= max_model_len - prompt tokens | 400 (param max_tokens)  |
| n                              | 1 to 128 (`SamplingParams.MAX_N`)     | 400 (param n)           |
| logprobs / top_logprobs        | 0 to 20                               | 400 (param logprobs)    |
| stop strings                   | at most 16, each 1 to 256 characters  | 400 (param stop)        |
| stop_token_ids                 | at most 64 ids in the vocabulary      | 400 (param stop_token_ids) |
| logit_bias                     | at most 300 entries, ids in the vocabulary, bias in [-100, 100] | 400 |
| integers reaching the device   | at most 2**31-1 (top_k, token ids)    | 400 naming the field    |
| seed                           | [0, 2**64)                            | 400 (param seed)        |
| waiting requests per engine    | the engine's `max_waiting` (1024)     | 429 with Retry-After    |

`request_limits(engine, max_body_bytes)` returns them as a dict (for docs, dashboards, tests).
"""

from __future__ import annotations

from typing import Any

from workbench import sampling_params as sp


def request_limits(engine: Any, max_body_bytes: int) -> dict[str, Any]:
    return {
        "max_body_bytes": max_body_bytes,
        "max_model_len": engine.max_model_len,
        "max_n": sp.MAX_N,
        "max_logprobs": sp.MAX_TOP_LOGPROBS,
        "max_stop_strings": sp.MAX_STOP_STRINGS,
        "max_stop_len": sp.MAX_STOP_LEN,
        "max_stop_token_ids": sp.MAX_STOP_TOKEN_IDS,
        "max_logit_bias": sp.MAX_LOGIT_BIAS,
        "max_int": sp.MAX_INT32,
        "max_seed": sp.MAX_SEED - 1,
    }
