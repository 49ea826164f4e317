"""`make train`: fine-tune SmolLM2-135M-Instruct on the Japanese sample, then show before/after through vLLM.

The base model cannot answer the sample's Japanese questions; after a short LoRA run the served adapter
answers them with the dataset's answers. Both are asked through one real service process
(`--model base --lora-modules ja=adapter`), greedy, and scored by exact answer substring; then the same
replies are scored against the records' answers with llm-jp-eval's exact_match and char_f1, and the
evaluation report (scores with 95% bootstrap intervals, the paired difference, McNemar's test) is written
next to the adapter (`<out>.report/`) and printed.
An adapter already at the output path is reused, so `make train` twice does not train twice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from training.config import load_config
from training.errors import OutputExistsError
from tsumugi.cli_flags import command_settings, setting

if TYPE_CHECKING:
    from training.config import SFTConfig
    from training.demos.held_in import Question, Score

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_smollm2_ja.yaml"
DEFAULT_EVAL = Path(__file__).resolve().parents[2] / "data" / "ja_sample_eval.json"
ADAPTER_NAME = "ja"
REPORT_METRICS = ("exact_match", "char_f1")


@command_settings
class DemoSettings:
    """The flags every before/after demo takes: its recipe and held-in set (each demo sets its own), base and
    output overrides, whether to train again, and where to write the scores."""

    config: Path = setting()
    base: str | None = setting(None, "override the config's base model")
    out: str | None = setting(None, "override the config's output directory")
    eval: Path = setting()
    retrain: bool = setting(False, "train even if the output directory exists")
    results: Path | None = setting(None, "write the scores as JSON here")


@command_settings
class JapaneseQaSettings(DemoSettings):
    """`python -m training demo`: its flags, and their defaults."""

    config: Path = setting(DEFAULT_CONFIG)
    eval: Path = setting(DEFAULT_EVAL, "held-in question set")
    max_steps: int | None = setting(None)


def run_demo(config: Path, eval_file: Path, overrides: dict, retrain: bool = False) -> tuple[Score, Score]:
    """Train (unless a finished adapter exists) and return (base score, adapter score)."""
    from training.demos.held_in import EvaluationServer, load_eval_set, score_models  # httpx and the service: only here

    cfg = load_config(config, overrides)
    out = trained_adapter(cfg, retrain)
    questions = load_eval_set(eval_file)
    service_args = ["--model", cfg.base, "--lora-modules", f"{ADAPTER_NAME}={out}", "--dtype", "float32"]
    with EvaluationServer(service_args, out.with_name(out.name + ".serve.log")) as server:
        before, after = score_models(server, [cfg.base, ADAPTER_NAME], questions)
    print_table(questions, before, after)
    print_report(questions, before, after, out.with_name(out.name + ".report"))
    return before, after


def print_report(questions: list[Question], before: Score, after: Score, folder: Path) -> None:
    """The evaluation report of base vs adapter on the questions asked (`python -m training eval`'s report)."""
    from training.evaluation.comparison import scored_replies
    from training.evaluation.report.render import render_markdown, write_report
    from training.evaluation.report.statistics import build_report

    references = [q.reference for q in questions]
    scores = [
        item
        for label, score in (("base", before), (ADAPTER_NAME, after))
        for item in scored_replies(label, "ja_sample held-in", REPORT_METRICS, score.replies, references)
    ]
    report = build_report(scores)
    write_report(report, folder)
    print(f"\n{render_markdown(report)}\nreport written to {folder}/")


def trained_adapter(cfg: SFTConfig, retrain: bool) -> Path:
    """`cfg.out`, trained now unless a finished adapter of the same recipe is already there."""
    out = Path(cfg.out)
    if retrain and out.exists():
        import shutil

        shutil.rmtree(out)
    if out.exists():
        manifest = json.loads((out / "training_manifest.json").read_text(encoding="utf-8"))
        if manifest.get("config") != cfg.to_dict():
            raise OutputExistsError(f"{out} was trained with a different recipe; use --retrain to replace it")
        print(f"using the adapter already in {out} (--retrain to train again)")
        return out
    from training.sft import run_sft  # torch and TRL: only to train

    return run_sft(cfg)


def cell(text: str, width: int = 29) -> str:
    """`text` on one line, cut to `width` characters for a table column."""
    flat = " ".join(text.split())
    return flat[: width - 1] + "…" if len(flat) > width else flat


def print_table(questions: list[Question], before: Score, after: Score) -> None:
    print(f"\n{'question':<30} {'expected':<14} {'base model':<31} {'fine-tuned (LoRA)':<31}")
    for q, b, a in zip(questions, before.replies, after.replies, strict=True):
        mark_b, mark_a = ("✓" if q.answer in b else "✗"), ("✓" if q.answer in a else "✗")
        print(f"{cell(q.prompt):<30} {q.answer:<14} {mark_b} {cell(b):<29} {mark_a} {cell(a):<29}")
    print(f"\nexact answers: base {before.correct}/{before.total}, fine-tuned {after.correct}/{after.total}")


def run_demo_command(args: argparse.Namespace) -> None:
    overrides = {"base": args.base, "out": args.out, "optim.max_steps": args.max_steps}
    before, after = run_demo(args.config, args.eval, overrides, args.retrain)
    if args.results:
        payload = {"base": before.correct, "fine_tuned": after.correct, "total": before.total}
        payload |= {"base_replies": before.replies, "fine_tuned_replies": after.replies}
        args.results.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
