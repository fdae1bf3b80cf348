"""Multi-host serving through `jax.distributed`: one global mesh, the same device steps everywhere.

On a TPU pod slice or several GPU nodes every host runs one process; `jax.distributed` joins them
and `jax.devices()` lists every process's devices. A jitted program over arrays sharded on that
global mesh must be dispatched by every process, in the same order (SPMD). Process 0, the leader,
holds the scheduler, the server and the UI; the others, the followers, hold only device state and
mirror the leader's device calls:

    leader:    plan = schedule() -> channel.send(EXECUTE, plan) -> runner.execute(plan) -> ...
    follower:  op, plan = channel.receive()                     -> runner.execute(plan) -> ...

NOTE: the one idea. The step channel (`step_channel.py`) carries each step's plan from the leader
to the followers with JAX's own collectives; we write no RPC of our own. Everything a device call
reads on the host (prompt ids, sampling parameters, seeds, slots, moves, stop masks) is in the
plan, so followers dispatch exactly the leader's programs. This module holds the rest: start-up,
the global mesh, plans on the wire, and `attach` / `follow`.

- `initialize(...)`: `jax.distributed.initialize` from the environment (TPU / SLURM / ...
  auto-detection) or from an explicit coordinator address, process count and id; CPU collectives
  go through gloo.
- `global_mesh(dp, tp)`: a ("dp", "tp") mesh over every process's devices, `tp` within a host.
- `attach(engine)` (leader) and `follow(engine)` (followers): vSurge and vInference on the mesh.
- `to_host(tree)`: sampled tokens to the host, gathered across processes when they are sharded.

A follower that dies (or hangs) makes the leader's next step fail within `step_timeout` seconds:
the engine is marked failed (`engine.health_error()`, so a server's /health answers 503) instead of
hanging in a collective.
"""

from __future__ import annotations

import collections
import logging
import types

import jax
import numpy as np
from jax.sharding import Mesh

from workbench.step_channel import DistributedError, Op, StepChannel

logger = logging.getLogger("workbench.distributed")

__all__ = ["DistributedError", "Op", "StepChannel", "attach", "follow", "global_mesh",
           "initialize", "is_leader", "process_count", "process_index", "release", "shard_model",
           "to_host"]


# ---- start-up -----------------------------------------------------------------------------------
def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None,
               initialization_timeout: int = 300, heartbeat_timeout_seconds: int = 100) -> None:
    """Join the distributed job (once per process, before any other JAX call).

    With no arguments JAX detects the cluster (Cloud TPU pod slices, SLURM, Open MPI, ...); on a
    machine it cannot detect, pass `coordinator_address` ("host:port" of process 0),
    `num_processes` and `process_id`. CPU devices talk through gloo."""
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id, local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds)


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_leader() -> bool:
    """Process 0: the one that schedules, serves and shows the UI."""
    return jax.process_index() == 0


def global_mesh(dp: int | None = None, tp: int | None = None) -> Mesh:
    """A ("dp", "tp") mesh over every process's devices. Default: tp = the devices of one process
    (tensor parallelism stays within a host, where the links are fast), dp = the processes.
    Devices are ordered by (process, id), so each tp group lies on as few hosts as possible."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    tp = tp or jax.local_device_count()
    dp = dp or len(devices) // tp
    if dp < 1 or tp < 1 or dp * tp != len(devices):
        raise ValueError(f"mesh dp={dp} x tp={tp} must cover all {len(devices)} devices of the "
                         f"{jax.process_count()} processes")
    return Mesh(np.array(devices, dtype=object).reshape(dp, tp), ("dp", "tp"))


def shard_model(model, mesh: Mesh):
    """Place a `LoadedModel`'s params on `mesh` by the partition rules (every process must hold
    the same values, e.g. `random_model` with the same seed); returns the model, now sharded."""
    from flax import nnx

    from workbench.loading import sharding as shd

    flat = []
    for path, var in nnx.to_flat_state(model.state):
        value = np.asarray(var.get_value())
        spec = shd.param_spec(tuple(str(p) for p in path), value.ndim, model.config,
                              mesh.shape["tp"])
        flat.append((path, var.copy(jax.device_put(value, shd.named_sharding(mesh, spec)))))
    model.state = nnx.from_flat_state(flat)
    model.mesh = mesh
    return model


def to_host(tree):
    """`jax.device_get`, except that arrays sharded across processes (e.g. a batch split over
    "dp") are first gathered: a collective, so every process must call it at the same point."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(get, tree)


# ---- plans on the wire (vSurge) -----------------------------------------------------------------
def _wire_assignment(a) -> tuple:
    return (a.slot, list(a.request.prompt_ids), a.sequence.params, a.sequence.seed)


def _assignment(slot, prompt_ids, params, seed):
    """What `SlotDevice` reads of an `Assignment`, rebuilt on a follower (compares by value)."""
    return types.SimpleNamespace(slot=slot, request=types.SimpleNamespace(prompt_ids=prompt_ids),
                                 sequence=types.SimpleNamespace(params=params, seed=seed))


class _PlanCodec:
    """vSurge's `SchedulerOutput` <-> plain data: only what the slot runner reads. The decode
    owners are sent only when they change (they change when requests come or go)."""

    def __init__(self):
        self._owners = None  # leader: the owners last sent; follower: last received

    def encode(self, plan) -> dict:
        d = plan.decode
        decode = None
        if d is not None:
            owners = None
            if d.owners != self._owners:
                self._owners = owners = d.owners
                owners = [None if o is None else _wire_assignment(o) for o in d.owners]
            decode = (owners, d.stop_mask, list(d.moves), list(d.seen))
        return {"prefill": [[_wire_assignment(a) for a in b] for b in plan.prefill_batches],
                "decode": decode}

    def decode(self, data: dict):
        from workbench.engines.vsurge_scheduler import DecodePlan, SchedulerOutput

        decode = None
        if data["decode"] is not None:
            owners, stop_mask, moves, seen = data["decode"]
            if owners is not None:
                self._owners = [None if o is None else _assignment(*o) for o in owners]
            decode = DecodePlan(owners=self._owners, stop_mask=stop_mask, moves=moves, seen=seen)
        return SchedulerOutput(
            prefill_batches=[[_assignment(*a) for a in b] for b in data["prefill"]],
            decode=decode)


class LeaderRunner:
    """The leader's side of a background engine's runner: each call of the runner contract
    (`allocate`, `free`, `execute`, `fetch`) is sent to the followers, then run here."""

    def __init__(self, runner, channel: StepChannel):
        self.runner, self.channel = runner, channel
        self.codec = _PlanCodec()

    def allocate(self) -> None:
        self.channel.send(Op.ALLOCATE, then=self.runner.allocate)

    def free(self) -> None:
        if self.channel.error is None:  # a failed job frees only the leader's own arrays
            self.channel.send(Op.FREE, then=self.runner.free)
        else:
            self.runner.free()

    def execute(self, plan):
        return self.channel.send(Op.EXECUTE, self.codec.encode(plan),
                                 then=lambda: self.runner.execute(plan))

    def fetch(self, handle):
        return self.channel.send(Op.FETCH, then=lambda: self.runner.fetch(handle))


# ---- engines on the mesh ------------------------------------------------------------------------
def attach(engine, channel: StepChannel | None = None, *, step_timeout: float = 60.0):
    """Leader: make `engine` (vSurge or vInference, built on the global mesh's model) mirror its
    device calls to the followers. Returns the engine."""
    from workbench.engines.vinference import vInference
    from workbench.engines.vsurge import vSurge

    channel = channel or StepChannel(step_timeout)
    if not channel.leader:
        raise DistributedError("attach() is for the leader (process 0); followers call follow()")
    if isinstance(engine, vSurge):
        if engine.running:
            raise DistributedError("attach the engine before starting it")
        engine.core.runner = LeaderRunner(engine.device, channel)
        engine.device.skip_aborted = False  # the followers cannot see the leader's aborts
    elif isinstance(engine, vInference):
        pass
    else:
        raise DistributedError(f"{type(engine).__name__} does not run on several hosts yet "
                               "(vSurge and vInference do)")
    engine.channel = channel
    return engine


def release(engine) -> None:
    """Leader: stop the engine and send the followers home (their `follow` returns)."""
    engine.close()
    engine.channel.close()


def follow(engine, channel: StepChannel | None = None) -> int:
    """Follower: mirror the leader's device calls on `engine` (built like the leader's, on the
    same global mesh) until the leader sends STOP; returns the number of messages handled."""
    from workbench.engines.vinference import vInference

    channel = channel or StepChannel()
    if channel.leader:
        raise DistributedError("follow() is for followers; the leader calls attach()")
    engine.channel = channel
    runner = getattr(engine, "device", None)
    if runner is not None:
        runner.skip_aborted = False  # dispatch exactly what the leader dispatches
    codec = _PlanCodec()
    handles: collections.deque = collections.deque()
    count = 0
    while True:
        op, payload = channel.receive()
        count += 1
        if op == Op.STOP:
            return count
        if op == Op.ALLOCATE:
            runner.allocate()
        elif op == Op.FREE:
            handles.clear()
            runner.free()
        elif op == Op.EXECUTE:
            handles.append(runner.execute(codec.decode(payload)))
        elif op == Op.FETCH:
            runner.fetch(handles.popleft())
        elif op == Op.RUN and isinstance(engine, vInference):
            try:
                for _ in engine._run(requests_from_wire(engine, payload)):
                    pass
            except DistributedError:
                raise
            except (ValueError, RuntimeError) as e:
                # The leader runs the same batch and meets the same error at the same step (it
                # answers its caller); the two stay in step, so go on with the next message.
                logger.warning("follower %d: a batch failed as on the leader: %s",
                               process_index(), e)
        else:
            raise DistributedError(f"unexpected step {op.name} for a follower "
                                   f"{type(engine).__name__}")


def requests_to_wire(requests) -> list:
    """vInference: each request's id, prompt ids, and per sequence its params and seed."""
    return [(r.request_id, list(r.prompt_ids), r.params,
             [(s.params, s.seed) for s in r.sequences]) for r in requests]


def requests_from_wire(engine, data) -> list:
    from workbench.engines.request import Request

    requests = []
    for rid, ids, params, seqs in data:
        req = Request(rid, None, ids, params, engine.tokenizer, engine.eos_token_ids)
        for seq, (sp, seed) in zip(req.sequences, seqs):
            seq.params, seq.seed = sp, seed
        requests.append(req)
    return requests


def sync_finished(channel: StepChannel, rows) -> np.ndarray:
    """vInference: the leader sends which rows its host has finished (aborts, stop strings); a
    follower receives it and finishes the same rows. Returns the mask `[len(rows)]`."""
    if channel.leader:
        mask = np.array([s.finished for _, s in rows], bool)
        channel.send(Op.SYNC, mask)
        return mask
    op, mask = channel.receive()
    if op != Op.SYNC:
        raise DistributedError(f"expected SYNC from the leader, got {op.name}")
    for (_, seq), done in zip(rows, mask):
        if done:
            seq.abort()  # no-op when it finished here too (same tokens, same stop rules)
    return mask
