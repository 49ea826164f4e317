"""The model-server series in-process: vLLM's Prometheus logger fed scheduler stats as the engine sends them
(vLLM is imported and configured from the tiny model's config; no engine is started).

`test_model_server_metrics.py` shows the same series moving on the real server; here each rewriting rule is
pinned on its own, including runtime versions (`name@vN`), which the session server does not load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.engine.stats import ModelServerStatLogger, adapter_lists, client_adapter_name
from service.engine.types import NULL_ADAPTER_NAME


@pytest.mark.parametrize(
    ("engine_name", "client_name"),
    [
        ("ja@v1", "ja"),  # a runtime version, as the catalogue names it (tests/service/adapters/test_catalogue.py)
        ("ja@v12", "ja"),
        ("v1.5-chat@v2", "v1.5-chat"),
        ("ada", "ada"),  # a start-up adapter keeps its name
        ("ja@vnext", "ja@vnext"),  # not a version suffix
        (NULL_ADAPTER_NAME, None),  # base-model requests: no adapter was asked for
    ],
)
def test_engine_names_map_to_the_names_clients_send(engine_name: str, client_name: str | None):
    assert client_adapter_name(engine_name) == client_name


def test_adapters_are_listed_where_their_requests_are_by_client_name_once():
    requests = [(None, True), ("ja@v1", True), (NULL_ADAPTER_NAME, True), ("ada", False), ("ja@v2", True)]
    requests += [("support", False), ("ada", True), (NULL_ADAPTER_NAME, False)]
    assert adapter_lists(requests) == ("ja,ada", "ada,support")
    assert adapter_lists([]) == ("", "")


@dataclass
class RequestState:
    """The two fields of vLLM's frontend request state (`OutputProcessor.request_states`) the logger reads."""

    lora_name: str | None
    is_prefilling: bool = True  # until the request's first output


@dataclass
class ServedLogger:
    logger: ModelServerStatLogger
    requests: dict[str, RequestState]  # the frontend's table, which the test fills as the engine would


@pytest.fixture
def served(tiny_model: Path):
    """Our logger over a LoRA-enabled engine config with 2 engine slots (one `--max-loras` slot plus the null
    adapter's, as on CPU), reading a request table; vLLM's series are unregistered again afterwards."""
    from vllm.config import LoRAConfig, ModelConfig, VllmConfig
    from vllm.v1.metrics.prometheus import unregister_vllm_metrics

    model = ModelConfig(model=str(tiny_model), served_model_name="tiny")
    config = VllmConfig(model_config=model, lora_config=LoRAConfig(max_loras=2, max_lora_rank=8))
    logger = ModelServerStatLogger(config, [0])
    requests: dict[str, RequestState] = {}
    logger.serve_clients(requests, max_loras=1)
    yield ServedLogger(logger, requests)
    unregister_vllm_metrics()


def scrape() -> dict[str, list]:
    text = generate_latest(REGISTRY).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def latest_lora_series(families: dict[str, list]) -> dict[str, str]:
    """The labels of the series an endpoint picker reads: the one with the largest value (its time)."""
    return max(families["vllm:lora_requests_info"], key=lambda sample: sample.value).labels


def record(logger: ModelServerStatLogger, usage: float = 0.0, **engine_lists: dict[str, int]) -> None:
    """One engine step's stats; `engine_lists` are vLLM's own LoRA maps, which the series must not follow."""
    from vllm.v1.metrics.stats import SchedulerStats

    logger.record(SchedulerStats(kv_cache_usage=usage, **engine_lists), None)


def test_the_lora_series_names_clients_adapters_where_their_requests_are(served: ServedLogger):
    idle = latest_lora_series(scrape())  # there from the start, before any request
    assert idle == {"max_lora": "1", "running_lora_adapters": "", "waiting_lora_adapters": ""}

    served.requests |= {"base-1": RequestState(NULL_ADAPTER_NAME, False), "ja-1": RequestState("ja@v3", False)}
    served.requests |= {"ada-1": RequestState("ada")}  # sent, waiting for the slot: vLLM has heard nothing of it
    engine_lists = {NULL_ADAPTER_NAME: 1, "ja@v3": 1}  # vLLM's maps: both list every adapter it knows
    record(served.logger, running_lora_adapters=engine_lists, waiting_lora_adapters=dict.fromkeys(engine_lists, 0))
    busy = {"max_lora": "1", "running_lora_adapters": "ja", "waiting_lora_adapters": "ada"}
    assert latest_lora_series(scrape()) == busy

    served.requests.clear()  # the load is over
    record(served.logger)
    families = scrape()
    assert latest_lora_series(families) == idle
    values = [value for sample in families["vllm:lora_requests_info"] for value in sample.labels.values()]
    assert not any("@" in value or NULL_ADAPTER_NAME in value for value in values)


def test_the_old_kv_cache_name_carries_the_same_value(served: ServedLogger):
    record(served.logger, usage=0.375)
    families = scrape()
    (new,) = families["vllm:kv_cache_usage_perc"]
    (old,) = families["vllm:gpu_cache_usage_perc"]
    assert (old.value, old.labels) == (new.value, new.labels) == (0.375, {"engine": "0", "model_name": "tiny"})
