#!/usr/bin/env bash
# One accelerator run of both engine benchmarks (and eSurge's 256-request burst) with a random-weight Llama-3.2-1B-shaped model in
# bfloat16, sized for one call of a few minutes on one GPU (the machine needs jax, flax,
# transformers and torch; no fastapi or panel). Logs and JSON go to $OUT (default /tmp/bench-out).
#
#   bash benchmarks/run_accelerator.sh
#
# Skipped to fit the budget: bench_generate's device-time breakdown, bench_throughput's
# interleaved vSurge and equal-length probe (bench_generate's vSurge column covers batch 1 / 32).
# The Poisson rate is 8 req/s: 0.5 (the CPU default) would leave a GPU idle.
set -u
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import jax, flax, transformers, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__, jax.devices())"
timeout "${GEN_TIMEOUT:-250}" $PY benchmarks/bench_generate.py --random-config llama-1b \
    --dtype bfloat16 --no-breakdown --json "$OUT/generate.json" 2>&1 | tee "$OUT/generate.log"
timeout "${TPUT_TIMEOUT:-320}" $PY benchmarks/bench_throughput.py --random-config llama-1b \
    --dtype bfloat16 --engines esurge,vsurge,vinference,transformers --rate 8 --no-overhead \
    --scenarios memory --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.log"
# issue 14's GPU target: the burst of 256 requests, eSurge (its accelerator defaults: 2048-token
# budget; --slots sets max_num_seqs and vInference's batch) >= vInference out tok/s, and eSurge's
# warm-up (the "warm-up esurge: ... Ns" log line: precompile() of every token bucket) <= 60 s
timeout "${ESURGE_TIMEOUT:-300}" $PY benchmarks/bench_throughput.py --random-config llama-1b \
    --dtype bfloat16 --engines esurge,vinference --patterns burst --num-requests 256 \
    --slots 128 --no-overhead --scenarios memory --json "$OUT/esurge_burst256.json" 2>&1 \
    | tee "$OUT/esurge_burst256.log"
