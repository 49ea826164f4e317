"""The plan as GuideLLM runs: one per model, each with its share of the load, its dataset and scenario file.

A run's directory holds everything GuideLLM needs (prompts.jsonl, scenario.json) and everything it leaves
(benchmarks.json, guidellm.log), so execute.py only starts processes and report.py reads what they left.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.loadtest import STEP_BLOCKS_DATA, TOKEN_TIMES_BACKEND
from deploy.loadtest.dataset import DatasetSummary, tokenizer_counter, write_dataset
from deploy.loadtest.plan import LoadPlan, UsageError

TICKETS_PER_RUN = 1_000_000  # dataset.py's ticket numbers: run i uses (i + 1) * TICKETS_PER_RUN + row


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


def write_scenarios(plan: LoadPlan, runs: list[GuidellmRun]) -> None:
    """Each run's scenario.json beside its dataset: the file guidellm_run.py hands to GuideLLM."""
    for run in runs:
        scenario = scenario_for(plan, run, run.directory / "prompts.jsonl")
        (run.directory / "scenario.json").write_text(json.dumps(scenario, indent=2) + "\n")
