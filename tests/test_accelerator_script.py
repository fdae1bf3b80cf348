"""benchmarks/run_accelerator.sh keeps to its budget (steps skipped, never run past it) and
benchmarks/accelerator_summary.py turns the step outputs into issue 17's target checks."""

import json
import os
import subprocess
import sys

from benchmarks.accelerator_summary import summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_budget_too_small_for_any_step_skips_them_all_and_still_summarizes(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), BUDGET_S="10", PYTHON=sys.executable)
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "run_accelerator.sh")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    steps = (tmp_path / "steps.log").read_text().splitlines()
    names = [line.split()[0] for line in steps]
    assert names == ["bandwidth", "generate", "generate_small", "pagedattn", "warmstart_cold",
                     "layerloop",
                     "layerloop_small", "burst", "burst_small", "burst_pallas"]
    assert all("skipped" in line for line in steps)
    assert json.loads((tmp_path / "summary.json").read_text())["checks"] == []


def test_summary_derives_the_targets_from_the_step_outputs(tmp_path):
    results = [
        dict(engine="vinference", batch=1, tok_s=400.0, compile_s=3.0, programs=6),
        dict(engine="vsurge", batch=1, tok_s=350.0, compile_s=2.0, programs=5),
        dict(engine="vinference", batch=64, tok_s=9000.0, compile_s=3.0, programs=6),
        dict(engine="transformers-compiled", batch=64, tok_s=4000.0, compile_s=20.0),
        dict(engine="vsurge", batch=64, tok_s=9500.0, compile_s=3.0, programs=40),
    ]
    (tmp_path / "generate.json").write_text(json.dumps(dict(
        results=results, floors={"1": 450.0, "64": 20000.0}, scan_floors={"1": 300.0},
        weights_bytes=2_470_000_000)))
    (tmp_path / "bandwidth.json").write_text(json.dumps({"copy_gb_s": 4300.0}))
    (tmp_path / "warmstart_warm.log").write_text("first token 7.5s after start (2.0s after ...)\n")
    s = summarize(str(tmp_path))
    checks = {c["what"].split(":")[0]: c for c in s["checks"]}
    b1 = [c for c in s["checks"] if c["what"].startswith("batch 1: vInference")][0]
    assert "89% of the floor" in b1["what"] and "1112 GB/s" in b1["what"] and b1["met"]
    vs1 = [c for c in s["checks"] if c["what"].startswith("batch 1: vSurge")][0]
    assert "0.88x" in vs1["what"] and not vs1["met"]  # 10% slower than vInference is the limit
    hf = [c for c in s["checks"] if "torch.compile" in c["what"]][0]
    assert "2.25x" in hf["what"] and hf["met"]
    progs = checks["compiled programs (bench_generate warm-ups)"]
    assert not progs["met"]  # 6 + 5 + 6 + 40 = 57 > 40
    assert s["first_token_s"] == {"cold": None, "warm": 7.5}
    assert not any("Pallas" in c["what"] for c in s["checks"])  # no pagedattn step output
    assert (tmp_path / "warmstart_warm.log").exists()


def test_the_paged_attention_step_runs_quick_on_a_cpu_and_is_summarized(tmp_path):
    """bench_paged_attention --quick (the kernel interpreted) writes what the summary checks."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks",
                                                     "bench_paged_attention.py"),
                        "--quick", "--json", str(tmp_path / "pagedattn.json")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "| decode | 4 |" in r.stdout and "| mixed | 19 |" in r.stdout
    rows = json.loads((tmp_path / "pagedattn.json").read_text())["rows"]
    assert [x["step"] for x in rows] == ["decode", "mixed"] and all(x["agree"] for x in rows)
    check = [c for c in summarize(str(tmp_path))["checks"] if "Pallas" in c["what"]][0]
    assert check["met"] and "decode" in check["what"]
