"""The proxy's config (validated on load, errors naming the field), its SSE reader and its
health state machine: plain Python, no server."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from workbench.server.proxy.config import load_config, parse_config
from workbench.server.proxy.spec import EngineSpec, HealthSpec, LocalSpec, Timeouts, UpstreamSpec
from workbench.server.proxy.health import BackendHealth, probe_loop
from workbench.server.proxy.sse import MalformedSSE, SSEReader, carries_text

UP = "http://127.0.0.1:8001/v1"


def test_full_config_with_defaults():
    cfg = parse_config({
        "routes": {
            "smol": {"backends": [{"url": UP + "/", "model": "SmolLM2", "api_key_env": "K",
                                   "timeouts": {"connect": 1, "first_byte": 2}},
                                  {"url": "https://example.com/v1"}]},
            "busy": {"strategy": "least_busy",
                     "backends": [{"url": UP, "model": "other", "api_key_env": "K", "weight": 3}]},
        },
        "health": {"interval": 0.5, "cooldown": 2},
    })
    smol = cfg.routes["smol"]
    assert smol.strategy == "failover"
    a, b = smol.backends
    assert a.url == UP and a.model == "SmolLM2"  # trailing slash dropped
    assert a.timeouts == Timeouts(connect=1.0, first_byte=2.0, total=600.0)
    assert b.model == "smol"  # the upstream's model name defaults to the public name
    assert b.default_name == "example.com" and a.default_name == "127.0.0.1:8001"
    assert cfg.routes["busy"].backends[0].weight == 3.0
    assert cfg.routes["busy"].backends[0].upstream_key == a.upstream_key  # one pool
    assert cfg.health == HealthSpec(interval=0.5, timeout=2.0, cooldown=2.0, max_fails=1)


def test_shorthand_routes_and_engine_objects():
    class FakeEngine:  # what a workbench engine offers the server
        astream = tokenizer = make_request = None
        max_model_len = 64
        engine_name = "fake"

    eng = FakeEngine()
    cfg = parse_config({"m": [eng, {"engine": eng, "name": "again"}, {"url": UP}]})
    first, second, third = cfg.routes["m"].backends
    assert isinstance(first, EngineSpec) and first.engine is eng
    assert first.default_name == "local:fake"
    assert second.name == "again" and isinstance(third, UpstreamSpec)
    assert parse_config(cfg) is cfg


@pytest.mark.parametrize("config, message", [
    ({}, "routes must be a non-empty mapping"),
    ({"routes": {"m": {"backends": []}}}, "routes.m.backends must list at least one backend"),
    ({"routes": {"m": {"backend": [{"url": UP}]}}}, "routes.m: unknown field 'backend'"),
    ({"m": [{"url": "ftp://x/v1"}]}, "routes.m.backends[0].url must be an http(s) URL"),
    ({"m": [{"url": "http://u:p@h/v1"}]}, "routes.m.backends[0].url must not carry"),
    ({"m": [{"model": "x"}]}, "routes.m.backends[0].url is required"),
    ({"m": [{"url": UP, "timeouts": {"connect": -1}}]},
     "routes.m.backends[0].timeouts.connect must be a number > 0, got -1"),
    ({"m": [{"url": UP, "timeouts": {"first_byte": 10, "total": 5}}]},
     "routes.m.backends[0].timeouts.first_byte (10.0) must be <= total (5.0)"),
    ({"m": [{"url": UP, "timeouts": {"read": 1}}]},
     "routes.m.backends[0].timeouts: unknown field 'read'"),
    ({"m": [{"url": UP, "api_key": "sk-123"}]},
     "routes.m.backends[0].api_key: never write a key in the config"),
    ({"m": [{"url": UP, "weight": 2}]},
     "routes.m.backends[0].weight applies to strategy least_busy only"),
    ({"m": {"strategy": "least_busy", "backends": [{"url": UP, "weight": 0}]}},
     "routes.m.backends[0].weight must be a number > 0, got 0"),
    ({"m": {"strategy": "random", "backends": [{"url": UP}]}},
     "routes.m.strategy must be one of failover, least_busy, got 'random'"),
    ({"m": [{"url": UP, "max_connections": 0}]},
     "routes.m.backends[0].max_connections must be an int >= 1, got 0"),
    ({"m": [{"url": UP, "health_path": "models"}]},
     "routes.m.backends[0].health_path must start with '/'"),
    ({"m": [{"url": UP}], "n": [{"url": UP, "max_connections": 8}]},
     "routes.n.backends[0].max_connections: 8 disagrees with routes.m.backends[0]"),
    ({"m": ["http://x"]}, "routes.m.backends[0] must be an upstream"),
    ({"m": [{"local": {"engine": "nope"}}]},
     "routes.m.backends[0].local.engine must be one of vinference, vsurge"),
    ({"m": [{"local": {"dtype": "int8"}}]}, "routes.m.backends[0].local.dtype must be"),
    ({"m": [{"local": "embedded"}]}, "routes.m.backends[0].local must be a mapping"),
    ({"routes": {"m": [{"url": UP}]}, "health": {"max_fails": 0}},
     "health.max_fails must be an int >= 1, got 0"),
    ({"routes": {"m": [{"url": UP}]}, "health": {"interval": "5s"}},
     "health.interval must be a number > 0, got '5s'"),
])
def test_config_errors_name_the_field(config, message):
    with pytest.raises(ValueError) as e:
        parse_config(config)
    assert message in str(e.value)


def test_local_spec_knobs_are_checked():
    spec = parse_config({"m": [{"local": {"model": "embedded", "engine": "vsurge",
                                          "max_model_len": 256}, "name": "l"}]})
    local = spec.routes["m"].backends[0]
    assert isinstance(local, LocalSpec) and local.knobs == {"max_model_len": 256}
    assert spec.local_specs() == [("m", 0, local)]
    with pytest.raises(ValueError, match=r"routes\.m\.backends\[0\]\.local\.max_len is not a knob "
                                         r"of vinference"):
        parse_config({"m": [{"local": {"max_len": 256}}]})


def test_load_config_files(tmp_path):
    body = {"routes": {"m": {"backends": [{"url": UP, "model": "x"}]}}}
    (tmp_path / "r.json").write_text(json.dumps(body))
    (tmp_path / "r.yaml").write_text("routes:\n  m:\n    backends:\n"
                                     f"      - url: {UP}\n        model: x\n")
    assert load_config(tmp_path / "r.json") == load_config(tmp_path / "r.yaml")
    (tmp_path / "bad.yml").write_text("routes: [unclosed")
    with pytest.raises(ValueError, match="bad.yml: not valid YAML"):
        load_config(tmp_path / "bad.yml")
    (tmp_path / "bad.json").write_text('{"routes": {"m": [{"url": "x"}]}}')
    with pytest.raises(ValueError, match=r"bad.json: routes\.m\.backends\[0\]\.url"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="must be a .json, .yaml or .yml file"):
        load_config(tmp_path / "r.toml")
    with pytest.raises(ValueError, match="cannot read the config"):
        load_config(tmp_path / "missing.json")


def test_missing_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WB_TEST_UNSET_KEY", raising=False)
    spec = parse_config({"m": [{"url": UP, "api_key_env": "WB_TEST_UNSET_KEY"}]})
    with pytest.raises(ValueError, match="WB_TEST_UNSET_KEY is not set"):
        spec.routes["m"].backends[0].api_key()
    monkeypatch.setenv("WB_TEST_UNSET_KEY", "sk-test-7f3a")
    assert spec.routes["m"].backends[0].api_key() == "sk-test-7f3a"
    assert "sk-test-7f3a" not in repr(spec)  # the config holds the variable's name, never its value


# ---- the SSE reader -----------------------------------------------------------------------------
def test_sse_reader_events_split_anywhere():
    stream = (b': keep-alive\r\n\r\ndata: {"a": 1}\r\n\r\nevent: x\ndata: {"b":\ndata: 2}\n\n'
              b"data: [DONE]\n\n")
    for cut in range(1, len(stream)):  # every split point gives the same events
        reader = SSEReader()
        events = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [p for p, _ in events] == [b'{"a": 1}', b'{"b":\n2}', b"[DONE]"], cut
        assert [o for _, o in events] == [{"a": 1}, {"b": 2}, None]
        assert reader.pending == b""
    reader = SSEReader()
    assert reader.feed(b'data: {"a": 1}\n\ndata: {"b"') == [(b'{"a": 1}', {"a": 1})]
    assert reader.pending == b'data: {"b"'


@pytest.mark.parametrize("bad", [b"hello world\n\n", b"data: {not json}\n\n", b"data: [1, 2]\n\n",
                                 b"data: \xff\n\n", b"eventually: x\n\n"])
def test_sse_reader_rejects_malformed(bad):
    with pytest.raises(MalformedSSE):
        SSEReader().feed(bad)


def test_carries_text():
    assert carries_text({"choices": [{"index": 0, "text": "a"}]})
    assert carries_text({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    assert not carries_text({"choices": [{"index": 0, "delta": {"role": "assistant",
                                                                 "content": ""}}]})
    assert not carries_text({"choices": [], "usage": {}})


# ---- health -------------------------------------------------------------------------------------
def test_health_marks_down_after_max_fails_and_waits_out_the_cooldown():
    now = [100.0]
    changes = []
    h = BackendHealth("a", max_fails=2, cooldown=5.0, clock=lambda: now[0],
                      on_change=changes.append)
    h.record_failure("connect")
    assert h.up and h.probe_due()
    h.record_success()  # a success in between resets the count
    h.record_failure("connect")
    assert h.up
    h.record_failure("timeout")
    assert not h.up and changes == [False] and h.last_error == "timeout"
    now[0] += 4.9
    assert not h.probe_due()  # cooling down
    assert h.next_probe_in(60.0) == pytest.approx(0.1)
    now[0] += 0.2
    assert h.probe_due()
    h.record_failure("health check failed")  # a failed probe restarts the cooldown
    assert not h.probe_due()
    now[0] += 5.1
    h.record_success()  # the probe answered
    assert h.up and changes == [False, True] and h.fails == 0
    assert h.next_probe_in(60.0) == 60.0


def test_probe_loop_reprobes_a_backend_a_request_marked_down_after_the_cooldown():
    async def main() -> list[float]:
        h = BackendHealth("a", cooldown=0.05)
        calls: list[float] = []

        async def probe() -> bool:
            calls.append(time.monotonic())
            return len(calls) != 2  # up, then one failed probe, then up again

        task = asyncio.create_task(probe_loop(h, probe, interval=30.0))
        await asyncio.sleep(0.1)
        assert h.up and len(calls) == 1  # waiting out its 30 s interval
        t0 = time.monotonic()
        h.record_failure("connect")  # a request failed: down
        while len(calls) < 3:
            await asyncio.sleep(0.01)
            assert time.monotonic() - t0 < 5, calls
        assert h.up
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return [c - t0 for c in calls[1:]]

    second, third = asyncio.run(main())
    assert 0.04 < second < 1.0 and third - second > 0.04  # each after a cooldown, not 30 s


def test_a_probe_that_fails_while_the_backend_sends_answers_is_not_counted():
    async def main() -> list[bool]:
        h = BackendHealth("a", cooldown=0.05)
        busy = [True]

        async def probe() -> bool:  # times out, while (or not) a stream sends chunks
            if busy[0]:
                h.record_activity()
            await asyncio.sleep(0.01)
            return False

        task = asyncio.create_task(probe_loop(h, probe, interval=0.02))
        await asyncio.sleep(0.2)
        seen = [h.up]
        busy[0] = False
        await asyncio.sleep(0.2)
        seen.append(h.up)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return seen

    assert asyncio.run(main()) == [True, False]
