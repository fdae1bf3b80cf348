"""The cost of the multi-host step channel: two processes (4 fake CPU devices each, gloo) against
one process with 8 fake CPU devices, on the same (dp=2, tp=4) mesh, model and requests.

    python benchmarks/bench_distributed.py [--requests 16] [--max-tokens 32] [--repeats 3]

Prints, per engine: the median wall time of a vSurge driver iteration (one decode step per
iteration on a CPU) and of a whole vInference batch, both after a warm-up run (compilation
excluded), the plan's size in bytes per message (what the leader broadcasts), the messages per
batch, and the bare cost of one message.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args, distributed_run: bool) -> dict | None:
    """One process's part; returns the leader's (or the single process's) numbers."""
    from workbench import distributed
    from workbench.engines.vinference import vInference
    from workbench.engines.vsurge import vSurge
    from workbench.loading.loader import random_model
    from workbench.models.config import ModelConfig
    from workbench.sampling_params import SamplingParams

    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=512, hidden_size=128,
                      intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, head_dim=32, max_position_embeddings=256,
                      eos_token_ids=(2,))
    lm = distributed.shard_model(random_model(cfg, seed=0), distributed.global_mesh(2, 4))
    prompts = [[3 + (5 * i + j) % 400 for j in range(8 + i % 8)] for i in range(args.requests)]
    sp = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    leader = not distributed_run or distributed.is_leader()
    out: dict = {}
    for name, make in (("vsurge", lambda: vSurge(lm, max_concurrent_decodes=args.requests,
                                                   max_concurrent_prefill=4, max_model_len=128)),
                       ("vinference", lambda: vInference(lm, max_batch_size=args.requests,
                                                         max_model_len=128))):
        engine = make()
        if distributed_run and not leader:
            distributed.follow(engine)
            continue
        if distributed_run:
            distributed.attach(engine, step_timeout=600)
        engine.generate(prompts, sp)  # warm-up: compiles every shape this workload uses
        walls = []
        if name == "vsurge":
            engine.core.step_times.clear()
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            engine.generate(prompts, sp)
            walls.append(time.perf_counter() - t0)
        row = {"batch_s_p50": statistics.median(walls),
               "tokens_per_s": args.requests * args.max_tokens / statistics.median(walls)}
        if name == "vsurge":
            row["step_ms_p50"] = engine.step_stats()["wall_ms_p50"]
        if distributed_run:
            sizes = list(engine.channel.sizes)
            row["messages_per_batch"] = len(sizes) / (args.repeats + 1)
            nonzero = [s for s in sizes if s]
            row["plan_bytes_p50"] = statistics.median(nonzero) if nonzero else 0
            row["plan_bytes_max"] = max(sizes)
            distributed.release(engine)
        else:
            engine.close()
        out[name] = row
    if distributed_run:  # the bare cost of one message (one 512-byte broadcast), both processes
        channel = distributed.StepChannel()
        mask = channel.encode([True] * args.requests) if leader else b""
        for _ in range(5):
            channel._exchange(distributed.Op.SYNC, mask)
        t0 = time.perf_counter()
        for _ in range(50):
            channel._exchange(distributed.Op.SYNC, mask)
        out["message_ms"] = (time.perf_counter() - t0) / 50 * 1e3
    return out if leader else None


def _child(args) -> None:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    if args.process_id is not None:
        from workbench import distributed

        distributed.initialize(f"127.0.0.1:{args.port}", 2, args.process_id)
    result = measure(args, args.process_id is not None)
    if result is not None:
        with open(args.out, "w") as f:
            json.dump(result, f)


def _spawn(args, extra: list[str], out: str) -> list[subprocess.Popen]:
    base = [sys.executable, os.path.abspath(__file__), "--child", "--out", out,
            "--requests", str(args.requests), "--max-tokens", str(args.max_tokens),
            "--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    if not extra:
        return [subprocess.Popen(base + ["--devices", "8"], env=env)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [subprocess.Popen(base + ["--devices", "4", "--port", str(port), "--process-id",
                                     str(i)], env=env) for i in (0, 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("1 process x 8 devices", []), ("2 processes x 4 devices", ["2"])):
            out = os.path.join(tmp, f"{len(extra)}.json")
            procs = _spawn(args, extra, out)
            try:
                for proc in procs:
                    proc.wait(timeout=1800)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            with open(out) as f:
                results[label] = json.load(f)
    print(f"{args.requests} requests x {args.max_tokens} greedy tokens, mesh dp=2 x tp=4, "
          f"median of {args.repeats} runs after a warm-up")
    one, two = results["1 process x 8 devices"], results["2 processes x 4 devices"]
    print(f"{'':26s} {'vSurge step ms':>15s} {'vSurge tok/s':>13s} {'vInference batch s':>19s}"
          f" {'vInference tok/s':>17s}")
    for label, r in results.items():
        print(f"{label:26s} {r['vsurge']['step_ms_p50']:15.1f} {r['vsurge']['tokens_per_s']:13.1f}"
              f" {r['vinference']['batch_s_p50']:19.2f} {r['vinference']['tokens_per_s']:17.1f}")
    print(f"{'ratio (2 proc / 1 proc)':26s} "
          f"{two['vsurge']['step_ms_p50'] / one['vsurge']['step_ms_p50']:15.2f} "
          f"{two['vsurge']['tokens_per_s'] / one['vsurge']['tokens_per_s']:13.2f} "
          f"{two['vinference']['batch_s_p50'] / one['vinference']['batch_s_p50']:19.2f} "
          f"{two['vinference']['tokens_per_s'] / one['vinference']['tokens_per_s']:17.2f}")
    print(f"one message (a 512-byte broadcast_one_to_all): {two['message_ms']:.2f} ms")
    for name in ("vsurge", "vinference"):
        r = two[name]
        print(f"{name}: plan bytes per message p50 {r['plan_bytes_p50']:.0f}, max "
              f"{r['plan_bytes_max']}, messages per batch {r['messages_per_batch']:.0f}")


if __name__ == "__main__":
    main()
