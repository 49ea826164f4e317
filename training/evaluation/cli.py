"""`python -m training eval <command>`: score, run, judge.

* `score` scores a file of (prediction, reference) pairs with llm-jp-eval's metrics, no model involved.
* `run` asks one or more served models (`--model NAME` or `NAME@URL`, repeatable) every item of llm-jp-eval
  task files, scores them and writes `report.md`, `report.json`, `report.png` and `predictions.jsonl`.
* `judge` has the models answer open questions and a judge model grade them (1-10, and A-vs-B in both
  orders when there are two or more models), with the same report.

Both `run` and `judge` keep every answer in a cache (default `<out>/cache`), so a killed run started again
asks only what it has no answer for, and a rerun at temperature 0 asks nothing and scores the same.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Literal

from training.evaluation.atomic_files import write_atomically
from training.evaluation.judge.grading import ANSWER_MAX_TOKENS, JUDGE_MAX_TOKENS, JUDGE_TEMPERATURE
from training.evaluation.runner.client import Runner
from training.evaluation.runner.endpoint import api_key_for
from training.evaluation.runner.flags import EndpointSettings, runner_from_args
from training.evaluation.score_pairs import add_score_arguments
from tsumugi.cli_flags import add_flags, command_settings, flags_of, setting


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The `eval` command's own commands, each with its flags."""
    commands = p.add_subparsers(dest="eval_command", required=True)
    add_score_arguments(commands.add_parser("score", help="score a JSONL file of prediction/reference pairs"))
    add_run_arguments(commands.add_parser("run", help="ask served models llm-jp-eval tasks, report with CIs"))
    add_judge_arguments(commands.add_parser("judge", help="open questions graded by a judge model"))


def _samples(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@command_settings
class ModelTargets:
    """What `run` and `judge` share besides the endpoint: the models under test and the output folder."""

    models: list[str] = setting(
        help="a served model to evaluate (repeat to compare; NAME@URL for another endpoint's model)",
        flag="--model",
        action="append",
        metavar="NAME[@URL]",
    )
    out: Path = setting(help="folder for the report, predictions and cache")


@command_settings
class TaskFiles:
    """`eval run`: what to ask."""

    tasks: list[Path] = setting(
        help="task files (llm-jp-eval .json, or our .jsonl) or folders of them (e.g. llm-jp-eval's evaluation/test)"
    )


@command_settings
class RunPrompts:
    """`eval run`: how to ask; the defaults are llm-jp-eval v1.3.0's."""

    mode: Literal["alpaca", "chat"] = setting("alpaca", "completions or chat template")
    num_few_shots: int = setting(4)
    max_samples: int | None = setting(100, "first N samples per task, or 'all'", type=_samples)
    temperature: float = setting(0.0)


@command_settings
class QuestionFile:
    """`eval judge`: the open questions."""

    questions: Path = setting(help='JSONL: {"id", "category", "question", "reference"?}')


@command_settings
class JudgeSettings:
    """`eval judge`: the judge model and the answer and judgement lengths."""

    judge_model: str = setting(help="the judge's model name on --judge-base-url")
    judge_base_url: str | None = setting(None, "the judge's API root (default: --base-url)")
    judge_api_key: str | None = setting(None, "the judge's key (default: as --api-key for that URL)")
    judge_temperature: float = setting(JUDGE_TEMPERATURE)
    answer_max_tokens: int = setting(ANSWER_MAX_TOKENS)
    judge_max_tokens: int = setting(JUDGE_MAX_TOKENS)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    shared = [*flags_of(ModelTargets), *flags_of(EndpointSettings, group="endpoint")]
    add_flags(
        p, [*flags_of(TaskFiles), *shared, *flags_of(RunPrompts, group="prompts (defaults: llm-jp-eval v1.3.0's)")]
    )
    p.set_defaults(handler=run_tasks_command)


def add_judge_arguments(p: argparse.ArgumentParser) -> None:
    shared = [*flags_of(ModelTargets), *flags_of(EndpointSettings, group="endpoint")]
    add_flags(p, [*flags_of(QuestionFile), *shared, *flags_of(JudgeSettings, group="judge")])
    p.set_defaults(handler=run_judge_command)


def run_tasks_command(args: argparse.Namespace) -> None:
    from training.evaluation.comparison import compare_models, parse_targets, write_predictions
    from training.evaluation.report.render import render_markdown, write_report
    from training.evaluation.report.statistics import build_report
    from training.evaluation.tasks import PromptSettings, load_tasks

    settings = PromptSettings(
        num_few_shots=args.num_few_shots, max_samples=args.max_samples, mode=args.mode, temperature=args.temperature
    )
    tasks = [task for path in args.tasks for task in load_tasks(path)]
    targets = parse_targets(args.models, args.base_url, _api_key(args.base_url, args.api_key))
    runner = _runner(args)
    comparison = compare_models(runner, targets, tasks, settings)
    report = build_report(comparison.scores)
    write_predictions(args.out / "predictions.jsonl", comparison.predictions)
    _finish(write_report(report, args.out), render_markdown(report), runner)


def run_judge_command(args: argparse.Namespace) -> None:
    from training.evaluation.comparison import parse_targets
    from training.evaluation.judge.grading import judge_models
    from training.evaluation.judge.questions import load_questions
    from training.evaluation.report.render import render_markdown, write_report
    from training.evaluation.report.statistics import build_report
    from training.evaluation.runner.endpoint import Endpoint

    questions = load_questions(args.questions)
    targets = parse_targets(args.models, args.base_url, _api_key(args.base_url, args.api_key))
    judge_url = args.judge_base_url or args.base_url
    judge = Endpoint(base_url=judge_url, model=args.judge_model, api_key=_api_key(judge_url, args.judge_api_key))
    runner = _runner(args)
    run = judge_models(
        runner,
        {target.label: target.endpoint for target in targets},
        judge,
        questions,
        answer_max_tokens=args.answer_max_tokens,
        judge_max_tokens=args.judge_max_tokens,
        temperature=args.judge_temperature,
    )
    report = build_report([g.item_scores() for g in run.single], [p.verdicts() for p in run.pairwise])
    args.out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(run.to_json(), ensure_ascii=False, indent=1) + "\n"
    write_atomically(args.out / "judgements.json", data.encode("utf-8"))
    print(f"judge replies unparsed after one retry (excluded, not scored): {run.parse_failures}")
    _finish(write_report(report, args.out), render_markdown(report), runner)


def _runner(args: argparse.Namespace) -> Runner:
    """The runner of the endpoint flags; its cache defaults to `<out>/cache`, so running the same command
    again resumes it."""
    if args.cache_dir is None:
        args.cache_dir = args.out / "cache"
    return runner_from_args(args)


def _api_key(base_url: str, given: str | None) -> str | None:
    return api_key_for(base_url, given, os.environ)


def _finish(files: list[Path], markdown: str, runner: Runner) -> None:
    print(markdown)
    print(f"requests sent: {runner.total_sent}, answers from the cache: {runner.total_cache_hits}")
    print(f"written: {', '.join(str(f) for f in files)}")
