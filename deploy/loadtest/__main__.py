"""`python -m deploy.loadtest`: load-test an OpenAI-compatible endpoint with GuideLLM, report as vLLM would.

    .venv-loadtest/bin/python -m deploy.loadtest --target http://127.0.0.1:8000 \\
        --model models/smollm2-135m-instruct --profile sweep --slo-ttft-ms 2000 --out runs/loadtest/x

Steps: check the target answers /v1/models; write one dataset per model (dataset.py); run GuideLLM once per
model, one after another, or all at once with the load split by weight for a mix under a rate or
concurrency profile (guidellm_run.py, token_times.py); read GuideLLM's per-request records into vLLM's
metrics (metrics.py); write report.json, latency.png and throughput.png. Bad flags and an unreachable
target exit 2 with one line on stderr; a GuideLLM failure exits 1 with its log's tail.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, NoReturn

from deploy.loadtest import STEP_BLOCKS_DATA, TOKEN_TIMES_BACKEND
from deploy.loadtest.dataset import LENGTH_SYNTAX, DatasetSummary, LengthDistribution, tokenizer_counter, write_dataset
from deploy.loadtest.metrics import LATENCIES, RequestRecord, Slo, records_from_benchmark, step_metrics
from deploy.loadtest.plots import plot_latency, plot_throughput
from deploy.loadtest.prefix_cache import PrefixCacheWatch

REPO = Path(__file__).resolve().parents[2]
PROFILES = ("sweep", "synchronous", "concurrent", "throughput", "constant", "poisson")
# Profiles whose load can be split between models running at once (a mix); the others run models in turn.
SPLITTABLE = ("concurrent", "constant", "poisson")
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
TICKETS_PER_RUN = 1_000_000  # dataset.py's ticket numbers: run i uses (i + 1) * TICKETS_PER_RUN + row
PROGRESS = re.compile(r"Benchmark \d+ \(.*\): completed .*")


class UsageError(Exception):
    """A problem with the flags or the target that the user must fix; printed as one line, exit 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (exit 2), not usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


@dataclass(frozen=True)
class ModelShare:
    """A model (or adapter) name as the target serves it, and its share of a mix's load."""

    name: str
    weight: float

    @classmethod
    def parse(cls, text: str) -> ModelShare:
        name, _, weight = text.rpartition("=")
        if not name:
            return cls(text, 1.0)
        try:
            value = float(weight)
        except ValueError:
            return cls(text, 1.0)  # an "=" inside a name, not a weight
        if not value > 0:
            raise UsageError(f"--model {text}: the weight must be > 0")
        return cls(name, value)


@dataclass(frozen=True)
class LoadPlan:
    """Everything a run needs, validated."""

    target: str
    api_key: str | None
    models: tuple[ModelShare, ...]
    profile: str
    rates: tuple[float, ...]
    streams: tuple[int, ...]
    sweep_steps: int
    sweep_arrivals: str
    max_concurrency: int | None
    max_requests: int
    max_seconds: float | None
    endpoint: str
    prompt_lengths: LengthDistribution
    output_lengths: LengthDistribution
    japanese_share: float
    tokenizer: str | None
    seed: int
    slo: Slo
    request_timeout: float | None
    workers: int
    out: Path

    @property
    def steps(self) -> int:
        """Steps GuideLLM will run for this profile."""
        if self.profile == "sweep":
            return self.sweep_steps
        return {"concurrent": len(self.streams), "constant": len(self.rates), "poisson": len(self.rates)}.get(
            self.profile, 1
        )

    @property
    def dataset_blocks(self) -> int:
        """Blocks of prompts per dataset (step_blocks.py): one per step and a spare, in case GuideLLM ever
        passes over the data once more than it runs steps; the report's `dataset_blocks` shows each step's."""
        return self.steps + 1

    @property
    def simultaneous(self) -> bool:
        """Models load the target at the same time (a mix) rather than one after another."""
        return len(self.models) > 1 and self.profile in SPLITTABLE


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m deploy.loadtest",
        description="Load-test an OpenAI-compatible endpoint with GuideLLM; report vllm bench serve's metrics.",
    )
    target = parser.add_argument_group("target")
    target.add_argument("--target", required=True, help="base URL, e.g. http://127.0.0.1:8000 (no /v1)")
    target.add_argument("--model", action="append", metavar="NAME[=WEIGHT]", help="served model or adapter; "
                        "repeat for a mix (weights split a rate or concurrency profile; default: the first model "
                        "the target lists)")  # fmt: skip
    target.add_argument("--api-key", help="bearer token (default: none)")
    target.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="chat", help="API to call (streamed)")
    target.add_argument("--request-timeout", type=float, help="seconds before GuideLLM gives up on a request")
    load = parser.add_argument_group("load profile (GuideLLM's)")
    load.add_argument("--profile", choices=PROFILES, default="sweep")
    load.add_argument("--rate", help="constant/poisson: requests/s, comma-separated for several steps")
    load.add_argument("--concurrency", help="concurrent: requests in flight, comma-separated for several steps")
    load.add_argument("--sweep-steps", type=int, default=10, help="sweep: steps (synchronous, throughput, rates)")
    load.add_argument("--sweep-arrivals", choices=("constant", "poisson"), default="constant",
                      help="sweep: arrivals of the rate steps")  # fmt: skip
    load.add_argument("--max-concurrency", type=int, help="cap on requests in flight (throughput, sweep, rates)")
    load.add_argument("--max-requests", type=int, default=200, help="per step; also each step's prompts")
    load.add_argument("--workers", type=int, default=min(10, os.cpu_count() or 1),
                      help="GuideLLM client processes per run (default: cores, at most 10)")  # fmt: skip
    load.add_argument("--max-seconds", type=float, default=30.0, help="per step; 0 for no time limit")
    data = parser.add_argument_group("prompts")
    data.add_argument("--prompt-tokens", default="lognormal:200:0.5:16:1024", help=f"length: {LENGTH_SYNTAX}")
    data.add_argument("--output-tokens", default="lognormal:120:0.5:8:512", help="length, same syntax")
    data.add_argument("--japanese-share", type=float, default=0.5, help="fraction of prompts in Japanese")
    data.add_argument("--tokenizer", help="tokenizer to count prompt tokens (default: the first model, if a local "
                      "directory)")  # fmt: skip
    data.add_argument("--seed", type=int, default=42)
    report = parser.add_argument_group("report")
    report.add_argument("--slo-ttft-ms", type=float, help="goodput SLO on time to first token")
    report.add_argument("--slo-tpot-ms", type=float, help="goodput SLO on time per output token")
    report.add_argument("--slo-e2el-ms", type=float, help="goodput SLO on end-to-end latency")
    report.add_argument("--out", type=Path, help="output directory (default: runs/loadtest/<UTC time>)")
    return parser


def _numbers(text: str | None, flag: str, kind: type) -> tuple[Any, ...]:
    if text is None:
        return ()
    try:
        values = tuple(kind(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated numbers") from None
    if not all(value > 0 for value in values):
        raise UsageError(f"{flag} {text!r}: every value must be > 0")
    return values


def plan_from_args(args: argparse.Namespace) -> LoadPlan:
    """Check the flags together; UsageError names the first problem."""
    target = args.target.rstrip("/")
    target = target.removesuffix("/v1")
    if not re.match(r"https?://[^/\s]+", target):
        raise UsageError(f"--target {args.target!r}: expected an http(s) base URL such as http://127.0.0.1:8000")
    rates = _numbers(args.rate, "--rate", float)
    streams = _numbers(args.concurrency, "--concurrency", int)
    if args.profile in ("constant", "poisson") and not rates:
        raise UsageError(f"--profile {args.profile} needs --rate")
    if args.profile == "concurrent" and not streams:
        raise UsageError("--profile concurrent needs --concurrency")
    if not 1 <= args.max_requests <= 10_000 or args.workers < 1:
        raise UsageError("--max-requests must be 1..10000 and --workers >= 1")
    if not 3 <= args.sweep_steps <= 50:
        raise UsageError("--sweep-steps must be 3..50 (synchronous, throughput, then rates)")
    if args.max_seconds < 0 or (args.max_concurrency is not None and args.max_concurrency < 1):
        raise UsageError("--max-seconds must be >= 0 and --max-concurrency >= 1")
    if not 0 <= args.japanese_share <= 1:
        raise UsageError("--japanese-share must be between 0 and 1")
    slo = Slo(args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2el_ms)
    if any(value is not None and value <= 0 for value in (slo.ttft_ms, slo.tpot_ms, slo.e2el_ms)):
        raise UsageError("SLOs must be > 0 ms")
    try:
        prompt_lengths = LengthDistribution.parse(args.prompt_tokens)
        output_lengths = LengthDistribution.parse(args.output_tokens)
    except ValueError as error:
        raise UsageError(str(error)) from None
    models = tuple(ModelShare.parse(text) for text in args.model or ())
    # Absolute: GuideLLM runs with the repository as its working directory.
    out = (args.out or REPO / "runs" / "loadtest" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")).resolve()
    return LoadPlan(
        target=target,
        api_key=args.api_key,
        models=models,
        profile=args.profile,
        rates=rates,
        streams=streams,
        sweep_steps=args.sweep_steps,
        sweep_arrivals=args.sweep_arrivals,
        max_concurrency=args.max_concurrency,
        max_requests=args.max_requests,
        max_seconds=args.max_seconds or None,
        endpoint=ENDPOINTS[args.endpoint],
        prompt_lengths=prompt_lengths,
        output_lengths=output_lengths,
        japanese_share=args.japanese_share,
        tokenizer=args.tokenizer,
        seed=args.seed,
        slo=slo,
        request_timeout=args.request_timeout,
        workers=args.workers,
        out=out,
    )


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def probe_target(target: str, api_key: str | None) -> list[dict[str, Any]]:
    """The target's /v1/models entries; UsageError when it cannot be reached or refuses the key."""
    request = urllib.request.Request(f"{target}/v1/models", headers=_auth(api_key))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return list(json.loads(response.read()).get("data") or [])
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise UsageError(f"{target} refused the API key ({error.code}); pass --api-key") from None
        raise UsageError(f"{target}/v1/models answered {error.code}; is this an OpenAI-compatible server?") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UsageError(f"cannot reach {target}: {reason}") from None
    except ValueError:
        raise UsageError(f"{target}/v1/models did not answer JSON; is this an OpenAI-compatible server?") from None


def resolve_models(plan: LoadPlan, listed: list[dict[str, Any]]) -> LoadPlan:
    """The plan with its models filled in (default: the first listed) and a note for unlisted names."""
    listed_ids = [entry.get("id") for entry in listed]
    models = plan.models
    if not models:
        if not listed_ids:
            raise UsageError(f"{plan.target} lists no models; pass --model")
        models = (ModelShare(str(listed_ids[0]), 1.0),)
    for model in models:
        if model.name not in listed_ids:
            note(f"{model.name} is not in {plan.target}/v1/models; its requests will probably fail")
    if len(models) > 1 and not plan.simultaneous and len({model.weight for model in models}) > 1:
        note(f"--profile {plan.profile} runs each model in turn; weights apply only to {', '.join(SPLITTABLE)}")
    return replace(plan, models=models)


def choose_tokenizer(plan: LoadPlan) -> str:
    """--tokenizer, else the first model when it names a local directory (as `make serve`'s default does).

    A local directory is returned absolute, since GuideLLM runs from the repository root.
    """
    name = plan.tokenizer or plan.models[0].name
    for candidate in (Path(name), REPO / name):
        if candidate.is_dir():
            return str(candidate.resolve())
    if plan.tokenizer is None:
        raise UsageError(
            "prompt lengths are counted in tokens: pass --tokenizer (the served model's tokenizer, a local "
            "directory or a hub id)"
        )
    return name


def note(message: str) -> None:
    sys.stderr.write(f"loadtest: {message}\n")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


@dataclass(frozen=True)
class GuidellmRun:
    """One GuideLLM process: one model with its share of the load."""

    model: str
    directory: Path
    profile: dict[str, Any]
    max_requests: int

    @property
    def report_path(self) -> Path:
        return self.directory / "benchmarks.json"

    @property
    def log_path(self) -> Path:
        return self.directory / "guidellm.log"


def profile_for(plan: LoadPlan, share: float) -> dict[str, Any]:
    """GuideLLM's profile arguments for one model carrying `share` of the load (1.0 unless in a mix)."""
    capped = {"max_concurrency": plan.max_concurrency} if plan.max_concurrency else {}
    if plan.profile == "sweep":
        return {"kind": "sweep", "sweep_size": plan.sweep_steps, "strategy_type": plan.sweep_arrivals} | capped
    if plan.profile == "synchronous":
        return {"kind": "synchronous"}
    if plan.profile == "throughput":
        return {"kind": "throughput"} | capped
    if plan.profile == "concurrent":
        return {"kind": "concurrent", "streams": [max(1, round(streams * share)) for streams in plan.streams]}
    return {"kind": plan.profile, "rate": [rate * share for rate in plan.rates]} | capped


def scenario_for(plan: LoadPlan, run: GuidellmRun, dataset: Path) -> dict[str, Any]:
    """GuideLLM's scenario file (what `guidellm run -c` reads) for one run."""
    backend: dict[str, Any] = {
        "kind": TOKEN_TIMES_BACKEND,
        "target": plan.target,
        "model": run.model,
        "request_format": plan.endpoint,
        "stream": True,
        "validate_backend": False,  # /v1/models was checked already; not every server has /health
    }
    if plan.api_key:
        backend["api_key"] = plan.api_key
    if plan.request_timeout:
        backend["timeout"] = plan.request_timeout
    constraints: list[dict[str, Any]] = [{"kind": "max_requests", "count": run.max_requests}]
    if plan.max_seconds:
        constraints.append({"kind": "max_duration", "seconds": plan.max_seconds})
    spec: dict[str, Any] = {
        "backend": backend,
        "profile": run.profile,
        "constraints": constraints,
        "data": [
            {
                "kind": STEP_BLOCKS_DATA,
                "path": str(dataset),
                "rows_per_step": run.max_requests,
                "blocks": plan.dataset_blocks,
            }
        ],
        "seed": {"kind": "static", "value": plan.seed},
        # sample_size None: GuideLLM keeps every request in its report, texts included (a sample_size keeps
        # only that many requests per step in the report, which would undercount); the prompts' ticket
        # numbers show which block of rows each step sent.
        "metrics": {"kind": "generative", "sample_size": None},
        "outputs": [{"kind": "json", "path": str(run.report_path)}],
    }
    if plan.tokenizer:
        spec["tokenizer"] = {"kind": "huggingface_auto", "model": plan.tokenizer}
    return {"metadata": {"labels": {"tool": "tsumugi-loadtest", "model": run.model}}, "spec": spec}


def plan_runs(plan: LoadPlan) -> list[GuidellmRun]:
    total = sum(model.weight for model in plan.models)
    runs: list[GuidellmRun] = []
    for model in plan.models:
        share = model.weight / total if plan.simultaneous else 1.0
        max_requests = max(1, math.ceil(plan.max_requests * share))
        directory = plan.out / "guidellm" / _slug(model.name)
        while directory in {run.directory for run in runs}:  # a model named twice, or two names, one slug
            directory = directory.with_name(directory.name + "_")
        runs.append(GuidellmRun(model.name, directory, profile_for(plan, share), max_requests))
    return runs


def write_datasets(plan: LoadPlan, runs: list[GuidellmRun]) -> dict[str, DatasetSummary]:
    """One dataset per run (different seeds and ticket numbers, so models never share a cached prefix)."""
    try:
        count = tokenizer_counter(plan.tokenizer)  # type: ignore[arg-type]
    except Exception as error:  # transformers raises OSError, ValueError, HTTP errors...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load tokenizer {plan.tokenizer!r}: {first_line}") from None
    summaries = {}
    for index, run in enumerate(runs):
        summaries[run.model] = write_dataset(
            run.directory / "prompts.jsonl",
            rows=run.max_requests * plan.dataset_blocks,
            prompt_lengths=plan.prompt_lengths,
            output_lengths=plan.output_lengths,
            japanese_share=plan.japanese_share,
            count=count,
            seed=plan.seed + index,
            ticket_start=(index + 1) * TICKETS_PER_RUN,
        )
    return summaries


def _pump(process: subprocess.Popen[str], run: GuidellmRun) -> None:
    """Copy GuideLLM's output to its log, echoing each finished step on stderr."""
    assert process.stdout is not None
    with run.log_path.open("w", encoding="utf-8") as log:
        for line in process.stdout:
            log.write(line)
            if match := PROGRESS.search(line):
                note(f"{run.model}: {match.group(0)}")


def execute(plan: LoadPlan, runs: list[GuidellmRun]) -> PrefixCacheWatch:
    """Run GuideLLM for every run (at once for a mix, else in turn); RuntimeError with the log on failure."""
    batches = [runs] if plan.simultaneous else [[run] for run in runs]
    with PrefixCacheWatch(f"{plan.target}/metrics", _auth(plan.api_key)) as watch:
        for batch in batches:
            started = []
            try:
                for run in batch:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "deploy.loadtest.guidellm_run", str(run.directory / "scenario.json")],
                        cwd=REPO,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        text=True,
                        # GuideLLM's own setting; each worker is a spawned process importing torch, which
                        # costs seconds per step on a small machine and competes with a local server.
                        env={**os.environ, "GUIDELLM__MAX_WORKER_PROCESSES": str(plan.workers)},
                    )
                    pump = threading.Thread(target=_pump, args=(process, run), daemon=True)
                    pump.start()
                    started.append((run, process, pump))
                for run, process, pump in started:
                    process.wait()
                    pump.join()
                    if process.returncode != 0 or not run.report_path.exists():
                        tail = "".join(run.log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-15:])
                        raise RuntimeError(f"GuideLLM failed for {run.model} (exit {process.returncode}):\n{tail}")
            finally:
                for _, process, _ in started:
                    if process.poll() is None:
                        process.terminate()
    return watch


def _strategy(benchmark: dict[str, Any]) -> dict[str, Any]:
    strategy = benchmark.get("config", {}).get("strategy", {})
    return {
        "strategy": strategy.get("type_"),
        "target_rate": strategy.get("rate"),
        "streams": strategy.get("streams"),
    }


def _step(
    index: int,
    benchmarks: list[dict[str, Any]],
    records: list[RequestRecord],
    runs: list[GuidellmRun],
    plan: LoadPlan,
    watch: PrefixCacheWatch,
) -> dict[str, Any]:
    start = min(benchmark["start_time"] for benchmark in benchmarks)
    end = max(benchmark["end_time"] for benchmark in benchmarks)
    step = {"step": index, **_strategy(benchmarks[0])}
    if len(benchmarks) > 1:  # a mix: the load is the sum of the models' loads
        for key in ("target_rate", "streams"):
            values = [_strategy(benchmark)[key] for benchmark in benchmarks]
            step[key] = round(sum(values), 4) if None not in values else None
    step |= step_metrics(records, end - start, plan.slo)
    step["prefix_cache_hit_rate"] = watch.hit_rate(start, end)
    blocks = set()
    for record in records:
        if record.ticket is not None:  # run i's tickets are (i + 1) * TICKETS_PER_RUN + row
            run_index, row = divmod(record.ticket, TICKETS_PER_RUN)
            blocks.add(row // runs[run_index - 1].max_requests)
    step["dataset_blocks"] = sorted(blocks)
    return step


def build_series(plan: LoadPlan, runs: list[GuidellmRun], watch: PrefixCacheWatch) -> list[dict[str, Any]]:
    """One series per model, and one for all models together when they ran at once."""
    benchmarks = [json.loads(run.report_path.read_text())["benchmarks"] for run in runs]
    series = []
    for run, run_benchmarks in zip(runs, benchmarks, strict=True):
        steps = [
            _step(index, [benchmark], records_from_benchmark(benchmark, run.model), runs, plan, watch)
            for index, benchmark in enumerate(run_benchmarks)
        ]
        series.append({"label": run.model, "models": [run.model], "steps": steps})
    if plan.simultaneous:
        steps = []
        for index, together in enumerate(zip(*benchmarks, strict=False)):
            records = [record for run, bench in zip(runs, together, strict=True)
                       for record in records_from_benchmark(bench, run.model)]  # fmt: skip
            steps.append(_step(index, list(together), records, runs, plan, watch))
        series.insert(0, {"label": "all models", "models": [run.model for run in runs], "steps": steps})
    return series


# (metric, percentile, column width) of the terminal table; the report has all of them.
TABLE_LATENCIES = (
    ("ttft", 50, 9),
    ("ttft", 99, 8),
    ("tpot", 50, 9),
    ("itl", 50, 8),
    ("itl", 99, 8),
    ("e2el", 50, 9),
    ("e2el", 99, 8),
)


def summary_table(series: list[dict[str, Any]]) -> str:
    """The report's numbers as a fixed-width table, for the terminal."""
    header = (
        f"{'step':>4} {'strategy':<12} {'load':>7} {'req/s':>7} {'good/s':>7} {'out tok/s':>9} {'TTFT p50':>9} "
        f"{'p99':>8} {'TPOT p50':>9} {'ITL p50':>8} {'p99':>8} {'E2EL p50':>9} {'p99':>8} {'ok':>5} {'fail':>5}  errors"
    )
    lines = []

    def cell(value: Any, width: int, digits: int = 1) -> str:
        return f"{value:>{width}.{digits}f}" if isinstance(value, int | float) else f"{'-':>{width}}"

    for line in series:
        lines += [f"== {line['label']} ==", header]
        for step in line["steps"]:
            load = step["target_rate"] if step["target_rate"] is not None else step["streams"]
            cells = [
                f"{step['step']:>4} {step['strategy'] or '-':<12}",
                cell(load, 7, 2),
                cell(step["request_throughput"], 7, 2),
                cell(step["request_goodput"], 7, 2),
                cell(step["output_throughput"], 9),
                *(cell(step[f"p{p}_{metric}_ms"], width) for metric, p, width in TABLE_LATENCIES),
                f"{step['completed']:>5} {step['failed']:>5} ",
                json.dumps(step["errors_by_status"]) if step["errors_by_status"] else "",
            ]
            lines.append(" ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    started = time.time()
    try:
        plan = plan_from_args(args)
        listed = probe_target(plan.target, plan.api_key)
        plan = resolve_models(plan, listed)
        plan = replace(plan, tokenizer=choose_tokenizer(plan))
        runs = plan_runs(plan)
        datasets = write_datasets(plan, runs)
    except UsageError as error:
        sys.stderr.write(f"python -m deploy.loadtest: {error}\n")
        return 2
    for run in runs:
        scenario = scenario_for(plan, run, run.directory / "prompts.jsonl")
        (run.directory / "scenario.json").write_text(json.dumps(scenario, indent=2) + "\n")
    mode = "at once" if plan.simultaneous else "in turn"
    note(f"{len(runs)} GuideLLM run(s) {mode} against {plan.target}; output in {plan.out}")
    try:
        watch = execute(plan, runs)
    except RuntimeError as error:
        sys.stderr.write(f"python -m deploy.loadtest: {error}\n")
        return 1
    series = build_series(plan, runs, watch)
    title = f"{', '.join(model.name for model in plan.models)} @ {plan.target} ({plan.profile})"
    plots = [
        plot_latency(series, title, plan.out / "latency.png"),
        plot_throughput(series, title, plan.out / "throughput.png"),
    ]
    served = {entry.get("id"): entry.get("max_model_len") for entry in listed}
    report = {
        "tool": {"name": "tsumugi deploy.loadtest", "guidellm": version("guidellm")},
        "created": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - started, 1),
        "command": "python -m deploy.loadtest " + shlex.join(_redacted(argv)),
        "target": plan.target,
        "served_models": served,
        "models": [{"name": model.name, "weight": model.weight} for model in plan.models],
        "mix": "simultaneous" if plan.simultaneous else "sequential",
        "profile": runs[0].profile if len(runs) == 1 else {run.model: run.profile for run in runs},
        "limits_per_step": {"max_requests": plan.max_requests, "max_seconds": plan.max_seconds},
        "workload": {
            "endpoint": plan.endpoint,
            "streaming": True,
            "prompt_tokens": plan.prompt_lengths.spec,
            "output_tokens": plan.output_lengths.spec,
            "japanese_share": plan.japanese_share,
            "tokenizer": plan.tokenizer,
            "seed": plan.seed,
            "datasets": {model: summary.as_dict() for model, summary in datasets.items()},
        },
        "slo": plan.slo.as_dict(),
        "metric_definitions": "vllm bench serve (vLLM 0.32 benchmarks/serve.py); see deploy/README.md, Load testing",
        "latency_metrics": list(LATENCIES),
        "series": series,
        "guidellm_reports": [str(run.report_path.relative_to(plan.out)) for run in runs],
        "plots": [str(path.relative_to(plan.out)) for path in plots],
    }
    (plan.out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.write(summary_table(series) + f"\n\nreport: {plan.out / 'report.json'}\n")
    return 0


def _redacted(argv: list[str]) -> list[str]:
    """The command line with the API key's value hidden (the report may be shared or committed)."""
    hidden, skip = [], False
    for arg in argv:
        if skip:
            hidden.append("***")
            skip = False
        elif arg == "--api-key":
            hidden.append(arg)
            skip = True
        elif arg.startswith("--api-key="):
            hidden.append("--api-key=***")
        else:
            hidden.append(arg)
    return hidden


if __name__ == "__main__":
    sys.exit(main())
