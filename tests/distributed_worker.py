"""One process of a two-process CPU job for tests/test_distributed.py (and the benchmark).

    python -m tests.distributed_worker SCENARIO PROCESS_ID PORT OUT_DIR

Each process has 4 fake CPU devices; together they form one (dp=2, tp=4) mesh. Process 0 (the
leader) writes its results to OUT_DIR/result.json. Scenarios:
- parity: logits, vInference and vSurge greedy tokens on PROMPTS, a request through the leader's
  server;
- death: the leader serves a vSurge engine, writes OUT_DIR/ready, waits for OUT_DIR/killed (the
  test kills the follower by pid meanwhile), sends a request and records how it failed and what
  /health says.
"""

from __future__ import annotations

import json
import os
import sys
import time

PROMPTS = [[3 + (7 * i + j) % 300 for j in range(4 + 3 * i)] for i in range(10)]
MAX_TOKENS = 8


def tiny_model():
    """The tiny random Llama both processes (and the single-process reference) build."""
    from tests.fixtures_tokenizer import _byte_level_bpe
    from workbench.loading.loader import random_model
    from workbench.models.config import ModelConfig

    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=512, hidden_size=64,
                      intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, head_dim=16, max_position_embeddings=256,
                      eos_token_ids=(2,))
    return random_model(cfg, seed=0, tokenizer=_byte_level_bpe(), name="tiny")


def tp8_model():
    """A tiny random Llama whose heads, MLP and vocabulary all divide by tp=8 (no tokenizer)."""
    from workbench.loading.loader import random_model
    from workbench.models.config import ModelConfig

    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=512, hidden_size=64,
                      intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=8, head_dim=8, max_position_embeddings=256,
                      eos_token_ids=(2,))
    return random_model(cfg, seed=1, name="tp8")


def save_checkpoint(lm, directory: str) -> int:
    """Write `lm` as an HF-format safetensors directory; returns the tensor bytes written."""
    import numpy as np
    from flax import nnx
    from safetensors.numpy import save_file

    from workbench.models.weights import hf_tensor_names

    c = lm.config
    tensors = {}
    for path, var in nnx.to_flat_state(lm.state):
        path = tuple(str(p) for p in path)
        if path == ("inv_freq",):
            continue
        value = np.asarray(var.get_value())
        names = hf_tensor_names(path, c.num_hidden_layers)
        parts = list(value) if path[0] == "layers" else [value]
        for name, t in zip(names, parts):
            tensors[name] = np.ascontiguousarray(t.T if path[-1] == "kernel" else t)
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"architectures": [c.architecture], "model_type": "llama",
                   "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
                   "intermediate_size": c.intermediate_size,
                   "num_hidden_layers": c.num_hidden_layers,
                   "num_attention_heads": c.num_attention_heads,
                   "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
                   "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
                   "max_position_embeddings": c.max_position_embeddings,
                   "tie_word_embeddings": c.tie_word_embeddings, "eos_token_id": 2}, f)
    return sum(t.nbytes for t in tensors.values())


def greedy():
    from workbench.sampling_params import SamplingParams

    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)


def engines(lm):
    """(vInference, vSurge) with the knobs the test uses in both runs."""
    from workbench.engines.vinference import vInference
    from workbench.engines.vsurge import vSurge

    return (vInference(lm, max_batch_size=16, max_model_len=64),
            vSurge(lm, max_concurrent_decodes=8, max_concurrent_prefill=4, max_model_len=64))


def tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def _run_engine(engine, leader: bool, distributed) -> list | None:
    if not leader:
        distributed.follow(engine)
        return None
    distributed.attach(engine)
    try:
        return tokens(engine.generate(PROMPTS, greedy()))
    finally:
        distributed.release(engine)


def jax_process() -> int:
    import jax

    return jax.process_index()


def parity(leader: bool, out_dir: str) -> dict:
    import httpx

    from workbench import distributed
    from workbench.server.handle import serve

    lm = distributed.shard_model(tiny_model(), distributed.global_mesh())
    result: dict = {"mesh": dict(lm.mesh.shape), "num_devices": len(lm.mesh.devices.flat)}
    ids = [p[:8] + [0] * (8 - len(p[:8])) for p in PROMPTS[:4]]
    result["logits"] = lm.logits(ids).tolist()  # both processes: a collective
    # loading on a mesh whose tp spans both processes: each reads only its devices' ranges
    from workbench.loading.loader import load_model

    ckpt = os.path.join(out_dir, f"ckpt{jax_process()}")
    result["checkpoint_bytes"] = save_checkpoint(tp8_model(), ckpt)
    loaded = load_model(ckpt, dtype="float32", mesh=distributed.global_mesh(1, 8),
                        progress=False)
    result["tp8_logits"] = loaded.logits(ids).tolist()
    result["tp8_bytes_read"] = loaded.checkpoint_bytes_read
    loaded.close()
    vinf, vsurge = engines(lm)
    result["vinference"] = _run_engine(vinf, leader, distributed)
    result["vsurge"] = _run_engine(vsurge, leader, distributed)
    result["vsurge_plan_bytes"] = list(vsurge.channel.sizes) if leader else None
    # a request through the leader's server (the follower only mirrors the device steps)
    _, served = engines(lm)
    if not leader:
        distributed.follow(served)
        return result
    distributed.attach(served)
    try:
        with serve(served, timeout=60) as handle:
            health = httpx.get(f"{handle.url}/health", timeout=30)
            r = httpx.post(f"{handle.url}/v1/completions", timeout=60, json={
                "model": "tiny", "prompt": PROMPTS[3], "max_tokens": MAX_TOKENS,
                "temperature": 0, "ignore_eos": True})
            result["server"] = {"health": health.status_code, "status": r.status_code,
                                "body": r.json()}
    finally:
        distributed.release(served)
    return result


def death(leader: bool, out_dir: str) -> dict:
    import httpx

    from workbench import distributed
    from workbench.server.handle import serve

    lm = distributed.shard_model(tiny_model(), distributed.global_mesh())
    _, engine = engines(lm)
    if not leader:
        distributed.follow(engine)
        return {}
    distributed.attach(engine, step_timeout=10.0)
    engine.start()  # allocates the slots on both processes
    handle = serve(engine, timeout=60)
    open(os.path.join(out_dir, "ready"), "w").close()
    while not os.path.exists(os.path.join(out_dir, "killed")):
        time.sleep(0.05)
    t0 = time.monotonic()
    r = httpx.post(f"{handle.url}/v1/completions", timeout=60, json={
        "model": "tiny", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0})
    failed_after = time.monotonic() - t0
    health = httpx.get(f"{handle.url}/health", timeout=30)
    return {"status": r.status_code, "body": r.text[:2000], "failed_after_s": failed_after,
            "health": health.status_code, "health_body": health.json()}


def main(scenario: str, process_id: int, port: int, out_dir: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from workbench import distributed

    distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    leader = distributed.is_leader()
    result = {"parity": parity, "death": death}[scenario](leader, out_dir)
    if leader:
        with open(os.path.join(out_dir, "result.json.tmp"), "w") as f:
            json.dump(result, f)
        os.replace(os.path.join(out_dir, "result.json.tmp"), os.path.join(out_dir, "result.json"))
    sys.stdout.flush()
    if scenario == "death":  # the peer is gone: jax's shutdown barrier would wait for it
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
