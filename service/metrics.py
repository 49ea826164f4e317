"""Prometheus metrics: ours per request, labelled by model/adapter, plus vLLM's engine metrics re-exported.

Our series live in a registry owned by the app (no module-level state). vLLM registers its own
(`vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, ...) in prometheus-client's default registry
from inside the engine, through our logger (`engine/stats.py`: the LoRA series by clients' adapter names, and
`vllm:gpu_cache_usage_perc` for production-stack's router); `/metrics` serves both. It always answers in the
classic text format 0.0.4, where `vllm:`-style names are legal as they are: with content negotiation,
prometheus-client 0.23+ may agree on an escaping that makes Prometheus store `vllm:x` as `vllm_x`, and the
dashboards and alerts would find nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """The service's own series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tsumugi_requests",
            "Requests by model, endpoint and status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.in_flight = Gauge("tsumugi_requests_in_flight", "Requests being served.", ["model"], registry=r)
        self.ttft = Histogram(
            "tsumugi_time_to_first_token_seconds",
            "Time to first token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "tsumugi_inter_token_latency_seconds",
            "Time between output tokens.",
            ["model"],
            buckets=TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "tsumugi_request_duration_seconds",
            "End-to-end request latency.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("tsumugi_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.completion_tokens = Counter(
            "tsumugi_completion_tokens", "Completion tokens generated.", ["model"], registry=r
        )

        self.key_requests = Counter(
            "tsumugi_key_requests", "Generation requests by API key name and status.", ["key", "status"], registry=r
        )
        self.key_tokens = Counter(
            "tsumugi_key_tokens", "Tokens by API key name and kind (prompt, completion).", ["key", "kind"], registry=r
        )
        self.rejected = Counter(
            "tsumugi_rejected_requests",
            "Requests refused by admission control (429), by reason and API key name.",
            ["reason", "key"],
            registry=r,
        )
        self.adapter_ready = Gauge(
            "tsumugi_adapter_ready", "1 while an adapter name is served, 0 once retired (admin API).", ["model"],
            registry=r,
        )  # fmt: skip
        self.adapter_load_seconds = Histogram(
            "tsumugi_adapter_load_seconds", "Time to load an adapter version into the engine (admin API).",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.adapter_load_failures = Counter(
            "tsumugi_adapter_load_failures", "Adapters refused by the admin API, by where they failed.", ["stage"],
            registry=r,
        )  # fmt: skip
        for stage in ("check", "engine"):  # at 0 from the start, for rate() and the dashboard
            self.adapter_load_failures.labels(stage)
        self.adapter_cold_loads = Counter(
            "tsumugi_adapter_cold_loads",
            "Requests whose adapter was not in the engine's memory when sent (read from disk first), by model.",
            ["model"], registry=r,
        )  # fmt: skip
        self.adapter_cold_start = Histogram(
            "tsumugi_adapter_cold_start_seconds",
            "Time to first token of requests whose adapter was read from disk (compare with tsumugi_ttft_seconds).",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.adapter_evictions = Counter(
            "tsumugi_adapter_evictions",
            "Served adapter versions pushed out of the engine's memory by others (--max-cpu-loras).", registry=r,
        )  # fmt: skip
        self.adapters_in_memory = Gauge(
            "tsumugi_adapters_in_memory", "Served adapter versions held in the engine's memory (last seen).",
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "tsumugi_queue_depth", "Admitted requests waiting for their first engine step.", registry=r
        )
        self.queue_wait = Histogram(
            "tsumugi_queue_wait_seconds",
            "Time from admission to the first engine step (queueing plus prefill).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.tool_call_responses = Counter(
            "tsumugi_tool_call_responses",
            "Choices answered with tool calls, by model.",
            ["model"],
            registry=r,
        )
        self.tool_call_parse_failures = Counter(
            "tsumugi_tool_call_parse_failures",
            "Tool calls a model began but the parser could not read (answered as text instead), by model.",
            ["model"],
            registry=r,
        )

    def tool_call_counter(self, model: str) -> Callable[[bool, int], None]:
        """Counts one model's choices: whether each was answered with calls, and its parse failures."""
        responses, failures = self.tool_call_responses.labels(model), self.tool_call_parse_failures.labels(model)

        def count(called: bool, num_parse_failures: int) -> None:
            if called:
                responses.inc()
            if num_parse_failures:
                failures.inc(num_parse_failures)

        return count

    def adapter_loaded(self, name: str, seconds: float) -> None:
        self.adapter_ready.labels(name).set(1)
        self.adapter_load_seconds.observe(seconds)

    def adapter_retired(self, name: str) -> None:
        self.adapter_ready.labels(name).set(0)

    def start_models_at_zero(self, models: list[str]) -> None:
        """Create each served model's tool-call series at 0 (dashboards and `rate()` see them before a call)."""
        for model in models:
            self.tool_call_responses.labels(model)
            self.tool_call_parse_failures.labels(model)

    def start_at_zero(self, keys: list[str], reasons: tuple[str, ...]) -> None:
        """Create every key's rejection series at 0, so `rate()` and alerts see them before the first 429."""
        for key in keys:
            for reason in reasons:
                self.rejected.labels(reason, key)

    def track(self, model: str, endpoint: str) -> RequestTracker:
        return RequestTracker(self, model, endpoint)

    def count(self, model: str, endpoint: str, status: int, key: str) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        self.key_requests.labels(key, str(status)).inc()

    def count_tokens(self, key: str, num_prompt_tokens: int, num_completion_tokens: int) -> None:
        self.key_tokens.labels(key, "prompt").inc(num_prompt_tokens)
        self.key_tokens.labels(key, "completion").inc(num_completion_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(REGISTRY)


class RequestTracker:
    """Times one request from admission to its last token."""

    __slots__ = ("_itl", "_last", "_metrics", "_start", "endpoint", "model", "num_output_tokens", "ttft_s")

    def __init__(self, metrics: ServiceMetrics, model: str, endpoint: str) -> None:
        self._metrics = metrics
        self.model = model
        self.endpoint = endpoint
        self._itl = metrics.itl.labels(model)
        self._start = time.perf_counter()
        self._last: float | None = None
        self.num_output_tokens = 0
        self.ttft_s: float | None = None
        metrics.in_flight.labels(model).inc()

    def on_tokens(self, num_tokens: int) -> None:
        """Record `num_tokens` new output tokens arriving now (the first arrival sets the TTFT)."""
        if num_tokens <= 0:
            return
        now = time.perf_counter()
        if self._last is None:
            self.ttft_s = now - self._start
            self._metrics.ttft.labels(self.model).observe(self.ttft_s)
        else:
            gap = (now - self._last) / num_tokens
            for _ in range(num_tokens):
                self._itl.observe(gap)
        self.num_output_tokens += num_tokens
        self._last = now

    def finish(self, status: int, num_prompt_tokens: int) -> None:
        m = self._metrics
        m.in_flight.labels(self.model).dec()
        if status < 400:
            m.e2e.labels(self.model).observe(time.perf_counter() - self._start)
            m.prompt_tokens.labels(self.model).inc(num_prompt_tokens)
            m.completion_tokens.labels(self.model).inc(self.num_output_tokens)
