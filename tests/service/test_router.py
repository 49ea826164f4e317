"""A real router in front of two tsumugi replicas: vllm-router (the vLLM project's Rust router, .venv-router).

Replica A serves the tiny model and adapter `a`, replica B the same model and adapter `b`. Everything goes through
the official openai client pointed at the router, and what reached each replica is read from that replica's own
`tsumugi_requests_total` counters, so the router's word is never taken for where a request went:
- base-model requests spread over both replicas (`--policy round_robin`);
- adapter requests reach only the replica that has the adapter: the router's multi-model mode (`--enable-igw`)
  with each replica registered under its adapter's name (`POST /workers`; one model per worker URL), where a
  model nobody registered (the base model) goes to any worker;
- a replica that drains after SIGTERM (its `/ready` turns 503 while it finishes its running stream) stops getting
  traffic once the router's health check (`--health-check-endpoint /ready`, every second) sees it, and requests
  still succeed on the other.

vllm-router 0.1.17 forwards the Responses API and unknown paths byte for byte, but parses chat and text
completions into its own request type and sends them on with sglang-era fields added at fixed values
(`no_stop_trim`, `skip_special_tokens`, `separate_reasoning`, ...); tsumugi accepts them at exactly those values
(what it does anyway) and refuses others, so every endpoint answers through the router.

Cost: two engine starts (side by side) plus building a long-context tiny model; the routers start in a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.adapters import write_random_adapter
from tests.fixtures.tiny_model import build_tiny_llama
from tsumugi.launcher import HOST, REPO, ServerProcess, free_port, service_process

T = TypeVar("T")
pytestmark = pytest.mark.engine  # two real vLLM engines, in server processes

ROUTER = REPO / ".venv-router" / "bin" / "vllm-router"
BASE = "tiny"
LONG_TOKENS = 8000  # a stream on the draining replica that outlasts the drain check on any machine this runs on
ROUTED_REQUESTS = 8
# The router's health check: every second, one failure takes a worker out, two successes bring it back.
HEALTH_CHECK = [
    "--health-check-endpoint", "/ready",
    "--health-check-interval-secs", "1",
    "--health-failure-threshold", "1",
    "--health-success-threshold", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a long context, so one stream can keep a replica draining for many seconds."""
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-long", seed=0, max_positions=LONG_TOKENS + 192)


@pytest.fixture(scope="module")
def replicas(long_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """Replica `a` with adapter `a`, replica `b` with adapter `b`, started side by side."""
    root = tmp_path_factory.mktemp("router-replicas")
    processes = {}
    for seed, name in enumerate(("a", "b"), start=1):
        adapter = write_random_adapter(long_model, root / f"adapter-{name}", seed=seed)
        args = [
            "--model", str(long_model),
            "--served-model-name", BASE,
            "--lora-modules", f"{name}={adapter}",
            "--max-lora-rank", "8",
            "--no-auth",
            "--enforce-eager",
        ]  # fmt: skip
        processes[name] = service_process(args, root / f"replica-{name}.log")
    with ExitStack() as stack:
        for process in processes.values():
            stack.callback(process.stop_in_background)
        with ThreadPoolExecutor(len(processes)) as pool:
            list(pool.map(ServerProcess.start, processes.values()))
        yield processes


def router_process(args: list[str], log_path: Path) -> ServerProcess:
    """`vllm-router *args` on a free loopback port (its Prometheus exporter on another), not started yet."""
    if not ROUTER.exists():
        pytest.fail(f"{ROUTER} is missing; run `make .venv-router/.installed`")
    port = free_port()
    argv = [ROUTER, "--host", HOST, "--port", str(port), "--prometheus-port", str(free_port()), *args]
    return ServerProcess(argv, log_path, port=port, ready_path="/liveness", name="vllm-router", stop_grace=10)


@pytest.fixture(scope="module")
def router(replicas: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One model everywhere: round robin over both replicas, each checked on /ready every second."""
    args = [
        "--worker-urls", replicas["a"].url, replicas["b"].url,
        "--policy", "round_robin",
        "--worker-startup-check-interval", "1",
        *HEALTH_CHECK,
    ]  # fmt: skip
    with router_process(args, tmp_path_factory.mktemp("logs") / "router.log") as process:
        yield process


@pytest.fixture(scope="module")
def model_router(
    replicas: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Multi-model mode: each replica registered under the name of the adapter only it serves."""
    args = ["--enable-igw", "--policy", "round_robin", *HEALTH_CHECK]
    with router_process(args, tmp_path_factory.mktemp("logs") / "model-router.log") as process:
        for adapter, replica in replicas.items():
            registered = httpx.post(f"{process.url}/workers", json={"url": replica.url, "model_id": adapter})
            assert registered.status_code == 200 and registered.json()["success"], registered.text
        yield process


def client_for(router: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)


def requests_counted(replica: ServerProcess, endpoint: str | None = None, model: str | None = None) -> float:
    """What `replica` counted in `tsumugi_requests_total`, any status, for `endpoint` and `model` where given."""
    text = httpx.get(f"{replica.url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tsumugi_requests_total"
        and endpoint in (None, sample.labels["endpoint"])
        and model in (None, sample.labels["model"])
    )


def arrivals(
    replicas: dict[str, ServerProcess], send: Callable[[], T], **labels: str | None
) -> tuple[dict[str, float], T]:
    """Per replica, how many more requests it counted (with these labels) while `send()` ran; and what it returned."""
    before = {name: requests_counted(replica, **labels) for name, replica in replicas.items()}
    result = send()
    return {name: requests_counted(replica, **labels) - before[name] for name, replica in replicas.items()}, result


def send_responses(router: ServerProcess, count: int) -> None:
    """`count` Responses API calls for the base model through the router, each of which must answer."""
    client = client_for(router)
    for _ in range(count):
        response = client.responses.create(model=BASE, input="hello", max_output_tokens=4)
        # Sampled (the default temperature): the random tiny model may end before its 4 tokens.
        assert response.error is None and 1 <= response.usage.output_tokens <= 4, response


def send_chats(router: ServerProcess, model: str, count: int) -> list[int]:
    """`count` chat completions for `model` through the router; the status of each (200 or the error's)."""
    client = client_for(router)
    statuses = []
    for _ in range(count):
        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
            statuses.append(200)
        except openai.APIStatusError as error:
            statuses.append(error.status_code)
    return statuses


def test_base_model_requests_spread_over_both_replicas(router, replicas):
    counted, _ = arrivals(replicas, partial(send_responses, router, ROUTED_REQUESTS), endpoint="responses", model=BASE)
    assert counted == {"a": ROUTED_REQUESTS / 2, "b": ROUTED_REQUESTS / 2}


def test_adapter_requests_reach_only_the_replica_that_has_the_adapter(model_router, replicas):
    for adapter, other in (("a", "b"), ("b", "a")):
        counted, statuses = arrivals(replicas, partial(send_chats, model_router, adapter, 4), endpoint="chat")
        assert counted == {adapter: 4, other: 0}, f"requests for adapter {adapter!r} (answered {statuses})"
        assert statuses == [200] * 4, statuses
    # The base model is registered under no name: the router spreads it over every worker.
    counted, statuses = arrivals(replicas, partial(send_chats, model_router, BASE, 4), endpoint="chat")
    assert counted == {"a": 2, "b": 2}, f"requests for the base model (answered {statuses})"
    assert statuses == [200] * 4, statuses


def test_chat_and_text_completions_answer_through_the_router(router):
    """The router's added fields are accepted at its values, streamed or not."""
    client = client_for(router)
    reply = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.content is not None and 1 <= reply.usage.completion_tokens <= 4
    stream = client.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    assert any(chunk.choices[0].finish_reason for chunk in stream if chunk.choices)
    completion = client.completions.create(model=BASE, prompt="hello", max_tokens=4)
    assert completion.choices[0].finish_reason in ("stop", "length") and 1 <= completion.usage.completion_tokens <= 4


def stream_until(url: str, stop: threading.Event, events: list[str]) -> None:
    """One long stream straight to a replica, read until `stop` is set; closing it aborts it in the replica."""
    body = {"model": BASE, "prompt": "go", "max_tokens": LONG_TOKENS, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            events.append(line)
            if stop.is_set():
                return


def router_sees_unhealthy(router: ServerProcess, url: str) -> bool:
    workers = httpx.get(f"{router.url}/workers").json()["workers"]
    return any(worker["url"] == url and not worker["is_healthy"] for worker in workers)


# Last in this module: it takes replica `b` down for good.
def test_a_draining_replica_stops_receiving_traffic(router, replicas):
    draining = replicas["b"]
    stop, events = threading.Event(), []
    stream = threading.Thread(target=stream_until, args=(draining.url, stop, events))
    stream.start()
    try:
        draining.wait_until(lambda: bool(events), 30, "streaming")
        draining.terminate()
        draining.wait_until(lambda: httpx.get(f"{draining.url}/ready").status_code == 503, 10, "draining")
        # The router's health check runs every second; give it a few before counting (no assertion here: a
        # router that never notices is caught below, by the replica's own counters).
        deadline = time.monotonic() + 5
        while not router_sees_unhealthy(router, draining.url) and time.monotonic() < deadline:
            time.sleep(0.2)

        counted, _ = arrivals(replicas, partial(send_responses, router, ROUTED_REQUESTS))

        assert counted == {"a": ROUTED_REQUESTS, "b": 0}
        # ...while `b` was still draining its stream, not gone: the router followed /ready, not a dead port.
        ready = httpx.get(f"{draining.url}/ready")
        assert ready.status_code == 503 and ready.json()["reason"] == "draining"
        assert draining.process is not None and draining.process.poll() is None
        assert not any(line.startswith("data: [DONE]") for line in events)
    finally:
        stop.set()
        stream.join(timeout=60)
