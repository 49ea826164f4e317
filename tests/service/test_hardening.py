"""Hardening, fast and in-process (issue 12): every refusal a hostile or unlucky client can meet, through HTTP.

The scripted engine (`fake_engine.py`) makes capacity, slowness and death happen on demand; the real-engine
versions of the same edges are in `test_hardening_real.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.config import Settings
from tests.service.fake_engine import API_KEY, BASE, CHAT, Script, envelope, fake_app, fake_loader, running_app, sse

pytestmark = pytest.mark.anyio
COMPLETION = {"model": BASE, "prompt": "hi", "max_tokens": 4}


# ---- bodies and fields -----------------------------------------------------------------------------------------
async def test_an_oversized_body_is_413_before_it_is_read(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir, max_request_body_bytes=1000)) as client:
        big = {**CHAT, "unknown_field": "x" * 5000}
        error = envelope(await client.post("/v1/chat/completions", json=big), 413, "invalid_request_error")
        assert error["code"] == "request_too_large" and "1000 bytes" in error["message"]

        async def chunks():  # no Content-Length: the limit must hold while the body streams in
            yield json.dumps(big).encode()[:600]
            yield json.dumps(big).encode()[600:]

        r = await client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert envelope(r, 413, "invalid_request_error")["code"] == "request_too_large"
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert len(engine.requests) == 1


async def test_without_a_key_invalid_json_and_huge_bodies_get_401(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir, max_request_body_bytes=1000), api_key=None) as client:
        r = await client.post("/v1/completions", content=b'{"model":', headers={"content-type": "application/json"})
        envelope(r, 401, "authentication_error")
        envelope(await client.post("/v1/completions", content=b"x" * 5000), 401, "authentication_error")
        authed = {"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
        error = envelope(
            await client.post("/v1/completions", content=b'{"model":', headers=authed), 400, "invalid_request_error"
        )
        assert error["param"] is None and "not valid JSON" in error["message"]
        error = envelope(
            await client.post("/v1/completions", content=b"[1]", headers=authed), 400, "invalid_request_error"
        )
        assert "must be a JSON object" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "n": 2, "temperature": 0}, "n"),
        ("/v1/completions", {**COMPLETION, "n": 2, "temperature": 0}, "n"),
        ("/v1/completions", {**COMPLETION, "min_tokens": 10}, "min_tokens"),
        ("/v1/chat/completions", {**CHAT, "min_tokens": 9, "max_completion_tokens": 8}, "min_tokens"),
        ("/v1/completions", {**COMPLETION, "min_tokens": 10**23}, "min_tokens"),
        ("/v1/completions", {**COMPLETION, "seed": 10**23}, "seed"),
        ("/v1/completions", {**COMPLETION, "seed": -(10**23)}, "seed"),
        ("/v1/completions", {**COMPLETION, "top_k": 10**23}, "top_k"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "a\ud800"}]}, "messages[0].content"),
        ("/v1/completions", {**COMPLETION, "prompt": "a\udfff"}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": ["ok", "\ud800"]}, "prompt[1]"),
        ("/v1/completions", {**COMPLETION, "stop": "\ud800"}, "stop"),
        ("/v1/completions", {**COMPLETION, "model": "\ud800"}, "model"),
    ],
)
async def test_client_mistakes_are_400_naming_the_field(engine, tokenizer_dir, path, body, param):
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        # json.dumps writes a lone surrogate as the escape "\ud800", exactly what such a client sends.
        r = await client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    error = envelope(r, 400, "invalid_request_error")
    assert error["param"] == param, error
    assert engine.requests == []


async def test_a_prompt_too_long_to_fit_is_refused_before_tokenising(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        model = client._transport.app.state.context.model  # type: ignore[attr-defined]
        prompt = "x" * (model.max_prompt_chars + 1)
        error = envelope(
            await client.post("/v1/completions", json={**COMPLETION, "prompt": prompt}), 400, "invalid_request_error"
        )
    assert error["code"] == "context_length_exceeded" and "characters" in error["message"]


# ---- admission --------------------------------------------------------------------------------------------------
async def test_past_capacity_requests_get_429_with_retry_after_and_places_come_back(engine, tokenizer_dir):
    # max_num_seqs 2 and one queued place: three sequences at once, the fourth is refused.
    engine.info = type(engine.info)(max_model_len=64, max_num_seqs=2)
    engine.script = Script(tokens=["a"] * 6, step_delay=0.05)
    app = fake_app(engine, tokenizer_dir, max_num_queued_requests=1)
    async with running_app(app) as client:
        running = [asyncio.create_task(client.post("/v1/chat/completions", json=CHAT)) for _ in range(3)]
        await asyncio.sleep(0.05)
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        error = envelope(r, 429, "rate_limit_error")
        assert r.headers["retry-after"] == "1" and error["code"] == "server_at_capacity"
        never = envelope(await client.post("/v1/chat/completions", json={**CHAT, "n": 4}), 400, "invalid_request_error")
        assert never["param"] == "n" and "at most 3" in never["message"]
        assert [t.status_code for t in await asyncio.gather(*running)] == [200, 200, 200]
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'tsumugi_rejected_requests_total{key="key-1",reason="server_at_capacity"} 1.0' in metrics
    assert "tsumugi_queue_depth 0.0" in metrics
    admission = app.state.context.admission
    assert (admission.num_sequences, admission.num_queued, admission.num_queued_prompt_tokens) == (0, 0, 0)


def _keys_file(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(json.dumps({"keys": entries}), encoding="utf-8")  # JSON is YAML
    return path


async def test_per_key_limits_models_and_usage_metrics(engine, tokenizer_dir, tmp_path):
    keys = _keys_file(
        tmp_path,
        [
            {"name": "team-a", "key": "key-of-team-a", "requests_per_minute": 2},
            {
                "name": "team-b",
                "key_sha256": hashlib.sha256(b"key-of-team-b").hexdigest(),
                "models": ["someone-else"],
            },
            {"name": "team-c", "key": "key-of-team-c", "tokens_per_minute": 20},
        ],
    )
    app = create_app(
        Settings(model=str(tokenizer_dir), served_model_name=BASE, api_keys_file=keys),
        load=fake_loader(engine, tokenizer_dir),
    )
    async with running_app(app, api_key=None) as client:

        def as_(key: str) -> dict:
            return {"Authorization": f"Bearer {key}"}

        assert (await client.post("/v1/chat/completions", json=CHAT, headers=as_("key-of-team-a"))).status_code == 200
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=as_("key-of-team-a"))).status_code == 200
        r = await client.post("/v1/chat/completions", json=CHAT, headers=as_("key-of-team-a"))
        assert envelope(r, 429, "rate_limit_error")["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 30  # 2 per minute: one request every 30 s
        error = envelope(
            await client.post("/v1/chat/completions", json=CHAT, headers=as_("key-of-team-b")), 403, "permission_error"
        )
        assert error["param"] == "model"
        too_long = {**COMPLETION, "prompt": "word " * 8}
        r = await client.post("/v1/completions", json=too_long, headers=as_("key-of-team-c"))
        assert "tokens per minute" in envelope(r, 400, "invalid_request_error")["message"]
        assert (await client.post("/v1/completions", json=COMPLETION, headers=as_("key-of-team-c"))).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'tsumugi_key_requests_total{key="team-a",status="200"} 2.0' in metrics
    assert 'tsumugi_key_requests_total{key="team-a",status="429"} 1.0' in metrics
    assert 'tsumugi_key_requests_total{key="team-b",status="403"} 1.0' in metrics
    assert 'tsumugi_key_tokens_total{key="team-a",kind="completion"} 6.0' in metrics
    assert "key-of-team" not in metrics


async def test_per_key_concurrency(engine, tokenizer_dir, tmp_path):
    keys = _keys_file(tmp_path, [{"name": "solo", "key": "key-of-solo", "max_concurrent_requests": 1}])
    engine.script = Script(tokens=["a"] * 4, step_delay=0.05)
    app = create_app(
        Settings(model=str(tokenizer_dir), served_model_name=BASE, api_keys_file=keys),
        load=fake_loader(engine, tokenizer_dir),
    )
    async with running_app(app, api_key="key-of-solo") as client:
        first = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await asyncio.sleep(0.05)
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert envelope(r, 429, "rate_limit_error")["code"] == "concurrency_limit_exceeded"
        assert (await first).status_code == 200
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TSUMUGI_API_KEYS": " , "}, "no API keys configured"),
        ({"TSUMUGI_API_KEYS": "", "TSUMUGI_API_KEYS_FILE": "/nonexistent/keys.yaml"}, "cannot read the API keys"),
        ({"TSUMUGI_API_KEYS": "k1", "TSUMUGI_NO_AUTH": "true"}, "contradicts"),
    ],
)
def test_a_blank_or_broken_key_configuration_stops_the_start(env, message):
    import os

    result = subprocess.run(
        [sys.executable, "-m", "service", "--model", "nowhere"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "k1" not in result.stderr  # a key is never echoed


def test_keys_file_errors_name_the_entry(tmp_path):
    from service.access.tenants import KeyRing
    from service.errors import StartupError

    path = _keys_file(tmp_path, [{"name": "a", "key": "long-enough-key", "requests_per_minute": 0}])
    with pytest.raises(StartupError, match=r"keys\.0\.requests_per_minute"):
        KeyRing.load([], path)
    path = _keys_file(tmp_path, [{"name": "a", "key": "long-enough-key"}, {"name": "a", "key": "another-key-1"}])
    with pytest.raises(StartupError, match="unique"):
        KeyRing.load([], path)


# ---- deadlines ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
async def test_a_deadline_aborts_the_engine_request_and_answers_504(engine, tokenizer_dir, stream):
    engine.script = Script(tokens=["a"] * 50, step_delay=0.02)
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "max_tokens": 40, "stream": stream},
            headers={"X-Request-Timeout": "0.2"},
        )
        if stream:
            assert r.status_code == 200
            events = sse(r.text)
            assert json.loads(events[-2])["error"]["type"] == "timeout_error" and events[-1] == "[DONE]"
        else:
            assert envelope(r, 504, "timeout_error")["code"] == "timeout"
        metrics = (await client.get("/metrics")).text
    assert engine.aborted, "the engine request must be aborted, not left running"
    assert f'tsumugi_requests_total{{endpoint="chat",model="{BASE}",status="{200 if stream else 504}"}} 1.0' in metrics


async def test_a_deadline_passed_while_queued_is_504_before_any_byte(engine, tokenizer_dir):
    engine.script = Script(tokens=["a"], step_delay=0.5)  # the first step comes after the deadline
    async with running_app(fake_app(engine, tokenizer_dir, request_timeout=0.1)) as client:
        envelope(await client.post("/v1/chat/completions", json={**CHAT, "stream": True}), 504, "timeout_error")
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Timeout": "soon"})
        assert envelope(r, 400, "invalid_request_error")["param"] == "X-Request-Timeout"


# ---- faults ------------------------------------------------------------------------------------------------------
async def test_a_dead_engine_is_fatal(engine, tokenizer_dir):
    fatal: list[BaseException] = []
    app = create_app(
        Settings(model=str(tokenizer_dir), served_model_name=BASE, api_keys=[API_KEY]),
        load=fake_loader(engine, tokenizer_dir),
        on_fatal=fatal.append,
    )
    async with running_app(app) as client:
        engine.healthy, engine.errored = False, True
        async with asyncio.timeout(3):
            while not fatal:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert (await client.get("/health")).status_code == 503
        assert (await client.get("/ready")).json()["reason"] == "the engine process died"
        error = envelope(await client.post("/v1/chat/completions", json=CHAT), 503, "service_unavailable")
        assert "restarting" in error["message"]


async def test_each_request_writes_one_json_access_line_without_prompt_or_key(engine, tokenizer_dir, caplog):
    caplog.set_level(logging.INFO, logger="tsumugi.access")
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        secret_prompt = {**CHAT, "messages": [{"role": "user", "content": "my-secret-prompt"}]}
        r = await client.post("/v1/chat/completions", json=secret_prompt, headers={"X-Request-Id": "req-42"})
        await client.get("/health")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "tsumugi.access"]
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert line["request_id"] == "req-42" == r.headers["x-request-id"]
    assert (line["status"], line["key"], line["model"], line["completion_tokens"]) == (200, "key-1", BASE, 3)
    assert line["prompt_tokens"] > 0 and line["ttft_ms"] is not None
    assert "my-secret-prompt" not in lines[0] and API_KEY not in lines[0]


async def test_openapi_documents_every_status_and_the_bearer_scheme(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        document = (await client.get("/openapi.json")).json()
    for path in ("/v1/chat/completions", "/v1/completions"):
        responses = document["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "403", "404", "413", "429", "500", "503", "504"} <= set(responses)
        assert "422" not in responses
        assert document["paths"][path]["post"]["security"] == [{"HTTPBearer": []}]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_health_stays_fast_while_a_long_prompt_is_tokenised(engine, tokenizer_dir):
    engine.info = type(engine.info)(max_model_len=100_000, max_num_seqs=8)
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        prompt = "おはよう world " * 40_000  # long enough to take a while, short enough to fit
        slow = asyncio.create_task(client.post("/v1/completions", json={**COMPLETION, "prompt": prompt}))
        await asyncio.sleep(0.01)
        gaps = []
        while not slow.done():  # a probe every 10 ms, timed from request to answer
            t0 = asyncio.get_running_loop().time()
            await client.get("/health")
            gaps.append(asyncio.get_running_loop().time() - t0)
            await asyncio.sleep(0.01)
        r = await slow
    # tokenised in full (440,000 tokens) before it is found too long: the slow path this test is about
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
    assert len(gaps) >= 3 and max(gaps) < 0.05, gaps


def _unused(_: httpx.Response) -> None:  # keeps the httpx import typed for the helpers above
    return None
