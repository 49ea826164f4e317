"""`vllm bench serve`'s metrics, computed from GuideLLM's per-request records.

Definitions are those of vLLM 0.32's `vllm/benchmarks/serve.py` (`calculate_metrics`), applied to what
GuideLLM measured for each request (deploy/README.md, "Load testing", lists where the two tools differ):

* TTFT: first token-bearing chunk minus request start, per completed request.
* E2EL: last token-bearing chunk minus request start (vLLM stops the clock there, before the usage chunk
  and `[DONE]`; GuideLLM's own request latency runs to the end of the stream).
* TPOT: (E2EL - TTFT) / (output tokens - 1), per completed request with more than one output token.
* ITL: every gap between consecutive token-bearing chunks, pooled over all completed requests (GuideLLM's
  own "ITL" is TPOT; the gaps come from the chunk times token_times.py records).
* Statistics: numpy mean, population std, median and linearly interpolated percentiles, as vLLM prints them
  (GuideLLM's percentiles are not interpolated). Empty lists give null here, 0 in vLLM.
* Throughput: completed requests, output tokens, and input + output tokens, each divided by the step's
  duration (first request start to last request end); token counts are the server's `usage`.
* Goodput: completed requests meeting every stated SLO (TTFT, TPOT, E2EL in ms; TPOT counts as 0 for
  requests of one output token, as in vLLM) divided by the duration.

GuideLLM's failed requests ("errored") become `failed`, counted by HTTP status (or exception name when no
response came); requests GuideLLM cut off when a step's time ran out ("incomplete") are counted apart, since
`vllm bench serve` has no such thing.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from deploy.loadtest import TOKEN_CHUNK_TIMES

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2el")
_HTTP_STATUS = re.compile(r"HTTPStatusError\(\s*[\"'][^'\"]*?'(\d{3})\b")
# The ticket number dataset.py opens every prompt with; GuideLLM keeps each request's body, so the report
# can show which rows (and so which per-step block) a step really sent.
_TICKET = re.compile(r"(?:Ticket |チケット)(\d+):")


@dataclass(frozen=True)
class Slo:
    """Per-request objectives in milliseconds, vLLM's `--goodput ttft:X tpot:Y e2el:Z`; None is unset."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def is_set(self) -> bool:
        return any(value is not None for value in (self.ttft_ms, self.tpot_ms, self.e2el_ms))

    def as_dict(self) -> dict[str, float]:
        pairs = {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2el_ms": self.e2el_ms}
        return {name: value for name, value in pairs.items() if value is not None}


@dataclass(frozen=True)
class RequestRecord:
    """One request as GuideLLM saw it, reduced to what vLLM's definitions need (seconds, tokens)."""

    model: str
    outcome: str  # "completed", "failed" or "incomplete"
    error: str | None  # HTTP status ("404") or exception name, for failed requests
    start: float | None
    end: float | None  # when GuideLLM finished with the request (stream closed, error or cancel)
    ttft: float | None
    e2el: float | None
    itls: tuple[float, ...]
    prompt_tokens: int
    output_tokens: int
    ticket: int | None = None  # from the prompt in GuideLLM's saved request

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2el is None or self.output_tokens <= 1:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)


def error_key(error: str | None) -> str:
    """`404` for GuideLLM's repr of an httpx HTTPStatusError, else the exception's name (`ConnectError`)."""
    if not error:
        return "unknown"
    if match := _HTTP_STATUS.match(error):
        return match.group(1)
    name = error.split("(", 1)[0].strip()
    return name if name.isidentifier() else "unknown"


def records_from_benchmark(benchmark: dict[str, Any], model: str) -> list[RequestRecord]:
    """Every request of one GuideLLM benchmark (one step of a profile), completed, failed or cut off."""
    groups = benchmark.get("requests") or {}
    records = []
    for guidellm_status, outcome in (("successful", "completed"), ("errored", "failed"), ("incomplete", "incomplete")):
        for request in groups.get(guidellm_status) or []:
            records.append(_record(request, model, outcome))
    return records


def _record(request: dict[str, Any], model: str, outcome: str) -> RequestRecord:
    info = request.get("info") or {}
    timings = info.get("timings") or {}
    start = timings.get("request_start")
    end = timings.get("request_end") or timings.get("resolve_end")
    chunk_times = list((request.get("response_metrics") or {}).get(TOKEN_CHUNK_TIMES) or [])
    itls = tuple(later - earlier for earlier, later in pairwise(chunk_times))
    first, last = (chunk_times[0], chunk_times[-1]) if chunk_times else (None, None)
    if first is None:
        # Not recorded by our backend (a cancelled request, an older report): GuideLLM's own first and last
        # token times give TTFT and E2EL, with the same definition; the gaps in between are unknown.
        first, last = timings.get("first_token_iteration"), timings.get("last_token_iteration")
    ttft = first - start if start is not None and first is not None else None
    e2el = last - start if start is not None and last is not None else None
    output_tokens = request.get("output_tokens") or (len(chunk_times) if outcome == "completed" else 0)
    return RequestRecord(
        model=model,
        outcome=outcome,
        error=error_key(info.get("error")) if outcome == "failed" else None,
        start=start,
        end=end,
        ttft=ttft,
        e2el=e2el,
        itls=itls if outcome == "completed" else (),
        prompt_tokens=int(request.get("prompt_tokens") or 0),
        output_tokens=int(output_tokens),
        ticket=_ticket(request.get("request_args")),
    )


def _ticket(request_args: str | None) -> int | None:
    """The prompt's ticket number from GuideLLM's saved request (a JSON string), if it saved one."""
    if not request_args:
        return None
    try:
        text = json.dumps(json.loads(request_args), ensure_ascii=False)  # undo any \\u escapes
    except ValueError:
        text = request_args
    match = _TICKET.search(text)
    return int(match.group(1)) if match else None


def distribution_ms(name: str, values_s: Sequence[float]) -> dict[str, float | None]:
    """vLLM's mean/median/std/pN of a latency list in seconds, as milliseconds under vLLM's result keys."""
    keys = [f"mean_{name}_ms", f"median_{name}_ms", f"std_{name}_ms"] + [f"p{p}_{name}_ms" for p in PERCENTILES]
    if not values_s:
        return dict.fromkeys(keys)
    values = np.asarray(values_s, dtype=float) * 1000
    stats = [np.mean(values), np.median(values), np.std(values)]
    stats += [np.percentile(values, p) for p in PERCENTILES]
    return {key: round(float(value), 3) for key, value in zip(keys, stats, strict=True)}


def is_good(record: RequestRecord, slo: Slo) -> bool:
    """vLLM's goodput test: every stated SLO >= the request's value (TPOT 0 for one-token outputs)."""
    checks = (
        (slo.ttft_ms, record.ttft),
        (slo.tpot_ms, record.tpot if record.tpot is not None else 0.0),
        (slo.e2el_ms, record.e2el),
    )
    return all(limit is None or (value is not None and value * 1000 <= limit) for limit, value in checks)


def step_metrics(records: Iterable[RequestRecord], duration_s: float, slo: Slo) -> dict[str, Any]:
    """One step's report: counts, errors by status, throughputs, goodput and the four latency distributions."""
    records = list(records)
    completed = [record for record in records if record.outcome == "completed"]
    failed = [record for record in records if record.outcome == "failed"]
    total_input = sum(record.prompt_tokens for record in completed)
    total_output = sum(record.output_tokens for record in completed)
    rate = (lambda count: round(count / duration_s, 4)) if duration_s > 0 else (lambda count: None)
    busy = sum((record.end - record.start) for record in records if record.start is not None and record.end)
    metrics: dict[str, Any] = {
        "duration": round(duration_s, 6),
        "completed": len(completed),
        "failed": len(failed),
        "incomplete": sum(record.outcome == "incomplete" for record in records),
        "errors_by_status": dict(sorted(Counter(record.error or "unknown" for record in failed).items())),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": rate(len(completed)),
        "request_goodput": rate(sum(is_good(record, slo) for record in completed)) if slo.is_set() else None,
        "output_throughput": rate(total_output),
        "total_token_throughput": rate(total_input + total_output),
        "mean_concurrency": round(busy / duration_s, 3) if duration_s > 0 else None,
    }
    metrics |= distribution_ms("ttft", [record.ttft for record in completed if record.ttft is not None])
    metrics |= distribution_ms("tpot", [record.tpot for record in completed if record.tpot is not None])
    metrics |= distribution_ms("itl", [gap for record in completed for gap in record.itls])
    metrics |= distribution_ms("e2el", [record.e2el for record in completed if record.e2el is not None])
    return metrics
