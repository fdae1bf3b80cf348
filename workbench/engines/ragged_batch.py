"""eSurge's step inputs, built on the host in NumPy and sent to the device in one transfer. No JAX.

A step is a flat ragged batch: the scheduled chunks' tokens one after another, padded to a token
bucket T; per-sequence metadata has a fixed size R = min(max_num_seqs, T) (a chunk has at least
one token), so the jitted step compiles once per token bucket whatever the mix of sequences and
lengths. `StepLayout` is that static description (hashable: a jit static argument); `build_step`
fills every array and packs them into one int32 vector; `StepLayout.unpack` slices it back (on
the host or inside jit: plain slicing and reshapes).

Arrays (pads in brackets):
- per token `[T]`: token ids, positions [-1], cache slots (page * S + offset) [num_pages * S,
  dropped], `from_device` (the id is the row's last sampled token, still on the device) and that
  row;
- per sequence `[R]`: its persistent row [max_num_seqs], the flat index of its last token (its
  hidden state is sampled), its output position (seeded draws, min_tokens), whether it samples;
- attention tiles (see `models/paged_attention.py`): lane D for single-token chunks, lane P for
  multi-token chunks in query blocks of `query_block` tokens; each lane lists (query block, run
  of `pages_per_tile` pages of its sequence's past) tiles, and lane P (block, earlier-or-same
  block of the same chunk) tiles for the chunk's own tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class StepLayout:
    num_tokens: int  # T, the token bucket
    max_num_seqs: int  # M, persistent rows
    page_size: int  # S
    num_pages: int
    max_pages: int  # pages one sequence may hold (max_model_len / S, rounded up)
    query_block: int = 16  # Qt, lane P
    pages_per_tile: int = 4  # K

    @property
    def num_seqs(self) -> int:  # R
        return min(self.max_num_seqs, self.num_tokens)

    @property
    def runs(self) -> int:
        """Tiles of one query block's past, at most."""
        return math.ceil(self.max_pages / self.pages_per_tile)

    @property
    def decode_blocks(self) -> int:
        return self.num_seqs

    @property
    def prefill_blocks(self) -> int:
        """Lane P blocks: chunks of >= 2 tokens in blocks of Qt, each chunk's last one partial."""
        return math.ceil(self.num_tokens / self.query_block) + min(self.num_seqs,
                                                                   self.num_tokens // 2)

    @property
    def prefill_fresh_tiles(self) -> int:
        return self.prefill_blocks * math.ceil(self.num_tokens / self.query_block)

    def lane_chunk(self, lane: str) -> int:
        """Tiles per attention loop iteration."""
        if lane == "d":
            return max(16, self.decode_blocks)
        return max(4, math.ceil(self.num_tokens / self.query_block))

    def fields(self) -> list[tuple[str, tuple[int, ...], int]]:
        """(name, shape, pad value) of every packed array, in packing order."""
        T, R, K, Qt = self.num_tokens, self.num_seqs, self.pages_per_tile, self.query_block
        ND, NP = self.decode_blocks, self.prefill_blocks
        out = [("token_ids", (T,), 0), ("positions", (T,), -1),
               ("slots", (T,), self.num_pages * self.page_size), ("from_device", (T,), 0),
               ("device_row", (T,), 0),
               ("rows", (R,), self.max_num_seqs), ("sample_idx", (R,), 0),
               ("output_pos", (R,), 0), ("samples", (R,), 0)]
        for lane, N, Q, F in (("d", ND, 1, 1), ("p", NP, Qt, self.prefill_fresh_tiles)):
            M = N * self.runs
            out += [(f"{lane}_tok", (N, Q), T), (f"{lane}_ctx", (N,), 0),
                    (f"{lane}_tile_blk", (M,), 0), (f"{lane}_tile_pages", (M, K), 0),
                    (f"{lane}_tile_pos0", (M,), 0), (f"{lane}_num_tiles", (), 0),
                    (f"{lane}_fresh_blk", (F,), 0), (f"{lane}_fresh_src", (F,), 0),
                    (f"{lane}_num_fresh", (), 0)]
        return out

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for _, shape, _ in self.fields())

    def empty(self) -> dict[str, np.ndarray]:
        return {name: np.full(shape, pad, np.int32) for name, shape, pad in self.fields()}

    def pack(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([arrays[name].reshape(-1) for name, _, _ in self.fields()])

    def unpack(self, packed) -> dict:
        """Slices of `packed` (NumPy or a traced array) by name, with their shapes."""
        out, offset = {}, 0
        for name, shape, _ in self.fields():
            n = math.prod(shape)
            out[name] = packed[offset: offset + n].reshape(shape)
            offset += n
        return out


def build_step(chunks: Sequence, layout: StepLayout) -> np.ndarray:
    """The packed int32 inputs of one step. `chunks`: objects with `start`, `num_tokens`,
    `token_ids`, `from_device`, `samples`, `output_pos`, `page_ids`, `row` (see
    `esurge_scheduler.Chunk`), at most `layout.num_seqs` of them and `layout.num_tokens` tokens."""
    a = layout.empty()
    S, K, Qt, T = layout.page_size, layout.pages_per_tile, layout.query_block, layout.num_tokens
    if len(chunks) > layout.num_seqs:
        raise ValueError(f"{len(chunks)} chunks exceed the layout's {layout.num_seqs} sequences")
    off = nd = md = nb = mp = fp = 0
    for i, c in enumerate(chunks):
        n = c.num_tokens
        if off + n > T:
            raise ValueError(f"the chunks' tokens exceed the token bucket {T}")
        pages = np.asarray(c.page_ids, np.int32)
        pos = np.arange(c.start, c.start + n, dtype=np.int32)
        a["token_ids"][off:off + n] = c.token_ids
        a["positions"][off:off + n] = pos
        a["slots"][off:off + n] = pages[pos // S] * S + pos % S
        if c.from_device:
            a["from_device"][off] = 1
            a["device_row"][off] = c.row
        a["rows"][i], a["sample_idx"][i] = c.row, off + n - 1
        a["output_pos"][i], a["samples"][i] = c.output_pos, int(c.samples)
        # the cached past [0, start) in runs of K pages (the last run padded with page 0, masked)
        past = -(-c.start // S)
        runs = -(-past // K)
        run_pages = np.zeros(runs * K, np.int32)
        run_pages[:past] = pages[:past]
        run_pages = run_pages.reshape(runs, K)
        run_pos0 = np.arange(runs, dtype=np.int32) * K * S
        if n == 1:  # lane D
            a["d_tok"][nd, 0], a["d_ctx"][nd] = off, c.start
            a["d_tile_blk"][md:md + runs] = nd
            a["d_tile_pages"][md:md + runs] = run_pages
            a["d_tile_pos0"][md:md + runs] = run_pos0
            nd, md = nd + 1, md + runs
        else:  # lane P: blocks of Qt tokens
            nblocks = -(-n // Qt)
            for b in range(nblocks):
                m = min(Qt, n - b * Qt)
                a["p_tok"][nb + b, :m] = off + b * Qt + np.arange(m)
            a["p_ctx"][nb:nb + nblocks] = c.start
            blocks = nb + np.arange(nblocks, dtype=np.int32)
            m = nblocks * runs
            a["p_tile_blk"][mp:mp + m] = np.repeat(blocks, runs)
            a["p_tile_pages"][mp:mp + m] = np.tile(run_pages, (nblocks, 1))
            a["p_tile_pos0"][mp:mp + m] = np.tile(run_pos0, nblocks)
            blk, src = np.tril_indices(nblocks)  # (block, earlier-or-same block)
            a["p_fresh_blk"][fp:fp + len(blk)] = nb + blk
            a["p_fresh_src"][fp:fp + len(blk)] = nb + src
            nb, mp, fp = nb + nblocks, mp + m, fp + len(blk)
        off += n
    a["d_num_tiles"][...], a["p_num_tiles"][...], a["p_num_fresh"][...] = md, mp, fp
    return layout.pack(a)
