"""Every request limit (`workbench/server/limits.py`) is answered with 400/413 naming it, and the
OpenAPI document lists the codes the server really answers (no 422)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.reliability_support import build
from workbench.server.app import create_app
from workbench.server.limits import request_limits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    eng = build("vinference")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app({"m": engine}, max_body_bytes=20_000)) as c:
        yield c


def _completion(**fields):
    return {"model": "m", "prompt": "hello", "max_tokens": 2, **fields}


@pytest.mark.parametrize("fields, status, param, fragment", [
    ({"prompt": "x" * 30_000}, 413, None, "limit is 20000 bytes"),
    ({"prompt": list(range(3, 70))}, 400, "prompt", "maximum context length is 64"),
    ({"max_tokens": 100}, 400, "prompt", "maximum context length is 64"),
    ({"n": 129}, 400, "n", "128"),
    ({"logprobs": 21}, 400, "logprobs", "20"),
    ({"stop": [f"s{i}" for i in range(17)]}, 400, "stop", "at most 16"),
    ({"stop": ["x" * 257]}, 400, "stop", "at most 256 characters"),
    ({"stop_token_ids": list(range(65))}, 400, "stop_token_ids", "at most 64"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, 400, "logit_bias", "at most 300"),
    ({"logit_bias": {"5000": 1}}, 400, "logit_bias", "vocab_size=400"),
    ({"top_k": 2**31}, 400, "top_k", "2**31-1"),
])
def test_each_limit_is_answered_naming_it(client, fields, status, param, fragment):
    r = client.post("/v1/completions", json=_completion(**fields))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"], err
    if param is not None:
        assert err["param"] == param, err


def test_the_limits_are_stated_in_one_place(engine):
    limits = request_limits(engine, 20_000)
    assert limits["max_model_len"] == 64 and limits["max_n"] == 128
    assert limits["max_logit_bias"] == 300 and limits["max_stop_len"] == 256


def test_openapi_lists_the_codes_the_server_answers():
    app = create_app({"m": build("vinference")}, api_key="k")
    doc = TestClient(app).get("/openapi.json", headers={"Authorization": "Bearer k"}).json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert "422" not in codes, (path, method)
            if path != "/health":
                assert {"401", "503"} <= codes, (path, method, codes)
            if method == "post":
                assert {"400", "413"} <= codes, (path, method, codes)
    assert {"404", "429"} <= set(doc["paths"]["/v1/completions"]["post"]["responses"])
    assert "ErrorResponse" in doc["components"]["schemas"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
