#!/usr/bin/env bash
# One accelerator run of issue 17's measurements (and issue 14's GPU burst) with a random-weight
# Llama-3.2-1B-shaped model in bfloat16, inside one device call: every step gets what is left of
# BUDGET_S (default 450 s, for an 8-minute call with the start and the summary around it) and runs
# a smaller configuration, or is skipped, when too little is left; nothing runs past the budget.
# The machine needs jax, flax, transformers and torch (no fastapi or panel, no internet).
#
#   OUT=/tmp/bench-out bash benchmarks/run_accelerator.sh
#
# $OUT gets one log per step, steps.log (what ran, its exit code and seconds), each step's JSON,
# and summary.json (all of them plus the derived target checks). Steps, most important first:
#   bandwidth   the card's device-to-device copy bandwidth (the GB/s the floor is judged against)
#   generate    bench_generate: batch 1 / 64 / 256, 128-token prompts, 128 new tokens: vInference,
#               vSurge, transformers with a static cache + torch.compile, the weights-only floor
#               (per-layer arrays: no copies) and the scan floor; compile seconds and programs
#   pagedattn   bench_paged_attention: eSurge's paged attention, XLA tile loop vs the Pallas kernel
#               (issue 14: the kernel backend checked against the XLA one, and timed)
#   warmstart   a second process with the persistent compilation cache: seconds to the first token
#   layerloop   bench_layer_loop: scan vs unrolled layer loop at batch 1 / 64, compile by depth
#   burst       bench_throughput: the 256-request burst, eSurge / vSurge / vInference
#   burst_pallas  the same burst, eSurge with attention_kernel="pallas"
set -u
OUT=${OUT:-/tmp/bench-out}
BUDGET_S=${BUDGET_S:-450}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
PY=${PYTHON:-python3}
T0=$(date +%s)
: > "$OUT/steps.log"

left() { echo $((BUDGET_S - ($(date +%s) - T0))); }

# step NAME NEED_S CMD...: run CMD (log to $OUT/NAME.log) if NEED_S seconds are left, with a
# timeout of what is left; returns CMD's exit code, or 99 when skipped.
step() {
    local name=$1 need=$2 l s rc
    shift 2
    l=$(left)
    if [ "$l" -lt "$need" ]; then
        echo "$name skipped: ${l}s left, needs ${need}s" | tee -a "$OUT/steps.log"
        return 99
    fi
    s=$(date +%s)
    timeout "$((l - 5))" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(($(date +%s) - s))s" | tee -a "$OUT/steps.log"
    tail -n 40 "$OUT/$name.log"
    return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
$PY -c "import jax, flax, transformers, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__, jax.devices())" | tee "$OUT/versions.txt"

step bandwidth 20 $PY - "$OUT/bandwidth.json" <<'EOF'
import json, sys, time
import jax, jax.numpy as jnp
x = jnp.ones((1 << 28,), jnp.bfloat16)  # 512 MiB
f = jax.jit(lambda a: a * 2)  # reads and writes every byte once
f(x).block_until_ready()
ts = []
for _ in range(20):
    t = time.perf_counter(); f(x).block_until_ready(); ts.append(time.perf_counter() - t)
ts.sort()
gbs = 2 * x.nbytes / ts[len(ts) // 2] / 1e9
print(f"copy bandwidth {gbs:.0f} GB/s (read + write of {x.nbytes >> 20} MiB, median of 20)")
json.dump({"copy_gb_s": gbs, "device": str(jax.devices()[0].device_kind)}, open(sys.argv[1], "w"))
EOF

GEN="$PY benchmarks/bench_generate.py --random-config llama-1b --dtype bfloat16 --prompt-len 128 --max-tokens 128 --runs 2 --no-breakdown --no-cold"
step generate 200 $GEN --batch-sizes 1,64,256 --engines vinference,vsurge,transformers-compiled,floor --json "$OUT/generate.json" \
    || step generate_small 90 $GEN --batch-sizes 1,64 --engines vinference,transformers-compiled,floor --json "$OUT/generate.json"

step pagedattn 40 $PY benchmarks/bench_paged_attention.py --seqs 64 --context 1024 --chunk 256 --json "$OUT/pagedattn.json"

# a second process with the persistent compilation cache: the first run fills it, the second reads
WS=$(mktemp -d)
cat > "$OUT/warmstart.py" <<'EOF'
import time; t0 = time.perf_counter()
import sys; sys.path.insert(0, ".")
import workbench
from benchmarks.common import load_lm
from workbench.sampling_params import SamplingParams
lm = load_lm("llama-1b", "bfloat16")
engine = workbench.vInference(lm, max_batch_size=1)
t1 = time.perf_counter()
next(iter(engine.stream([5] * 128, SamplingParams(max_tokens=16, ignore_eos=True))))
print(f"first token {time.perf_counter() - t0:.1f}s after start ({time.perf_counter() - t1:.1f}s after the engine was built)")
EOF
step warmstart_cold 60 env WORKBENCH_COMPILATION_CACHE="$WS" $PY "$OUT/warmstart.py" \
    && step warmstart_warm 30 env WORKBENCH_COMPILATION_CACHE="$WS" $PY "$OUT/warmstart.py"

LL="$PY benchmarks/bench_layer_loop.py --random-config llama-1b --dtype bfloat16 --max-tokens 64 --runs 2"
step layerloop 120 $LL --batch-sizes 1,64 --depths 16,32 --width 512 --json "$OUT/layerloop.json" \
    || step layerloop_small 60 $LL --batch-sizes 1 --depths "" --json "$OUT/layerloop.json"

# issue 14's GPU target: the burst of 256 requests, eSurge >= vInference out tok/s, eSurge's
# warm-up (the "warm-up esurge: ... Ns" log line) <= 60 s
BURST="$PY benchmarks/bench_throughput.py --random-config llama-1b --dtype bfloat16 --patterns burst --no-overhead --scenarios memory"
step burst 150 $BURST --engines esurge,vsurge,vinference --num-requests 256 --slots 128 --json "$OUT/burst.json" \
    || step burst_small 70 $BURST --engines esurge,vinference --num-requests 64 --slots 64 --json "$OUT/burst.json"
# the same burst through eSurge with the Pallas paged-attention kernel (its own step: a kernel that
# does not lower on this card fails this step only)
step burst_pallas 90 $BURST --engines esurge-pallas --num-requests 256 --slots 128 --json "$OUT/burst_pallas.json"

$PY benchmarks/accelerator_summary.py "$OUT" | tee "$OUT/summary.txt"
echo "total $(($(date +%s) - T0))s of a ${BUDGET_S}s budget"
