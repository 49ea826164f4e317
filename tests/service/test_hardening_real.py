"""Hardening through the real engine and real HTTP (issue 12): each case here was a 500, a stall, a silent
200 or a process that never exited, on the tiny model served by vLLM's CPU engine.

Fast, in-process versions of the same edges (and the ones the engine cannot be made to produce) are in
`test_hardening.py`; the full overload run is `make bench`'s.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.service.conftest import API_KEY, BASE
from tsumugi.launcher import ServerProcess, service_process

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": BASE, "prompt": "hi", "max_tokens": 4}
UNCOMPILABLE = {
    "type": "json_schema",
    "json_schema": {
        "name": "word",
        "schema": {
            "type": "object",
            "properties": {"word": {"type": "string", "pattern": "^[a-z]{5000}$"}},
            "required": ["word"],
        },
    },
}


def post(server: ServerProcess, path: str, body: dict, **kwargs) -> httpx.Response:
    # json.dumps writes lone surrogates as "\ud800" escapes, as a careless client's JSON encoder does.
    headers = {**AUTH, "content-type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(f"{server.url}{path}", content=json.dumps(body), headers=headers, timeout=60, **kwargs)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "n": 2, "temperature": 0}, "n"),
        ("/v1/completions", {**COMPLETION, "n": 2, "temperature": 0}, "n"),
        ("/v1/completions", {**COMPLETION, "min_tokens": 10}, "min_tokens"),
        ("/v1/completions", {**COMPLETION, "min_tokens": 10**23}, "min_tokens"),
        ("/v1/completions", {**COMPLETION, "seed": 10**23}, "seed"),
        ("/v1/completions", {**COMPLETION, "top_k": 10**23}, "top_k"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
        ("/v1/completions", {**COMPLETION, "prompt": "a\ud800"}, "prompt"),
        ("/v1/completions", {**COMPLETION, "stop": "\ud800"}, "stop"),
        ("/v1/completions", {**COMPLETION, "model": "\ud800"}, "model"),
        ("/v1/chat/completions", {**CHAT, "response_format": UNCOMPILABLE}, "response_format"),
        ("/v1/chat/completions", {**CHAT, "response_format": UNCOMPILABLE, "stream": True}, "response_format"),
    ],
)
def test_client_mistakes_that_were_500s_are_400s(server, path, body, param):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


def test_the_openai_client_sees_a_bad_schema_as_a_bad_request(client: openai.OpenAI):
    # Not a 200 with finish_reason "error" (a value OpenAI does not define), and not retried as a 5xx.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=BASE, messages=CHAT["messages"], max_tokens=4, response_format=UNCOMPILABLE
        )
    assert caught.value.param == "response_format"


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_a_30_mb_body_is_413_at_once_and_costs_no_memory(server):
    pid = server.process.pid
    before = rss(pid)
    body = b'{"model": "tiny", "junk": "' + b"x" * (30 * 1024**2) + b'"}'
    headers = {**AUTH, "content-type": "application/json"}
    t0 = time.perf_counter()
    try:
        r = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=headers, timeout=30)
        status = r.status_code
        assert r.json()["error"]["code"] == "request_too_large"
    except httpx.WriteError:  # the server answered and closed before the client finished sending
        status = 413
    elapsed = time.perf_counter() - t0
    assert status == 413 and elapsed < 0.5, elapsed  # the 100 ms, with room for the client's own send
    growth = rss(pid) - before
    assert growth < 100 * 1024**2, f"API process grew by {growth / 1024**2:.0f} MB"
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_a_2_mb_prompt_does_not_delay_health(server):
    prompt = "これはとても長いプロンプトです。" * (2 * 1024**2 // 48)
    delays: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as probe_client:
            while not done.is_set():
                t0 = time.perf_counter()
                probe_client.get("/health")
                delays.append(time.perf_counter() - t0)
                time.sleep(0.005)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(probe)
        time.sleep(0.1)
        r = post(server, "/v1/completions", {**COMPLETION, "prompt": prompt})
        time.sleep(0.1)
        done.set()
        future.result()
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert max(delays) < 0.05, f"/health took up to {max(delays) * 1000:.0f} ms"


# ---- overload --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """Four running sequences and no queue (admitted requests start at once): easy to exceed several times."""
    args = ["--model", str(tiny_model), "--served-model-name", BASE, "--max-model-len", "512", "--enforce-eager",
            "--max-num-seqs", "4", "--max-num-queued-requests", "0", "--api-key", API_KEY]  # fmt: skip
    proc = service_process(args, tmp_path_factory.mktemp("overload") / "server.log").start()
    yield proc
    proc.stop_in_background()


async def timed_stream(client: httpx.AsyncClient, max_tokens: int) -> tuple[int, float, float, str | None]:
    """(status, seconds to the answer's headers, seconds to the first token, Retry-After)."""
    body = {**CHAT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    t0 = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        headers_at = time.perf_counter() - t0
        if r.status_code != 200:
            await r.aread()
            return r.status_code, headers_at, math.nan, r.headers.get("retry-after")
        first = math.nan
        async for line in r.aiter_lines():
            if math.isnan(first) and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - t0
        return 200, headers_at, first, None


async def closed_loop(url: str, concurrency: int, seconds: float, max_tokens: int) -> list[tuple]:
    """`concurrency` clients, each sending its next request when the last one ends: the load at capacity."""
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as client:

        async def worker() -> list[tuple]:
            done = []
            while time.monotonic() < stop:
                done.append(await timed_stream(client, max_tokens))
            return done

        return [r for rs in await asyncio.gather(*(worker() for _ in range(concurrency))) for r in rs]


async def open_loop(url: str, rate: float, seconds: float, max_tokens: int) -> list[tuple]:
    """Requests arriving at `rate` per second (Poisson), whatever happens to earlier ones: offered load."""
    rng = random.Random(0)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120, limits=limits) as client:
        tasks, stop = [], time.monotonic() + seconds
        while time.monotonic() < stop:
            tasks.append(asyncio.create_task(timed_stream(client, max_tokens)))
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def test_overload_is_refused_fast_with_429_and_admitted_requests_keep_their_latency(small_server):
    url, max_tokens, seconds = small_server.url, 24, 8.0
    at_capacity = asyncio.run(closed_loop(url, 4, seconds, max_tokens))
    assert {r[0] for r in at_capacity} == {200}
    capacity = len(at_capacity) / seconds  # requests per second with every running place in use
    ttft_capacity = p([r[2] for r in at_capacity], 95)

    overload = asyncio.run(open_loop(url, 4 * capacity, seconds, max_tokens))  # four times capacity
    statuses = [r[0] for r in overload]
    assert not [s for s in statuses if s >= 500], statuses
    refused = [r for r in overload if r[0] == 429]
    admitted = [r for r in overload if r[0] == 200]
    assert refused and admitted and len(refused) + len(admitted) == len(overload)
    assert all(r[3] == "1" for r in refused)
    refusal_p99 = p([r[1] for r in refused], 99)
    ttft_overload = p([r[2] for r in admitted], 95)
    print(f"\ncapacity {capacity:.1f} req/s, TTFT p95 {ttft_capacity * 1000:.0f} ms; at 4x: admitted TTFT p95 "
          f"{ttft_overload * 1000:.0f} ms, 429 p99 {refusal_p99 * 1000:.1f} ms "
          f"({len(refused)} refused, {len(admitted)} admitted)")  # fmt: skip
    assert refusal_p99 < 0.05
    assert ttft_overload < 2 * ttft_capacity

    metrics = httpx.get(f"{url}/metrics").text
    assert "tsumugi_queue_depth 0.0" in metrics and 'tsumugi_requests_in_flight{model="tiny"} 0.0' in metrics
    assert f'tsumugi_rejected_requests_total{{key="key-1",reason="server_at_capacity"}} {len(refused)}.0' in metrics
    assert httpx.get(f"{url}/ready").status_code == 200


# ---- a dead engine --------------------------------------------------------------------------------------------
def test_killing_the_engine_process_fails_requests_at_once_and_exits_non_zero(tiny_model, tmp_path):
    args = ["--model", str(tiny_model), "--served-model-name", BASE, "--max-model-len", "512", "--no-auth",
            "--enforce-eager"]  # fmt: skip
    server = service_process(args, tmp_path / "server.log")
    with server:
        engine_cores = psutil.Process(server.process.pid).children(recursive=True)
        assert engine_cores, "vLLM's engine-core process was not found"
        outcome: dict = {}

        def stream() -> None:
            body = {**CHAT, "max_tokens": 400, "ignore_eos": True, "stream": True}
            try:
                with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as r:
                    outcome["status"] = r.status_code
                    outcome["events"] = [line for line in r.iter_lines() if line.startswith("data: ")]
            except httpx.HTTPError as exc:  # the connection closing at exit also ends the stream
                outcome["error"] = repr(exc)

        client = threading.Thread(target=stream)
        client.start()
        time.sleep(1.0)
        killed_at = time.monotonic()
        for process in engine_cores:
            os.kill(process.pid, signal.SIGKILL)
        code = server.process.wait(timeout=30)
        exited_after = time.monotonic() - killed_at
        client.join(timeout=10)
        assert not client.is_alive(), "a client still hangs after the server exited"
    assert code != 0 and exited_after < 10, (code, exited_after)
    assert outcome.get("error") or outcome["events"][-1] == "data: [DONE]", outcome
    assert "the engine process died" in server.log_path.read_text()
