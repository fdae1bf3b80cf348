"""The `workbench` CLI: help, generation, one-line errors with a non-zero exit."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


def test_help_for_each_command():
    for cmd in ([], ["generate"], ["chat"], ["serve"], ["proxy"]):
        r = _run(*cmd, "--help")
        assert r.returncode == 0 and "usage: workbench" in r.stdout
    assert "--config" in _run("proxy", "--help").stdout


def test_proxy_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "routes.json"
    bad.write_text('{"routes": {"m": [{"url": "http://127.0.0.1:9/v1", "timeouts": '
                   '{"connect": 0}}]}}')
    for path, needle in [(bad, "routes.m.backends[0].timeouts.connect must be a number > 0"),
                         (tmp_path / "missing.yaml", "cannot read the config")]:
        r = _run("proxy", "--config", str(path), "--port", "0")
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert r.stderr.strip().count("\n") == 0


def test_generate_greedy_stream_on_embedded(embedded):
    r = _run("generate", "What is the capital of France?", "--chat", "--max-tokens", "10",
             "--stream")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    for args, needle in [(["generate", "hi", "--temperature", "-1"], "temperature must be >= 0"),
                         (["generate", "hi", "--model", str(tmp_path / "x")], "not found")]:
        r = _run(*args)
        assert r.returncode == 1
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert r.stderr.strip().count("\n") == 0


def test_chat_reads_stdin_until_empty_line(embedded):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "chat", "--max-tokens", "8"],
                       input="What is the capital of France?\n\n", capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "assistant>" in r.stdout and "Paris" in r.stdout


def test_help_for_bench_and_dashboard():
    for cmd in (["bench"], ["dashboard"]):
        r = _run(*cmd, "--help")
        assert r.returncode == 0 and "usage: workbench" in r.stdout


def test_bench_direct_and_http_json(tiny_checkpoints):
    import json

    r = _run("bench", "--model", tiny_checkpoints["llama"][0], "--engine", "vsurge", "--via",
             "both", "--num-requests", "4", "--max-concurrency", "2", "--max-tokens", "4",
             "--max-model-len", "128", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(row["target"], row["via"]) for row in rows] == [("vsurge", "direct"),
                                                              ("vsurge", "http")]
    assert all(row["failed"] == 0 and row["output tok/s"] > 0 for row in rows)
    bad = _run("bench", "--url", "http://127.0.0.1:9", "--num-requests", "1")
    assert bad.returncode == 1 and "--served-model" in bad.stderr


def test_dashboard_command_serves_loads_and_stops(tiny_checkpoints):
    import argparse
    import io
    import re
    import threading
    import time

    import httpx

    from widgets.cli import run_dashboard

    args = argparse.Namespace(model=tiny_checkpoints["llama"][0], engines="vinference,vsurge",
                              dtype=None, host="127.0.0.1", port=0, show=False,
                              allow_websocket_origin=None)
    out, stop, codes = io.StringIO(), threading.Event(), []
    t = threading.Thread(target=lambda: codes.append(run_dashboard(args, stop=stop, out=out)))
    t.start()
    try:
        deadline = time.monotonic() + 300
        while "Ready:" not in out.getvalue() and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = out.getvalue()
        assert "Engine vinference ready" in text and "Engine vsurge ready" in text, text
        url = re.search(r"Dashboard at (http://\S+)", text).group(1)
        page = httpx.get(url, timeout=60)
        assert page.status_code == 200 and "workbench" in page.text
    finally:
        stop.set()
        t.join(60)
        import panel as pn

        pn.state.reset()
    assert codes == [0]
    args.engines = "vinference,warp-drive"
    assert run_dashboard(args, out=io.StringIO()) == 2


def test_serve_distributed_options_and_unsupported_engine():
    assert "--coordinator-address" in _run("serve", "--help").stdout
    r = _run("serve", "--distributed", "--engine", "esurge", "--port", "0")
    assert r.returncode == 2
    assert "--distributed runs vinference or vsurge" in r.stderr and "Traceback" not in r.stderr
