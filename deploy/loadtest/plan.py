"""What a load test is: the flags checked together into one LoadPlan, before anything touches the target.

Everything later (target.py, scenarios.py, execute.py, report.py) reads the plan and never the flags, so a
bad combination stops here as a UsageError (one line, exit 2) instead of halfway through a run.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.loadtest.dataset import LengthDistribution
from deploy.loadtest.metrics import Slo

REPO = Path(__file__).resolve().parents[2]
PROFILES = ("sweep", "synchronous", "concurrent", "throughput", "constant", "poisson")
# Profiles whose load can be split between models running at once (a mix); the others run models in turn.
SPLITTABLE = ("concurrent", "constant", "poisson")
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class UsageError(Exception):
    """A problem with the flags or the target that the user must fix; printed as one line, exit 2."""


def note(message: str) -> None:
    """A warning or progress line on stderr, where it does not mix with the summary table on stdout."""
    sys.stderr.write(f"loadtest: {message}\n")


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
