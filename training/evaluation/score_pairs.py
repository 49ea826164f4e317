"""`python -m training eval score`: llm-jp-eval metrics for a file of (prediction, reference) pairs.

Input is JSONL, one `{"prediction": ..., "reference": ...}` object per line (other keys are ignored, blank
lines skipped). The prediction is the model's raw output: the answer is extracted the llm-jp-eval v1.3.0 way
(text before the first blank line, NFKC, not stripped; `metrics.answer_of`) and the reference NFKC-normalised,
so the numbers equal llm-jp-eval's for the same outputs. There is deliberately no switch for another
extraction rule: two rules would give two incomparable numbers under one metric name.

Output is JSONL, one line per scored input line and in the same order:
`{"line": <input line number>, "answer": <the extracted answer that was scored>, "<metric>": <value>, ...}`.
Every input line is read and scored before anything is written, and the output goes to a temporary file next
to `--out` that is then renamed over it, so `--out` is never half-written: it is either untouched or complete.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from training.data.records import jsonl_values
from training.errors import ConfigError, DataError
from training.evaluation.atomic_files import write_atomically
from training.evaluation.metrics import METRICS, Metric, UnscorableReference, answer_of, metric_named, reference_of
from tsumugi.cli_flags import add_flags, command_settings, flags_of, setting

FIELDS = ("prediction", "reference")


@dataclass(frozen=True)
class Pair:
    """One input line: where it is (for messages and the output's "line") and its two texts, as given."""

    line: int
    prediction: str
    reference: str


@dataclass(frozen=True)
class FileScores:
    """What `score_file` computed: how many pairs, and each metric's task score (its aggregate over them)."""

    pairs: int
    aggregates: dict[str, float]


def score_file(in_path: Path, out_path: Path, metric_names: list[str]) -> FileScores:
    """Score every pair of `in_path` with each metric, write the per-item values to `out_path` atomically.

    Raises ConfigError for an unknown or missing metric name or an unusable `out_path`, DataError (naming the
    file, the line and the field) for a bad input line; in both cases nothing is written."""
    metrics = _metrics(metric_names)
    _check_output_path(Path(in_path), Path(out_path))
    pairs = read_pairs(Path(in_path))
    rows = [_score_pair(pair, metrics, f"{in_path}: line {pair.line}") for pair in pairs]
    lines = (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    write_atomically(Path(out_path), "".join(lines).encode("utf-8"))
    references = [reference_of(pair.reference) for pair in pairs]
    aggregates = {metric.name: metric.aggregate([row[metric.name] for row in rows], references) for metric in metrics}
    return FileScores(pairs=len(pairs), aggregates=aggregates)


def _metrics(metric_names: list[str]) -> list[Metric]:
    if not metric_names:
        raise ConfigError(f"no metric given; known metrics: {', '.join(METRICS)}")
    return [metric_named(name) for name in dict.fromkeys(metric_names)]  # a repeated name is scored once


def _check_output_path(in_path: Path, out_path: Path) -> None:
    if not out_path.parent.is_dir():
        raise ConfigError(f"{out_path}: its folder {out_path.parent} does not exist")
    if out_path.resolve() == in_path.resolve():
        raise ConfigError(f"{out_path}: the output would replace the input; choose another --out")


# --- Reading -----------------------------------------------------------------------------------------------


def read_pairs(path: Path) -> list[Pair]:
    """Every non-blank line of a pairs file, validated; a DataError with file, line and field otherwise."""
    pairs = [_parse_pair(line.number, line.location, line.value) for line in jsonl_values(path)]
    if not pairs:
        raise DataError(f'{path}: no pairs to score; expected one {{"prediction": ..., "reference": ...}} per line')
    return pairs


def _parse_pair(number: int, location: str, record: object) -> Pair:
    if not isinstance(record, dict):
        raise DataError(f"{location}: expected a JSON object with {_quoted(FIELDS)}, got {_json_type(record)}")
    prediction, reference = (_text_field(record, field, location) for field in FIELDS)
    return Pair(line=number, prediction=prediction, reference=reference)


def _text_field(record: dict, field: str, location: str) -> str:
    if field not in record:
        raise DataError.in_field(location, field, "missing")
    value = record[field]
    if not isinstance(value, str):
        raise DataError.in_field(location, field, f"expected a string, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, as the user wrote it ("null", not "NoneType")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else "a string"


def _quoted(names: tuple[str, ...]) -> str:
    return " and ".join(f"'{name}'" for name in names)


# --- Scoring and writing -----------------------------------------------------------------------------------


def _score_pair(pair: Pair, metrics: list[Metric], location: str) -> dict[str, object]:
    """The output line of one pair: its line number, the answer llm-jp-eval scores, each metric's value."""
    answer, reference = answer_of(pair.prediction), reference_of(pair.reference)
    row: dict[str, object] = {"line": pair.line, "answer": answer}
    for metric in metrics:
        try:
            row[metric.name] = metric.item(answer, reference)
        except UnscorableReference as error:
            raise DataError.in_field(location, "reference", f"{metric.name}: {error}") from None
    return row


# --- Command line ------------------------------------------------------------------------------------------


def metric_list(text: str) -> list[str]:
    """`--metrics` value: comma-separated known metric names (spaces allowed), each once, in the given order."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"give at least one metric, from: {', '.join(METRICS)}")
    for name in names:
        try:
            metric_named(name)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return names


@command_settings
class ScoreSettings:
    """`python -m training eval score`: its flags."""

    metrics: list[str] = setting(help=f"comma-separated, from: {', '.join(METRICS)}", type=metric_list)
    in_path: Path = setting(
        help='one {"prediction": raw model output, "reference": expected answer} per line',
        flag="--in",
        metavar="PAIRS.jsonl",
    )
    out_path: Path = setting(help="per-item scores (JSONL)", flag="--out", metavar="SCORES.jsonl")


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    """`--metrics`, `--in`, `--out` of `python -m training eval score`; the handler is `run_score_command`."""
    add_flags(p, flags_of(ScoreSettings))
    p.set_defaults(handler=run_score_command)


def run_score_command(args: argparse.Namespace) -> None:
    scores = score_file(args.in_path, args.out_path, args.metrics)
    print(f"scored {scores.pairs} pairs from {args.in_path}; per-item scores in {args.out_path}")
    for name, value in scores.aggregates.items():
        print(f"{name}: {value:.4f}")
