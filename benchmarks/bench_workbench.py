"""What the workbench UI costs: watching an engine, starting the dashboard, the metrics sampler.

1. Cost of watching. The same comparison (vSurge, `--prompts` prompts x `--max-tokens` tokens,
   greedy, ignore_eos) runs alternately (a) alone: `Workbench.compare` with the metrics sampler
   stopped, nothing drawn; and (b) watched: clicked in the Panel dashboard in Chromium, its text
   streaming into the Compare tab (throttled to 20 redraws a second, sent over the websocket) with
   the metrics sampler at 2 Hz and the Metrics tab's charts streaming. Output tok/s of the engine's
   run (tokens / wall time of the run) in both; target watched >= 95% of alone. Medians of
   `--runs` each, after a warm-up that compiles the shapes. On a 2-core machine the browser
   itself competes with the engine for the cores, so the run is repeated with Chromium under
   `nice -n 19` (`--browser-nice`), as a browser on the user's own laptop would leave the
   server's cores alone, and the browser's CPU share is printed.
2. Dashboard start: `workbench dashboard` in a subprocess: seconds until the page answers HTTP,
   until the command prints Ready (model loaded, the default three engines built); then page load and first
   paint in Chromium.
3. The metrics sampler at 2 Hz with two engines: the process's CPU seconds per wall second over
   `--idle` seconds with the sampler on and off (idle engines, so the sampler is all that runs),
   and the sampler's own wall time per sample.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_workbench.py [--runs 3] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402, N812
from workbench.facade import Workbench  # noqa: E402
from workbench.sampling_params import SamplingParams  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
PROMPTS = ["The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):",
           "Explain what a KV cache is in one sentence.", "Once upon a time",
           "The best way to learn Python is", "Water boils at", "1, 2, 3, 4,"]


def dashboard_start(port: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "dashboard", "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env, cwd=ROOT)
    out: dict[str, float] = {}
    try:
        # Wait for the port, then ask for the page once: every GET of the page opens a Bokeh
        # session, so polling with short timeouts would pile sessions up and slow the server.
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        out["port_open"] = time.perf_counter() - t0
        assert httpx.get(f"http://127.0.0.1:{port}", timeout=300).status_code == 200
        out["answers"] = time.perf_counter() - t0
        for line in proc.stdout:
            if line.startswith("Ready:"):
                out["ready"] = time.perf_counter() - t0
                break
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page()
            t1 = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}", wait_until="networkidle")
            out["page_load"] = time.perf_counter() - t1
            paint = page.evaluate("() => performance.getEntriesByType('paint')"
                                  ".map(e => [e.name, e.startTime])")
            out["first_paint"] = dict(paint).get("first-contentful-paint", float("nan")) / 1e3
            browser.close()
        out["rss_gib"] = psutil.Process(proc.pid).memory_info().rss / 2**30
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def _browser_cpu_s() -> float:
    """CPU seconds used so far by the Chromium processes this process started (via playwright)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in child.name():
                total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def _chromium(nice: int) -> str:
    """The browser executable, behind `nice -n N` when N > 0 (a browser that yields the cores)."""
    if nice <= 0:
        return CHROMIUM
    path = os.path.join(tempfile.mkdtemp(prefix="wb-chromium-"), "chromium")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec nice -n {nice} {CHROMIUM} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def watching(args, nice: int = 0) -> tuple[list[float], list[float], float]:
    """(alone tok/s, watched tok/s, browser CPU share of one core while watched)."""
    from playwright.sync_api import sync_playwright

    from widgets.dashboard import SESSIONS, serve_dashboard

    wb = Workbench()
    wb.load("embedded")
    wb.add_engine("vs", "vsurge", max_concurrent_decodes=8, max_model_len=1024)
    prompts = PROMPTS[:args.prompts]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    handle = serve_dashboard(wb)
    alone, watched, browser_cpu, watched_wall = [], [], 0.0, 0.0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(nice))
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(handle.url, wait_until="networkidle")
        page.locator(".bk-tab", has_text=re.compile("^Compare$")).first.click()
        page.locator(".wb-prompts textarea").fill("\n".join(prompts))
        page.locator(".wb-compare .wb-sampling-max_tokens input").fill(str(args.max_tokens))
        page.locator(".wb-compare .wb-sampling-ignore_eos input").check()
        page.locator(".wb-compare .wb-sampling-ignore_eos input").blur()
        page.wait_for_timeout(500)
        (view,) = [s.compare for s in SESSIONS]

        def run_watched() -> float:
            view.state.comparison = None
            page.get_by_role("button", name="Run comparison", exact=True).click()
            while view.state.comparison is None or view.state.busy:
                time.sleep(0.05)
            run = view.comparison.runs["vs"]
            assert run.num_tokens == len(prompts) * args.max_tokens, run.num_tokens
            return run.output_tok_s

        def run_alone() -> float:
            wb.history.stop()
            try:
                return wb.compare(prompts, params, ["vs"], chat=True).runs["vs"].output_tok_s
            finally:
                wb.history.start()

        run_watched()  # warm-up: compiles the shapes
        run_alone()
        for _ in range(args.runs):
            alone.append(run_alone())
            c0, t0 = _browser_cpu_s(), time.perf_counter()
            watched.append(run_watched())
            browser_cpu += _browser_cpu_s() - c0
            watched_wall += time.perf_counter() - t0
        browser.close()
    handle.stop()
    wb.close()
    return alone, watched, browser_cpu / max(watched_wall, 1e-9)


def sampler_cost(idle_s: float) -> dict[str, float]:
    wb = Workbench(history_interval=0.5)
    wb.load("embedded")
    wb.add_engine("vi", "vinference", max_batch_size=8, max_model_len=1024)
    wb.add_engine("vs", "vsurge", max_concurrent_decodes=8, max_model_len=1024)
    proc = psutil.Process()

    def cpu_per_s() -> float:
        c0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
        time.sleep(idle_s)
        return (sum(proc.cpu_times()[:2]) - c0) / (time.perf_counter() - t0)

    wb.history.stop()
    off = cpu_per_s()
    wb.history.start()
    taken0, busy0 = wb.history.samples_taken, wb.history.busy_s
    on = cpu_per_s()
    per_sample = (wb.history.busy_s - busy0) / max(1, wb.history.samples_taken - taken0)
    wb.close()
    return {"off": off, "on": on, "per_sample_ms": 1e3 * per_sample}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--port", type=int, default=5977)
    ap.add_argument("--browser-nice", type=int, default=19,
                    help="also measure watching with Chromium under `nice -n N` (a browser that "
                         "yields the cores, as one on another machine would); 0 to skip")
    args = ap.parse_args(argv)
    C.print_environment({"runs": args.runs})

    start = dashboard_start(args.port)
    C.print_table(("measure", "value"), [
        ("`workbench dashboard` -> port open (s)", C.fmt(start["port_open"], 2)),
        ("`workbench dashboard` -> first page served (s)", C.fmt(start["answers"], 2)),
        ("`workbench dashboard` -> Ready: model + 3 engines (s)", C.fmt(start["ready"], 1)),
        ("page load in Chromium (s)", C.fmt(start["page_load"], 2)),
        ("first contentful paint (s)", C.fmt(start["first_paint"], 2)),
        ("dashboard process RSS, idle, 3 engines (GiB)", C.fmt(start["rss_gib"], 2))],
        title="dashboard start")

    for nice in sorted({0, args.browser_nice}):
        alone, watched, browser_share = watching(args, nice)
        ratio = C.median(watched) / C.median(alone)
        where = "Chromium at normal priority" if nice == 0 else f"Chromium under nice {nice}"
        C.print_table(("run", "output tok/s"), [
            ("alone (no UI, sampler off)", " / ".join(C.fmt(x) for x in alone)),
            ("watched (Compare tab streaming in Chromium, sampler 2 Hz)",
             " / ".join(C.fmt(x) for x in watched)),
            ("median ratio watched / alone", f"{ratio:.3f}"),
            ("Chromium CPU while watched (share of one core)", f"{100 * browser_share:.0f}%")],
            title=f"cost of watching ({where}): vSurge, {args.prompts} prompts x "
                  f"{args.max_tokens} tokens")

    cost = sampler_cost(args.idle)
    C.print_table(("metrics sampler, 2 engines, idle", "value"), [
        ("process CPU s per s, sampler off", C.fmt(cost["off"], 4)),
        ("process CPU s per s, sampler at 2 Hz", C.fmt(cost["on"], 4)),
        ("sampler share of one core", f"{100 * (cost['on'] - cost['off']):.2f}%"),
        ("wall ms per sample", C.fmt(cost["per_sample_ms"], 3))], title="metrics sampler")


if __name__ == "__main__":
    main()
