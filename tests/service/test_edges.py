"""Fast, in-process tests of the edges the real engine cannot easily be made to produce.

A scripted engine (`fake_engine.py`) stands behind the same interface as vLLM's; the app runs in-process
behind `httpx.ASGITransport`, no subprocess, no vLLM. Each `APIError` subclass is reached through HTTP and
checked in OpenAI's envelope. The real-engine tests elsewhere stay the proof of behaviour.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from service.errors import APIError, EngineFailure, InvalidRequest, ModelNotFound, Overloaded, ServiceUnavailable
from tests.service.fake_engine import BASE, CHAT, Script, envelope, fake_app, running_app, sse

pytestmark = pytest.mark.anyio


async def test_a_normal_chat_and_stream_pass_through_the_fake(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200 and r.headers["x-request-id"]
        body = r.json()
        assert body["choices"][0]["message"]["content"] == "Hello world!"
        assert body["usage"]["completion_tokens"] == 3
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "n": 2})
        events = sse(r.text)
        assert events[-1] == "[DONE]"
        texts = ["".join(json.loads(e)["choices"][i]["delta"].get("content", "") for e in events[1:-1]) for i in (0, 1)]
        assert texts == ["Hello world!", "Hello world!"]
    assert engine.requests[0][2].max_tokens == 8


async def test_missing_key_is_401_while_loading_not_503(engine, tokenizer_dir):
    gate = threading.Event()
    app = fake_app(engine, tokenizer_dir, gate=gate)
    try:
        async with running_app(app, wait_loaded=False, api_key=None) as client:
            envelope(await client.post("/v1/chat/completions", json=CHAT), 401, "authentication_error")
            envelope(await client.get("/v1/models"), 401, "authentication_error")
            authed = {"Authorization": "Bearer fast-key"}
            envelope(await client.post("/v1/chat/completions", json=CHAT, headers=authed), 503, "service_unavailable")
            assert (await client.get("/ready")).json()["reason"] == "loading"
            gate.set()
    finally:
        gate.set()


async def test_missing_key_is_401_while_draining(engine, tokenizer_dir):
    app = fake_app(engine, tokenizer_dir)
    async with running_app(app, api_key=None) as client:
        await app.state.context.drain()
        envelope(await client.post("/v1/chat/completions", json=CHAT), 401, "authentication_error")
        error = envelope(
            await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer fast-key"}),
            503,
            "service_unavailable",
        )
        assert "shutting down" in error["message"]
        assert (await client.get("/ready")).json()["reason"] == "draining"


async def test_wrong_key_and_unknown_model_and_bad_body(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
        assert envelope(r, 401, "authentication_error")["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
        error = envelope(
            await client.post("/v1/chat/completions", json={**CHAT, "model": "x"}), 404, ModelNotFound.type
        )
        assert error["param"] == "model" and error["code"] == "model_not_found"
        error = envelope(await client.post("/v1/chat/completions", json={**CHAT, "n": 0}), 400, InvalidRequest.type)
        assert error["param"] == "n"
        error = envelope(
            await client.post("/v1/completions", json={"model": BASE, "prompt": []}), 400, "invalid_request_error"
        )
        assert error["param"] == "prompt"
    assert engine.requests == []


@pytest.mark.parametrize(
    ("failure", "status", "type_"),
    [
        (lambda: Overloaded("queue is full"), 503, Overloaded.type),
        (lambda: InvalidRequest("schema does not compile", param="response_format"), 400, InvalidRequest.type),
        (lambda: EngineFailure("engine error: boom"), 500, EngineFailure.type),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_engine_refusal_before_the_first_token_is_an_http_status(
    engine, tokenizer_dir, failure, status, type_, stream
):
    engine.script = Script(fail_at=0, failure=failure)
    app = fake_app(engine, tokenizer_dir)
    async with running_app(app) as client:
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        error = envelope(r, status, type_)
        if status == 500:
            assert r.headers["x-request-id"] in error["message"]
        metrics = (await client.get("/metrics")).text
    assert f'tsumugi_requests_total{{endpoint="chat",model="{BASE}",status="{status}"}} 1.0' in metrics
    assert f'tsumugi_requests_in_flight{{model="{BASE}"}} 0.0' in metrics
    assert app.state.context.lifecycle.num_active == 0


async def test_engine_failure_mid_stream_ends_with_error_event_and_done(engine, tokenizer_dir, caplog):
    engine.script = Script(fail_at=2, failure=lambda: EngineFailure("engine error: core died"))
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers={"X-Request-Id": "abc-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-1"
    events = sse(r.text)
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:3]] == ["Hello", " world"]
    error = json.loads(events[-2])["error"]
    assert error["type"] == "internal_error" and "abc-1" in error["message"]
    assert events[-1] == "[DONE]"
    assert any("abc-1" in rec.getMessage() and rec.exc_info for rec in caplog.records)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_bug_of_ours_is_a_500_with_request_id_never_a_400(engine, tokenizer_dir, caplog, stream):
    # A ValueError from our own code (not from vLLM's validation) must not be blamed on the client.
    engine.script = Script(fail_at=1, failure=lambda: ValueError("our conversion broke"))
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    request_id = r.headers["x-request-id"]
    if stream:
        error = json.loads(sse(r.text)[-2])["error"]
        assert sse(r.text)[-1] == "[DONE]"
    else:
        error = envelope(r, 500, "internal_error")
    assert error["type"] == "internal_error" and request_id in error["message"]
    assert "our conversion broke" not in error["message"]
    assert any(request_id in rec.getMessage() and rec.exc_info for rec in caplog.records)


async def test_requests_aborted_by_the_drain_end_with_503(engine, tokenizer_dir):
    # The engine ends the choice without a finish reason: what an abort looks like from outside.
    engine.script = Script(tokens=["a", "b"])

    async def unfinished(*args, **kwargs):
        from service.engine.types import ChoiceDelta, EngineStep

        yield EngineStep([ChoiceDelta(0, "a", 1, None)], 3, False)

    engine.generate = unfinished
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        envelope(await client.post("/v1/chat/completions", json=CHAT), 503, ServiceUnavailable.type)
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert json.loads(sse(r.text)[-2])["error"]["type"] == "service_unavailable"


async def test_an_adapter_that_cannot_be_served_fails_the_load_visibly(engine, tokenizer_dir, tmp_path):
    (tmp_path / "broken").mkdir()
    app = fake_app(engine, tokenizer_dir, lora_modules=[f"broken={tmp_path / 'broken'}"])
    async with running_app(app) as client:
        health = await client.get("/health")
        assert health.status_code == 503 and "adapter_config.json not found" in health.json()["detail"]
        error = envelope(await client.post("/v1/chat/completions", json=CHAT), 503, "service_unavailable")
        assert "adapter 'broken'" in error["message"]


async def test_dead_engine_fails_health_and_readiness(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        engine.healthy, engine.errored = False, True
        assert (await client.get("/health")).status_code == 503
        assert (await client.get("/ready")).status_code == 503


def test_every_api_error_subclass_is_reached_here():
    # Keeps this file honest: a new APIError subclass needs a fast test above.
    from service import errors

    covered = {InvalidRequest, ModelNotFound, ServiceUnavailable, Overloaded, EngineFailure, APIError}
    covered.add(errors.InternalError)  # test_a_bug_of_ours_is_a_500_with_request_id_never_a_400

    subclasses = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, APIError)}
    hardening = {  # test_hardening.py
        errors.PayloadTooLarge, errors.PermissionDenied, errors.RateLimited, errors.DeadlineExceeded,
        errors.ClientClosed,
    }  # fmt: skip
    catalogue = {errors.AdapterRejected, errors.AdapterExists}  # test_adapter_catalogue.py
    assert subclasses - covered - hardening - catalogue == {errors.Unauthorized}  # covered by the 401 tests


def test_the_service_and_these_tests_import_no_vllm():
    # In a fresh interpreter: other test modules of the session import vLLM themselves.
    code = (
        "import sys, service.app, service.api.routes, tests.service.fake_engine, tests.service.test_edges; "
        "print(sorted(m for m in sys.modules if m == 'vllm' or m.startswith('vllm.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
