"""vLLM's Prometheus series as the routers in front of a pool of replicas read them, with adapters named as clients
name them.

An InferencePool's endpoint picker (Gateway API Inference Extension, llm-d's inference scheduler) scrapes
`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`, `vllm:cache_config_info`
(`block_size`, `num_gpu_blocks`) and `vllm:lora_requests_info` from `/metrics`; vLLM production-stack's router
reads `vllm:gpu_cache_usage_perc`, the name vLLM used before `kv_cache_usage_perc`. vLLM 0.32's own
`PrometheusStatLogger` exports all but the old name, so it stays the logger, with the LoRA series set here:

`vllm:lora_requests_info` is a gauge whose value is the time it was last set, one series per combination of its
labels; a reader takes the series with the largest value and splits `running_lora_adapters` and
`waiting_lora_adapters` on ','. What vLLM 0.32 puts there is of no use to a picker:

* it names adapters as the engine knows them. In tsumugi runtime versions are loaded as `name@vN`
  (adapters/catalogue.py) and on CPU base-model requests run through the null adapter (null_adapter.py), and
  `max_lora` counts the null adapter's slot, which clients' adapters cannot have;
* it lists every adapter with a request under both labels (its `LoRARequestStates` writes a count of 0 for the
  other state, and the logger joins the names);
* it learns that a request waits from the request's first output (the engine sends a request's events with its
  outputs), so a request that waits for an adapter slot is never listed as waiting.

So the lists are read from the frontend's table of the requests in flight (`OutputProcessor.request_states`,
updated before each `record`): an adapter is running while one of its requests has had output, and waiting while
one has been sent and has none yet (queued for a slot, or in its first prefill). Names are clients' names, the
null adapter is left out, and `max_lora` is `--max-loras`.

`vllm:gpu_cache_usage_perc` is exported beside `kv_cache_usage_perc`, the same value with the same labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Gauge
from vllm.config import VllmConfig
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import PrometheusStatLogger
from vllm.v1.metrics.stats import IterationStats, MultiModalCacheStats, SchedulerStats
from vllm.v1.metrics.utils import create_metric_per_engine

from service.engine.types import NULL_ADAPTER_NAME

# The catalogue loads version N of the adapter a client calls `name` as `name@vN`; runtime names cannot hold '@'.
_VERSIONED_NAME = re.compile(r"(?P<name>.+)@v\d+")


def client_adapter_name(engine_name: str) -> str | None:
    """The name a client puts in `model` for an adapter the engine knows as `engine_name`; None for the null
    adapter, which carries base-model requests (no client asked for an adapter)."""
    if engine_name == NULL_ADAPTER_NAME:
        return None
    versioned = _VERSIONED_NAME.fullmatch(engine_name)
    return versioned["name"] if versioned else engine_name


def adapter_lists(requests: Iterable[tuple[str | None, bool]]) -> tuple[str, str]:
    """`running_lora_adapters` and `waiting_lora_adapters` for requests given as (engine adapter name or None,
    whether it has had output): clients' names, each once, in the order their first request came."""
    running: dict[str, None] = {}
    waiting: dict[str, None] = {}
    for engine_name, has_output in requests:
        name = client_adapter_name(engine_name) if engine_name is not None else None
        if name is not None:
            (running if has_output else waiting)[name] = None
    return ",".join(running), ",".join(waiting)


class ModelServerStatLogger(PrometheusStatLogger):
    """vLLM's Prometheus logger with the LoRA series and the old KV-cache name of the module docstring."""

    def __init__(self, vllm_config: VllmConfig, engine_indexes: list[int] | None = None) -> None:
        super().__init__(vllm_config, engine_indexes)
        self.lora_info, self.gauge_lora_info = self.gauge_lora_info, None  # set here, never by vLLM's `record`
        self._requests: Mapping[str, Any] | None = None  # until `serve_clients`
        gauge = self._gauge_cls(
            name="vllm:gpu_cache_usage_perc",
            documentation="KV-cache usage, 1 is 100 percent: vllm:kv_cache_usage_perc under its old name.",
            multiprocess_mode="mostrecent",
            labelnames=["model_name", "engine"],
        )
        self.gauge_gpu_cache_usage: dict[int, Gauge] = create_metric_per_engine(gauge, self.per_engine_labelvalues)

    def serve_clients(self, requests: Mapping[str, Any], max_loras: int) -> None:
        """Read adapters' requests from `requests` (the frontend's request states by id) and report `max_loras`
        slots; a first series at once, so a picker knows the slots before any request."""
        self._requests = requests
        self.max_lora = max_loras
        self._set_lora_info()

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: MultiModalCacheStats | None = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self.gauge_gpu_cache_usage[engine_idx].set(scheduler_stats.kv_cache_usage)
            self._set_lora_info()
        super().record(scheduler_stats, iteration_stats, mm_cache_stats, engine_idx)

    def _set_lora_info(self) -> None:
        if self.lora_info is None or self._requests is None:  # LoRA is off, or nothing to read yet
            return
        running, waiting = adapter_lists(
            (state.lora_name, not state.is_prefilling) for state in self._requests.values()
        )
        labels = {"max_lora": self.max_lora, "running_lora_adapters": running, "waiting_lora_adapters": waiting}
        self.lora_info.labels(**labels).set_to_current_time()


def serve_clients(llm: AsyncLLM, max_loras: int) -> None:
    """Point the logger vLLM built from `ModelServerStatLogger` at the frontend's requests in flight."""
    if llm.logger_manager is None:  # stats are off: no series
        return
    for stat_logger in llm.logger_manager.stat_loggers:
        if isinstance(stat_logger, ModelServerStatLogger):
            stat_logger.serve_clients(llm.output_processor.request_states, max_loras)
