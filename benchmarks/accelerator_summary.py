"""Summary of one `run_accelerator.sh` run: reads the step JSONs and logs in a directory, prints
issue 17's targets with the numbers behind them, writes summary.json beside them.

    python3 benchmarks/accelerator_summary.py $OUT
"""

from __future__ import annotations

import json
import os
import re
import sys


def _load(out: str, name: str):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _first_token_s(out: str, name: str) -> float | None:
    path = os.path.join(out, name + ".log")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        m = re.search(r"first token ([0-9.]+)s after start", f.read())
    return float(m.group(1)) if m else None


def summarize(out: str) -> dict:
    steps = os.path.join(out, "steps.log")
    s: dict = {"steps": []}
    if os.path.exists(steps):
        with open(steps) as f:
            s["steps"] = f.read().splitlines()
    bw = _load(out, "bandwidth.json")
    gen = _load(out, "generate.json")
    checks = []
    if gen:
        by = {(r["engine"], int(r["batch"])): r for r in gen["results"]}
        floors = {int(k): v for k, v in gen.get("floors", {}).items()}
        wbytes = gen.get("weights_bytes")
        s["generate"] = [{k: r.get(k) for k in ("engine", "batch", "tok_s", "compile_s",
                                                "programs")} for r in gen["results"]]
        s["floors"], s["scan_floors"] = floors, gen.get("scan_floors")
        vi1, fl1 = by.get(("vinference", 1)), floors.get(1)
        if vi1 and fl1:
            share = vi1["tok_s"] / fl1
            line = f"batch 1: vInference {vi1['tok_s']:.0f} tok/s = {100 * share:.0f}% of the floor"
            if wbytes:
                gbs = wbytes * fl1 / 1e9
                line += f" (floor streams {gbs:.0f} GB/s"
                line += f" of the card's {bw['copy_gb_s']:.0f} GB/s copy bandwidth)" if bw else ")"
            checks.append((line, ">= 80%", share >= 0.8))
        vs1 = by.get(("vsurge", 1))
        if vi1 and vs1:
            r = vs1["tok_s"] / vi1["tok_s"]
            checks.append((f"batch 1: vSurge / vInference {r:.2f}x", ">= 0.90x", r >= 0.9))
        for B in (64, 256):
            vi, tc = by.get(("vinference", B)), by.get(("transformers-compiled", B))
            if vi and tc:
                r = vi["tok_s"] / tc["tok_s"]
                checks.append((f"batch {B}: vInference / transformers (static cache + "
                               f"torch.compile) {r:.2f}x", ">= 2x", r >= 2))
            vs = by.get(("vsurge", B))
            if vi and vs:
                r = vs["tok_s"] / vi["tok_s"]
                checks.append((f"batch {B}: vSurge / vInference {r:.2f}x", ">= 1x", r >= 1))
        programs: dict = {}
        for r in gen["results"]:
            if r.get("programs") is not None:
                programs[r["engine"]] = programs.get(r["engine"], 0) + r["programs"]
        if programs:
            total = sum(programs.values())
            checks.append((f"compiled programs (bench_generate warm-ups): {programs}", "<= ~40",
                           total <= 40))
    warm = _first_token_s(out, "warmstart_warm")
    s["first_token_s"] = {"cold": _first_token_s(out, "warmstart_cold"), "warm": warm}
    if warm is not None:
        checks.append((f"second process, persistent cache: first token {warm:.1f}s after start",
                       "<= 10 s", warm <= 10))
    pa = _load(out, "pagedattn.json")
    s["paged_attention"] = pa
    if pa:
        agree = all(r["agree"] for r in pa["rows"])
        speed = ", ".join(f"{r['step']} {r['xla_ms']:.2f} -> {r['pallas_ms']:.2f} ms "
                          f"({r['speedup']:.2f}x)" for r in pa["rows"])
        checks.append((f"eSurge paged attention, Pallas kernel vs XLA loop: {speed}",
                       "agrees with XLA", agree))
    s["layer_loop"] = _load(out, "layerloop.json")
    s["burst"] = _load(out, "burst.json")
    s["burst_pallas"] = _load(out, "burst_pallas.json")
    s["bandwidth"] = bw
    s["checks"] = [{"what": w, "target": t, "met": m} for w, t, m in checks]
    return s


def main(out: str) -> None:
    s = summarize(out)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(s, f, indent=1, default=str)
    for line in s["steps"]:
        print("step:", line)
    for c in s["checks"]:
        print(f"[{'met' if c['met'] else 'MISSED'}] {c['what']} (target {c['target']})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "/tmp/bench-out"))
