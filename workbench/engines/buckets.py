"""Shape buckets: pad batch sizes and lengths to a few fixed values so jit compiles only a few
shapes. Plain Python."""

from __future__ import annotations

import numbers
from typing import Sequence

# The most rows (sequences in one batch dimension) an engine may be asked for. Rows size state
# up front: the sampler keeps an [rows, vocab] penalty-count array (4096 x Llama 3's 128,256
# vocabulary x 4 bytes = 2.1 GB) and the row buckets grow with log2(rows). No step uses more:
# vLLM's defaults are 256 sequences (1024 on the largest GPUs).
MAX_ROWS = 4096


def is_int(value) -> bool:
    """An integer knob value: any `numbers.Integral` (numpy ints too), never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_count(name: str, value, hi: int, hi_name: str = "") -> int:
    """`value` as an int in [1, hi]; ValueError naming the knob (and the bound, as `hi_name=hi`
    when given) otherwise: a bool, a float, or 10**25 included, since such a value would
    otherwise size a list or an array first."""
    if not is_int(value) or not 1 <= value <= hi:
        bound = f"{hi_name}={hi}" if hi_name else str(hi)
        raise ValueError(f"{name} must be an integer in [1, {bound}], got {value!r}")
    return int(value)


def check_rows(name: str, value) -> int:
    """`value` as a row count in [1, MAX_ROWS] (see `check_count`)."""
    return check_count(name, value, MAX_ROWS)


def pow2_buckets(lo: int, hi: int) -> tuple[int, ...]:
    """Powers of two from lo up to and including hi (hi itself is always the last bucket)."""
    out, b = [], lo
    while b < hi:
        out.append(b)
        b *= 2
    out.append(hi)
    return tuple(out)


def fine_buckets(lo: int, hi: int) -> tuple[int, ...]:
    """Powers of two and the midpoints 1.5 x 2^k between lo and hi (hi always last): a length
    above lo is padded by at most 1.5x instead of 2x, for costs that grow with the padding
    (a prefill's work, or decode attention reading every cached position up to the bucket)."""
    out = set()
    for b in pow2_buckets(lo, hi):
        out.add(b)
        if b * 3 // 2 < hi and b * 3 % 2 == 0:
            out.add(b * 3 // 2)
    return tuple(sorted(out))  # pow2_buckets stay in [lo, hi]; midpoints are checked < hi


def prompt_buckets(max_len: int) -> tuple[int, ...]:
    """The engines' default prompt-length buckets up to `max_len`: `fine_buckets` from 16, so a
    prompt is padded by at most 1.5x (a prefill's work grows with its padded length; a 40-token
    prompt prefills at 48, not 64)."""
    return fine_buckets(min(16, max_len), max_len)


def pick_bucket(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= n; ValueError if n exceeds the largest."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")



# The most tokens one eSurge step may be asked to batch (`max_num_batched_tokens`): 16x the
# largest budgets vLLM users run with; each power of two up to it is a compiled step shape.
MAX_BATCHED_TOKENS = 1 << 20


def token_buckets(max_tokens: int, lo: int = 4) -> tuple[int, ...]:
    """eSurge's token-count buckets up to `max_tokens`: powers of two from `lo`, with the 1.5x
    midpoints from 64 up (a large step pads by at most 1.5x, a small one costs little either
    way). The default budgets stay within the compile budget of 16 step shapes: 256 tokens ->
    9 buckets, 2048 -> 15."""
    lo = min(lo, max_tokens)
    out = set(pow2_buckets(lo, max_tokens))
    for b in pow2_buckets(lo, max_tokens):
        if b >= 64 and b * 3 // 2 < max_tokens:
            out.add(b * 3 // 2)
    return tuple(sorted(out))
