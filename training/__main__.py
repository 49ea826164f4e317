"""`python -m training <command>`: sft, merge, quantize, memory, demo, tool-demo, eval.

Only the chosen command's arguments are defined, and each command imports its libraries itself, so `memory`
runs on the standard library alone (no torch, pydantic or httpx) and stays instant. A user mistake (a
`TrainingError`: bad config value, bad data, unusable model directory, existing output) ends as one line
`error: ...` and exit code 2, without a traceback. Anything else is our bug, not the user's: it is not caught,
so it keeps its traceback and exits with code 1. Under torchrun every rank ends with the same agreed error
(training/distributed.py) and exit code 2; rank 0 alone prints it, so the log has the line once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from training.errors import TrainingError
from tsumugi.cli_flags import add_flags, flags_of, settings_from


def add_sft_arguments(p: argparse.ArgumentParser) -> None:
    """`--config` plus one flag per entry of `training.config.CLI_FLAGS`, generated from the config model."""
    from training.config import sft_flags

    add_flags(p, sft_flags())
    p.set_defaults(handler=run_sft_command)


def run_sft_command(args: argparse.Namespace) -> None:
    from training.config import load_config, overrides_from_flags

    cfg = load_config(args.config, overrides_from_flags(args))
    from training.sft import run_sft  # torch and TRL only once the config is known to be valid

    out = run_sft(cfg)
    if speaks_for_the_run():
        print(f"adapter written to {out}")


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    from training.export.merge import MergeSettings

    add_flags(p, flags_of(MergeSettings))
    p.set_defaults(handler=run_merge_command)


def run_merge_command(args: argparse.Namespace) -> None:
    from training.export.merge import MergeSettings, merge_adapter

    settings = settings_from(MergeSettings, args)
    path = merge_adapter(settings.base, settings.adapter, settings.out, settings.dtype)
    print(f"merged model written to {path}")


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    from training.export.quantize import QuantizeSettings

    add_flags(p, flags_of(QuantizeSettings))
    p.set_defaults(handler=run_quantize_command)


def run_quantize_command(args: argparse.Namespace) -> None:
    from training.export.quantize import QuantizeSettings, quantize_from_settings

    print(f"quantized model written to {quantize_from_settings(settings_from(QuantizeSettings, args))}")


def add_memory_arguments(p: argparse.ArgumentParser) -> None:
    from training.memory import MemorySettings, run_memory_command

    add_flags(p, flags_of(MemorySettings))
    p.set_defaults(handler=run_memory_command)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from training.demos.japanese_qa import JapaneseQaSettings, run_demo_command

    add_flags(p, flags_of(JapaneseQaSettings))
    p.set_defaults(handler=run_demo_command)


def add_tool_demo_arguments(p: argparse.ArgumentParser) -> None:
    from training.demos.tool_calling import ToolCallingSettings, run_tool_demo_command

    add_flags(p, flags_of(ToolCallingSettings))
    p.set_defaults(handler=run_tool_demo_command)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    from training.evaluation.cli import add_eval_arguments as add

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


def speaks_for_the_run() -> bool:
    """Rank 0 under torchrun (`RANK`), or the only process: the one that talks to the user."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        args.handler(args)
    except TrainingError as error:  # anything else is our bug: it keeps its traceback and exit code 1
        if speaks_for_the_run():
            print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
