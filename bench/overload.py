"""`make bench` (overload round): our service vs vLLM's own server at four times capacity.

Both servers serve the default model (SmolLM2-135M-Instruct, float32) with the same engine settings, one at a
time. A model whose forward pass costs real time keeps the load generator (one Python process on the same
machine) far from being the bottleneck: with the tiny test model, 4x capacity is over 400 requests/s and the
client itself cannot keep up with vLLM's server streaming every one of them. vLLM's server is the
anchor: its capacity (requests per second completed by `max_num_seqs` closed-loop clients) sets the offered
load for both, 4x that rate as Poisson arrivals for 60 s, and its median TTFT at capacity sets the SLO
(2x). Reported per server: goodput (requests completed with TTFT within the SLO, per second of offered
load), p99 TTFT of admitted requests, how fast refusals came, and every status seen. Clients give up after
`CLIENT_TIMEOUT_S` (counted as "timeout"), as real ones do; a request still queued then never counts.

Quick check: `python -m bench.overload --seconds 10 --no-write`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import math
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from bench.serving import (
    SERVER_NAMES,
    WORKLOADS,
    server_process,
    update_benchmarks_md,
)
from tsumugi.default_model import DEFAULT_MODEL
from tsumugi.launcher import REPO

HEADING = "## Serving: overload at 4x capacity"
MODEL = DEFAULT_MODEL
MAX_NUM_SEQS = 16
OUTPUT_TOKENS = 32
CAPACITY_SECONDS = 20.0
FULL_SECONDS = 60.0
LOAD_FACTOR = 4.0
SLO_FACTOR = 2.0
CLIENT_TIMEOUT_S = 30.0
PROMPTS = ("Tell me about the sea.", "東京の天気を教えてください。", "Write a haiku about autumn.", "日本の首都は？")


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int | str  # HTTP status, or "timeout" / "connection" when no answer came
    headers_s: float  # time to the response headers (how fast a refusal came)
    ttft_s: float  # time to the first content token (nan unless 200)


async def one_request(client: httpx.AsyncClient, model: str, rng: random.Random) -> Outcome:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": OUTPUT_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    t0 = time.perf_counter()
    headers_s = math.nan
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                headers_s = time.perf_counter() - t0
                if r.status_code != 200:
                    await r.aread()
                    return Outcome(r.status_code, headers_s, math.nan)
                ttft, failed = math.nan, False
                async for line in r.aiter_lines():
                    if math.isnan(ttft) and '"content":"' in line and '"content":""' not in line:
                        ttft = time.perf_counter() - t0
                    failed = failed or line.startswith('data: {"error"')
                return Outcome("stream error" if failed else 200, headers_s, ttft)
    except TimeoutError:
        return Outcome("timeout", headers_s, math.nan)
    except httpx.HTTPError:
        return Outcome("connection", headers_s, math.nan)


def client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S + 5, limits=limits)


async def closed_loop(url: str, model: str, concurrency: int, seconds: float) -> list[Outcome]:
    stop, rng = time.monotonic() + seconds, random.Random(1)
    async with client(url) as http:

        async def worker() -> list[Outcome]:
            done = []
            while time.monotonic() < stop:
                done.append(await one_request(http, model, rng))
            return done

        return [o for os_ in await asyncio.gather(*(worker() for _ in range(concurrency))) for o in os_]


async def open_loop(url: str, model: str, rate: float, seconds: float) -> list[Outcome]:
    rng = random.Random(0)
    async with client(url) as http:
        tasks, stop = [], time.monotonic() + seconds
        while time.monotonic() < stop:
            tasks.append(asyncio.create_task(one_request(http, model, rng)))
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


def percentile(values: list[float], q: int) -> float:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(outcomes: list[Outcome], seconds: float, slo_s: float) -> dict:
    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    return {
        "offered": len(outcomes),
        "statuses": dict(collections.Counter(str(o.status) for o in outcomes)),
        "goodput_rps": sum(1 for o in ok if o.ttft_s <= slo_s) / seconds,
        "admitted_p99_ttft_ms": percentile([o.ttft_s for o in ok], 99) * 1000,
        "admitted_median_ttft_ms": percentile([o.ttft_s for o in ok], 50) * 1000,
        "refusal_p99_ms": percentile([o.headers_s for o in refused], 99) * 1000,
        "num_5xx": sum(1 for o in outcomes if isinstance(o.status, int) and o.status >= 500),
    }


def run_server(name: str, log: Path, rate: float | None, seconds: float, slo_s: float | None) -> dict:
    """Capacity (when `rate` is None: the anchor's run) and then the overload phase, on one server."""
    workload = replace(
        WORKLOADS["smollm2-completions"],
        endpoint="/v1/chat/completions",
        engine_flags=(*WORKLOADS["smollm2-completions"].engine_flags, "--max-num-seqs", str(MAX_NUM_SEQS)),
    )
    with server_process(name, workload, log) as server:
        asyncio.run(closed_loop(server.url, MODEL, MAX_NUM_SEQS, 5.0))  # warm-up
        capacity_run = asyncio.run(closed_loop(server.url, MODEL, MAX_NUM_SEQS, CAPACITY_SECONDS))
        capacity = sum(1 for o in capacity_run if o.status == 200) / CAPACITY_SECONDS
        capacity_ttft = percentile([o.ttft_s for o in capacity_run if o.status == 200], 50)
        rate = rate or LOAD_FACTOR * capacity
        slo_s = slo_s or SLO_FACTOR * capacity_ttft
        overload = asyncio.run(open_loop(server.url, MODEL, rate, seconds))
        healthy = httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    return {
        "capacity_rps": capacity,
        "capacity_median_ttft_ms": capacity_ttft * 1000,
        "rate": rate,
        "slo_ms": slo_s * 1000,
        "healthy_after": healthy,
        **summarize(overload, seconds, slo_s),
    }


def write_report(results: dict[str, dict], seconds: float) -> str:
    anchor = results["vllm"]
    lines = [
        HEADING,
        "",
        f"- Date: {datetime.date.today()}; machine: {platform.machine()}, {os.cpu_count()} cores; command: "
        f"`make bench` (`python -m bench.overload`, {seconds:.0f} s of offered load per server)",
        f"- Model: {MODEL} (float32, max_model_len 2048), `--max-num-seqs {MAX_NUM_SEQS}` "
        f"on both servers; chat streams of {OUTPUT_TOKENS} tokens (ignore_eos), Japanese and English prompts.",
        f"- vLLM's server is the anchor: capacity {anchor['capacity_rps']:.1f} req/s ({MAX_NUM_SEQS} closed-loop "
        f"clients), median TTFT there {anchor['capacity_median_ttft_ms']:.0f} ms. Offered load for both: "
        f"{anchor['rate']:.1f} req/s Poisson ({LOAD_FACTOR:.0f}x); SLO: TTFT <= {anchor['slo_ms']:.0f} ms "
        f"({SLO_FACTOR:.0f}x); clients give up after {CLIENT_TIMEOUT_S:.0f} s.",
        "",
        "| server | offered | statuses | goodput req/s | admitted median / p99 TTFT ms | 429 p99 ms | 5xx "
        "| healthy after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SERVER_NAMES:
        r = results[name]
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        refusal = "n/a" if math.isnan(r["refusal_p99_ms"]) else f"{r['refusal_p99_ms']:.1f}"
        lines.append(
            f"| {name} | {r['offered']} | {statuses} | {r['goodput_rps']:.2f} | "
            f"{r['admitted_median_ttft_ms']:.0f} / {r['admitted_p99_ttft_ms']:.0f} | "
            f"{refusal} | {r['num_5xx']} | "
            f"{'yes' if r['healthy_after'] else 'no'} |"
        )
    ratio = results["tsumugi"]["goodput_rps"] / anchor["goodput_rps"] if anchor["goodput_rps"] else math.inf
    lines += ["", f"- Goodput ratio tsumugi / vLLM: **{ratio:.2f}x** (target >= 2, with zero 5xx)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overload")
    parser.add_argument("--seconds", type=float, default=FULL_SECONDS, help="offered-load phase per server")
    parser.add_argument("--no-write", action="store_true", help="print the report, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    log_dir = REPO / "runs" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    results = {"vllm": run_server("vllm", log_dir / "overload-vllm.log", None, args.seconds, None)}
    anchor = results["vllm"]
    results["tsumugi"] = run_server(
        "tsumugi", log_dir / "overload-tsumugi.log", anchor["rate"], args.seconds, anchor["slo_ms"] / 1000
    )
    print(json.dumps(results), flush=True)
    section = write_report(results, args.seconds)
    print(section)
    if not args.no_write and args.seconds >= FULL_SECONDS:
        update_benchmarks_md(section)


if __name__ == "__main__":
    main()
