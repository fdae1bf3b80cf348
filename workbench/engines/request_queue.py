"""Waiting queues: FCFS and priority (lower value first, ties by arrival). Plain Python, no JAX.

`KeyedQueue` (eSurge) orders items by a key fixed at their first submission, `(priority,
arrival)` or `(arrival,)`, so an item pushed back after a preemption regains its original place:
ahead of later arrivals of the same priority, behind earlier ones (vLLM issue 41951 put it at the
back).
"""

from __future__ import annotations

import abc
import bisect
import heapq
import itertools
from collections import deque
from typing import Iterator, TypeVar

T = TypeVar("T")


class RequestQueue(abc.ABC):
    """A waiting queue of items with a `request_id` and a `priority`."""

    @abc.abstractmethod
    def push(self, item) -> None: ...

    @abc.abstractmethod
    def peek(self): ...

    @abc.abstractmethod
    def pop(self): ...

    @abc.abstractmethod
    def remove(self, request_id: str):
        """Remove and return the item with this id, or None."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __iter__(self) -> Iterator: ...


class FCFSQueue(RequestQueue):
    def __init__(self):
        self._items: deque = deque()

    def push(self, item) -> None:
        self._items.append(item)

    def push_front(self, item) -> None:
        self._items.appendleft(item)

    def peek(self):
        return self._items[0]

    def pop(self):
        return self._items.popleft()

    def remove(self, request_id: str):
        for item in self._items:
            if item.request_id == request_id:
                self._items.remove(item)
                return item
        return None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(list(self._items))


class PriorityQueue(RequestQueue):
    """Lower `priority` first; equal priorities in arrival order."""

    def __init__(self):
        self._heap: list = []
        self._order = itertools.count()
        self._removed: set[int] = set()

    def push(self, item) -> None:
        heapq.heappush(self._heap, (item.priority, next(self._order), item))

    def push_front(self, item) -> None:
        # Ahead of everything of the same priority (used when re-queueing a preempted request).
        heapq.heappush(self._heap, (item.priority, -next(self._order), item))

    def _prune(self) -> None:
        while self._heap and id(self._heap[0][2]) in self._removed:
            self._removed.discard(id(heapq.heappop(self._heap)[2]))

    def peek(self):
        self._prune()
        return self._heap[0][2]

    def pop(self):
        self._prune()
        return heapq.heappop(self._heap)[2]

    def remove(self, request_id: str):
        for _, _, item in self._heap:
            if item.request_id == request_id and id(item) not in self._removed:
                self._removed.add(id(item))
                return item
        return None

    def __len__(self) -> int:
        return len(self._heap) - len(self._removed)

    def __iter__(self):
        return iter([it for _, _, it in sorted(self._heap) if id(it) not in self._removed])


def make_queue(policy: str) -> RequestQueue:
    """"fcfs" or "priority"; anything else raises ValueError."""
    if policy == "fcfs":
        return FCFSQueue()
    if policy == "priority":
        return PriorityQueue()
    raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', got {policy!r}")


class KeyedQueue(RequestQueue):
    """Items sorted by `key(item)` (unique per item); iteration is in that order."""

    def __init__(self, key):
        self._key = key
        self._items: list[tuple] = []  # sorted (key, item)

    def push(self, item) -> None:
        bisect.insort(self._items, (self._key(item), item), key=lambda e: e[0])

    def peek(self):
        return self._items[0][1]

    def pop(self):
        return self._items.pop(0)[1]

    def remove(self, request_id: str):
        for i, (_, item) in enumerate(self._items):
            if item.request_id == request_id:
                del self._items[i]
                return item
        return None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter([item for _, item in self._items])


def make_keyed_queue(policy: str) -> KeyedQueue:
    """"fcfs": by `arrival`; "priority": by (`priority`, `arrival`); else ValueError."""
    if policy == "fcfs":
        return KeyedQueue(lambda item: (item.arrival,))
    if policy == "priority":
        return KeyedQueue(lambda item: (item.priority, item.arrival))
    raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', got {policy!r}")
