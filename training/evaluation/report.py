"""Comparisons of models scored on the same items, each number with a confidence interval.

A task score over a few dozen items is a noisy estimate: two adapters 0.05 apart on 40 questions may well be
equally good. So every score in the report comes with a percentile-bootstrap interval over the items (resample
the items with replacement, recompute the task score with the metric's own aggregate, take the 2.5% and 97.5%
percentiles), which works the same for a mean, a correlation (pearson, spearman) or a judge's 1-10 score.

Comparisons are paired: every model answered the same items, so the difference of two models is bootstrapped
on the *same* resampled items for both, which cancels the item-difficulty variance that two separate intervals
would double-count. For exact match, McNemar's exact test (a two-sided binomial test on the items exactly one
of the two models got right) adds a p-value. Pairwise judge verdicts (A better, B better, tie) become a win
rate with the same bootstrap.

An item value of NaN means "no value for this item" (a judge reply that could not be parsed, even after a
retry): it is left out of that model's score and, for a comparison, the item is left out for both models. The
report says how many items each number used.

The inputs are plain typed data (`ItemScores`, `PairwiseVerdicts`) so the evaluation CLI can build them from
runner answers and metrics; `build_report` computes, `write_report` writes `report.md`, `report.json` (every
number and every per-item value, so a reader can recompute) and `report.png`, each file atomically.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from training.errors import TrainingError
from training.evaluation.atomic_files import write_atomically

# 2000 resamples: the Monte Carlo error of a 2.5% percentile is then sqrt(0.025 * 0.975 / 2000) ~ 0.0035 in
# probability, small beside the sampling uncertainty the interval expresses (Efron and Tibshirani suggest at
# least 1000 for percentile intervals), and a cell costs 2000 aggregate calls: milliseconds for a mean, about a
# second for a scipy correlation. Doubling it moves the endpoints less than their last printed digit.
RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
# Metrics whose item values are 0/1, for which McNemar's exact test applies.
BINARY_METRICS = frozenset({"exact_match"})
# A pairwise verdict from model A's side: a win counts 1, a tie half (as FastChat's adjusted win rate).
VERDICT_POINTS = {"A": 1.0, "tie": 0.5, "B": 0.0}
REPORT_FILES = ("report.md", "report.json", "report.png")

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


def render_markdown(report: Report) -> str:
    """The report as markdown: scores (rows models, columns task/metric), paired differences, McNemar, win
    rates, and what the intervals are."""
    sections = [
        "# Evaluation report",
        _scores_table(report),
        _differences_table(report),
        _mcnemar_table(report),
        _win_rate_table(report),
        _method_note(report.settings),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _cell(interval: Interval, signed: bool = False) -> str:
    if math.isnan(interval.estimate):
        return "n/a"
    number = "{:+.3f}" if signed else "{:.3f}"
    return f"{number.format(interval.estimate)} [{number.format(interval.low)}, {number.format(interval.high)}]"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(_escape(cell) for cell in line) + " |" for line in lines)


def _scores_table(report: Report) -> str:
    if not report.scores:
        return ""
    columns = report.columns
    by_key = {(s.model, s.task, s.metric): s for s in report.scores}
    item_counts = {item.column: len(item.values) for item in report.items}
    rows = [["items", *(str(item_counts[column]) for column in columns)]]
    for model in report.models:
        cells = [_score_cell(by_key.get((model, *column)), item_counts[column]) for column in columns]
        rows.append([model, *cells])
    header = ["model", *(f"{task} / {metric}" for task, metric in columns)]
    return "## Scores\n\n" + _table(header, rows)


def _score_cell(score: Score | None, items: int) -> str:
    if score is None:
        return "—"
    return _cell(score.interval) + (f" (n={score.n})" if score.n != items else "")


def _differences_table(report: Report) -> str:
    if not report.differences:
        return ""
    columns = report.columns
    pairs = list(dict.fromkeys((d.model_a, d.model_b) for d in report.differences))
    by_key = {(d.model_a, d.model_b, d.task, d.metric): d for d in report.differences}
    item_counts = {item.column: len(item.values) for item in report.items}
    rows = []
    for a, b in pairs:
        cells = [_difference_cell(by_key.get((a, b, *column)), item_counts[column]) for column in columns]
        rows.append([f"{a} − {b}", *cells])
    header = ["difference (paired)", *(f"{task} / {metric}" for task, metric in columns)]
    return "## Paired differences\n\n" + _table(header, rows)


def _difference_cell(difference: Difference | None, items: int) -> str:
    if difference is None:
        return "—"
    return _cell(difference.interval, signed=True) + (f" (n={difference.n})" if difference.n != items else "")


def _mcnemar_table(report: Report) -> str:
    tests = [d for d in report.differences if d.mcnemar is not None]
    if not tests:
        return ""
    rows = [
        [d.task, d.metric, f"{d.model_a} vs {d.model_b}", str(d.mcnemar.b), str(d.mcnemar.c), _p(d.mcnemar.p_value)]
        for d in tests
    ]
    note = "b: items only the first model got right; c: items only the second got right."
    header = ["task", "metric", "models", "b", "c", "p (exact, two-sided)"]
    return "## McNemar's exact test\n\n" + _table(header, rows) + "\n\n" + note


def _p(p_value: float) -> str:
    return f"{p_value:.3g}"


def _win_rate_table(report: Report) -> str:
    if not report.win_rates:
        return ""
    rows = [
        [w.task, f"{w.model_a} vs {w.model_b}", *map(str, (w.wins, w.ties, w.losses, w.excluded)), _cell(w.interval)]
        for w in report.win_rates
    ]
    header = ["task", "models", "wins", "ties", "losses", "excluded", "win rate"]
    note = "Win rate of the first model: (wins + ties / 2) / judged questions; excluded: judge replies unparsed."
    return "## Judge: pairwise\n\n" + _table(header, rows) + "\n\n" + note


def _method_note(settings: Settings) -> str:
    percent = f"{settings.confidence * 100:g}%"
    return (
        f"Intervals: {percent} percentile bootstrap over items ({settings.resamples} resamples, seed "
        f"{settings.seed}): the items are resampled with replacement and the task score recomputed with the "
        "metric's own aggregate. Differences are paired: both models are resampled on the same items. Items "
        "without a value (unparsed judge replies) are left out, shown as (n=...). p-values are not adjusted for "
        "multiple comparisons."
    )


def report_json(report: Report) -> dict:
    """Everything, machine-readable: settings, computed numbers, and per-item values to recompute them.
    NaN (no value) is written as null, since JSON has no NaN."""
    return {
        "settings": {"method": "percentile bootstrap over items", **_plain(report.settings)},
        "scores": [_plain(score) for score in report.scores],
        "differences": [_plain(difference) for difference in report.differences],
        "win_rates": [_plain(win_rate) for win_rate in report.win_rates],
        "items": [_item_json(item) for item in report.items],
        "verdicts": [_plain(verdict) for verdict in report.verdicts],
    }


def _item_json(item: ItemScores) -> dict:
    aggregate = item.aggregate
    name = f"{getattr(aggregate, '__module__', '?')}.{getattr(aggregate, '__qualname__', repr(aggregate))}"
    return {
        "model": item.model,
        "task": item.task,
        "metric": item.metric,
        "aggregate": name,
        "item_ids": list(item.item_ids),
        "values": [_number(value) for value in item.values],
        "references": list(item.references),
    }


def _plain(value: object) -> object:
    """Dataclasses, tuples and floats as JSON values, NaN as None."""
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, tuple | list):
        return [_plain(element) for element in value]
    if isinstance(value, float):
        return _number(value)
    return value


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def render_png(report: Report) -> bytes:
    """Bars per model with their interval as error bars, one panel per task/metric (scales differ: a judge's
    1-10 next to a 0-1 accuracy would flatten the latter). Agg via `Figure` directly: no pyplot global state."""
    from matplotlib.figure import Figure

    columns = report.columns or [("no scores", "")]
    panels = len(columns)
    per_row = min(panels, 3)
    rows = math.ceil(panels / per_row)
    figure = Figure(figsize=(4.2 * per_row, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, per_row, squeeze=False).ravel()
    models = report.models
    colours = [f"C{n % 10}" for n in range(len(models))]
    by_key = {(s.model, s.task, s.metric): s for s in report.scores}
    for panel, (task, metric) in zip(axes, columns, strict=False):
        scores = [by_key.get((model, task, metric)) for model in models]
        estimates = [s.interval.estimate if s else math.nan for s in scores]
        below = [s.interval.estimate - s.interval.low if s else math.nan for s in scores]
        above = [s.interval.high - s.interval.estimate if s else math.nan for s in scores]
        panel.bar(range(len(models)), estimates, yerr=[below, above], color=colours, capsize=4)
        panel.set_title(f"{task} / {metric}" if metric else task, fontsize=10)
        panel.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
    for unused in axes[panels:]:
        unused.set_visible(False)
    figure.suptitle(f"scores with {report.settings.confidence * 100:g}% bootstrap intervals", fontsize=11)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


def write_report(report: Report, directory: Path) -> list[Path]:
    """`report.md`, `report.json` and `report.png` in `directory` (created if missing); each file is written
    to a temporary file beside it and renamed, so a reader never sees half a report file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    contents = {
        "report.md": render_markdown(report).encode("utf-8"),
        "report.json": (json.dumps(report_json(report), ensure_ascii=False, indent=1) + "\n").encode("utf-8"),
        "report.png": render_png(report),
    }
    for name, data in contents.items():
        write_atomically(directory / name, data)
    return [directory / name for name in REPORT_FILES]
