"""The report as plain typed data: what goes in (`ItemScores`, `PairwiseVerdicts`, built by the evaluation
commands from runner answers and metrics) and what comes out (scores, paired differences, McNemar tests and
win rates, each with its interval), so the statistics and the renderers share one vocabulary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from training.errors import TrainingError

# 2000 resamples: the Monte Carlo error of a 2.5% percentile is then sqrt(0.025 * 0.975 / 2000) ~ 0.0035 in
# probability, small beside the sampling uncertainty the interval expresses (Efron and Tibshirani suggest at
# least 1000 for percentile intervals), and a cell costs 2000 aggregate calls: milliseconds for a mean, about a
# second for a scipy correlation. Doubling it moves the endpoints less than their last printed digit.
RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
# A pairwise verdict from model A's side: a win counts 1, a tie half (as FastChat's adjusted win rate).
VERDICT_POINTS = {"A": 1.0, "tie": 0.5, "B": 0.0}
Aggregate = Callable[[Sequence[float], Sequence[str]], float]


class ReportError(TrainingError):
    """Scores that cannot be compared: different items for the same task, a model twice, a bad verdict."""


def mean_aggregate(values: Sequence[float], references: Sequence[str]) -> float:
    """The task score of most metrics (exact match, char F1, judge score): the mean item value."""
    return float(np.mean(values))


@dataclass(frozen=True)
class ItemScores:
    """One model's per-item values for one task and metric, and the metric's aggregate that makes them a score.

    `references` are the gold answers in item order (a correlation aggregate needs them); `item_ids` name the
    items (question ids) so the report can check that two models answered the same items."""

    model: str
    task: str
    metric: str
    values: Sequence[float]
    references: Sequence[str]
    aggregate: Aggregate = mean_aggregate
    item_ids: Sequence[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(float(value) for value in self.values))
        object.__setattr__(self, "references", tuple(self.references))
        object.__setattr__(self, "item_ids", tuple(self.item_ids) or tuple(str(n) for n in range(len(self.values))))
        where = f"{self.model} on {self.task}/{self.metric}"
        if len(self.references) != len(self.values):
            raise ReportError(f"{where}: {len(self.values)} values but {len(self.references)} references")
        if len(self.item_ids) != len(self.values):
            raise ReportError(f"{where}: {len(self.values)} values but {len(self.item_ids)} item ids")

    @property
    def column(self) -> tuple[str, str]:
        return (self.task, self.metric)


@dataclass(frozen=True)
class PairwiseVerdicts:
    """A judge's verdicts on model A against model B, per item: "A", "B", "tie", or None (excluded)."""

    model_a: str
    model_b: str
    task: str
    verdicts: Sequence[str | None]
    item_ids: Sequence[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdicts", tuple(self.verdicts))
        object.__setattr__(self, "item_ids", tuple(self.item_ids) or tuple(str(n) for n in range(len(self.verdicts))))
        where = f"{self.model_a} vs {self.model_b} on {self.task}"
        unknown = sorted({str(v) for v in self.verdicts if v is not None and v not in VERDICT_POINTS})
        if unknown:
            raise ReportError(f"{where}: verdicts {unknown} are not A, B or tie")
        if len(self.item_ids) != len(self.verdicts):
            raise ReportError(f"{where}: {len(self.verdicts)} verdicts but {len(self.item_ids)} item ids")


@dataclass(frozen=True)
class Interval:
    """A point estimate over all items and its bootstrap interval."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class Score:
    """A model's task score: `n` items used, `excluded` items without a value."""

    model: str
    task: str
    metric: str
    n: int
    excluded: int
    interval: Interval


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: `b` items only model A got right, `c` only model B, and the two-sided p-value."""

    b: int
    c: int
    p_value: float


@dataclass(frozen=True)
class Difference:
    """Model A's score minus model B's on the same `n` items, with the paired interval."""

    task: str
    metric: str
    model_a: str
    model_b: str
    n: int
    interval: Interval
    mcnemar: McNemar | None


@dataclass(frozen=True)
class WinRate:
    """Model A against model B as judged: counts from A's side, and (wins + ties / 2) / judged with interval."""

    task: str
    model_a: str
    model_b: str
    wins: int
    ties: int
    losses: int
    excluded: int
    interval: Interval


@dataclass(frozen=True)
class Settings:
    """How the intervals were computed; every cell uses the same seed, so a cell's interval does not depend on
    which other cells are in the report."""

    resamples: int = RESAMPLES
    confidence: float = CONFIDENCE
    seed: int = SEED


@dataclass(frozen=True)
class Report:
    """Everything `write_report` writes: the inputs and what was computed from them."""

    settings: Settings
    scores: tuple[Score, ...]
    differences: tuple[Difference, ...]
    win_rates: tuple[WinRate, ...]
    items: tuple[ItemScores, ...] = field(repr=False)
    verdicts: tuple[PairwiseVerdicts, ...] = field(repr=False)

    @property
    def models(self) -> list[str]:
        """Model labels in the order they first appear in the inputs."""
        return list(dict.fromkeys(item.model for item in self.items))

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(task, metric) pairs in the order they first appear in the inputs."""
        return list(dict.fromkeys(item.column for item in self.items))
