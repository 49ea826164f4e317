"""SIGTERM: readiness drops at once, running streams finish within the drain timeout, new requests get a
503 envelope, streams still running at the timeout end with an error event, and the process exits 0."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.fixtures.tiny_model import build_tiny_llama
from tsumugi.launcher import service_process

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

DRAIN_TIMEOUT = 6
LONG_TOKENS = 8000


@pytest.fixture
def draining_server(tmp_path):
    # A long context, so one stream can outlast the drain timeout at any speed this machine has.
    model = build_tiny_llama(tmp_path / "tiny-long", seed=0, max_positions=LONG_TOKENS + 192)
    args = ["--model", str(model), "--served-model-name", "tiny", "--drain-timeout", str(DRAIN_TIMEOUT), "--no-auth",
            "--enforce-eager"]  # fmt: skip
    with service_process(args, tmp_path / "drain.log") as proc:
        yield proc


def stream_events(url: str, max_tokens: int, out: list) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        out.extend(line for line in r.iter_lines() if line)


def test_sigterm_drains_then_exits_zero(draining_server):
    url = draining_server.url
    # Tokens per second on this machine decide what "short" and "too long for the timeout" mean.
    started = time.monotonic()
    httpx.post(
        f"{url}/v1/completions",
        json={"model": "tiny", "prompt": "x", "max_tokens": 100, "ignore_eos": True},
        timeout=60,
    )
    tokens_per_s = 100 / (time.monotonic() - started)
    short_tokens = max(8, int(tokens_per_s * DRAIN_TIMEOUT * 0.3))
    long_tokens = LONG_TOKENS
    assert long_tokens / tokens_per_s > DRAIN_TIMEOUT * 1.5, f"{tokens_per_s:.0f} tokens/s is too fast"

    short, long = [], []
    threads = [
        threading.Thread(target=stream_events, args=(url, short_tokens, short)),
        threading.Thread(target=stream_events, args=(url, long_tokens, long)),
    ]
    for t in threads:
        t.start()
    # SIGTERM only once both streams run (on a busy machine a fixed sleep can fire before they are admitted).
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/ready").json().get("active_requests") != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    draining_server.terminate()
    time.sleep(0.5)

    ready = httpx.get(f"{url}/ready")
    assert ready.status_code == 503 and ready.json()["reason"] == "draining"
    refused = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
    )
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "service_unavailable"

    for t in threads:
        t.join(timeout=DRAIN_TIMEOUT + 30)
    assert draining_server.process.wait(timeout=60) == 0

    # The short stream completed normally.
    assert short[-1] == "data: [DONE]"
    finishes = [json.loads(e[6:])["choices"][0]["finish_reason"] for e in short[1:-1]]
    assert finishes[-1] == "length"
    # The long one ended with an error event in the envelope, then [DONE]: no cut connection.
    assert long[-1] == "data: [DONE]"
    error = json.loads(long[-2][6:])
    assert error["error"]["type"] == "service_unavailable"
    assert not any('"finish_reason":"length"' in e for e in long)
