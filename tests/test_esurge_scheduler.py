"""eSurge's host side: token-budget scheduling, chunked prefill, prefix caching, preemption,
priorities, long prompts, tenants; property tests over random workloads (no JAX)."""

import collections
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.esurge_sim import SimDevice, drive, reference, request
from workbench.engines import seq_state
from workbench.engines.esurge_scheduler import ESurgeScheduler
from workbench.engines.kv_cache_manager import KVCacheManager
from workbench.engines.tenants import fair_order, fair_shares
from workbench.engines.types import EngineOverloadedError, RequestStatus


def _sched(num_pages=64, page_size=4, caching=True, **kw):
    args = dict(max_num_seqs=4, max_num_batched_tokens=16)
    args.update(kw)
    return ESurgeScheduler(KVCacheManager(num_pages, page_size, caching), **args)


def _ids(plan):
    return [(c.seq.request.request_id, c.start, c.num_tokens) for c in plan.chunks]


def test_chunked_prefill_then_decodes_with_the_input_on_the_device():
    s = _sched()
    dev = SimDevice(64, 4)
    s.add(request("a", range(1, 41), max_tokens=3))
    p1 = s.schedule()
    assert _ids(p1) == [("a", 0, 16)] and not p1.chunks[0].samples
    assert [e[1] for e in p1.events] == ["scheduled", "prefix_lookup", "prefill_chunk"]
    dev.execute(p1)
    p2, p3 = s.schedule(), None
    assert _ids(p2) == [("a", 16, 16)]
    dev.execute(p2)
    p3 = s.schedule()
    assert _ids(p3) == [("a", 32, 8)] and p3.chunks[0].samples and p3.chunks[0].output_pos == 0
    out3 = dev.execute(p3)
    # the next step is planned before the sampled token reaches the host: it reads it on device
    p4 = s.schedule()
    c = p4.chunks[0]
    assert (c.start, c.num_tokens, c.from_device, c.output_pos) == (40, 1, True, 1)
    out4 = dev.execute(p4)
    s.update(p3, out3)
    p5 = s.schedule()
    assert p5.chunks[0].from_device and p5.chunks[0].output_pos == 2
    s.update(p4, out4)
    s.update(p5, dev.execute(p5))
    seq = s.seqs["a"][0].seq
    assert seq.output_ids == reference(list(range(1, 41)), 3) and seq.finished
    assert s.schedule().empty and not s.running and s.kv.pool.usage == 0


def test_decodes_come_first_and_a_long_prompt_is_capped_when_others_wait():
    s = _sched(max_num_batched_tokens=16, long_prefill_token_threshold=6)
    dev = SimDevice(64, 4)
    s.add(request("short", [1, 2, 3], max_tokens=20))
    s.update(p := s.schedule(), dev.execute(p))  # short decodes from now on
    s.add(request("long", range(5, 60), max_tokens=2))
    s.add(request("tiny", [7, 8], max_tokens=2))
    plan = s.schedule()
    # the decode first; the long prompt's chunk capped at 6 while tiny competes; tiny fits
    # whole; then the long prompt gets the budget nobody else wants (16 - 1 - 2 = 13)
    assert _ids(plan) == [("short", 3, 1), ("long", 0, 13), ("tiny", 0, 2)]
    s.update(plan, dev.execute(plan))
    plan = s.schedule()  # no competing prompt left: the long one takes the rest of the budget
    assert _ids(plan)[:2] == [("short", 4, 1), ("tiny", 2, 1)] and _ids(plan)[2] == ("long", 13, 14)


def test_one_long_prompt_prefills_at_a_time_and_short_ones_pass_it():
    s = _sched(max_num_batched_tokens=16, long_prefill_token_threshold=8, max_num_seqs=6)
    for rid, n in [("long1", 50), ("long2", 50), ("s1", 3), ("s2", 4)]:
        s.add(request(rid, range(10 * n, 11 * n), max_tokens=2))
    plan = s.schedule()
    # long2 would also be partial: it waits; the short ones start (and sample) in this step;
    # the one token left goes to long1
    assert _ids(plan) == [("long1", 0, 9), ("s1", 0, 3), ("s2", 0, 4)]
    assert [c.samples for c in plan.chunks] == [False, True, True]
    # budget nobody else can use goes to a second long prompt after all (no one waits for it)
    s = _sched(max_num_batched_tokens=64, long_prefill_token_threshold=8, max_num_seqs=6)
    s.add(request("long1", range(100, 150), max_tokens=2))
    s.add(request("long2", range(200, 250), max_tokens=2))
    assert _ids(s.schedule()) == [("long1", 0, 50), ("long2", 0, 14)]
    with pytest.raises(ValueError, match="max_num_partial_prefills"):
        _sched(max_num_partial_prefills=0)


def test_shared_prefix_hits_and_the_last_token_is_always_computed():
    s = _sched(page_size=4)
    dev = SimDevice(64, 4)
    shared = list(range(1, 13))
    s.add(request("a", shared + [20, 21], max_tokens=2))
    s.update(p := s.schedule(), dev.execute(p))
    s.add(request("b", shared + [30], max_tokens=2))
    s.add(request("c", shared, max_tokens=2))
    plan = s.schedule()
    lookups = {rid: info for rid, ev, info in plan.events if ev == "prefix_lookup"}
    assert lookups == {"b": {"queries": 13, "hits": 12}, "c": {"queries": 12, "hits": 8}}
    assert _ids(plan)[1:] == [("b", 12, 1), ("c", 8, 4)]
    assert (s.kv.num_queries, s.kv.num_hits) == (14 + 13 + 12, 20)


def test_a_burst_sharing_a_prefix_computes_it_once():
    s = _sched(page_size=4, max_num_batched_tokens=64, max_num_seqs=6)
    dev = SimDevice(64, 4)
    shared = list(range(1, 21))  # 5 pages
    arrivals = {0: [request(f"r{i}", shared + [30 + i, 40 + i], max_tokens=3) for i in range(5)]}
    first_steps = []
    requests, _ = drive(s, dev, arrivals, on_plan=lambda p: first_steps.append(_ids(p)))
    # r0 computes the prefix (its chunk capped at 16 while the others compete, then extended
    # with the budget they cannot use); the others wait for it, then compute only their tails
    assert first_steps[0] == [("r0", 0, 22)]
    assert sorted(first_steps[1]) == [("r0", 22, 1)] + [(f"r{i}", 20, 2) for i in range(1, 5)]
    computed = collections.Counter()
    for step in first_steps:
        for rid, _, n in step:
            computed[rid] += n
    assert computed["r0"] == 22 + 2 and all(computed[f"r{i}"] == 2 + 2 for i in range(1, 5))
    assert (s.kv.num_queries, s.kv.num_hits) == (5 * 22, 4 * 20)
    for rid, r in requests.items():
        assert r.sequences[0].output_ids == reference(r.prompt_ids, 3)


def test_preemption_recomputes_keeps_the_queue_place_and_counts_no_hits():
    # 5 pages of 4 positions: a (arrival 0) and b (arrival 1) hold 2 pages each and grow; c
    # (a later arrival) waits for a row
    s = _sched(num_pages=5, page_size=4, max_num_batched_tokens=32, max_num_seqs=2)
    dev = SimDevice(5, 4)
    prompts = {"a": list(range(1, 8)), "b": list(range(11, 18)), "c": list(range(21, 24))}
    arrivals = {0: [request("a", prompts["a"], 10), request("b", prompts["b"], 10)],
                1: [request("c", prompts["c"], 3)]}
    events, orders = [], []

    def on_plan(plan):
        events.extend((rid, ev) for rid, ev, _ in plan.events)
        if plan.events and plan.events[-1][1] == "preempted" and events[-1] == ("b", "preempted"):
            orders.append([x.request_id for x in s.waiting])
            assert s.seqs["b"][0].seq.status == RequestStatus.PREEMPTED

    requests, _ = drive(s, dev, arrivals, on_plan=on_plan)
    preempted = [rid for rid, ev in events if ev == "preempted"]
    assert preempted and preempted[0] == "b"  # the latest arrival is the victim
    assert ("b", "resumed") in events and s.num_preemptions == len(preempted)
    # b went back to the queue ahead of c, a later arrival of the same priority (vLLM #41951)
    assert orders and orders[0][:2] == ["b#0", "c#0"]
    for rid, r in requests.items():  # recompute gives the tokens of an unpreempted run
        assert r.sequences[0].output_ids == reference(prompts[rid], r.params.max_tokens)
    # a resumed sequence's lookups are not prefix-cache queries or hits (vLLM #25780)
    assert s.kv.num_queries == 7 + 7 + 3


def test_priority_policy_orders_admission_and_preempts_the_lowest_priority():
    s = _sched(num_pages=5, page_size=4, max_num_seqs=2, max_num_batched_tokens=64,
               policy="priority")
    prompts = {"low": [1, 2, 3, 4], "mid": [5, 6, 7, 8], "high": [9, 10, 11, 12]}
    arrivals = {0: [request("low", prompts["low"], 12, priority=5),
                    request("mid", prompts["mid"], 12, priority=1)],
                1: [request("high", prompts["high"], 12, priority=0)]}
    events = []
    requests, _ = drive(s, SimDevice(5, 4), arrivals,
                        on_plan=lambda p: events.extend((r, e) for r, e, _ in p.events))
    scheduled = [rid for rid, ev in events if ev == "scheduled"]
    assert scheduled[:2] == ["mid", "low"]
    preempted = [rid for rid, ev in events if ev == "preempted"]
    assert preempted and set(preempted) == {"low"}  # never the higher priorities
    for rid, r in requests.items():
        assert r.sequences[0].output_ids == reference(prompts[rid], 12)
    with pytest.raises(ValueError, match="scheduling_policy"):
        _sched(policy="lifo")


def test_tenant_fair_shares_order_and_caps():
    assert fair_shares({"a": 100, "b": 10, "c": 100}, 90) == {"b": 10, "a": 40, "c": 40}
    assert fair_shares({"a": 5}, 90) == {"a": 5}
    assert sorted(fair_shares({"a": 7, "b": 7}, 9).values()) == [4, 5]
    assert sum(fair_shares({"a": 50, "b": 50, "c": 1}, 10).values()) == 10
    with pytest.raises(ValueError):
        fair_shares({"a": -1}, 3)
    items = [("a", 1), ("a", 2), ("a", 3), ("b", 4), ("b", 5)]
    order = fair_order(items, lambda x: x[0], {"a": 0, "b": 0})
    assert [x[1] for x in order] == [1, 4, 2, 5, 3]
    order = fair_order(items, lambda x: x[0], {"a": 0, "b": 3})
    assert [x[1] for x in order] == [1, 2, 3, 4, 5]


def test_one_tenants_burst_does_not_starve_another():
    def run(fair, cap=None):
        s = _sched(max_num_seqs=4, max_num_batched_tokens=64, tenant_fair_share=fair,
                   max_running_per_tenant=cap)
        for i in range(12):
            s.add(request(f"a{i}", [50 + i] + list(range(1, 11)), max_tokens=8, tenant="alice"))
        s.add(request("b0", range(30, 40), max_tokens=8, tenant="bob"))
        s.add(request("b1", range(40, 50), max_tokens=8, tenant="bob"))
        return s, s.schedule()

    s, plan = run(fair=True)
    tenants = [c.seq.tenant for c in plan.chunks]
    assert tenants.count("bob") == 2 and tenants.count("alice") == 2
    s, plan = run(fair=False)  # plain FCFS: bob waits behind alice's burst
    assert [c.seq.tenant for c in plan.chunks] == ["alice"] * 4
    s, plan = run(fair=False, cap=1)
    assert [c.seq.tenant for c in plan.chunks] == ["alice", "bob"]
    with pytest.raises(ValueError, match="max_running_per_tenant"):
        _sched(max_running_per_tenant=0)


def test_abort_frees_pages_rows_and_capacity_checks():
    s = _sched(max_waiting=2)
    s.add(request("a", range(1, 30), max_tokens=5))
    s.add(request("w", range(1, 5), max_tokens=5, n=2))
    s.schedule()
    assert s.kv.pool.usage > 0 and s.num_running == 2
    assert s.abort("a").request_id == "a" and s.abort("a") is None
    assert s.abort("w").request_id == "w"
    assert s.kv.pool.usage == 0 and not s.running and len(s._free_rows) == 4
    with pytest.raises(ValueError, match="n=5 exceeds the engine's 4 sequences"):
        s.check_capacity(5)
    with pytest.raises(EngineOverloadedError):
        s.check_capacity(1, num_waiting=2)


# ---- properties over random workloads ----------------------------------------------------------
PREFIXES = [[], [3, 4, 5, 6, 7, 8, 9, 10], list(range(20, 33))]


@st.composite
def workloads(draw):
    page_size = draw(st.sampled_from([2, 4, 8]))
    reqs = []
    for i in range(draw(st.integers(1, 10))):
        prompt = draw(st.sampled_from(PREFIXES)) + draw(
            st.lists(st.integers(1, 39), min_size=1, max_size=20))
        reqs.append(dict(rid=f"r{i}", prompt=prompt, max_tokens=draw(st.integers(1, 12)),
                         priority=draw(st.integers(0, 2)), n=draw(st.integers(1, 2)),
                         arrive=draw(st.integers(0, 6)), tenant=draw(st.sampled_from([None, "t"])),
                         abort=draw(st.one_of(st.none(), st.integers(0, 25)))))
    most = max(-(-(len(r["prompt"]) + r["max_tokens"]) // page_size) for r in reqs)
    return dict(
        reqs=reqs, page_size=page_size, num_pages=most + draw(st.integers(0, 6)),
        caching=draw(st.booleans()),
        sched=dict(max_num_seqs=draw(st.integers(1, 5)),
                   max_num_batched_tokens=draw(st.integers(2, 40)),
                   policy=draw(st.sampled_from(["fcfs", "priority"])),
                   long_prefill_token_threshold=draw(st.one_of(st.none(), st.integers(1, 16))),
                   max_num_partial_prefills=draw(st.integers(1, 2)),
                   max_running_per_tenant=draw(st.one_of(st.none(), st.integers(1, 3))),
                   tenant_fair_share=draw(st.booleans())))


@settings(max_examples=150, deadline=None)
@given(w=workloads())
def test_random_workloads_keep_the_invariants_and_the_tokens(w, monkeypatch_hashes):
    s = ESurgeScheduler(KVCacheManager(w["num_pages"], w["page_size"], w["caching"]), **w["sched"])
    dev = SimDevice(w["num_pages"], w["page_size"])
    arrivals, aborts = collections.defaultdict(list), collections.defaultdict(list)
    for r in w["reqs"]:
        arrivals[r["arrive"]].append(request(r["rid"], r["prompt"], r["max_tokens"],
                                             r["priority"], r["tenant"], r["n"]))
        if r["abort"] is not None:
            aborts[r["abort"]].append(r["rid"])
    pool = s.kv.pool

    def check():
        pool.check()  # free queue <-> ref counts, map <-> hashes, no negative count
        holders = {pid: len(seqs) for pid, seqs in s.kv.owners().items()}
        for block in pool.blocks:  # a page is held by exactly ref_cnt sequences
            assert block.ref_cnt == holders.get(block.block_id, 0), block
            if block.block_hash is not None:  # a cached page holds the tokens it is hashed from
                assert dev.pages[block.block_id] == monkeypatch_hashes[block.block_hash], block

    requests, _ = drive(s, dev, arrivals, aborts, check=check)
    for r in requests.values():  # every request ends
        assert r.finished
        for seq in r.sequences:
            if seq.status != RequestStatus.FINISHED_ABORTED:
                assert seq.output_ids == reference(r.prompt_ids, r.params.max_tokens)
    # nothing owned at the end: every page is free (cached or not)
    assert all(b.ref_cnt == 0 for b in pool.blocks) and pool.num_free == pool.num_pages
    assert not s.running and not len(s.waiting) and not s.seqs


@pytest.fixture(scope="module")
def monkeypatch_hashes():
    """Record the token ids every block hash was computed from."""
    seen = {}
    original = seq_state.hash_block

    def recording(parent, ids):
        h = original(parent, ids)
        seen[h] = list(ids)
        return h

    seq_state.hash_block = recording
    yield seen
    seq_state.hash_block = original


def test_host_side_imports_no_jax():
    code = ("import sys, workbench.engines.esurge_scheduler, workbench.engines.block_pool, "
            "workbench.engines.kv_cache_manager, workbench.engines.tenants, "
            "workbench.engines.ragged_batch, workbench.engines.kv_budget; "
            "assert 'jax' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)



@pytest.mark.parametrize("knob", ["max_num_seqs", "max_num_batched_tokens",
                                  "max_num_partial_prefills", "max_waiting",
                                  "long_prefill_token_threshold", "max_running_per_tenant"])
def test_count_knobs_take_integers_only(knob):
    """A bool is not a count (True used to pass as 1), a numpy int is."""
    import numpy as np

    base = dict(max_num_seqs=4, max_num_batched_tokens=64)
    for bad in (True, 2.0, "3", 0):
        with pytest.raises(ValueError, match=rf"^{knob} must be "):
            ESurgeScheduler(KVCacheManager(8, 4), **{**base, knob: bad})
    ESurgeScheduler(KVCacheManager(8, 4), **{**base, knob: np.int64(3)})


def test_the_token_budget_has_a_ceiling():
    from workbench.engines.buckets import MAX_BATCHED_TOKENS

    ESurgeScheduler(KVCacheManager(8, 4), max_num_seqs=4,
                    max_num_batched_tokens=MAX_BATCHED_TOKENS)
    with pytest.raises(ValueError, match=r"^max_num_batched_tokens must be an integer in "
                                         r"\[1, 1048576\], got 100000000000000000000000$"):
        ESurgeScheduler(KVCacheManager(8, 4), max_num_seqs=4, max_num_batched_tokens=10**23)
