"""Two processes on this machine form one 8-device (dp=2, tp=4) mesh through jax.distributed
(localhost coordinator, gloo CPU collectives, 4 fake devices each); their results must equal one
process's. Every process a test starts is stopped by its own pid in a `finally`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import distributed_worker as worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 420.0  # seconds for a two-process scenario to get ready on a loaded 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(scenario: str, out_dir: str) -> list[subprocess.Popen]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = []
    for pid in (0, 1):
        with open(os.path.join(out_dir, f"log{pid}.txt"), "w") as log:  # the child keeps it
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.distributed_worker", scenario, str(pid), str(port),
                 out_dir], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)


def _logs(out_dir: str) -> str:
    text = ""
    for pid in (0, 1):
        path = os.path.join(out_dir, f"log{pid}.txt")
        if os.path.exists(path):
            with open(path) as f:
                text += f"--- process {pid} ---\n" + f.read()[-3000:]
    return text


def _wait_for(path: str, procs, out_dir: str, deadline: float) -> None:
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {os.path.basename(path)}\n{_logs(out_dir)}")
        if procs[0].poll() is not None:
            pytest.fail(f"the leader exited with {procs[0].returncode}\n{_logs(out_dir)}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("distributed-parity"))
    procs = _start("parity", out_dir)
    try:
        _wait_for(os.path.join(out_dir, "result.json"), procs, out_dir,
                  time.monotonic() + TIMEOUT)
        for p in procs:
            p.wait(timeout=60)
        assert [p.returncode for p in procs] == [0, 0], _logs(out_dir)
    finally:
        _stop(procs)
    with open(os.path.join(out_dir, "result.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def reference():
    """The same model, engines and prompts in this one process, no mesh."""
    lm = worker.tiny_model()
    ids = [p[:8] + [0] * (8 - len(p[:8])) for p in worker.PROMPTS[:4]]
    vinf, vsurge = worker.engines(lm)
    with vinf, vsurge:
        return {"logits": lm.logits(ids), "tp8_logits": worker.tp8_model().logits(ids),
                "vinference": worker.tokens(vinf.generate(worker.PROMPTS, worker.greedy())),
                "vsurge": worker.tokens(vsurge.generate(worker.PROMPTS, worker.greedy()))}


def test_global_mesh_spans_both_processes(two_process_run):
    assert two_process_run["mesh"] == {"dp": 2, "tp": 4}
    assert two_process_run["num_devices"] == 8


def test_logits_equal_single_process(two_process_run, reference):
    np.testing.assert_allclose(np.array(two_process_run["logits"]), reference["logits"],
                               rtol=1e-5, atol=1e-5)


def test_each_process_reads_only_its_shards(two_process_run, reference):
    """tp=8 over both processes: a process holds half of every sharded weight and reads only
    that half (plus the replicated norms) from the checkpoint; the logits are unchanged."""
    np.testing.assert_allclose(np.array(two_process_run["tp8_logits"]), reference["tp8_logits"],
                               rtol=1e-5, atol=1e-5)
    total, read = two_process_run["checkpoint_bytes"], two_process_run["tp8_bytes_read"]
    assert 0.45 * total < read < 0.55 * total, (read, total)


def test_vinference_greedy_tokens_equal_single_process(two_process_run, reference):
    assert len(reference["vinference"]) == 10
    assert all(len(t) == worker.MAX_TOKENS for t in reference["vinference"])
    assert two_process_run["vinference"] == reference["vinference"]


def test_vsurge_greedy_tokens_equal_single_process(two_process_run, reference):
    assert two_process_run["vsurge"] == reference["vsurge"]
    sizes = two_process_run["vsurge_plan_bytes"]
    assert sizes and max(sizes) < 64 * 1024  # the plan is small: ids, params, slots


def test_request_through_leaders_server(two_process_run, reference):
    server = two_process_run["server"]
    assert server["health"] == 200 and server["status"] == 200, server
    assert server["body"]["usage"]["completion_tokens"] == worker.MAX_TOKENS
    assert server["body"]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_lost_follower_fails_the_leader_fast(tmp_path, sig):
    """A killed follower breaks the collective at once; a hung one (SIGSTOP) trips the leader's
    step timeout (10 s in the worker). Either way /health answers 503 with the reason."""
    out_dir = str(tmp_path)
    procs = _start("death", out_dir)
    try:
        _wait_for(os.path.join(out_dir, "ready"), procs, out_dir, time.monotonic() + TIMEOUT)
        os.kill(procs[1].pid, sig)
        if sig == signal.SIGKILL:
            procs[1].wait(timeout=30)
        open(os.path.join(out_dir, "killed"), "w").close()
        _wait_for(os.path.join(out_dir, "result.json"), procs, out_dir,
                  time.monotonic() + 90)
    finally:
        _stop(procs)
    with open(os.path.join(out_dir, "result.json")) as f:
        result = json.load(f)
    assert result["status"] >= 500, result
    assert result["failed_after_s"] < 30, result
    assert result["health"] == 503, result
    (why,) = result["health_body"]["engines"].values()
    assert "follower process died" in why


def test_plan_codec_sends_owners_only_when_they_change():
    """vSurge's plan on the wire: what the slot runner reads, owners only when they change."""
    from types import SimpleNamespace as NS

    from workbench.distributed import _PlanCodec
    from workbench.engines.vsurge_scheduler import Assignment, DecodePlan, SchedulerOutput
    from workbench.sampling_params import SamplingParams

    sp = SamplingParams(max_tokens=4, temperature=0.0)
    a = Assignment(NS(prompt_ids=[5, 6, 7]), NS(params=sp, seed=11), slot=1)
    owners = [None, a]
    leader, follower = _PlanCodec(), _PlanCodec()
    plan = SchedulerOutput(prefill_batches=[[a]], decode=DecodePlan(
        owners=owners, stop_mask=None, moves=[(1, 0)], seen=[3]))
    wire = leader.encode(plan)
    got = follower.decode(wire)
    (b,) = got.prefill_batches[0]
    assert (b.slot, b.request.prompt_ids, b.sequence.params, b.sequence.seed) == (
        1, [5, 6, 7], sp, 11)
    assert got.decode.moves == [(1, 0)] and got.decode.seen == [3]
    assert got.decode.owners[0] is None and got.decode.owners[1] == b
    again = leader.encode(SchedulerOutput(prefill_batches=[], decode=DecodePlan(
        owners=owners, stop_mask=[True, False], moves=[], seen=[4])))
    assert again["decode"][0] is None  # unchanged owners are not sent again
    got2 = follower.decode(again)
    assert got2.decode.owners is got.decode.owners and got2.decode.stop_mask == [True, False]
