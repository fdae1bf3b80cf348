"""Helpers shared by the proxy tests (this module has no tests of its own).

`FakeUpstream`: a scripted OpenAI-compatible server on 127.0.0.1 (a real uvicorn server in a
thread, through `workbench.server.serve`). What it does is chosen by the `model` the proxy sends
it, so one route entry = one behaviour:

    ok               200: a completion / a stream of three text events and [DONE]
    500, 429         that status with an OpenAI error body (429 with Retry-After: 7)
    404              404 with a recognisable body (must reach the client unchanged)
    echo-key         400 whose message repeats the Authorization header it received
    hang             no answer until the client goes away
    end-early        a stream of two events that ends without [DONE]
    crash-mid        two events, then the connection is cut (an error inside the stream)
    malformed-first  a stream whose first event is no SSE
    malformed-mid    one good event, then broken JSON
    error-first      a stream whose first event is an error event
    json-for-stream  a JSON completion where a stream was asked for
    slow             an event every 50 ms, 200 of them (for disconnects)

It records the bodies, Authorization headers and client ports it got, and counts streams that
finished and streams that were cut off by the other side (`closed`). `/v1/models` answers 200 while
`healthy` is True, else 503, after `models_delay` seconds (a server too busy to answer a probe).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from workbench.server import serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_HEALTH = {"interval": 0.1, "timeout": 0.5, "cooldown": 0.3, "max_fails": 1}


def _chunk(model: str, text: str, chat: bool) -> str:
    choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
    body = {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1, "model": model, "choices": [{**choice, "finish_reason": None}]}
    return f"data: {json.dumps(body)}\n\n"


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": None, "code": code}}, status_code=status,
                        headers={"Retry-After": "7"} if status == 429 else None)


class FakeUpstream:
    """See the module docstring."""

    def __init__(self) -> None:
        self.healthy = True
        self.models_delay = 0.0
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.ports: list[int] = []  # the client port of each request (one = one connection)
        self.finished = 0
        self.closed = 0
        self.handle = serve(self._app())

    @property
    def url(self) -> str:
        return self.handle.url + "/v1"

    def stop(self) -> None:
        self.handle.stop(timeout=2)

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            await asyncio.sleep(self.models_delay)
            if not self.healthy:
                return JSONResponse({"error": "down"}, status_code=503)
            return {"object": "list", "data": [{"id": "ok", "object": "model"}]}

        async def generate(request: Request, chat: bool):
            body = await request.json()
            self.bodies.append(body)
            self.auth.append(request.headers.get("authorization"))
            self.ports.append(request.client.port)
            mode, stream = body.get("model"), body.get("stream", False)
            if mode in ("500", "429"):
                return _error(int(mode), f"scripted {mode}", f"scripted_{mode}")
            if mode == "404":
                return _error(404, "no such thing here", "scripted_404")
            if mode == "echo-key":
                return _error(400, f"you sent {request.headers.get('authorization')}", "echo")
            if mode == "hang":
                while not await request.is_disconnected():
                    await asyncio.sleep(0.05)
                self.closed += 1
                return JSONResponse({}, status_code=499)
            if not stream or mode == "json-for-stream":
                return {"id": "cmpl-fake", "object": "text_completion", "created": 1,
                        "model": mode, "choices": [{"index": 0, "text": "fake answer",
                                                    "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
            return StreamingResponse(self._events(mode, chat), media_type="text/event-stream")

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await generate(request, chat=False)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            return await generate(request, chat=True)

        return app

    async def _events(self, mode: str, chat: bool):
        try:
            if mode == "malformed-first":
                yield "this is not an event stream\n\n"
                return
            if mode == "error-first":
                yield 'data: {"error": {"message": "scripted", "type": "server_error"}}\n\n'
                yield "data: [DONE]\n\n"
                return
            count = {"ok": 3, "end-early": 2, "crash-mid": 2, "malformed-mid": 1,
                     "slow": 200}.get(mode, 3)
            for i in range(count):
                yield _chunk(mode, f"t{i} ", chat)
                await asyncio.sleep(0.05 if mode == "slow" else 0.005)
            if mode == "crash-mid":
                raise RuntimeError("scripted crash in the middle of a stream")
            if mode == "malformed-mid":
                yield 'data: {"choices": [broken\n\n'
                return
            if mode == "end-early":
                return
            yield "data: [DONE]\n\n"
            self.finished += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.closed += 1
            raise


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def sse_events(text: str) -> list[str]:
    """The data payloads of an SSE body, in order."""
    return [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


# ---- `workbench serve` / `workbench proxy` in their own processes --------------------------------
class Process:
    """A `python -m workbench.cli ...` child with its output in a file; `.url` once it printed it.
    Stopped with SIGINT (a clean Ctrl-C), then SIGKILL, by its pid."""

    def __init__(self, args: list[str], log_path: str, env: dict[str, str] | None = None,
                 timeout: float = 180.0):
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
                        TOKENIZERS_PARALLELISM="false", **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=ROOT)
        self.url = self._wait_for_url(timeout)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            m = re.search(r"(http://127\.0\.0\.1:\d+)", text)
            if m and "Ctrl-C" in text:
                return m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"no URL within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def kill(self) -> None:
        """Die at once, like a crashed server (SIGKILL)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model_dir(directory: str, seed: int, **overrides) -> str:
    """A tiny random Llama (2 layers, hidden 64) with SmolLM2's tokenizer and chat template, saved
    as a HF directory that `workbench serve --model DIR` loads: real text in and out, compiled and
    run in milliseconds. Different seeds give different (deterministic) greedy texts."""
    import shutil

    from tests.hf_models import save_tiny_model
    from workbench.loading.sources import resolve_source

    save_tiny_model("llama", directory, seed=seed, **{"vocab_size": 49152,
                                                      "max_position_embeddings": 512, **overrides})
    embedded, _ = resolve_source("embedded")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(embedded, name), os.path.join(directory, name))
    return directory
