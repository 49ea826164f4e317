"""`python -m training <command>`: sft, merge, quantize, memory, demo, tool-demo, eval.

Only the chosen command's arguments are defined, and each command imports its libraries itself, so `memory`
runs on the standard library alone (no torch, pydantic or httpx) and stays instant. A user mistake (a
`TrainingError`: bad config value, bad data, unusable model directory, existing output) ends as one line
`error: ...` and exit code 2, without a traceback. Anything else is our bug, not the user's: it is not caught,
so it keeps its traceback and exits with code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from training.data.templates import TEMPLATE_NAMES
from training.errors import TrainingError


def add_sft_arguments(p: argparse.ArgumentParser) -> None:
    """`--config` plus one flag per entry of `training.config.CLI_FLAGS`, generated from the config model."""
    from training.config import add_config_flags

    p.add_argument("--config", type=Path, help="YAML config; flags given here override it")
    add_config_flags(p)
    p.set_defaults(handler=run_sft_command)


def run_sft_command(args: argparse.Namespace) -> None:
    from training.config import load_config, overrides_from_flags

    cfg = load_config(args.config, overrides_from_flags(args))
    from training.sft import run_sft  # torch and TRL only once the config is known to be valid

    print(f"adapter written to {run_sft(cfg)}")


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.set_defaults(handler=run_merge_command)


def run_merge_command(args: argparse.Namespace) -> None:
    from training.export.merge import merge_adapter

    print(f"merged model written to {merge_adapter(args.base, args.adapter, args.out, args.dtype)}")


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--method", choices=["awq", "gptq"], default="awq")
    p.add_argument("--data", required=True, type=Path, help="training data: calibration samples come from it")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--template", choices=TEMPLATE_NAMES, help="default: the model's own chat template")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--group-size", type=int, help="default: largest of 128/64/32 dividing every layer")
    p.set_defaults(handler=run_quantize_command)


def run_quantize_command(args: argparse.Namespace) -> None:
    from training.export.quantize import quantize_from_args

    print(f"quantized model written to {quantize_from_args(args)}")


def add_memory_arguments(p: argparse.ArgumentParser) -> None:
    from training.memory import add_memory_arguments as add

    add(p)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from training.demos.japanese_qa import add_demo_arguments as add

    add(p)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    from training.evaluation.cli import add_eval_arguments as add

    add(p)


def add_tool_demo_arguments(p: argparse.ArgumentParser) -> None:
    from training.demos.tool_calling import add_tool_demo_arguments as add

    add(p)


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {  # name: (help, arguments)
    "sft": ("LoRA / QLoRA supervised fine-tuning", add_sft_arguments),
    "merge": ("merge a LoRA adapter into its base model", add_merge_arguments),
    "quantize": ("AWQ or GPTQ W4A16 with llm-compressor", add_quantize_arguments),
    "memory": ("predict GPU memory for serving or fine-tuning", add_memory_arguments),
    "demo": ("LoRA on the Japanese sample, then the before/after table", add_demo_arguments),
    "tool-demo": ("LoRA on the tool-calling sample, then base vs adapter calls", add_tool_demo_arguments),
    "eval": ("evaluate served models: llm-jp-eval tasks, judge grading, scoring pairs", add_eval_arguments),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """Every command is listed, but only `command` gets its arguments (and so its imports)."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (summary, add_arguments) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name == command:
            add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        args.handler(args)
    except TrainingError as error:  # anything else is our bug: it keeps its traceback and exit code 1
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
