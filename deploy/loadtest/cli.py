"""The command line: flags in, exit code out (0 done, 1 GuideLLM failed, 2 bad flags or target).

main() reads as the run does: plan (plan.py) and check it against the target (target.py), write the runs'
files (scenarios.py), run GuideLLM (execute.py), report (report.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from deploy.loadtest.dataset import LENGTH_SYNTAX
from deploy.loadtest.execute import execute
from deploy.loadtest.plan import ENDPOINTS, PROFILES, UsageError, note, plan_from_args
from deploy.loadtest.report import build_series, summary_table, write_report
from deploy.loadtest.scenarios import plan_runs, write_datasets, write_scenarios
from deploy.loadtest.target import choose_tokenizer, probe_target, resolve_models


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (exit 2), not usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


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


def main(argv: list[str] | None = None) -> int:
    """Plan and check it against the target (exit 2 on a problem), run GuideLLM (exit 1 if it fails), report."""
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
    write_scenarios(plan, runs)
    mode = "at once" if plan.simultaneous else "in turn"
    note(f"{len(runs)} GuideLLM run(s) {mode} against {plan.target}; output in {plan.out}")
    try:
        watch = execute(plan, runs)
    except RuntimeError as error:
        sys.stderr.write(f"python -m deploy.loadtest: {error}\n")
        return 1
    series = build_series(plan, runs, watch)
    write_report(plan, runs, series, listed=listed, datasets=datasets, argv=argv, started=started)
    sys.stdout.write(summary_table(series) + f"\n\nreport: {plan.out / 'report.json'}\n")
    return 0
