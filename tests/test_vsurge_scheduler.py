"""vSurge host-side scheduling: queues, slots, admission, interleaving, abort (no JAX)."""

import sys

import pytest

from workbench.engines.request_queue import FCFSQueue, PriorityQueue, make_queue
from workbench.engines.types import EngineOverloadedError, RequestStatus
from workbench.engines.vsurge_scheduler import VSurgeScheduler


class FakeSeq:
    status = RequestStatus.WAITING
    output_ids = ()  # the decode plan reads how far each live row got


class FakeReq:
    def __init__(self, rid, priority=0, n=1, prompt_len=8):
        self.request_id, self.priority = rid, priority
        self.sequences = [FakeSeq() for _ in range(n)]
        self.prompt_ids = [1] * prompt_len


def test_priority_queue_orders_by_priority_then_arrival_and_removes():
    q = PriorityQueue()
    for rid, pr in [("a", 5), ("b", 1), ("c", 5), ("d", 1), ("e", 0)]:
        q.push(FakeReq(rid, pr))
    assert q.remove("c").request_id == "c" and q.remove("zz") is None
    assert len(q) == 4
    assert [q.pop().request_id for _ in range(4)] == ["e", "b", "d", "a"]


def test_fcfs_queue_and_factory():
    q = make_queue("fcfs")
    assert isinstance(q, FCFSQueue)
    for rid in "xyz":
        q.push(FakeReq(rid, priority=-ord(rid)))
    assert [q.pop().request_id for _ in range(3)] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="scheduling_policy"):
        make_queue("lifo")


def _sched(**kw):
    args = dict(num_slots=4, max_concurrent_prefill=2, interleaved=False, policy="fcfs",
                max_waiting=8)
    args.update(kw)
    return VSurgeScheduler(**args)


def test_admits_into_free_slots_in_prefill_batches():
    s = _sched()
    for i in range(6):
        s.add(FakeReq(f"r{i}"))
    plan = s.schedule()
    assert [[a.request.request_id for a in b] for b in plan.prefill_batches] == [
        ["r0", "r1"], ["r2", "r3"]]
    assert plan.decode and s.num_waiting == 2 and s.slots.num_free == 0
    assert sorted(a.slot for b in plan.prefill_batches for a in b) == [0, 1, 2, 3]
    # free one slot: the next waiting request takes it
    a = plan.prefill_batches[0][1]
    assert s.free_sequence(a) and not s.free_sequence(a)
    s.finish_request("r1")
    plan = s.schedule()
    assert [[x.request.request_id for x in b] for b in plan.prefill_batches] == [["r4"]]
    assert plan.prefill_batches[0][0].slot == a.slot


def test_prefill_batches_group_similar_prompt_lengths():
    s = _sched(num_slots=6, max_concurrent_prefill=2)
    for rid, n in [("a", 200), ("b", 10), ("c", 190), ("d", 12), ("e", 100), ("f", 300)]:
        s.add(FakeReq(rid, prompt_len=n))
    plan = s.schedule()  # all six admitted at once: batched short with short, long with long
    assert [[a.request.request_id for a in b] for b in plan.prefill_batches] == [
        ["b", "d"], ["e", "c"], ["a", "f"]]
    # interleaved mode keeps queue order: one batch per iteration, the head first
    s = _sched(num_slots=6, max_concurrent_prefill=2, interleaved=True)
    for rid, n in [("a", 200), ("b", 10), ("c", 190)]:
        s.add(FakeReq(rid, prompt_len=n))
    assert [[a.request.request_id for a in b] for b in s.schedule().prefill_batches] == [
        ["a", "b"]]


def test_interleaved_mode_runs_one_prefill_batch_per_iteration():
    s = _sched(interleaved=True)
    for i in range(4):
        s.add(FakeReq(f"r{i}"))
    assert len(s.schedule().prefill_batches) == 1
    assert len(s.schedule().prefill_batches) == 1
    assert s.schedule().prefill_batches == []


def test_request_with_n_sequences_waits_for_n_slots_and_keeps_order():
    s = _sched(policy="priority")
    s.add(FakeReq("big", priority=0, n=3))
    s.add(FakeReq("small", priority=1))
    s.schedule()
    s.add(FakeReq("big2", priority=0, n=3))
    plan = s.schedule()  # 1 slot free: big2 waits, and small (lower priority) may not jump it
    assert plan.prefill_batches == [] or all(
        a.request.request_id != "small" for b in plan.prefill_batches for a in b)


def test_capacity_checks_and_abort():
    s = _sched(max_waiting=2)
    with pytest.raises(ValueError, match="exceeds the engine's 4 decode slots"):
        s.check_capacity(5)
    s.add(FakeReq("a"))
    s.add(FakeReq("b"))
    with pytest.raises(EngineOverloadedError, match="waiting queue is full"):
        s.check_capacity(1)
    assert s.abort("b").request_id == "b"
    s.schedule()
    assert s.slots.num_used == 1
    assert s.abort("a").request_id == "a" and s.slots.num_used == 0
    assert s.abort("a") is None


def test_host_scheduling_imports_no_jax():
    import subprocess

    code = ("import sys, workbench.engines.vsurge_scheduler, workbench.engines.request_queue, "
            "workbench.engines.slots; assert 'jax' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_slot_compaction_moves_stragglers_to_the_front():
    from workbench.engines.slots import SlotTable

    class Owner:
        slot = None

    t = SlotTable(8)
    owners = [Owner() for _ in range(8)]
    for o in owners:
        o.slot = t.allocate(o)
    for s in (0, 1, 3, 4, 6):
        t.free(s)
    assert t.compact(4) == [(5, 0), (7, 1)]  # slots 2, 5, 7 live -> 0, 1, 2
    assert [o is not None for o in t.snapshot()] == [True, True, True, False] + [False] * 4
    assert owners[5].slot == 0 and owners[7].slot == 1 and owners[2].slot == 2
    assert t.compact(4) == []
    with pytest.raises(ValueError, match="do not fit"):
        t.compact(2)
