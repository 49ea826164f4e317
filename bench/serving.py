"""`make bench`: our service vs vLLM's own OpenAI server, same model, same engine settings, same load.

Load: vLLM's own serving benchmark (`vllm.benchmarks.serve`), random 64-token prompts, 64 output tokens,
ignore_eos, 300 requests at concurrency 32, against `/v1/completions`. Servers run one at a time (two at once
skew each other on 2 cores), alternating for several rounds; vLLM's server here is bimodal (about half its
runs have a ~2 s stall wave), so we compare per-round ratios and their median, never single runs.
Writes the `## Serving` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MODEL = "models/smollm2-135m-instruct"
ENGINE_FLAGS = ["--dtype", "float32", "--max-model-len", "2048"]
REPORTED = (
    "output_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_itl_ms",
    "median_e2el_ms",
    "completed",
)
SERVERS = {
    "tsumugi": [sys.executable, "-m", "service"],
    "vllm": [sys.executable, "-m", "vllm.entrypoints.openai.api_server"],
}


def start_server(name: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [*SERVERS[name], "--model", MODEL, *ENGINE_FLAGS, "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "4"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    ready_path = "/ready" if name == "tsumugi" else "/health"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise TimeoutError(f"{name} did not become ready; see {log}")


def run_load(port: int, num_prompts: int, concurrency: int) -> dict:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend", "openai", "--endpoint", "/v1/completions", "--port", str(port),
            "--model", MODEL, "--tokenizer", MODEL,
            "--dataset-name", "random", "--random-input-len", "64", "--random-output-len", "64",
            "--ignore-eos", "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
            "--seed", "0", "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el",
        ]
    )  # fmt: skip
    return main(args)


def run_round(name: str, port: int, log_dir: Path, num_prompts: int, concurrency: int) -> dict:
    proc = start_server(name, port, log_dir / f"{name}-{port}.log")
    try:
        run_load(port, min(32, num_prompts), concurrency)  # warm-up, not recorded
        result = run_load(port, num_prompts, concurrency)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    keys = (
        "output_throughput",
        "median_ttft_ms",
        "p99_ttft_ms",
        "median_itl_ms",
        "median_e2el_ms",
        "completed",
    )
    return {key: result.get(key) for key in keys}


def write_report(rounds: list[dict], args: argparse.Namespace) -> str:
    ratios_tp = [r["tsumugi"]["output_throughput"] / r["vllm"]["output_throughput"] for r in rounds]
    ratios_ttft = [r["tsumugi"]["median_ttft_ms"] / r["vllm"]["median_ttft_ms"] for r in rounds]
    lines = [
        "## Serving",
        "",
        f"- Date: {datetime.date.today()}; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; command: `make bench` (`python -m bench.serving`, "
        f"{args.rounds} rounds)",
        f"- Model: {MODEL} (float32, max_model_len 2048); load: vllm.benchmarks.serve, random 64-in/64-out, "
        f"ignore_eos, {args.num_prompts} requests, concurrency {args.concurrency}, /v1/completions.",
        "- Servers alternate one at a time; ratio = tsumugi / vLLM's own server in the same round.",
        "",
        "| round | server | output tok/s | median TTFT ms | p99 TTFT ms | median ITL ms | median E2E ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rounds, 1):
        for name in ("tsumugi", "vllm"):
            m = {key: ("n/a" if value is None else f"{value:.1f}") for key, value in r[name].items()}
            lines.append(
                f"| {i} | {name} | {m['output_throughput']} | {m['median_ttft_ms']} | {m['p99_ttft_ms']} | "
                f"{m['median_itl_ms']} | {m['median_e2el_ms']} |"
            )
    lines += [
        "",
        f"- Throughput ratio per round: {', '.join(f'{x:.3f}' for x in ratios_tp)}; "
        f"**median {statistics.median(ratios_tp):.3f}x** (target >= 1.0).",
        f"- Median-TTFT ratio per round: {', '.join(f'{x:.3f}' for x in ratios_ttft)}; "
        f"**median {statistics.median(ratios_ttft):.3f}x** (target <= 1.0).",
        "",
    ]
    return "\n".join(lines)


def update_benchmarks_md(section: str) -> None:
    """Replace the `## Serving` section of BENCHMARKS.md, leaving other sections as they are."""
    path = REPO / "BENCHMARKS.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    start = text.find("## Serving")
    if start == -1:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--report-from", type=Path, help="rewrite the report from a log of an earlier run")
    args = parser.parse_args()
    if args.report_from:
        lines = args.report_from.read_text().splitlines()
        rounds = [json.loads(line) for line in lines if line.startswith('{"round"')]
        update_benchmarks_md(write_report([{k: r[k] for k in SERVERS} for r in rounds], args))
        return
    log_dir = REPO / "runs" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    rounds = []
    for i in range(args.rounds):
        order = ("tsumugi", "vllm") if i % 2 == 0 else ("vllm", "tsumugi")
        result = {name: run_round(name, args.port + j, log_dir, args.num_prompts, args.concurrency)
                  for j, name in enumerate(order)}  # fmt: skip
        print(json.dumps({"round": i + 1, **result}), flush=True)
        rounds.append(result)
    section = write_report(rounds, args)
    update_benchmarks_md(section)
    print(section)


if __name__ == "__main__":
    main()
