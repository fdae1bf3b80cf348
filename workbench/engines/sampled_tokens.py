"""How sampled token ids reach the host: the one token-append function every engine uses, and the
metrics recorded after it. Plain Python (NumPy arrays in, no JAX).

A device step hands back, per row, up to N sampled tokens (`-1` where the row was done on the
device) with their logprobs. `append_sampled` feeds one row to its `Sequence`, which decides when
it ends (EOS, stop ids, stop strings, max_tokens); tokens after the end, or past a `-1`, are
dropped. `record_tokens` then times the request and counts its tokens in the collector.
"""

from __future__ import annotations

from workbench.engines.request import Request, Sequence
from workbench.engines.types import Logprob
from workbench.metrics import MetricsCollector


def to_logprob(token: int, lp: float, top_ids, top_lps, k: int) -> Logprob:
    """A `Logprob` for one sampled token, keeping the first `k` alternatives."""
    return Logprob(token, float(lp), [(int(i), float(v)) for i, v in zip(top_ids[:k], top_lps[:k])])


def append_sampled(seq: Sequence, tokens, logprobs=None, top_ids=None, top_logprobs=None) -> int:
    """Append the sampled tokens `[N]` of one row to `seq` until it finishes or a `-1` (row done
    on the device); logprobs `[N]` and top alternatives `[N, K]` are read only when the sequence
    asked for logprobs. Returns how many tokens were appended."""
    n = 0
    for j in range(len(tokens)):
        tok = int(tokens[j])
        if tok < 0 or seq.finished:
            break
        lp = (to_logprob(tok, logprobs[j], top_ids[j], top_logprobs[j], seq.params.top_logprobs)
              if seq.params.logprobs else None)
        seq.append(tok, lp)
        n += 1
    return n


def record_tokens(collector: MetricsCollector, req: Request, num_tokens: int) -> None:
    """Timing and metrics after `num_tokens` new tokens were appended to `req`'s sequences."""
    first = req.first_token_time is None
    req.mark_token()
    if first:
        collector.on_first_token(req.request_id)  # counts the first token
        num_tokens -= 1
    if num_tokens:
        collector.on_tokens(req.request_id, num_tokens)
