"""A report as files: `report.md` (the tables a reader compares), `report.json` (every number and per-item
value, so it can be recomputed) and `report.png`, each written atomically."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from training.evaluation.atomic_files import write_atomically
from training.evaluation.report.model import Difference, Interval, ItemScores, Report, Score, Settings

REPORT_FILES = ("report.md", "report.json", "report.png")


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
