"""The model-server metrics protocol on `/metrics`, on the real server: the series an InferencePool's endpoint
picker and production-stack's router read are there, parse as those readers parse them, and move with the load.

The session server has two adapters and `--max-loras 1`; on CPU base-model requests hold a slot of their own (the
null adapter), so while base-model requests run, requests for `ada` and `ja` sent together cannot share the
batch: one adapter runs and the other waits, and the LoRA series must say which, by the names clients send.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.engine.types import NULL_ADAPTER_NAME
from tests.service.conftest import API_KEY, BASE

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

ADAPTERS = {"ada", "ja"}


@dataclass(frozen=True)
class PickerView:
    """What an InferencePool's endpoint picker takes from one scrape (gateway-api-inference-extension,
    `pkg/epp/datalayer/metrics/extractor.go` and `loraspec.go`, restated): the queue, running and KV-cache gauges
    as plain values; of `vllm:lora_requests_info` the series with the largest value (the time it was set), its
    adapter lists split on ',' and `max_lora` read as an integer; `block_size` and `num_gpu_blocks` of
    `vllm:cache_config_info` read as integers."""

    num_waiting: int
    num_running: int
    kv_cache_usage: float
    running_adapters: set[str]
    waiting_adapters: set[str]
    max_active_adapters: int
    block_size: int
    num_gpu_blocks: int

    @classmethod
    def read(cls, families: dict[str, list]) -> PickerView:
        def gauge(name: str) -> float:
            (sample,) = families[name]  # one engine: one series
            return sample.value

        lora = max(families["vllm:lora_requests_info"], key=lambda sample: sample.value).labels
        (cache,) = families["vllm:cache_config_info"]
        return cls(
            num_waiting=int(gauge("vllm:num_requests_waiting")),
            num_running=int(gauge("vllm:num_requests_running")),
            kv_cache_usage=gauge("vllm:kv_cache_usage_perc"),
            running_adapters=split_adapters(lora["running_lora_adapters"]),
            waiting_adapters=split_adapters(lora["waiting_lora_adapters"]),
            max_active_adapters=int(lora["max_lora"]),
            block_size=int(cache.labels["block_size"]),
            num_gpu_blocks=int(cache.labels["num_gpu_blocks"]),
        )


def split_adapters(names: str) -> set[str]:
    return {name.strip() for name in names.split(",") if name.strip()}


def production_stack_view(text: str) -> dict[str, float]:
    """What production-stack's router takes from one scrape (`src/vllm_router/stats/engine_stats.py`, restated):
    prometheus-client's parser, and for each name it reads the value of the last sample with that name."""
    wanted = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc")
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name in wanted}


def families_of(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def listed_adapters(families: dict[str, list]) -> set[str]:
    """Every adapter name in any series of the LoRA family."""
    labels = ("running_lora_adapters", "waiting_lora_adapters")
    return {
        name
        for s in families["vllm:lora_requests_info"]
        for label in labels
        for name in split_adapters(s.labels[label])
    }


def wait_until_idle(url: str) -> str:
    """A scrape taken once nothing runs on the shared server (an earlier test may have left a stream behind)."""
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(f"{url}/metrics").text
        view = PickerView.read(families_of(text))
        if view.num_running == 0 and view.num_waiting == 0:
            return text
        assert time.monotonic() < deadline, f"still busy after 60 s: {view}"
        time.sleep(0.2)


def test_every_series_the_routers_read_is_served_and_parses(server):
    text = wait_until_idle(server.url)
    types = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE "))
    assert not [name for name, count in types.items() if count > 1]  # Go's text parser refuses a family twice
    view = PickerView.read(families_of(text))
    assert view.max_active_adapters == 1  # --max-loras 1: the null adapter's slot is not the clients'
    assert view.block_size > 0 and view.num_gpu_blocks > 0
    assert 0 <= view.kv_cache_usage <= 1
    routed = production_stack_view(text)
    assert routed == {
        "vllm:num_requests_running": 0,
        "vllm:num_requests_waiting": 0,
        "vllm:gpu_cache_usage_perc": view.kv_cache_usage,
    }


async def stream(http: httpx.AsyncClient, model: str, max_tokens: int, first_token: asyncio.Event) -> None:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                first_token.set()


async def busy_scrapes(url: str) -> list[str]:
    """Two long base-model streams, then one stream for each adapter sent together; every scrape taken while
    they run."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
        base_started = [asyncio.Event() for _ in range(2)]
        tasks = [asyncio.create_task(stream(http, BASE, 250, started)) for started in base_started]
        await asyncio.wait_for(asyncio.gather(*(started.wait() for started in base_started)), 60)
        tasks += [asyncio.create_task(stream(http, model, 150, asyncio.Event())) for model in sorted(ADAPTERS)]
        scrapes = []
        while not all(task.done() for task in tasks):
            scrapes.append((await http.get("/metrics")).text)
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
    return scrapes


def test_the_gauges_move_with_the_load_and_name_adapters_as_clients_do(server):
    wait_until_idle(server.url)
    scrapes = asyncio.run(busy_scrapes(server.url))
    views = [PickerView.read(families_of(text)) for text in scrapes]
    assert any(view.num_running >= 3 and view.kv_cache_usage > 0 for view in views), views
    # One adapter in the batch, the other waiting for the slot, each under the name the client sent.
    split = [v for v in views if (len(v.running_adapters), len(v.waiting_adapters)) == (1, 1)]
    assert any(v.running_adapters | v.waiting_adapters == ADAPTERS for v in split), views
    assert any(v.num_waiting >= 1 for v in split)
    for text in scrapes:
        routed = production_stack_view(text)
        assert routed["vllm:gpu_cache_usage_perc"] == PickerView.read(families_of(text)).kv_cache_usage

    # Once the load is over: nothing running or waiting, no KV cache held, no adapter listed.
    deadline = time.monotonic() + 10
    while (after := PickerView.read(families_of(httpx.get(f"{server.url}/metrics").text))).num_running:
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
    assert after.num_waiting == 0 and after.kv_cache_usage == 0, after
    assert not after.running_adapters and not after.waiting_adapters, after
    every_name = set().union(*(listed_adapters(families_of(text)) for text in scrapes))
    assert every_name <= ADAPTERS and NULL_ADAPTER_NAME not in every_name, every_name
