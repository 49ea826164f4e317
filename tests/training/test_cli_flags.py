"""Every `python -m training` command's flags, recorded: names, defaults, required, choices, nargs and help.

The flags are the command line's public interface: scripts, the Makefile and the docs name them. This list was
taken from the parser before the commands were restructured, so a refactoring that renames a flag, changes a
default, loses a help text or reorders the flags fails here. A path default is shown relative to the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from training.__main__ import COMMANDS, build_parser
from training.export.merge import MergeSettings
from tsumugi.cli_flags import settings_from

from .conftest import REPO

SUPPRESS = "SUPPRESS"  # argparse.SUPPRESS: the flag sets nothing unless given (sft: the YAML's value stands)

# command: {option strings: (default, required, choices, nargs, help)}
EXPECTED = {
    "sft": {
        "--config": (None, False, None, None, "YAML config; flags given here override it"),
        "--base": (
            "SUPPRESS",
            False,
            None,
            None,
            "base model: a local directory or a Hugging Face name (required; config key base)",
        ),
        "--data": (
            "SUPPRESS",
            False,
            None,
            "+",
            "Alpaca .json/.jsonl or chat .jsonl files (required; config key data.paths)",
        ),
        "--out": (
            "SUPPRESS",
            False,
            None,
            None,
            "output directory for the adapter (must not exist) (required; config key out)",
        ),
        "--method": (
            "SUPPRESS",
            False,
            ["lora", "qlora"],
            None,
            "lora: 16-bit base; qlora: 4-bit NF4 base (default: lora; config key method)",
        ),
        "--template": (
            "SUPPRESS",
            False,
            ["alpaca-ja", "alpaca-en", "chat"],
            None,
            "prompt format the model is trained with (default: alpaca-ja; config key data.template)",
        ),
        "--max-steps": (
            "SUPPRESS",
            False,
            None,
            None,
            "optimizer steps; > 0 overrides epochs, -1: use epochs (default: -1; config key optim.max_steps)",
        ),
        "--epochs": (
            "SUPPRESS",
            False,
            None,
            None,
            "passes over the training records (resets max_steps) (default: 1.0; config key optim.epochs)",
        ),
        "--lr": ("SUPPRESS", False, None, None, "peak learning rate (default: 0.0002; config key optim.lr)"),
        "--scheduler": (
            "SUPPRESS",
            False,
            ["constant", "linear", "cosine", "constant_with_warmup"],
            None,
            "learning-rate schedule (default: cosine; config key optim.scheduler)",
        ),
        "--warmup-ratio": (
            "SUPPRESS",
            False,
            None,
            None,
            "share of the steps spent warming up (default: 0.0; config key optim.warmup_ratio)",
        ),
        "--lora-r": ("SUPPRESS", False, None, None, "LoRA rank (default: 16; config key lora.r)"),
        "--lora-alpha": (
            "SUPPRESS",
            False,
            None,
            None,
            "LoRA alpha (updates are scaled by alpha / r) (default: 32; config key lora.alpha)",
        ),
        "--lora-dropout": (
            "SUPPRESS",
            False,
            None,
            None,
            "dropout on the LoRA input (default: 0.05; config key lora.dropout)",
        ),
        "--target-modules": (
            "SUPPRESS",
            False,
            None,
            "+",
            "Linear layers to adapt; all-linear: every Linear except the LM head, what vLLM can serve (default: all-linear; config key lora.target_modules)",  # noqa: E501
        ),
        "--batch-size": (
            "SUPPRESS",
            False,
            None,
            None,
            "records per device per step (default: 8; config key optim.batch_size)",
        ),
        "--grad-accum": (
            "SUPPRESS",
            False,
            None,
            None,
            "gradient accumulation steps (default: 1; config key optim.grad_accum)",
        ),
        "--seed": (
            "SUPPRESS",
            False,
            None,
            None,
            "seed for the split, the data order and the LoRA init (default: 0; config key seed)",
        ),
        "--precision": (
            "SUPPRESS",
            False,
            ["auto", "fp32", "bf16", "fp16"],
            None,
            "compute dtype; auto picks bf16 where it is native (default: auto; config key precision)",
        ),
        "--max-length": (
            "SUPPRESS",
            False,
            None,
            None,
            "records are truncated to this many tokens (default: 512; config key data.max_length)",
        ),
        "--validation-fraction": (
            "SUPPRESS",
            False,
            None,
            None,
            "share of records held out for validation (default: 0.05; config key data.validation_fraction)",
        ),
        "--save-steps": (
            "SUPPRESS",
            False,
            None,
            None,
            "checkpoint every this many steps (default: 50; config key save_steps)",
        ),
        "--eval-steps": (
            "SUPPRESS",
            False,
            None,
            None,
            "validate every this many steps; 0: once per epoch and at the end (default: 0; config key eval_steps)",
        ),
        "--gradient-checkpointing --no-gradient-checkpointing": (
            "SUPPRESS",
            False,
            None,
            0,
            "recompute the layers in backward: true, false, or a fraction of the layers (default: False; config key gradient_checkpointing)",  # noqa: E501
        ),
        "--packing --no-packing": (
            "SUPPRESS",
            False,
            None,
            0,
            "padding-free rows of whole records (auto: only with flash-attention's variable-length kernels) (default: auto; config key data.packing)",  # noqa: E501
        ),
        "--skip-invalid --no-skip-invalid": (
            "SUPPRESS",
            False,
            None,
            0,
            "skip (and report) invalid records instead of stopping (default: False; config key data.skip_invalid)",
        ),
        "--resume --no-resume": (
            "SUPPRESS",
            False,
            None,
            0,
            "continue the interrupted run in <out>.partial/ (default: False; config key resume)",
        ),
        "--keep-checkpoints --no-keep-checkpoints": (
            "SUPPRESS",
            False,
            None,
            0,
            "keep <out>.partial/ and its checkpoints after publishing (default: False; config key keep_checkpoints)",
        ),
        "--intended-use": (
            "SUPPRESS",
            False,
            ["research", "internal", "commercial"],
            None,
            "what the model is for; checked against the declared licence terms (training/licences.py) (default: None; config key intended_use)",  # noqa: E501
        ),
        "--accept-licence-risk": (
            "SUPPRESS",
            False,
            None,
            None,
            "train despite licence conflicts, for this reason (recorded in the manifest) (default: None; config key accept_licence_risk)",  # noqa: E501
        ),
    },
    "merge": {
        "--base": (None, True, None, None, None),
        "--adapter": (None, True, None, None, None),
        "--out": (None, True, None, None, None),
        "--dtype": ("bf16", False, ["bf16", "fp16", "fp32"], None, None),
    },
    "quantize": {
        "--model": (None, True, None, None, None),
        "--method": ("awq", False, ["awq", "gptq"], None, None),
        "--data": (None, True, None, None, "training data: calibration samples come from it"),
        "--out": (None, True, None, None, None),
        "--template": (None, False, ["alpaca-ja", "alpaca-en", "chat"], None, "default: the model's own chat template"),
        "--num-samples": (64, False, None, None, None),
        "--max-length": (256, False, None, None, None),
        "--group-size": (None, False, None, None, "default: largest of 128/64/32 dividing every layer"),
    },
    "memory": {
        "--model": (None, True, None, None, "model directory with config.json, or a known name"),
        "--mode": (None, True, ["serve", "full", "lora", "qlora"], None, None),
        "--batch-size": (1, False, None, None, "training batch, or serving concurrency"),
        "--seq-len": (2048, False, None, None, None),
        "--lora-r": (16, False, None, None, None),
        "--grad-checkpointing --no-grad-checkpointing": (True, False, None, 0, None),
        "--checkpoint-fraction": (None, False, None, None, "checkpoint only this share of the layers (0-1)"),
        "--dtype": (None, False, ["bf16", "fp16", "fp32", "int4", "int8"], None, None),
        "--gpu-gib": (80.0, False, None, None, None),
        "--json": (False, False, None, 0, None),
    },
    "demo": {
        "--config": ("training/configs/demo_smollm2_ja.yaml", False, None, None, None),
        "--base": (None, False, None, None, "override the config's base model"),
        "--out": (None, False, None, None, "override the config's output directory"),
        "--eval": ("data/ja_sample_eval.json", False, None, None, "held-in question set"),
        "--retrain": (False, False, None, 0, "train even if the output directory exists"),
        "--results": (None, False, None, None, "write the scores as JSON here"),
        "--max-steps": (None, False, None, None, None),
    },
    "tool-demo": {
        "--config": ("training/configs/demo_smollm2_tools.yaml", False, None, None, None),
        "--base": (None, False, None, None, "override the config's base model"),
        "--out": (None, False, None, None, "override the config's output directory"),
        "--eval": ("data/tools_ja_en_eval.json", False, None, None, "held-in request set"),
        "--retrain": (False, False, None, 0, "train even if the output directory exists"),
        "--results": (None, False, None, None, "write the scores as JSON here"),
        "--epochs": (None, False, None, None, None),
    },
    "eval score": {
        "--metrics": (
            None,
            True,
            None,
            None,
            "comma-separated, from: exact_match, char_f1, set_f1, pearson, spearman, bleu_en, bleu_ja",
        ),
        "--in": (None, True, None, None, 'one {"prediction": raw model output, "reference": expected answer} per line'),
        "--out": (None, True, None, None, "per-item scores (JSONL)"),
    },
    "eval run": {
        "--tasks": (
            None,
            True,
            None,
            "+",
            "task files (llm-jp-eval .json, or our .jsonl) or folders of them (e.g. llm-jp-eval's evaluation/test)",
        ),
        "--model": (
            None,
            True,
            None,
            None,
            "a served model to evaluate (repeat to compare; NAME@URL for another endpoint's model)",
        ),
        "--out": (None, True, None, None, "folder for the report, predictions and cache"),
        "--base-url": (
            "http://127.0.0.1:8000/v1",
            False,
            None,
            None,
            "OpenAI-compatible API root, up to /v1 (default: http://127.0.0.1:8000/v1, `python -m service`)",
        ),
        "--api-key": (
            None,
            False,
            None,
            None,
            "bearer key; default $TSUMUGI_EVAL_API_KEY, else $OPENAI_API_KEY but only for https://api.openai.com",
        ),
        "--concurrency": (8, False, None, None, "requests in flight at once (default 8)"),
        "--cache-dir": (
            None,
            False,
            None,
            None,
            "keep every answer in DIR/answers.sqlite3; a rerun (or a killed run's rerun) sends only what is missing",
        ),
        "--timeout": (120.0, False, None, None, "seconds per request (default 120)"),
        "--max-retries": (5, False, None, None, "retries after 429/5xx/timeouts (default 5)"),
        "--mode": ("alpaca", False, ["alpaca", "chat"], None, "completions or chat template"),
        "--num-few-shots": (4, False, None, None, None),
        "--max-samples": (100, False, None, None, "first N samples per task, or 'all'"),
        "--temperature": (0.0, False, None, None, None),
    },
    "eval judge": {
        "--questions": (None, True, None, None, 'JSONL: {"id", "category", "question", "reference"?}'),
        "--model": (
            None,
            True,
            None,
            None,
            "a served model to evaluate (repeat to compare; NAME@URL for another endpoint's model)",
        ),
        "--out": (None, True, None, None, "folder for the report, predictions and cache"),
        "--base-url": (
            "http://127.0.0.1:8000/v1",
            False,
            None,
            None,
            "OpenAI-compatible API root, up to /v1 (default: http://127.0.0.1:8000/v1, `python -m service`)",
        ),
        "--api-key": (
            None,
            False,
            None,
            None,
            "bearer key; default $TSUMUGI_EVAL_API_KEY, else $OPENAI_API_KEY but only for https://api.openai.com",
        ),
        "--concurrency": (8, False, None, None, "requests in flight at once (default 8)"),
        "--cache-dir": (
            None,
            False,
            None,
            None,
            "keep every answer in DIR/answers.sqlite3; a rerun (or a killed run's rerun) sends only what is missing",
        ),
        "--timeout": (120.0, False, None, None, "seconds per request (default 120)"),
        "--max-retries": (5, False, None, None, "retries after 429/5xx/timeouts (default 5)"),
        "--judge-model": (None, True, None, None, "the judge's model name on --judge-base-url"),
        "--judge-base-url": (None, False, None, None, "the judge's API root (default: --base-url)"),
        "--judge-api-key": (None, False, None, None, "the judge's key (default: as --api-key for that URL)"),
        "--judge-temperature": (0.0, False, None, None, None),
        "--answer-max-tokens": (1024, False, None, None, None),
        "--judge-max-tokens": (1024, False, None, None, None),
    },
}


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return commands.choices[name]


def flags_of(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        default = SUPPRESS if action.default is argparse.SUPPRESS else action.default
        if isinstance(default, Path):
            default = str(default.relative_to(REPO))
        choices = list(action.choices) if action.choices is not None else None
        flags[" ".join(action.option_strings)] = (default, action.required, choices, action.nargs, action.help)
    return flags


def parser_of(command: str) -> argparse.ArgumentParser:
    """`eval run` is the `run` parser under the `eval` parser, as `python -m training eval run` builds it."""
    top, *rest = command.split()
    parser = subparser(build_parser(top), top)
    return subparser(parser, rest[0]) if rest else parser


def test_every_command_is_recorded():
    assert {command.split()[0] for command in EXPECTED} == set(COMMANDS)


@pytest.mark.parametrize("command", list(EXPECTED))
def test_flags_are_unchanged(command):
    """In the recorded order too: `--help` lists them so."""
    assert list(flags_of(parser_of(command)).items()) == list(EXPECTED[command].items())


def test_a_command_reads_its_flags_back_as_its_settings():
    args = parser_of("merge").parse_args(["--base", "b", "--adapter", "a", "--out", "o"])
    assert settings_from(MergeSettings, args) == MergeSettings(base="b", adapter=Path("a"), out=Path("o"), dtype="bf16")
