"""Several served models asked the same task items, scored the llm-jp-eval way, ready for the report.

A model under test is a name on an OpenAI-compatible endpoint: the base model, an adapter, a merged or an
AWQ model of one tsumugi service, or a model on any other server (`NAME@URL`). Each is asked every item of
every task through the runner (so its cache makes a rerun free and a killed run resumable), each answer is
extracted and normalised as llm-jp-eval does (`metrics.score_item`), and the per-item values become the
report's `ItemScores`: the same items in the same order for every model, which is what paired differences
and McNemar's test need. Every prediction is kept, with its extracted answer, so a score can be audited.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from training.errors import ConfigError
from training.evaluation.atomic_files import write_atomically
from training.evaluation.metrics import answer_of, metric_named, reference_of, score_item
from training.evaluation.report.model import ItemScores
from training.evaluation.runner.client import Runner
from training.evaluation.runner.endpoint import Endpoint
from training.evaluation.tasks import PromptSettings, Task, build_requests


@dataclass(frozen=True)
class Target:
    """A model under test: its label in the report and where to ask it."""

    label: str
    endpoint: Endpoint


def parse_targets(specs: Sequence[str], base_url: str, api_key: str | None) -> list[Target]:
    """`NAME` (on `base_url`) or `NAME@URL` (another OpenAI-compatible endpoint, e.g. a second replica or
    vLLM's own server); labels are the specs as given, so they must be distinct."""
    targets = []
    for spec in specs:
        name, _, url = spec.partition("@")
        if not name or (spec.count("@") and not url):
            raise ConfigError(f"--model {spec!r}: expected NAME or NAME@URL (the API root, up to /v1)")
        targets.append(Target(spec, Endpoint(base_url=url or base_url, model=name, api_key=api_key)))
    duplicates = sorted({t.label for t in targets if [u.label for u in targets].count(t.label) > 1})
    if duplicates:
        raise ConfigError(f"--model given twice: {', '.join(duplicates)}")
    return targets


@dataclass(frozen=True)
class Prediction:
    """One model's answer to one task item, as scored."""

    model: str
    task: str
    index: int
    input: str
    reference: str
    output: str  # the raw generated text
    answer: str  # what llm-jp-eval scores: before the first blank line, NFKC
    finish_reason: str | None
    cached: bool
    scores: dict[str, float]


def ask_task(runner: Runner, target: Target, task: Task, settings: PromptSettings) -> list[Prediction]:
    """Every item of `task` asked of one model, and scored with the task's metrics."""
    items = build_requests(task, settings)
    answers = runner.run(target.endpoint, [item.payload for item in items], f"{target.label} on {task.name}")
    metrics = [metric_named(name) for name in task.metrics]
    return [
        Prediction(
            model=target.label,
            task=task.name,
            index=item.index,
            input=item.input,
            reference=item.reference,
            output=answer.text,
            answer=answer_of(answer.text),
            finish_reason=answer.finish_reason,
            cached=answer.cached,
            scores={metric.name: score_item(metric, answer.text, item.reference) for metric in metrics},
        )
        for item, answer in zip(items, answers, strict=True)
    ]


def item_scores(predictions: Sequence[Prediction], task: Task) -> list[ItemScores]:
    """One model's predictions on one task as the report's per-metric inputs (with the metric's aggregate)."""
    if not predictions:
        return []
    outputs, references = [p.output for p in predictions], [p.reference for p in predictions]
    ids = [str(p.index) for p in predictions]
    return scored_replies(predictions[0].model, task.name, task.metrics, outputs, references, ids)


def scored_replies(
    model: str,
    task: str,
    metric_names: Sequence[str],
    replies: Sequence[str],
    references: Sequence[str],
    item_ids: Sequence[str] = (),
) -> list[ItemScores]:
    """Raw replies scored against their references (extracted and normalised as llm-jp-eval does), one
    `ItemScores` per metric: for replies gathered some other way, such as the demo's."""
    normalised = [reference_of(reference) for reference in references]
    metrics = [metric_named(name) for name in metric_names]
    return [
        ItemScores(
            model=model,
            task=task,
            metric=metric.name,
            values=[score_item(metric, reply, reference) for reply, reference in zip(replies, references, strict=True)],
            references=normalised,
            aggregate=metric.aggregate,
            item_ids=item_ids,
        )
        for metric in metrics
    ]


@dataclass(frozen=True)
class Comparison:
    """What `compare_models` found: every prediction, and the report's inputs."""

    predictions: list[Prediction]
    scores: list[ItemScores]


def compare_models(
    runner: Runner, targets: Sequence[Target], tasks: Sequence[Task], settings: PromptSettings
) -> Comparison:
    """Each model on each task, in that order (one model's requests go out together, so a server that loads
    adapters on demand is not made to switch between them on every request)."""
    predictions: list[Prediction] = []
    scores: list[ItemScores] = []
    for target in targets:
        for task in tasks:
            asked = ask_task(runner, target, task, settings)
            predictions += asked
            scores += item_scores(asked, task)
    return Comparison(predictions, scores)


def write_predictions(path: Path, predictions: Sequence[Prediction]) -> None:
    """All predictions as JSONL, never half-written."""
    lines = (json.dumps(asdict(prediction), ensure_ascii=False) + "\n" for prediction in predictions)
    write_atomically(path, "".join(lines).encode("utf-8"))
