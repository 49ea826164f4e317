"""`make bench`: our service vs vLLM's own OpenAI server, same model, same engine settings, same load.

Load: vLLM's own serving benchmark (`vllm.benchmarks.serve`), random 64-token prompts, 64 output tokens,
ignore_eos, 300 requests at concurrency 32. Three workloads, each with its own section of BENCHMARKS.md:

- `smollm2-completions`: SmolLM2-135M-Instruct on `/v1/completions` (`## Serving`);
- `tiny-chat`: the tiny random test model on `/v1/chat/completions` (`## Serving: tiny model, chat`). Its forward
  pass is nearly free, so what the two servers do around the engine (chat templating, SSE, detokenising)
  decides the numbers: the workload where our API layer's own cost shows;
- `tiny-chat-tools`: the same load with one function tool and `tool_choice: "auto"` in every request
  (`## Serving: tiny model, chat with tools`), both servers started with `--enable-auto-tool-choice
  --tool-call-parser hermes` and the same tool-rendering template, `bench/chatml_tools.jinja`, so that their
  prompts are the same text. The random model answers in prose, so every token goes through the parser's
  streaming path: what reading tool calls costs each server;
- `tiny-chat-lora`: tiny-chat's load sent to a LoRA adapter (`"model": "ada"`, rank 8 on q/v of every layer),
  both servers started with it (`--lora-modules ada=...`): what serving an adapter costs each server (ours
  holds a lease per request, and adapter requests share one question to the engine about which adapters it
  holds in memory, for the cold-load metrics).

Servers run one at a time (two at once skew each other on 2 cores), alternating for several rounds; vLLM's
server here is bimodal (about half its runs have a ~2 s stall wave), so we compare per-round ratios and their
median, never single runs. A section is rewritten only by a full run (default load and rounds).
Quick check: `python -m bench.serving --only tiny-chat --rounds 1 --num-prompts 40 --no-write`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tsumugi.default_model import DEFAULT_MODEL
from tsumugi.launcher import HOST, REPO, ServerProcess, free_port, service_process

INPUT_TOKENS = 64
OUTPUT_TOKENS = 64
FULL_NUM_PROMPTS = 300
FULL_CONCURRENCY = 32
SERVER_NAMES = ("tsumugi", "vllm")
REPORTED = (
    "output_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_itl_ms",
    "median_tpot_ms",
    "median_e2el_ms",
    "completed",
    "total_input_tokens",
)
# Same engine memory for both servers; PYTHONUNBUFFERED keeps both logs current while a round runs.
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "4", "PYTHONUNBUFFERED": "1"}
TINY_MODEL = "runs/bench-tiny-model"
TINY_ADAPTER = "runs/bench-tiny-adapter"
TOOLS_TEMPLATE = "bench/chatml_tools.jinja"
# The tool block adds about 370 prompt tokens to tiny-chat's 64 (the tiny tokenizer splits JSON finely).
TOOLS_MAX_MODEL_LEN = 1024
TOOL_FLAGS = ("--chat-template", TOOLS_TEMPLATE, "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
# The one tool of every tiny-chat-tools request (sent through vllm.benchmarks.serve's --extra-body).
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Tokyo"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


def build_tiny_model() -> None:
    """The tests' tiny Llama (ChatML template), built once: the same seed gives the same model every time."""
    from tests.fixtures.tiny_model import build_tiny_llama

    build_tiny_llama(REPO / TINY_MODEL, seed=0)


def build_tiny_adapter() -> None:
    """The tiny model and a random rank-8 LoRA for it (the tests' fixture), built once."""
    from tests.fixtures.adapters import write_random_adapter

    build_tiny_model()
    if not (REPO / TINY_ADAPTER / "adapter_config.json").is_file():
        write_random_adapter(REPO / TINY_MODEL, REPO / TINY_ADAPTER, seed=1)


@dataclass(frozen=True)
class Workload:
    """One kind of round: a model, the API it is driven through, and the engine flags both servers get."""

    name: str
    heading: str
    model: str
    backend: str
    endpoint: str
    engine_flags: tuple[str, ...]
    rounds: int
    prepare: Callable[[], None] | None = None
    server_flags: tuple[str, ...] = ()  # API flags, the same for both servers
    tsumugi_flags: tuple[str, ...] = ()  # ours only: settings vLLM's server has no counterpart for
    vllm_flags: tuple[str, ...] = ()  # vLLM's server only (what ours implies, such as --enable-lora)
    served_model: str | None = None  # the request's `model` when it is not `model` (an adapter's name)
    extra_body: dict | None = None  # merged into every request's body
    throughput_target: str = ">= 1.05"
    itl_target: str | None = "<= 1.0"


WORKLOADS = {
    workload.name: workload
    for workload in (
        Workload(
            name="smollm2-completions",
            heading="## Serving",
            model=DEFAULT_MODEL,
            backend="openai",
            endpoint="/v1/completions",
            engine_flags=("--dtype", "float32", "--max-model-len", "2048"),
            rounds=3,
        ),
        Workload(
            name="tiny-chat",
            heading="## Serving: tiny model, chat",
            model=TINY_MODEL,
            backend="openai-chat",
            endpoint="/v1/chat/completions",
            engine_flags=("--dtype", "float32", "--max-model-len", "512"),
            rounds=4,
            prepare=build_tiny_model,
        ),
        Workload(
            name="tiny-chat-tools",
            heading="## Serving: tiny model, chat with tools",
            model=TINY_MODEL,
            backend="openai-chat",
            endpoint="/v1/chat/completions",
            engine_flags=("--dtype", "float32", "--max-model-len", str(TOOLS_MAX_MODEL_LEN)),
            rounds=4,
            prepare=build_tiny_model,
            server_flags=TOOL_FLAGS,
            # Admission control's default queue (4 prefill steps, 8,192 prompt tokens) refuses part of the opening
            # burst of 32 prompts of ~440 tokens with 429; vLLM's server has no such limit, so ours gets room for
            # every request of the load: concurrency x max_model_len.
            tsumugi_flags=("--max-queued-prompt-tokens", str(FULL_CONCURRENCY * TOOLS_MAX_MODEL_LEN)),
            extra_body={"tools": [WEATHER_TOOL], "tool_choice": "auto"},
            throughput_target=">= 1.0",
            itl_target=None,
        ),
        Workload(
            name="tiny-chat-lora",
            heading="## Serving: tiny model, chat to a LoRA adapter",
            model=TINY_MODEL,
            backend="openai-chat",
            endpoint="/v1/chat/completions",
            engine_flags=("--dtype", "float32", "--max-model-len", "512", "--max-lora-rank", "8"),
            rounds=4,
            prepare=build_tiny_adapter,
            server_flags=("--lora-modules", f"ada={TINY_ADAPTER}"),
            vllm_flags=("--enable-lora",),
            served_model="ada",
        ),
    )
}


def server_process(name: str, workload: Workload, log: Path) -> ServerProcess:
    """Ours (ready on /ready) or vLLM's own OpenAI server (ready on /health), not started yet."""
    args = ["--model", workload.model, *workload.engine_flags, *workload.server_flags]
    if name == "tsumugi":
        return service_process([*args, *workload.tsumugi_flags, "--no-auth"], log, env=SERVER_ENV)
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args, *workload.vllm_flags, "--host", HOST,
            "--port", str(port)]  # fmt: skip
    return ServerProcess(argv, log, port=port, ready_path="/health", env=SERVER_ENV, name="vllm")


def run_load(port: int, workload: Workload, num_prompts: int, concurrency: int) -> dict:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend", workload.backend, "--endpoint", workload.endpoint, "--port", str(port),
            "--model", workload.served_model or workload.model, "--tokenizer", workload.model,
            "--dataset-name", "random", "--random-input-len", str(INPUT_TOKENS),
            "--random-output-len", str(OUTPUT_TOKENS),
            "--ignore-eos", "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
            "--seed", "0", "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--save-detailed",  # per-request ITLs stay in the returned result (no file without --save-result)
            *(["--extra-body", json.dumps(workload.extra_body)] if workload.extra_body else []),
        ]
    )  # fmt: skip
    return main(args)


def run_round(name: str, workload: Workload, log: Path, num_prompts: int, concurrency: int) -> dict:
    with server_process(name, workload, log) as server:
        run_load(server.port, workload, min(32, num_prompts), concurrency)  # warm-up, not recorded
        result = run_load(server.port, workload, num_prompts, concurrency)
    return {key: result.get(key) for key in REPORTED} | {"tokens_per_chunk": tokens_per_chunk(result)}


def tokens_per_chunk(result: dict) -> float | None:
    """Output tokens per streamed chunk: above 1 where a server sends several tokens in one chunk (it read the
    engine's output after more than one step), which lengthens its gaps between chunks (ITL) without slowing
    tokens down; the time per output token (TPOT) is the per-token figure."""
    itls, output_lens = result.get("itls"), result.get("output_lens")
    if not itls or not output_lens:
        return None
    chunks = sum(len(gaps) + 1 for gaps, tokens in zip(itls, output_lens, strict=True) if tokens)
    return sum(output_lens) / chunks if chunks else None


def ratios(rounds: list[dict], key: str) -> list[float]:
    """tsumugi / vLLM for one metric, per round (both servers of a round saw the same machine state)."""
    return [r["tsumugi"][key] / r["vllm"][key] for r in rounds]


def write_report(workload: Workload, rounds: list[dict], args: argparse.Namespace) -> str:
    lines = [
        workload.heading,
        "",
        f"- Date: {datetime.date.today()}; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; command: `make bench` (`python -m bench.serving`, workload "
        f"`{workload.name}`, {len(rounds)} rounds)",
        f"- Model: {workload.model} ({' '.join(workload.engine_flags)}); load: vllm.benchmarks.serve "
        f"`--backend {workload.backend}`, random {INPUT_TOKENS}-in/{OUTPUT_TOKENS}-out, ignore_eos, "
        f"{args.num_prompts} requests, concurrency {args.concurrency}, {workload.endpoint}.",
        *tools_lines(workload, rounds),
        "- Servers alternate one at a time; ratio = tsumugi / vLLM's own server in the same round.",
        "",
        "| round | server | output tok/s | median TTFT ms | p99 TTFT ms | median ITL ms | median TPOT ms "
        "| tokens/chunk | median E2E ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rounds, 1):
        for name in SERVER_NAMES:
            m = {key: ("n/a" if r[name].get(key) is None else f"{r[name][key]:.1f}") for key in REPORTED}
            chunk = r[name].get("tokens_per_chunk")
            lines.append(
                f"| {i} | {name} | {m['output_throughput']} | {m['median_ttft_ms']} | {m['p99_ttft_ms']} | "
                f"{m['median_itl_ms']} | {m['median_tpot_ms']} | {'n/a' if chunk is None else f'{chunk:.2f}'} | "
                f"{m['median_e2el_ms']} |"
            )
    lines.append("")
    for label, key, target in (
        ("Throughput", "output_throughput", workload.throughput_target),
        ("Median-TTFT", "median_ttft_ms", "<= 1.0"),
        ("Median-ITL", "median_itl_ms", workload.itl_target),
        ("Median-TPOT", "median_tpot_ms", None),
    ):
        if any(r[name].get(key) is None for r in rounds for name in SERVER_NAMES):
            continue  # a log from before the harness recorded it
        per_round = ratios(rounds, key)
        lines.append(
            f"- {label} ratio per round: {', '.join(f'{x:.3f}' for x in per_round)}; "
            f"**median {statistics.median(per_round):.3f}x** ({f'target {target}' if target else 'no target'})."
        )
    failed = [
        f"{name} {r[name]['completed']}/{args.num_prompts} (round {i})"
        for i, r in enumerate(rounds, 1)
        for name in SERVER_NAMES
        if (r[name]["completed"] or 0) < args.num_prompts
    ]
    if failed:
        lines.append(f"- Not every request completed: {', '.join(failed)}; throughput counts completed ones only.")
    bursty = [name for name in SERVER_NAMES if any((r[name]["median_itl_ms"] or 0) < 0.1 for r in rounds)]
    if bursty:
        lines.append(
            f"- Median ITL under 0.1 ms ({', '.join(bursty)}): most of each response came in one SSE burst (ITL is "
            "the gap between chunks), so the ITL ratio flatters that server; read TTFT and E2E instead."
        )
    return "\n".join(lines) + "\n"


def tools_lines(workload: Workload, rounds: list[dict]) -> list[str]:
    """What a workload with tools adds to every request and to both servers' flags, and the prompt lengths the
    servers reported (the same template should give the same prompt tokens on both)."""
    if not workload.extra_body:
        return []
    tools = ", ".join(tool["function"]["name"] for tool in workload.extra_body.get("tools", []))
    choice = json.dumps(workload.extra_body.get("tool_choice"))
    lines = [
        f"- Every request also carries `tools` ({tools}) and `tool_choice: {choice}` (`--extra-body`); "
        f"both servers: `{' '.join(workload.server_flags)}`"
        + (f"; ours also `{' '.join(workload.tsumugi_flags)}`." if workload.tsumugi_flags else "."),
    ]
    per_request: dict[str, list[float]] = {name: [] for name in SERVER_NAMES}
    for r in rounds:
        for name in SERVER_NAMES:
            m = r[name]
            if m.get("completed") and m.get("total_input_tokens"):  # logs of older runs have no input tokens
                per_request[name].append(m["total_input_tokens"] / m["completed"])
    if all(per_request.values()):
        lines.append(
            "- Prompt tokens per request as the servers counted them (usage): "
            + ", ".join(f"{name} {statistics.mean(v):.1f}" for name, v in per_request.items())
            + "."
        )
    return lines


def replace_section(text: str, section: str) -> str:
    """`text` with the section under the same `## ` heading line replaced by `section`, others untouched.

    Headings match whole lines (`## Serving` is not `## Serving: tiny model, chat`). A new serving section
    goes after the last existing one, so the serving results stay together."""
    heading = section.splitlines()[0]
    lines = text.splitlines(keepends=True)
    headings = [i for i, line in enumerate(lines) if line.startswith("## ")]
    same = [i for i in headings if lines[i].rstrip("\n") == heading]
    if same:
        start = same[0]
        end = next((i for i in headings if i > start), len(lines))
    else:
        serving = [i for i in headings if lines[i].startswith("## Serving")]
        after = [i for i in headings if serving and i > serving[-1]]
        start = end = after[0] if after else len(lines)
    before, rest = "".join(lines[:start]), "".join(lines[end:])
    before = before.rstrip("\n") + "\n\n" if before.strip() else before
    return before + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")


def update_benchmarks_md(section: str) -> None:
    path = REPO / "BENCHMARKS.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    path.write_text(replace_section(text, section), encoding="utf-8")


def is_full_run(workload: Workload, rounds: int, args: argparse.Namespace) -> bool:
    """Only the documented load and round count may replace a BENCHMARKS.md section; smoke runs may not."""
    return args.num_prompts == FULL_NUM_PROMPTS and args.concurrency == FULL_CONCURRENCY and rounds >= workload.rounds


def run_workload(workload: Workload, args: argparse.Namespace, log_dir: Path) -> list[dict]:
    if workload.prepare:
        workload.prepare()
    rounds = []
    for i in range(args.rounds or workload.rounds):
        order = SERVER_NAMES if i % 2 == 0 else SERVER_NAMES[::-1]
        result = {
            name: run_round(name, workload, log_dir / f"{workload.name}-{i + 1}-{name}.log", args.num_prompts,
                            args.concurrency)
            for name in order
        }  # fmt: skip
        print(json.dumps({"round": i + 1, "workload": workload.name, **result}), flush=True)
        rounds.append(result)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving")
    parser.add_argument("--only", action="append", choices=list(WORKLOADS), help="run only this workload (repeatable)")
    parser.add_argument("--rounds", type=int, help="rounds per workload (default: smollm2 3, the tiny ones 4)")
    parser.add_argument("--num-prompts", type=int, default=FULL_NUM_PROMPTS)
    parser.add_argument("--concurrency", type=int, default=FULL_CONCURRENCY)
    parser.add_argument("--no-write", action="store_true", help="print the report, leave BENCHMARKS.md alone")
    parser.add_argument("--report-from", type=Path, help="rewrite the report from a log of an earlier run")
    args = parser.parse_args()
    workloads = [WORKLOADS[name] for name in args.only or WORKLOADS]
    if args.report_from:
        logged = [json.loads(line) for line in args.report_from.read_text().splitlines() if line.startswith('{"round"')]
        results = {
            workload.name: [
                {name: r[name] for name in SERVER_NAMES}
                for r in logged
                if r.get("workload", "smollm2-completions") == workload.name  # logs before tiny-chat had one
            ]
            for workload in workloads
        }
    else:
        log_dir = REPO / "runs" / "bench"
        log_dir.mkdir(parents=True, exist_ok=True)
        results = {workload.name: run_workload(workload, args, log_dir) for workload in workloads}
    for workload in workloads:
        rounds = results[workload.name]
        if not rounds:
            continue
        section = write_report(workload, rounds, args)
        print(section)
        if args.no_write:
            continue
        if args.report_from or is_full_run(workload, len(rounds), args):
            update_benchmarks_md(section)
        else:
            print(f"(not a full run: BENCHMARKS.md `{workload.heading}` left as it is)")


if __name__ == "__main__":
    main()
