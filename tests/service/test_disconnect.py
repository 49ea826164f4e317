"""A client that goes away aborts its engine request: nothing keeps generating for nobody.

The request asks for far more tokens than the engine generates in the seconds around the disconnect (32000,
on a long-context tiny model), and vLLM's own generated-token counter is read at the disconnect and again once
nothing runs: with an abort only a few more tokens follow; without one the engine generates the rest of the
budget (or is still at it when the wait ends). Counting tokens, not timing them, keeps this true at any speed.
On 2 cores the first chunk can reach the client late, so each test also checks that enough of the budget was
left at the disconnect for the difference to show.
"""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from tests.fixtures.tiny_model import build_tiny_llama
from tests.service.api.routes.test_health import sample_value, scrape
from tests.service.conftest import BASE
from tsumugi.launcher import ServerProcess, service_process

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

LONG_TOKENS = 32000
IDLE_TIMEOUT = 60.0  # longer than the rest of the budget takes to generate, so a missing abort shows in tokens
LONG = {"model": BASE, "messages": [{"role": "user", "content": "go"}], "max_tokens": LONG_TOKENS, "ignore_eos": True}


@pytest.fixture(scope="module")
def long_server(tmp_path_factory: pytest.TempPathFactory):
    """Its own server: the session one's 512-token context finishes any request before a disconnect matters."""
    folder = tmp_path_factory.mktemp("disconnect")
    model = build_tiny_llama(folder / "tiny-long", seed=0, max_positions=LONG_TOKENS + 192)
    args = ["--model", str(model), "--served-model-name", BASE, "--no-auth", "--enforce-eager"]
    server = service_process(args, folder / "server.log").start()
    yield server
    server.stop_in_background()


def counts(url: str) -> tuple[float, float, float]:
    """(engine requests running, our requests in flight, tokens the engine has generated in total)."""
    metrics = scrape(url)
    engine = sample_value(metrics.get("vllm:num_requests_running", []), "vllm:num_requests_running")
    ours = sample_value(metrics["tsumugi_requests_in_flight"], "tsumugi_requests_in_flight")
    generated = sample_value(metrics.get("vllm:generation_tokens", []), "vllm:generation_tokens_total")
    return engine, ours, generated


def assert_aborted(server: ServerProcess, before: float, at_disconnect: float) -> None:
    """Nothing runs soon after the disconnect, and the engine generated only a little of what was left."""
    left = LONG_TOKENS - (at_disconnect - before)
    assert left >= LONG_TOKENS / 4, f"only {left:.0f} tokens were left at the disconnect: too few to tell"
    deadline = time.monotonic() + IDLE_TIMEOUT
    while True:
        engine, ours, generated = counts(server.url)
        if (engine, ours) == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (engine, ours) == (0, 0), f"{IDLE_TIMEOUT} s after the disconnect: engine running {engine}, ours {ours}"
    after = generated - at_disconnect
    assert after < left / 2, f"{after:.0f} of the {left:.0f} tokens left were generated after the client went away"


def test_stream_disconnect_aborts(long_server):
    before = counts(long_server.url)[2]
    with httpx.stream("POST", f"{long_server.url}/v1/chat/completions", json={**LONG, "stream": True}) as r:
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
        _, in_flight, at_disconnect = counts(long_server.url)
    assert in_flight == 1, f"the request had ended before the disconnect ({at_disconnect - before:.0f} tokens)"
    assert_aborted(long_server, before, at_disconnect)
    assert_counted_as_499(long_server)


def test_non_stream_disconnect_aborts(long_server):
    before = counts(long_server.url)[2]
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(f"{long_server.url}/v1/chat/completions", json=LONG, timeout=1.0)
    assert_aborted(long_server, before, at_disconnect=counts(long_server.url)[2])
    assert_counted_as_499(long_server)


def assert_counted_as_499(server: ServerProcess) -> None:
    """Counted as 499, not 200, and logged as one access line, never as an ERROR with a traceback."""
    requests = scrape(server.url)["tsumugi_requests"]
    assert sample_value(requests, "tsumugi_requests_total", status="200") == 0
    closed = sample_value(requests, "tsumugi_requests_total", status="499")
    log = server.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, server.log_tail()
    assert log.count('"status": 499') == closed >= 1
