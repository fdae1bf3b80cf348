"""The step channel: leader -> follower messages of a multi-host job (`distributed.py`), sent with
JAX itself.

NOTE: the one idea. Each message is one `multihost_utils.broadcast_one_to_all` of a fixed-size
frame [op, num_bytes, the payload's first bytes], and the rest of the payload, padded to a
power-of-two bucket, in a second broadcast only when it does not fit (most steps' plans fit), so
the broadcasts compile once per size bucket. Every call is a collective: all processes call
`send` (leader) / `receive` (followers) in the same order. On the leader each message runs on a
watchdog thread, so a follower that died or hangs fails the step within `step_timeout` seconds
(`DistributedError`) instead of hanging the leader in a collective.
"""

from __future__ import annotations

import collections
import concurrent.futures
import enum
import pickle
from typing import Any, Callable

import jax
import numpy as np


class DistributedError(RuntimeError):
    """A process of the distributed job died, hung, or disagreed with the leader."""


class Op(enum.IntEnum):
    STOP = 0  # the leader is done: followers return from `follow`
    ALLOCATE = 1  # runner.allocate()
    FREE = 2  # runner.free()
    EXECUTE = 3  # runner.execute(plan)
    FETCH = 4  # runner.fetch(oldest handle)
    RUN = 5  # vInference: run these requests (a static batch)
    SYNC = 6  # vInference: the rows the leader's host has finished


FRAME_BYTES = 512  # one broadcast per message when the plan fits (most steps' plans do)


def _bucket(n: int) -> int:
    return max(256, 1 << (n - 1).bit_length())


class StepChannel:
    """Leader -> followers messages through `broadcast_one_to_all`; see the module docstring.

    Every call is a collective: all processes call `send` (leader) / `receive` (followers) in the
    same order. On the leader each message runs on a watchdog thread: one that does not complete
    within `step_timeout` seconds (a follower died or hangs; the messages are tiny and compiled
    once per size bucket) marks the channel failed, and every later call raises
    `DistributedError` at once."""

    def __init__(self, step_timeout: float = 60.0, device_timeout: float = 900.0):
        self.step_timeout, self.device_timeout = step_timeout, device_timeout
        self.leader = jax.process_index() == 0  # process 0 leads (`distributed.is_leader`)
        self.error: DistributedError | None = None
        self.sizes: collections.deque = collections.deque(maxlen=4096)  # bytes per send
        self._guard = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="step-guard")

    def _broadcast(self, x: np.ndarray) -> np.ndarray:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.broadcast_one_to_all(x))

    @staticmethod
    def encode(payload: Any) -> bytes:
        """A payload as `_exchange` sends it (empty for None)."""
        return b"" if payload is None else pickle.dumps(payload, protocol=5)

    def _exchange(self, op: Op, data: bytes) -> tuple[Op, Any]:
        """One broadcast of a fixed-size frame [op, num_bytes, first bytes of `data`, the
        leader's encoded payload; followers pass b""]; a second one, padded to a power-of-two
        bucket, only for a payload that does not fit. Returns (op, decoded payload)."""
        frame = np.zeros(FRAME_BYTES, np.uint8)
        if self.leader:
            frame[:16] = np.array([int(op), len(data)], np.int64).view(np.uint8)
            head = data[:FRAME_BYTES - 16]
            frame[16:16 + len(head)] = np.frombuffer(head, np.uint8)
        frame = self._broadcast(frame)
        op, size = (int(x) for x in frame[:16].view(np.int64))
        body = frame[16:16 + size].tobytes()
        if size > FRAME_BYTES - 16:
            rest = np.zeros(_bucket(size - len(body)), np.uint8)
            if self.leader:
                tail = data[len(body):]
                rest[:len(tail)] = np.frombuffer(tail, np.uint8)
            body += self._broadcast(rest)[:size - len(body)].tobytes()
        return Op(op), (pickle.loads(body) if size else None)

    def guarded(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run `fn` (collectives) on the watchdog thread, at most `timeout` seconds (default
        `step_timeout`); see the class docstring."""
        if self.error is not None:
            raise self.error
        timeout = self.step_timeout if timeout is None else timeout
        future = self._guard.submit(fn)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self.error = DistributedError(
                f"a distributed step did not complete within {timeout:g} s: a follower "
                "process died or hangs; restart the job")
        except Exception as e:  # noqa: BLE001 - a collective that failed (e.g. a lost peer)
            self.error = DistributedError(
                f"a distributed step failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}):"
                " a follower process died or disagrees; restart the job")
        raise self.error

    def send(self, op: Op, payload: Any = None, then: Callable[[], Any] | None = None) -> Any:
        """Leader: send (op, payload) to the followers (at most `step_timeout` seconds), then run
        `then`, the device call they mirror, and return its result. The device call has its own,
        longer limit (`device_timeout`): its first run of a shape includes compilation."""
        assert self.leader, "only the leader sends"
        data = self.encode(payload)  # pickled once: sent, and its size recorded
        self.guarded(lambda: self._exchange(op, data))
        self.sizes.append(len(data))
        return None if then is None else self.guarded(then, self.device_timeout)

    def receive(self) -> tuple[Op, Any]:
        """Follower: the next (op, payload) from the leader (blocks)."""
        assert not self.leader, "the leader does not receive"
        return self._exchange(Op.STOP, b"")

    def close(self) -> None:
        """Leader: tell the followers to return from `follow`."""
        if self.leader and self.error is None:
            try:
                self.send(Op.STOP)
            except DistributedError:
                pass
        self._guard.shutdown(wait=False)
