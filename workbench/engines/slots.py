"""Decode slots: a fixed set of rows in the decode batch, each holding one sequence at a time.
Plain Python, no JAX."""

from __future__ import annotations


class SlotTable:
    """Which sequence occupies each decode slot. Lowest free slot first, so live rows cluster."""

    def __init__(self, num_slots: int):
        if num_slots < 1:
            raise ValueError(f"number of decode slots must be >= 1, got {num_slots}")
        self.num_slots = num_slots
        self._owner: list = [None] * num_slots

    @property
    def num_free(self) -> int:
        return self._owner.count(None)

    @property
    def num_used(self) -> int:
        return self.num_slots - self.num_free

    def allocate(self, owner) -> int:
        for i, o in enumerate(self._owner):
            if o is None:
                self._owner[i] = owner
                return i
        raise RuntimeError("no free decode slot")  # callers check num_free first

    def free(self, slot: int) -> None:
        assert self._owner[slot] is not None, f"slot {slot} is already free"
        self._owner[slot] = None

    def owner(self, slot: int):
        return self._owner[slot]

    def occupied(self) -> list[tuple[int, object]]:
        return [(i, o) for i, o in enumerate(self._owner) if o is not None]

    def compact(self, size: int) -> list[tuple[int, int]]:
        """Move owners from slots >= `size` into free slots below it, so every occupied slot lies
        in the first `size` (needs num_used <= size). Returns the (src, dst) moves; an owner with
        a `slot` attribute gets its new slot. The caller moves the slots' device rows to match."""
        if self.num_used > size:
            raise ValueError(f"{self.num_used} occupied slots do not fit in the first {size}")
        free = [i for i in range(size) if self._owner[i] is None]
        moves = []
        for src in range(size, self.num_slots):
            owner = self._owner[src]
            if owner is None:
                continue
            dst = free.pop(0)
            self._owner[dst], self._owner[src] = owner, None
            if hasattr(owner, "slot"):
                owner.slot = dst
            moves.append((src, dst))
        return moves

    def snapshot(self) -> list:
        """Owners by slot (None = free), as a copy."""
        return list(self._owner)
