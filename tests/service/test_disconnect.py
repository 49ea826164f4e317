"""A client that goes away aborts its engine request: nothing keeps generating for nobody."""

from __future__ import annotations

import contextlib
import time

import httpx

from tests.service.conftest import API_KEY, BASE
from tests.service.routes.test_health import sample_value, scrape

LONG = {"model": BASE, "messages": [{"role": "user", "content": "go"}], "max_tokens": 480, "ignore_eos": True}


def running(url: str) -> tuple[float, float]:
    metrics = scrape(url)
    engine = sample_value(metrics.get("vllm:num_requests_running", []), "vllm:num_requests_running")
    ours = sample_value(metrics["tsumugi_requests_in_flight"], "tsumugi_requests_in_flight")
    return engine, ours


def wait_idle(url: str, timeout: float = 30.0) -> tuple[float, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = running(url)
        if counts == (0, 0):
            return counts
        time.sleep(0.5)
    return running(url)


def test_stream_disconnect_aborts(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**LONG, "stream": True}, headers=headers) as r:
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
        assert running(server.url)[1] == 1
    assert wait_idle(server.url) == (0, 0)


def test_non_stream_disconnect_aborts(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(f"{server.url}/v1/chat/completions", json=LONG, headers=headers, timeout=1.0)
    assert wait_idle(server.url) == (0, 0)
