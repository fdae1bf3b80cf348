"""vInference's compiled shapes: plain Python on the host.

A static batch compiles one prefill per (batch bucket B, prompt bucket T, top-K width) into a
cache of T positions, one cache grow per (B, T, cache bucket S) (a pad: milliseconds to compile)
and one decode chunk per (B, S, read size, K) (`decode_reads.py` picks the read size).
`shape_bound` counts every program the buckets allow with default sampling (K = 0): the bound of
what a workload can make vInference compile. `ShapeLedger` records the shapes a run dispatched,
so `precompile()` can return what it compiled.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

from workbench.engines.buckets import pick_bucket


@dataclasses.dataclass(frozen=True, order=True)
class Shape:
    function: str  # "prefill" | "grow" | "decode"
    batch: int  # batch bucket B
    length: int  # prefill, grow: prompt bucket T; decode: read size (blocks, or a prefix length)
    cache_len: int  # cache bucket S (a prefill's cache has T positions)
    num_top: int = 0  # top-logprobs width K


def shape_bound(batch_buckets: Sequence[int], prefill_buckets: Sequence[int],
                cache_buckets: Sequence[int], read_sizes) -> dict[str, int]:
    """Programs the buckets allow with default sampling: {"prefill", "grow", "decode", "total"}.

    A prompt in bucket T (longer than the bucket below it, T') asks for at least one new token,
    so its cache bucket is at least `pick_bucket(T' + 2, cache_buckets)`; every larger S can be
    picked too (the largest cache bucket is `max_model_len`); a grow runs when S != T.
    `read_sizes(B, S)` lists a decode chunk's read sizes for B rows of an S cache."""
    prompts = grows = 0
    below = 0
    for t in sorted(prefill_buckets):
        if below + 2 > cache_buckets[-1]:  # no prompt this long leaves room for a new token
            break
        first = pick_bucket(below + 2, cache_buckets)
        prompts += 1
        grows += sum(1 for s in cache_buckets if s >= first and s != t)
        below = t
    nb = len(batch_buckets)
    decode = sum(len(read_sizes(b, s)) for b in batch_buckets for s in cache_buckets)
    out = {"prefill": nb * prompts, "grow": nb * grows, "decode": decode}
    return {**out, "total": sum(out.values())}


class ShapeLedger:
    """The shapes an engine has dispatched (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: set[Shape] = set()

    def note(self, shape: Shape) -> None:
        with self._lock:
            self._seen.add(shape)

    def snapshot(self) -> frozenset[Shape]:
        with self._lock:
            return frozenset(self._seen)
