"""GuideLLM's reports turned into ours: each step's metrics per model (and all models, for a mix), report.json,
the plots and the terminal table.

Steps are recomputed from GuideLLM's per-request records (metrics.py) rather than taken from its summaries,
whose definitions differ from vLLM's (GuideLLM's ITL is vLLM's TPOT).
"""

from __future__ import annotations

import json
import shlex
import time
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

from deploy.loadtest.dataset import DatasetSummary
from deploy.loadtest.metrics import LATENCIES, RequestRecord, records_from_benchmark, step_metrics
from deploy.loadtest.plan import LoadPlan
from deploy.loadtest.plots import plot_latency, plot_throughput
from deploy.loadtest.prefix_cache import PrefixCacheWatch
from deploy.loadtest.scenarios import TICKETS_PER_RUN, GuidellmRun


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


def write_report(
    plan: LoadPlan,
    runs: list[GuidellmRun],
    series: list[dict[str, Any]],
    *,
    listed: list[dict[str, Any]],
    datasets: dict[str, DatasetSummary],
    argv: list[str],
    started: float,
) -> None:
    """report.json and the plots it names. The report carries what a reader needs to trust or repeat the numbers
    without the terminal: the command (key hidden), the target's models, the workload and GuideLLM's version."""
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
