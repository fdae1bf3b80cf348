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
