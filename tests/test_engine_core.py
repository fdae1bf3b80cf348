"""The background-engine core driven by a fake scheduler and a fake runner: no model, no JAX."""

import sys
import threading
import time

import pytest

from workbench.engines.engine_core import MAX_CONSECUTIVE_FAULTS, EngineCore, mark_running
from workbench.engines.request import Request
from workbench.engines.sampled_tokens import append_sampled
from workbench.engines.types import (EngineDeadError, EngineError, EngineOverloadedError,
                                    RequestFailedError, RequestStatus)
from workbench.metrics import MetricsCollector
from workbench.sampling_params import SamplingParams


class FakePlan:
    def __init__(self, rows, events):
        self.rows, self.events = rows, events  # rows: (request, sequence) decoded this step

    @property
    def empty(self):
        return not self.rows

    @property
    def num_tokens(self):
        return len(self.rows)


class FakeScheduler:
    """Admits everything; every running sequence gets one token per step."""

    def __init__(self, max_waiting=100):
        self.waiting, self.running, self.max_waiting = [], {}, max_waiting
        self.aborted, self.finished = [], []

    def add(self, req):
        self.waiting.append(req)

    def check_capacity(self, n, num_waiting):
        if num_waiting >= self.max_waiting:
            raise EngineOverloadedError("full")

    def abort(self, rid):
        self.aborted.append(rid)
        for r in self.waiting:
            if r.request_id == rid:
                self.waiting.remove(r)
                return r
        return self.running.pop(rid, None)

    def schedule(self):
        events = []
        for r in self.waiting:
            self.running[r.request_id] = r
            mark_running(r)
            events.append((r.request_id, "scheduled", {}))
            events.append((r.request_id, "prefix_lookup", {"queries": 4, "hits": 1}))
        self.waiting = []
        rows = [(r, s) for r in self.running.values() for s in r.sequences if not s.finished]
        return FakePlan(rows, events)

    def update(self, plan, host):
        out = {}
        for (req, seq), tok in zip(plan.rows, host):
            if append_sampled(seq, [tok]):
                out[req.request_id] = (req, out.get(req.request_id, (req, 0))[1] + 1)
        return list(out.values())

    def finish(self, rid):
        self.finished.append(rid)
        self.running.pop(rid, None)

    @property
    def num_running(self):
        return len(self.running)

    @property
    def num_waiting(self):
        return len(self.waiting)

    @property
    def has_work(self):
        return bool(self.running or self.waiting)

    def report(self, collector):
        collector.set_kv_cache_usage(0.5)


class FakeRunner:
    """Token 7 for every row; logs its calls so the test can see the pipelining."""

    def __init__(self, delay=0.0, fail_at=None, fail_times=None, bad_inputs=(),
                 fail_allocate_at=None):
        self.log, self.delay, self.fail_at = [], delay, fail_at
        self.fail_times = fail_times  # None: every step from fail_at on fails
        self.bad_inputs, self.fail_allocate_at = set(bad_inputs), fail_allocate_at
        self.allocated = self.freed = 0
        self._step = 0

    def allocate(self):
        if self.allocated == self.fail_allocate_at:
            raise MemoryError("no memory left")
        self.allocated += 1

    def prepare(self, req):
        if req.request_id in self.bad_inputs:
            raise OverflowError("an input does not fit its dtype")

    def free(self):
        self.freed += 1

    def execute(self, plan):
        if self._step == self.fail_at and self.fail_times != 0:
            if self.fail_times is not None:
                self.fail_times -= 1
            raise RuntimeError("device on fire")
        self.log.append(("execute", self._step))
        self._step += 1
        return (self._step - 1, [7] * len(plan.rows))

    def fetch(self, handle):
        step, tokens = handle
        time.sleep(self.delay)
        self.log.append(("fetch", step))
        return tokens


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def _request(rid, max_tokens=3, n=1):
    return Request(rid, None, [1, 2, 3], SamplingParams(max_tokens=max_tokens, n=n), None,
                   frozenset())


def _core(runner=None, **kw):
    return EngineCore(name="fake", make_scheduler=lambda: FakeScheduler(**kw),
                      runner=runner or FakeRunner(), collector=MetricsCollector("fake", "m"))


def _drain(stream):
    outs = []
    while not (out := stream.get(timeout=10)).finished:
        outs.append(out)
    return outs + [out]


def test_requests_stream_finish_and_are_recorded():
    core = _core()
    try:
        streams = [core.submit(_request(f"r{i}", max_tokens=2 + i, n=1 + i % 2)) for i in range(3)]
        finals = [_drain(s)[-1] for s in streams]
    finally:
        core.stop()
    for i, out in enumerate(finals):
        assert [o.token_ids for o in out.outputs] == [[7] * (2 + i)] * (1 + i % 2)
        assert out.outputs[0].finish_reason == "length"
    snap = core.collector.snapshot()
    assert snap["num_requests_finished"] == 3 and snap["generation_tokens_total"] == 2 + 2 * 3 + 4
    assert snap["prefix_cache_queries_total"] == 12 and snap["prefix_cache_hits_total"] == 3
    assert snap["kv_cache_usage_perc"] == 0.5
    # a row per running sequence and step; the host learns a sequence ended one step late,
    # so some rows were computed for nothing
    assert 12 <= snap["iteration_tokens_total"] <= 12 + 4
    assert snap["iterations_total"] >= 4  # the longest request needs 4 steps
    events = [e["event"] for e in core.timeline.get("r1")]
    assert events == ["queued", "scheduled", "prefix_lookup", "first_token", "finished"]
    times = [e["time"] for e in core.timeline.get("r1")]
    assert times == sorted(times)
    assert core.timeline.get("r1")[-1]["reason"] == "length"
    with pytest.raises(KeyError, match="no timeline"):
        core.timeline.get("nope")


def test_update_of_a_step_overlaps_the_next_dispatch():
    runner = FakeRunner(delay=0.01)
    core = _core(runner)
    try:
        _drain(core.submit(_request("a", max_tokens=4)))
    finally:
        core.stop()
    # iteration k+1 is dispatched before iteration k's tokens are fetched
    assert runner.log[:4] == [("execute", 0), ("execute", 1), ("fetch", 0), ("execute", 2)]
    assert runner.allocated == 1 and runner.freed == 1


def test_abort_stop_restart_and_overload():
    runner = FakeRunner(delay=0.005)
    core = _core(runner, max_waiting=2)
    stream = core.submit(_request("long", max_tokens=10_000))
    first = stream.get(timeout=10)
    assert not first.finished
    assert core.abort("long") and not core.abort("unknown")
    outs = _drain(stream)
    assert outs[-1].outputs[0].finish_reason == "abort"
    assert "long" in core.scheduler.aborted and "long" in core.scheduler.finished
    assert not core.abort("long")  # finished requests are forgotten
    core.submit(_request("dup", max_tokens=10_000))
    with pytest.raises(ValueError, match="already in use"):
        core.submit(_request("dup"))
    core.submit(_request("other", max_tokens=10_000))
    core.scheduler.max_waiting = 0
    with pytest.raises(EngineOverloadedError):
        core.submit(_request("third"))
    assert core.collector.snapshot()["num_requests_rejected"] == 1
    core.stop()
    core.stop()  # idempotent
    assert not any(t.name == "fake-driver" for t in threading.enumerate())
    assert core.num_requests == 0 and runner.freed == 1
    assert core.collector.snapshot()["finished_by_reason"]["abort"] == 3
    # a fresh scheduler after stop; the core starts again on submit
    assert core.scheduler.running == {} and core.scheduler.aborted == []
    assert _drain(core.submit(_request("again", max_tokens=2)))[-1].outputs[0].token_ids == [7, 7]
    core.stop()
    assert runner.allocated == 2


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failed_step_fails_its_requests_and_the_core_rebuilds_and_serves_on():
    runner = FakeRunner(fail_at=2, fail_times=1, delay=0.01)
    core = _core(runner)
    a = core.submit(_request("a", max_tokens=8))
    with pytest.raises(RequestFailedError, match="a device step failed: RuntimeError: device "):
        _drain(a)
    assert runner.freed == 1 and runner.allocated == 2  # device state rebuilt
    assert _drain(core.submit(_request("b", max_tokens=3)))[-1].outputs[0].token_ids == [7] * 3
    assert core.failure is None and core.num_faults == 1 and core.running
    assert core.collector.snapshot()["finished_by_reason"]["error"] == 1
    core.stop()


def test_requests_not_yet_taken_in_survive_a_failed_step():
    runner = FakeRunner(fail_at=0, fail_times=1, delay=0.05)

    class OneAtATime(FakeScheduler):  # admits one request per step, the next stay waiting
        def schedule(self):
            waiting, self.waiting = self.waiting, self.waiting[:1]
            plan = super().schedule()
            self.waiting = waiting[1:]
            return plan

    core = EngineCore(name="fake", make_scheduler=OneAtATime, runner=runner,
                      collector=MetricsCollector("fake", "m"))
    streams = [core.submit(_request(r, max_tokens=2)) for r in "abc"]
    results = {}
    for rid, s in zip("abc", streams):
        try:
            results[rid] = _drain(s)[-1].outputs[0].finish_reason
        except RequestFailedError:
            results[rid] = "error"
    assert results["a"] == "error" and results["b"] == results["c"] == "length", results
    core.stop()


def test_a_request_whose_inputs_cannot_be_prepared_fails_alone():
    core = _core(FakeRunner(bad_inputs={"bad"}))
    good, bad = core.submit(_request("good")), core.submit(_request("bad"))
    with pytest.raises(RequestFailedError, match="preparing its inputs failed: OverflowError"):
        _drain(bad)
    assert _drain(good)[-1].outputs[0].token_ids == [7] * 3
    assert core.num_faults == 0 and core.failure is None
    core.stop()


def test_a_core_that_keeps_failing_is_dead_and_fails_fast():
    runner = FakeRunner(fail_at=0)  # every step fails
    core = _core(runner)
    for i in range(MAX_CONSECUTIVE_FAULTS):
        with pytest.raises(EngineError):
            _drain(core.submit(_request(f"r{i}")))
    assert wait_until(lambda: not core.running)
    assert "in a row failed" in core.failure
    allocated = runner.allocated
    with pytest.raises(EngineDeadError, match="cannot recover"):
        core.submit(_request("late"))
    assert runner.allocated == allocated  # no driver restart
    core.stop()
    core.start()  # an explicit restart clears the failure
    assert core.failure is None
    core.stop()


def test_a_core_whose_state_cannot_be_rebuilt_is_dead():
    core = _core(FakeRunner(fail_at=0, fail_times=1, fail_allocate_at=1))
    with pytest.raises(EngineError):
        _drain(core.submit(_request("a")))
    assert wait_until(lambda: core.failure is not None)
    assert "rebuilding after a failed step failed: MemoryError" in core.failure
    with pytest.raises(EngineDeadError):
        core.submit(_request("b"))
    core.stop()


def test_status_transitions_at_admission():
    req = _request("s", n=2)
    req.sequences[1].abort()
    mark_running(req)
    assert [s.status for s in req.sequences] == [RequestStatus.RUNNING,
                                                RequestStatus.FINISHED_ABORTED]
    req.sequences[0].status = RequestStatus.PREEMPTED
    mark_running(req)
    assert req.sequences[0].status == RequestStatus.RUNNING


def test_core_imports_no_jax():
    import subprocess

    code = ("import sys, workbench.engines.engine_core, workbench.engines.sampled_tokens; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
