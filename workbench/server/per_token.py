"""One stream chunk per token: split an engine output that carries several new tokens.

An engine may hand over several tokens in one output (vSurge decodes `decode_steps` tokens per
driver iteration; the first output can hold the prefill's token and a decode step's). vLLM and
OpenAI send one chunk per token, and clients count chunks, so the server splits.

`split_per_token(out, decode) -> list[(token_id | None, text)]`: one piece per token of
`out.delta_token_ids` (one piece `(None, delta_text)` when there are none); the texts concatenate
to exactly `out.delta_text`. Each token's share is measured by decoding a short window of the
tokens before it plus the new tokens one by one (`decode(ids) -> str`, as the detokenizer does):
a token that only starts a multi-byte character gets no text, the token that completes it gets the
character. The delta may differ from what the new tokens decode to (text held back earlier for a
stop string and released now goes to the first piece; text held back now, or a trimmed stop
string, is taken from the last pieces), and pieces are slices of `delta_text`, so no character is
ever split and the concatenation is exact.
"""

from __future__ import annotations

from collections.abc import Callable

from workbench.engines.types import CompletionOutput

WINDOW = 6  # tokens of context before the new ones (as vLLM's incremental detokenizer)
_PARTIAL = "\ufffd"


def _complete_len(s: str) -> int:
    return len(s.rstrip(_PARTIAL))


def split_per_token(out: CompletionOutput,
                    decode: Callable[[list[int]], str]) -> list[tuple[int | None, str]]:
    """See the module docstring."""
    new = list(out.delta_token_ids)
    if len(new) <= 1:
        return [(new[0] if new else None, out.delta_text)]
    start = len(out.token_ids) - len(new)
    window = list(out.token_ids[max(0, start - WINDOW):start])
    base = _complete_len(decode(window)) if window else 0
    ends = []
    for i in range(1, len(new) + 1):
        end = max(_complete_len(decode(window + new[:i])) - base, ends[-1] if ends else 0)
        ends.append(end)
    text = out.delta_text
    extra = len(text) - ends[-1]
    if extra >= 0:  # released hold-back: it precedes the new tokens' text
        ends = [e + extra for e in ends]
    else:  # text held back (or trimmed) now: the last pieces lose it
        ends = [min(e, len(text)) for e in ends]
    ends[-1] = len(text)
    pieces, prev = [], 0
    for token, end in zip(new, ends):
        pieces.append((token, text[prev:end]))
        prev = end
    return pieces
