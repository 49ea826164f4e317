"""The numbers: percentile-bootstrap intervals over the items, paired differences bootstrapped on the same
resampled items for both models, McNemar's exact test for exact match, and judge win rates."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np
from scipy.stats import binomtest

from training.evaluation.report.model import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    VERDICT_POINTS,
    Difference,
    Interval,
    ItemScores,
    McNemar,
    PairwiseVerdicts,
    Report,
    ReportError,
    Score,
    Settings,
    WinRate,
)

# Metrics whose item values are 0/1, for which McNemar's exact test applies.
BINARY_METRICS = frozenset({"exact_match"})


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    num_items: int,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> tuple[float, float]:
    """The percentile-bootstrap interval of `statistic`, which gets an array of `num_items` item indices drawn
    with replacement. Seeded, so the same call gives the same interval. Resamples where the statistic is not
    finite (a correlation of a constant resample) are left out; if none is finite the interval is (nan, nan)."""
    if num_items < 1:
        raise ValueError(f"bootstrap needs at least one item, got {num_items}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, num_items, size=num_items)) for _ in range(resamples)], dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (math.nan, math.nan)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return (float(low), float(high))


def mcnemar(values_a: Sequence[float], values_b: Sequence[float]) -> McNemar:
    """McNemar's exact test on paired 0/1 item values: under "equally good", each item only one model got
    right is that model's with probability 1/2, so b ~ Binomial(b + c, 1/2); two-sided."""
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    if not np.isin(a, (0.0, 1.0)).all() or not np.isin(b, (0.0, 1.0)).all():
        raise ReportError("McNemar's test needs item values of 0 or 1")
    only_a, only_b = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    p_value = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return McNemar(b=only_a, c=only_b, p_value=float(p_value))


def build_report(
    scores: Sequence[ItemScores],
    verdicts: Sequence[PairwiseVerdicts] = (),
    *,
    settings: Settings | None = None,
) -> Report:
    """Scores per (model, task, metric), paired differences for every pair of models on every (task, metric)
    both have, McNemar for binary metrics, and win rates for the judge's pairwise verdicts."""
    settings = settings or Settings()
    groups = _paired_groups(scores)
    return Report(
        settings=settings,
        scores=tuple(_score(item, settings) for group in groups.values() for item in group),
        differences=tuple(_difference(a, b, settings) for group in groups.values() for a, b in combinations(group, 2)),
        win_rates=tuple(_win_rate(verdict, settings) for verdict in verdicts),
        items=tuple(scores),
        verdicts=tuple(verdicts),
    )


def _paired_groups(scores: Sequence[ItemScores]) -> dict[tuple[str, str], list[ItemScores]]:
    """The inputs by (task, metric); within one, each model once and all on the same items, else no pairing."""
    groups: dict[tuple[str, str], list[ItemScores]] = {}
    for item in scores:
        group = groups.setdefault(item.column, [])
        _check_pairable(group[0] if group else item, item, [other.model for other in group])
        group.append(item)
    return groups


def _check_pairable(first: ItemScores, item: ItemScores, seen: list[str]) -> None:
    where = f"{item.task}/{item.metric}"
    if item.model in seen:
        raise ReportError(f"{where}: model {item.model!r} appears twice")
    if item.item_ids != first.item_ids:
        raise ReportError(
            f"{where}: {item.model!r} has {len(item.item_ids)} items, {first.model!r} {len(first.item_ids)}, or "
            "other item ids; paired comparisons need the same items in the same order"
        )
    if item.references != first.references:
        raise ReportError(f"{where}: {item.model!r} and {first.model!r} have different references for the same items")


def _arrays(item: ItemScores) -> tuple[np.ndarray, np.ndarray]:
    """Values as floats and references as an object array, so both can be indexed by resampled indices."""
    references = np.empty(len(item.references), dtype=object)
    references[:] = item.references
    return np.asarray(item.values, dtype=float), references


def _score(item: ItemScores, settings: Settings) -> Score:
    values, references = _arrays(item)
    kept = np.isfinite(values)
    values, references = values[kept], references[kept]
    n = int(kept.sum())
    interval = _interval(lambda idx: item.aggregate(values[idx], references[idx]), n, settings)
    return Score(item.model, item.task, item.metric, n, len(kept) - n, interval)


def _difference(a: ItemScores, b: ItemScores, settings: Settings) -> Difference:
    values_a, references = _arrays(a)
    values_b, _ = _arrays(b)
    kept = np.isfinite(values_a) & np.isfinite(values_b)
    values_a, values_b, references = values_a[kept], values_b[kept], references[kept]

    def difference(idx: np.ndarray) -> float:
        return a.aggregate(values_a[idx], references[idx]) - b.aggregate(values_b[idx], references[idx])

    n = int(kept.sum())
    test = mcnemar(values_a, values_b) if a.metric in BINARY_METRICS else None
    return Difference(a.task, a.metric, a.model, b.model, n, _interval(difference, n, settings), test)


def _win_rate(verdicts: PairwiseVerdicts, settings: Settings) -> WinRate:
    points = np.array([VERDICT_POINTS[v] for v in verdicts.verdicts if v is not None], dtype=float)
    counts = {verdict: sum(1 for v in verdicts.verdicts if v == verdict) for verdict in VERDICT_POINTS}
    interval = _interval(lambda idx: float(np.mean(points[idx])), len(points), settings)
    excluded = len(verdicts.verdicts) - len(points)
    return WinRate(
        verdicts.task, verdicts.model_a, verdicts.model_b, counts["A"], counts["tie"], counts["B"], excluded, interval
    )


def _interval(statistic: Callable[[np.ndarray], float], n: int, settings: Settings) -> Interval:
    """The statistic on all `n` items and its bootstrap interval; all NaN when no item has a value."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    low, high = bootstrap_ci(
        statistic, n, resamples=settings.resamples, confidence=settings.confidence, seed=settings.seed
    )
    return Interval(float(statistic(np.arange(n))), low, high)
